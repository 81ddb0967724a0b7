"""The CUDA build of p3o_kernel.cu against the slow references, and against the CPU build.

Skipped where PyTorch sees no CUDA GPU; the module itself imports without one (the kernels
are built in a fixture, not at import).
"""

import pytest
import torch
from torch.testing import assert_close

from cases import GAE_CASES, P3O_CASES, random_gae_inputs, random_p3o_inputs
from p3o_kernel_loader import load_kernels
from reference import gae_reference, p3o_reference, p3o_targets_reference

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU visible to PyTorch: CUDA kernel tests need one"
)

TOL = dict(rtol=1e-5, atol=1e-5)
EXACT = dict(rtol=0.0, atol=0.0)
# The CUDA build may fuse a * b + c into one rounding (FMA) where the CPU build rounds twice,
# so advantages agree to a few float32 ulps, not always bit for bit.
CPU_VS_CUDA = dict(rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def cuda_kernels():
    return load_kernels(torch.device("cuda"))


@pytest.fixture(scope="module")
def cpu_kernels():
    return load_kernels(torch.device("cpu"))


def on(device, inputs):
    return {k: v.to(device) for k, v in inputs.items()}


def p3o(kernels, inputs, normalize):
    return kernels.p3o_advantage(**inputs, normalize_max=normalize == "max", normalize=normalize != "none")


@pytest.mark.parametrize("seed, T, N", GAE_CASES)
def test_gae_cuda_vs_reference(cuda_kernels, seed, T, N):
    inputs, gamma, lam = random_gae_inputs(seed, T, N)
    out = cuda_kernels.gae(**on("cuda", inputs), gamma=gamma, lam=lam)
    assert out.is_cuda and out.dtype == torch.float32 and out.shape == (T, N)
    assert_close(out.cpu().double(), gae_reference(**inputs, gamma=gamma, lam=lam), **TOL)


def test_gae_cuda_many_envs_vs_reference(cuda_kernels):
    # more envs than one thread block (256)
    inputs, gamma, lam = random_gae_inputs(100, 9, 600)
    out = cuda_kernels.gae(**on("cuda", inputs), gamma=gamma, lam=lam)
    assert_close(out.cpu().double(), gae_reference(**inputs, gamma=gamma, lam=lam), **TOL)


@pytest.mark.parametrize("normalize", ["sum", "max", "none"])
@pytest.mark.parametrize("per_state", [False, True])
@pytest.mark.parametrize("seed, T, H, N", P3O_CASES)
def test_p3o_cuda_vs_reference(cuda_kernels, seed, T, H, N, per_state, normalize):
    inputs = random_p3o_inputs(seed, T, H, N, per_state)
    adv, targets, known = p3o(cuda_kernels, on("cuda", inputs), normalize)
    assert adv.is_cuda and targets.is_cuda and known.is_cuda
    assert adv.shape == (T, N) and targets.shape == (T, H, N) and known.shape == (T, H, N)
    ref_adv, ref_targets, ref_known = p3o_reference(**inputs, normalize=normalize)
    assert_close(adv.cpu().double(), ref_adv, **TOL)
    assert_close(targets.cpu().double(), ref_targets, **EXACT)
    assert_close(known.cpu().double(), ref_known, **EXACT)


@pytest.mark.parametrize("normalize", ["sum", "max"])
def test_p3o_cuda_many_rows_vs_reference(cuda_kernels, normalize):
    # T * N = 600 rows: more than one thread block (256)
    inputs = random_p3o_inputs(101, 20, 12, 30, per_state=True)
    adv, targets, known = p3o(cuda_kernels, on("cuda", inputs), normalize)
    ref_adv, ref_targets, ref_known = p3o_reference(**inputs, normalize=normalize)
    assert_close(adv.cpu().double(), ref_adv, **TOL)
    assert_close(targets.cpu().double(), ref_targets, **EXACT)
    assert_close(known.cpu().double(), ref_known, **EXACT)


@pytest.mark.parametrize("lam", [0.0, 0.95])
@pytest.mark.parametrize("seed, T, H, N", P3O_CASES + [(203, 64, 48, 12)])
def test_p3o_lambda_cuda_vs_reference(cuda_kernels, cpu_kernels, seed, T, H, N, lam):
    # the lambda-surprise's chain pass: (T + H - 1) * N chains, more than one block in the last case
    inputs = random_p3o_inputs(seed, T, H, N, per_state=True)
    adv, _, _ = cuda_kernels.p3o_advantage(**on("cuda", inputs), normalize_max=False, lam=lam)
    ref_adv, _, _ = p3o_reference(**inputs, normalize="sum", lam=lam)
    assert_close(adv.cpu().double(), ref_adv, **TOL)
    cpu, _, _ = cpu_kernels.p3o_advantage(**inputs, normalize_max=False, lam=lam)
    assert_close(adv.cpu(), cpu, **CPU_VS_CUDA)


@pytest.mark.parametrize("seed, T, H, N", P3O_CASES + [(202, 128, 64, 40)])
def test_p3o_targets_cuda_vs_reference(cuda_kernels, seed, T, H, N):
    inputs = random_p3o_inputs(seed, T, H, N, per_state=False)
    del inputs["mu"], inputs["weight"]
    out = cuda_kernels.p3o_targets(**on("cuda", inputs))
    for got, want in zip(out, p3o_targets_reference(**inputs)):
        assert got.is_cuda and got.shape == (T, H, N)
        assert_close(got.cpu().double(), want, **EXACT)


def test_gae_cpu_vs_cuda(cpu_kernels, cuda_kernels):
    for seed, T, N in GAE_CASES + [(200, 128, 300)]:
        inputs, gamma, lam = random_gae_inputs(seed, T, N)
        cpu = cpu_kernels.gae(**inputs, gamma=gamma, lam=lam)
        cuda = cuda_kernels.gae(**on("cuda", inputs), gamma=gamma, lam=lam)
        assert_close(cuda.cpu(), cpu, **CPU_VS_CUDA)


@pytest.mark.parametrize("normalize", ["sum", "max"])
@pytest.mark.parametrize("per_state", [False, True])
def test_p3o_cpu_vs_cuda(cpu_kernels, cuda_kernels, per_state, normalize):
    for seed, T, H, N in P3O_CASES + [(201, 128, 64, 40)]:
        inputs = random_p3o_inputs(seed, T, H, N, per_state)
        cpu = p3o(cpu_kernels, inputs, normalize)
        cuda = p3o(cuda_kernels, on("cuda", inputs), normalize)
        assert_close(cuda[0].cpu(), cpu[0], **CPU_VS_CUDA)
        assert torch.equal(cuda[1].cpu(), cpu[1])  # targets: copies of the inputs
        assert torch.equal(cuda[2].cpu(), cpu[2])  # known: 0 / 1


def test_cuda_build_rejects_cpu_tensor_mixed_in(cuda_kernels):
    inputs = on("cuda", random_p3o_inputs(0, 4, 3, 2, per_state=False))
    inputs["mu_next"] = inputs["mu_next"].cpu()
    with pytest.raises(RuntimeError, match=r"\bmu_next is on cpu"):
        p3o(cuda_kernels, inputs, "sum")
