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
"""

import functools
import os
import shutil
from pathlib import Path

import torch
from torch.utils import cpp_extension

KERNEL_SOURCE = Path(__file__).resolve().with_name("p3o_kernel.cu")


@functools.cache
def load_kernels(device: torch.device):
    """Build (or load from cache) p3o_kernel.cu for `device` and return the extension module."""
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"p3o_kernel.cu runs on 'cpu' or 'cuda', not '{device.type}'")
    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError:
        raise RuntimeError("Building p3o_kernel.cu needs ninja: pip install ninja") from None
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(
            f"Building p3o_kernel.cu needs a C++ compiler, and '{compiler}' was not found. "
            "Install one (Debian/Ubuntu: apt-get install g++) or point $CXX at it."
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("load_kernels('cuda') was asked for, but PyTorch sees no CUDA GPU")
        if cpp_extension.CUDA_HOME is None:
            raise RuntimeError(
                "Building p3o_kernel.cu for the GPU needs the CUDA toolkit (nvcc), and none was "
                "found. Install it, or set CUDA_HOME to its folder."
            )
        return cpp_extension.load(
            name="p3o_kernel_cuda",
            sources=[str(KERNEL_SOURCE)],
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3"],
        )
    # The source's text itself goes into the C++ build (not an #include of its path), so that
    # checkouts at different paths share one cached build and editing the .cu triggers a rebuild.
    return cpp_extension.load_inline(
        name="p3o_kernel_cpu",
        cpp_sources=[f'#line 1 "{KERNEL_SOURCE.name}"\n' + KERNEL_SOURCE.read_text()],
        extra_cflags=["-O3"],
    )
