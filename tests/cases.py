"""Random inputs for the kernel tests, shared by the CPU (test_kernels.py) and CUDA
(test_kernels_cuda.py) comparisons against the references in reference.py."""

import torch

# (seed, T, N): T = 1 .. 64, N = 1 .. 16
GAE_CASES = [(0, 1, 1), (1, 1, 7), (2, 2, 3), (3, 5, 1), (4, 17, 16), (5, 64, 4), (6, 33, 9), (7, 64, 16)]

# (seed, T, H, N): H = 1, H < T, H = T, H > T, H much larger than T
P3O_CASES = [
    (0, 1, 1, 1),
    (1, 5, 1, 3),
    (2, 8, 3, 2),
    (3, 16, 16, 4),
    (4, 2, 5, 3),
    (5, 3, 17, 5),
    (6, 32, 8, 16),
    (7, 48, 20, 6),
    (8, 64, 33, 3),
    (9, 7, 40, 2),
]


def _flags(generator, shape, p):
    return (torch.rand(shape, generator=generator) < p).float()


def random_gae_inputs(seed, T, N, device="cpu"):
    """Random rewards/values, ~15% terminations and ~10% truncations (sometimes on the same
    step: termination wins), random gamma and lambda."""
    g = torch.Generator().manual_seed(seed)
    inputs = dict(
        rewards=torch.randn(T, N, generator=g),
        values=torch.randn(T, N, generator=g),
        terminations=_flags(g, (T, N), 0.15),
        truncations=_flags(g, (T, N), 0.10),
        next_value=torch.randn(N, generator=g),
        final_values=torch.randn(T, N, generator=g),
    )
    gamma = 0.9 + 0.1 * torch.rand((), generator=g).item()
    lam = 0.8 + 0.2 * torch.rand((), generator=g).item()
    return {k: v.to(device) for k, v in inputs.items()}, gamma, lam


def random_p3o_inputs(seed, T, H, N, per_state, device="cpu"):
    """Random rewards/mu/mu_next, ~15% terminations, ~10% truncations, positive weights with
    about a quarter of them exactly 0 (steps below chance level)."""
    g = torch.Generator().manual_seed(seed)
    weight_shape = (T, H, N) if per_state else (H,)
    weight = torch.rand(weight_shape, generator=g) * 4.0
    weight = weight * (torch.rand(weight_shape, generator=g) > 0.25).float()
    inputs = dict(
        rewards=torch.randn(T, N, generator=g),
        terminations=_flags(g, (T, N), 0.15),
        truncations=_flags(g, (T, N), 0.10),
        mu=torch.randn(T, H, N, generator=g),
        mu_next=torch.randn(H, N, generator=g),
        weight=weight,
    )
    return {k: v.to(device) for k, v in inputs.items()}
