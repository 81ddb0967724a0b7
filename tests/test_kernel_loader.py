"""The kernel loader never hangs on a build lock: a dead builder's lock is removed, a live one is named."""

import subprocess
import sys
import time
from pathlib import Path

from torch.utils import cpp_extension

from p3o_kernel_loader import load_kernels

ROOT = Path(__file__).resolve().parents[1]
LOAD = "from p3o_kernel_loader import load_kernels; load_kernels('cpu'); print('loaded', flush=True)"


def build_dir():
    load_kernels("cpu")  # built (or cached) once, so that the subprocesses below only load
    return Path(cpp_extension._get_build_directory("p3o_kernel_cpu", verbose=False))


def test_lock_left_by_a_killed_build_is_removed():
    lock = build_dir() / "lock"
    lock.touch()  # what a build killed by SIGTERM or SIGKILL leaves behind: torch would wait on it forever
    result = subprocess.run([sys.executable, "-c", LOAD], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Removing the lock file a killed build left behind: {lock}" in result.stdout
    assert "loaded" in result.stdout and not lock.exists()


def test_a_run_waiting_for_a_live_build_says_so_then_goes_on():
    flock = build_dir() / "p3o_build.flock"
    hold = (f"import fcntl, os, time; fd = os.open({str(flock)!r}, os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
            "os.pwrite(fd, str(os.getpid()).encode(), 0); print('holding', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        waiter = subprocess.Popen([sys.executable, "-c", LOAD], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        start = time.time()
        line = waiter.stdout.readline()  # printed before blocking: within the interpreter's start-up time
        assert f"Waiting for another process (pid {holder.pid}) that is building or loading" in line
        assert time.time() - start < 60
        time.sleep(1)
        assert waiter.poll() is None  # still waiting
    finally:
        holder.kill()
        holder.wait()
    out, _ = waiter.communicate(timeout=120)
    assert waiter.returncode == 0 and "loaded" in out
