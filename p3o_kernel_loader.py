"""Compile and load p3o_kernel.cu, for the GPU or for the CPU.

    kernels = load_kernels(torch.device("cuda"))  # nvcc build: CUDA kernels
    kernels = load_kernels(torch.device("cpu"))   # C++ build of the same file: host loops
    kernels.gae(...), kernels.p3o_advantage(...)

PyTorch's extension loader sends `.cu` files to nvcc, which a CPU-only PyTorch cannot link
against, so the CPU build hands the text of p3o_kernel.cu to the C++ compiler as a .cpp file.
Without nvcc's __CUDACC__ the source compiles its host loops only, around the same per-element code.

The first build takes about a minute; later runs load the cached library in well under a second.
Builds are cached under $TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions) and rebuilt
when p3o_kernel.cu changes.

Interrupted builds: PyTorch guards a build folder with a `lock` file that a killed build leaves
behind, and every later load then waits on it forever. Here each load first takes an flock on
`p3o_build.flock` in the build folder, which the operating system releases when its holder exits,
however it exits. Holding it, a `lock` file can only be a dead build's (every load goes through
this lock), and is removed, after any compiler that build left running has finished; waiting for
it more than 2 s, the run says which process it waits for. (Linux and macOS: fcntl.flock.)
"""

import fcntl
import functools
import os
import shutil
import time
from pathlib import Path

import torch
from torch.utils import cpp_extension

KERNEL_SOURCE = Path(__file__).resolve().with_name("p3o_kernel.cu")


class KernelBuildError(RuntimeError):
    """The kernel cannot be built here (no compiler, no ninja, no CUDA toolkit); the message says why."""


@functools.cache
def load_kernels(device: torch.device):
    """Build (or load from cache) p3o_kernel.cu for `device` and return the extension module."""
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"p3o_kernel.cu runs on 'cpu' or 'cuda', not '{device.type}'")
    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError:
        raise KernelBuildError("Building p3o_kernel.cu needs ninja: pip install ninja") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise KernelBuildError("load_kernels('cuda') was asked for, but PyTorch sees no CUDA GPU")
        if cpp_extension.CUDA_HOME is None:
            raise KernelBuildError(
                "Building p3o_kernel.cu for the GPU needs the CUDA toolkit (nvcc), and none was "
                "found. Install it, or set CUDA_HOME to its folder."
            )
        name, source = "p3o_kernel_cuda", None
    else:
        # The source's text itself goes into the C++ build (not an #include of its path), so that
        # checkouts at different paths share one cached build and editing the .cu triggers a rebuild.
        name, source = "p3o_kernel_cpu", f'#line 1 "{KERNEL_SOURCE.name}"\n' + KERNEL_SOURCE.read_text()
    build_dir = Path(cpp_extension._get_build_directory(name, verbose=False))  # torch's own choice of folder
    with build_lock(build_dir):
        fresh = is_built(build_dir, name, source)
        compiler = os.environ.get("CXX", "c++")
        if not fresh and shutil.which(compiler) is None:
            raise KernelBuildError(
                f"Building p3o_kernel.cu needs a C++ compiler, and '{compiler}' was not found. "
                "Install one (Debian/Ubuntu: apt-get install g++) or point $CXX at it."
            )
        if not fresh:
            what = "for the GPU with nvcc" if device.type == "cuda" else "for the CPU with the C++ compiler"
            print(f"Compiling p3o_kernel.cu {what} (once; about a minute) into {build_dir} ...", flush=True)
        start = time.time()
        if device.type == "cuda":
            module = cpp_extension.load(
                name=name, sources=[str(KERNEL_SOURCE)], extra_cflags=["-O3"], extra_cuda_cflags=["-O3"]
            )
        else:
            module = cpp_extension.load_inline(name=name, cpp_sources=[source], extra_cflags=["-O3"])
        if not fresh:
            print(f"Compiled p3o_kernel.cu in {time.time() - start:.0f} s (cached for later runs)", flush=True)
    return module


def is_built(build_dir: Path, name: str, cpu_source) -> bool:
    """Whether the cached library is up to date, so loading it compiles nothing (only for the messages)."""
    library = build_dir / f"{name}.so"
    if cpu_source is None:
        return library.exists() and library.stat().st_mtime >= KERNEL_SOURCE.stat().st_mtime
    main = build_dir / "main.cpp"  # what torch's load_inline writes: its header line, then our source
    return library.exists() and main.exists() and main.read_text() == "#include <torch/extension.h>\n" + cpu_source


class build_lock:
    """Hold an flock on build_dir/p3o_build.flock; once held, remove a `lock` file a killed build left."""

    def __init__(self, build_dir: Path):
        self.build_dir = build_dir

    def __enter__(self):
        path = self.build_dir / "p3o_build.flock"
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not self.try_lock(seconds=2.0):  # loading a cached build holds it for about a second: no message
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "unknown"
            print(
                f"Waiting for another process (pid {holder}) that is building or loading p3o_kernel.cu "
                f"in {self.build_dir} ...",
                flush=True,
            )
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        stale = self.build_dir / "lock"
        if stale.exists():  # nobody holds the flock but us, so the process that made this lock is gone
            print(f"Removing the lock file a killed build left behind: {stale}", flush=True)
            stale.unlink()
            wait_for_orphans(self.build_dir)
        return self

    def try_lock(self, seconds: float) -> bool:
        deadline = time.time() + seconds
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.time() > deadline:
                    return False
                time.sleep(0.1)

    def __exit__(self, *exc):
        os.ftruncate(self.fd, 0)
        os.close(self.fd)  # releases the flock


def wait_for_orphans(build_dir: Path) -> None:
    """Wait for the ninja and compiler processes a killed build left running in build_dir (Linux: /proc)."""
    def orphans():
        pids = []
        for cwd in Path("/proc").glob("[0-9]*/cwd"):
            try:
                if cwd.resolve() == build_dir.resolve():
                    pids.append(cwd.parent.name)
            except OSError:  # gone meanwhile, or not ours to read
                pass
        return pids

    if pids := orphans():
        print(f"Waiting for the compiler left running by that build (pids {', '.join(pids)}) to finish ...", flush=True)
        while orphans():
            time.sleep(0.5)
