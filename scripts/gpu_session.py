"""Everything the project measures on a GPU, in one call on a fresh GPU machine, within a time budget.

    python3 scripts/gpu_session.py --budget 540 --out $OUT/gpu                       # on the GPU machine
    python3 scripts/gpu_session.py --budget 540 --out $OUT/gpu --race-state race_state  # resume the race
    python scripts/gpu_session.py --dry-run --budget 120 --out /tmp/gpu_dry           # CPU, tiny sizes
    python scripts/gpu_session.py --download-wheels                                   # here, before the call

The GPU machine has PyTorch (and OpenCV, TensorBoard, pybind11, ninja, nvcc) but reaches no package
registry, so the install part installs wheels carried in .whl/ (gymnasium, ale-py with its ROMs, minatar,
tyro and their small dependencies, for Python 3.12: --download-wheels fetches them, about 4 MB)
into /tmp/site and puts that on PYTHONPATH; without .whl/ it runs pip install -r requirements.txt.

Run in the repository root. The parts, in order, each started only if enough of the budget (seconds,
counted from the start) is left, and each under a timeout from what is left:
  install     the wheels in .whl/ (or pip install -r requirements.txt), then check the imports
  build       compile p3o_kernel.cu for CUDA (p3o_kernel_loader.load_kernels)
  tests       pytest tests/test_kernels_cuda.py (junit XML kept)
  kernels     scripts/bench_kernels.py: time and fraction of peak memory bandwidth, N = 8..1024, H = 32..256
  throughput  scripts/bench_throughput.py: bare vector env, ppo_gae.py, p3o.py, where the time goes
  race        scripts/atari_race.py with the time that is left: resumable runs packed on the GPU
Each part's output is saved as soon as it ends, so a timeout loses only the part that was running.
--out receives few files (what a transfer back can carry: at most 8, 16 MiB each):
  summary.md              one line per part: status, seconds, where its results are
  results.tar.gz          every part's log and results, laid out as the repository's results/ folder
                          (unpack it in the repository root), repacked after each part
  race_state.tar.gz.partNN  the race's checkpoints (about 20 MB a run), for the next call's
                          --race-state: keep them in race_state/ (ignored by git) and carry it along
--dry-run runs the same parts on the CPU at tiny sizes and skips those that need CUDA, saying why.
The race defaults to Pong, both scripts, seed 1: two runs' checkpoints (about 39 MiB) are what fits
the transfers both ways (64 MiB each, the repository's files included on the way there).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from atari_race import has_resume  # noqa: E402  (standard library only, like this file)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, help="seconds for all the parts together")
    p.add_argument("--out", type=Path, help="the folder that comes back (summary, archive, state)")
    p.add_argument("--work", type=Path, default=Path("/tmp/gpu_session"), help="scratch folder")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, CUDA-only parts skipped")
    p.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="wheels to install (if the folder exists)")
    p.add_argument("--download-wheels", action="store_true",
                   help="only download the wheels the GPU machine lacks into --wheels, and exit")
    p.add_argument("--skip", nargs="*", default=[], choices=PARTS, help="parts not to run")
    p.add_argument("--race-state", type=Path, default=None, help="the last call's race_state.tar.gz.part* folder")
    p.add_argument("--race-games", nargs="+", default=["Pong"])
    p.add_argument("--race-algos", nargs="+", default=["ppo_gae", "p3o"])
    p.add_argument("--race-seeds", nargs="+", default=["1"])
    p.add_argument("--race-max-seconds", type=float, default=None, help="cap on the race's time (default: all that is left)")
    p.add_argument("--race-state-mib", type=float, default=45.0,
                   help="the most checkpoint state that may come back (the transfer's 64 MiB, less the rest)")
    args = p.parse_args(argv)
    if args.download_wheels:
        return args
    if args.budget is None or args.out is None:
        p.error("--budget and --out are required")
    if args.budget <= 0:
        p.error(f"--budget must be positive, got {args.budget:g}")
    return args


PARTS = ["install", "build", "tests", "kernels", "throughput", "race"]
# What the GPU machine's image lacks (it has torch, numpy, opencv, tensorboard, ...): the pins of
# requirements.txt, and the versions of their dependencies installed with them here.
WHEELS = ["gymnasium", "ale-py", "minatar", "tyro"]
WHEEL_DEPENDENCIES = ["farama-notifications==0.0.6", "docstring-parser==0.18.0", "typeguard==4.6.1"]
IMPORTS = "import torch, numpy, cv2, gymnasium, ale_py, tyro, tensorboard; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'gymnasium', gymnasium.__version__, 'ale_py', ale_py.__version__)"


def download_wheels(folder):
    pins = {line.split("==")[0].lower(): line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    wanted = [pins[name] for name in WHEELS] + WHEEL_DEPENDENCIES
    platforms = [f"--platform=manylinux{tag}_x86_64" for tag in ("_2_28", "_2_27", "_2_17", "2014", "1")]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version=3.12",
           "--implementation=cp", *platforms, "-d", str(folder), *wanted]
    print(shlex.join(cmd), flush=True)
    return subprocess.run(cmd).returncode


def copy_lines(stream, log):
    """Each line of a part's output to the console (indented) and to its log, as it comes."""
    for line in stream:
        print("   " + line, end="", flush=True)
        log.write(line)
        log.flush()


class Session:
    def __init__(self, args):
        self.args = args
        self.start = time.monotonic()
        self.results = args.work / "results"  # becomes results.tar.gz: paths as in the repository
        self.logs = self.results / "gpu_session"
        self.rows = []
        shutil.rmtree(args.work, ignore_errors=True)
        self.logs.mkdir(parents=True)
        args.out.mkdir(parents=True, exist_ok=True)

    def left(self):
        return self.args.budget - (time.monotonic() - self.start)

    def run(self, name, cmd, cap, minimum, note=""):
        """Run one part under min(cap, what is left) seconds; record and save at once."""
        timeout = min(cap, self.left() - 5)
        if timeout < minimum:
            return self.record(name, "skipped", 0.0, f"{self.left():.0f} s left, it needs {minimum:.0f}")
        print(f"=== {name} ({timeout:.0f} s at most, {self.left():.0f} s left): {shlex.join(cmd)}", flush=True)
        log_path = self.logs / f"{name}.log"
        t = time.monotonic()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
            echo = threading.Thread(target=copy_lines, args=(proc.stdout, log), daemon=True)
            echo.start()
            try:
                proc.wait(timeout=timeout)
                status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the part and every process it started
                proc.wait()
                status = "timeout"
            echo.join(timeout=5)
        return self.record(name, status, time.monotonic() - t, note or f"log: results/gpu_session/{name}.log")

    def record(self, name, status, seconds, note):
        print(f"=== {name}: {status} ({seconds:.0f} s) {note}", flush=True)
        self.rows.append((name, status, seconds, note))
        self.save()
        return status

    def save(self):
        """summary.md and results.tar.gz in --out, each replaced whole (a kill midway leaves the last)."""
        a = self.args
        lines = [f"# GPU session ({'dry run, CPU' if a.dry_run else 'GPU'}), budget {a.budget:.0f} s, "
                 f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
                 "| part | status | seconds | note |", "|---|---|---|---|"]
        lines += [f"| {n} | {s} | {sec:.0f} | {note} |" for n, s, sec, note in self.rows]
        text = "\n".join(lines) + "\n"
        (self.logs / "summary.md").write_text(text)
        tmp = a.out / "summary.md.tmp"
        tmp.write_text(text)
        tmp.replace(a.out / "summary.md")
        tmp = a.out / "results.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(self.results, arcname="results")
        tmp.replace(a.out / "results.tar.gz")


def main(argv=None):
    args = parse_args(argv)
    if args.download_wheels:
        return download_wheels(args.wheels)
    s = Session(args)
    py = sys.executable
    device = "cpu" if args.dry_run else "cuda"
    print(f"GPU session: budget {args.budget:.0f} s, out {args.out}, device {device}", flush=True)

    # install
    if "install" in args.skip:
        s.record("install", "skipped", 0, "--skip")
    elif args.dry_run:
        s.record("install", "skipped", 0, "dry run: no wheels or pip install -r requirements.txt")
    else:
        wheels = sorted(args.wheels.glob("*.whl")) if args.wheels.is_dir() else []
        if wheels:  # no registry there: install what was carried, next to the image's packages
            site = args.work / "site"
            install = [py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
                       "--upgrade", "--target", str(site), *map(str, wheels)]
            os.environ["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
        else:
            install = [py, "-m", "pip", "install", "-q", "--retries", "1", "--timeout", "15", "-r", "requirements.txt"]
        s.run("install", ["sh", "-c", f"{shlex.join(install)} && {shlex.join([py, '-c', IMPORTS])}"], cap=300, minimum=30)

    # build
    build = "import torch; from p3o_kernel_loader import load_kernels; load_kernels(torch.device('cuda')); print('built')"
    if "build" in args.skip:
        s.record("build", "skipped", 0, "--skip")
    elif args.dry_run:
        s.record("build", "skipped", 0, "dry run: the CUDA build needs a GPU and nvcc")
    else:
        s.run("build", [py, "-c", build], cap=300, minimum=60)

    # tests
    junit = s.logs / "test_kernels_cuda.xml"
    if "tests" in args.skip:
        s.record("tests", "skipped", 0, "--skip")
    elif args.dry_run:
        s.record("tests", "skipped", 0, "dry run: tests/test_kernels_cuda.py needs a GPU")
    else:
        s.run("tests", [py, "-m", "pytest", "tests/test_kernels_cuda.py", "-q", f"--junitxml={junit}"],
              cap=240, minimum=30, note="junit: results/gpu_session/test_kernels_cuda.xml")

    # kernels
    kernels_md = s.results / f"bench_kernels_{device}.md"
    tiny_kernels = ["--num-envs", "8", "--horizons", "32", "--repeats", "2", "--reference-repeats", "0"]
    if "kernels" in args.skip:
        s.record("kernels", "skipped", 0, "--skip")
    else:
        s.run("kernels", [py, "scripts/bench_kernels.py", "--device", device, "--out", str(kernels_md),
                          *(tiny_kernels if args.dry_run else [])],
              cap=180, minimum=20, note=f"results/{kernels_md.name} and .csv")

    # throughput
    throughput_md = s.results / f"bench_throughput_{device}.md"
    tiny_throughput = ["--num-envs", "2", "--num-steps", "16", "--total-timesteps", "32"]
    if "throughput" in args.skip:
        s.record("throughput", "skipped", 0, "--skip")
    else:
        s.run("throughput", [py, "scripts/bench_throughput.py", "--device", device, "--out", str(throughput_md),
                             *(tiny_throughput if args.dry_run else [])],
              cap=300, minimum=30, note=f"results/{throughput_md.name}")

    # race: the rest of the budget
    race_out = s.results / "atari_race"
    if (ROOT / "results" / "atari_race").is_dir():  # earlier chunks' returns: this chunk appends to them
        shutil.copytree(ROOT / "results" / "atari_race", race_out)
    race_minimum = 45 if args.dry_run else 90
    if "race" in args.skip:
        s.record("race", "skipped", 0, "--skip")
    elif s.left() - 15 < race_minimum:
        s.record("race", "skipped", 0, f"{s.left():.0f} s left, it needs {race_minimum + 15}")
    elif [a for a in args.race_algos if not has_resume(f"{a}.py")]:
        s.record("race", "skipped", 0, "the scripts take no --resume flag yet (the checkpoint contract), "
                 "so runs could not continue in the next call")
    else:
        seconds = min(s.left() - 15, args.race_max_seconds or float("inf"))  # the last 15 s: the final save
        cmd = [py, "scripts/atari_race.py", "--seconds", f"{seconds:.0f}", "--out", str(race_out),
               "--state-out", str(args.out), "--work", str(args.work / "race"),
               "--max-state-mib", str(args.race_state_mib), "--games", *args.race_games,
               "--algos", *args.race_algos, "--seeds", *args.race_seeds]
        if args.race_state:
            cmd += ["--state", str(args.race_state.resolve())]
        if args.dry_run:
            cmd += ["--stop-before", "20", "--checkpoint-every", "5",
                    f"--extra=--device cpu --num-envs 2 --num-steps 16 --total-timesteps {10**6}"]
        s.run("race", cmd, cap=seconds + 10, minimum=race_minimum,
              note="results/atari_race/ (progress.md, one CSV per run); state: $OUT/gpu/race_state.tar.gz.partNN")
    failed = [n for n, status, _, _ in s.rows if status not in ("ok", "skipped")]
    print(f"GPU session done in {time.monotonic() - s.start:.0f} s; " + (f"not ok: {', '.join(failed)}" if failed else "all ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
