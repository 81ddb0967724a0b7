"""The CPU build of p3o_kernel.cu against hand-worked numbers and the slow references.

Hand-checked cases use dyadic numbers (sums of powers of two), so float32 arithmetic is exact
and they are compared for exact equality. Randomised cases are compared with the float64
references in reference.py to 1e-5.
"""

import pytest
import torch
from torch.testing import assert_close

from cases import GAE_CASES, P3O_CASES, random_gae_inputs, random_p3o_inputs
from p3o_kernel_loader import load_kernels
from reference import gae_reference, p3o_reference, p3o_targets_reference, surprise_lambda_reference

TOL = dict(rtol=1e-5, atol=1e-5)
EXACT = dict(rtol=0.0, atol=0.0)


@pytest.fixture(scope="module")
def kernels():
    return load_kernels(torch.device("cpu"))


def col(*values):
    """A [T, 1] float32 column: one env's per-step data."""
    return torch.tensor(values, dtype=torch.float32).reshape(-1, 1)


def gae(kernels, rewards, values, terminations, truncations, next_value, final_values, gamma, lam):
    return kernels.gae(rewards, values, terminations, truncations, next_value, final_values, gamma, lam)


def p3o(kernels, rewards, terminations, truncations, mu, mu_next, weight, normalize, lam=1.0):
    """normalize: "sum", "max" or "none" (the binding's normalize_max and normalize flags); lam: the
    surprise's lambda (1: y - mu)."""
    return kernels.p3o_advantage(
        rewards, terminations, truncations, mu, mu_next, weight, normalize == "max", normalize=normalize != "none",
        lam=lam,
    )


# =============================================================================================
# GAE, by hand. One env, T = 3, gamma = lam = 0.5 (so gamma * lam = 0.25),
#   rewards r = [1, 2, 3], values V = [0.5, 1, 1.5], next_value = 2.
#   delta_t = r_t + 0.5 * V_next - V_t;  A_t = delta_t + 0.25 * A_{t+1} within an episode.
# final_values are 100 (absurd) except where a test truncates: they must only matter there.
# =============================================================================================
G = 0.5
L = 0.5


def gae_single(kernels, terminations=(0, 0, 0), truncations=(0, 0, 0), final_values=(100, 100, 100), next_value=2.0):
    out = gae(
        kernels,
        col(1, 2, 3),
        col(0.5, 1, 1.5),
        col(*terminations),
        col(*truncations),
        torch.tensor([next_value]),
        col(*final_values),
        G,
        L,
    )
    ref = gae_reference(col(1, 2, 3), col(0.5, 1, 1.5), col(*terminations), col(*truncations),
                        torch.tensor([next_value]), col(*final_values), G, L)
    return out, ref


def test_gae_no_done(kernels):
    # delta_2 = 3 + 0.5*2 - 1.5 = 2.5        A_2 = 2.5
    # delta_1 = 2 + 0.5*1.5 - 1 = 1.75       A_1 = 1.75 + 0.25*2.5   = 2.375
    # delta_0 = 1 + 0.5*1 - 0.5 = 1          A_0 = 1 + 0.25*2.375    = 1.59375
    out, ref = gae_single(kernels)
    assert_close(out, col(1.59375, 2.375, 2.5), **EXACT)
    assert_close(ref, col(1.59375, 2.375, 2.5).double(), **EXACT)


def test_gae_termination_mid_rollout(kernels):
    # terminated at t = 1: V_next(1) = 0 and A_1 does not carry A_2.
    # A_2 = 2.5;  delta_1 = 2 + 0 - 1 = 1, A_1 = 1;  A_0 = 1 + 0.25*1 = 1.25
    out, ref = gae_single(kernels, terminations=(0, 1, 0))
    assert_close(out, col(1.25, 1, 2.5), **EXACT)
    assert_close(ref, col(1.25, 1, 2.5).double(), **EXACT)


def test_gae_truncation_mid_rollout_uses_final_value(kernels):
    # truncated at t = 1 with final_values[1] = 4: V_next(1) = 4, and A_1 does not carry A_2.
    # A_2 = 2.5;  delta_1 = 2 + 0.5*4 - 1 = 3, A_1 = 3;  A_0 = 1 + 0.25*3 = 1.75
    out, ref = gae_single(kernels, truncations=(0, 1, 0), final_values=(100, 4, 100))
    assert_close(out, col(1.75, 3, 2.5), **EXACT)
    assert_close(ref, col(1.75, 3, 2.5).double(), **EXACT)


def test_gae_termination_wins_over_truncation(kernels):
    # both flags at t = 1: the termination decides (V_next = 0; final_values[1] ignored).
    out, ref = gae_single(kernels, terminations=(0, 1, 0), truncations=(0, 1, 0), final_values=(100, 4, 100))
    assert_close(out, col(1.25, 1, 2.5), **EXACT)
    assert_close(ref, col(1.25, 1, 2.5).double(), **EXACT)


@pytest.mark.parametrize(
    "next_value, expected",
    [
        # next_value = 2: as in test_gae_no_done
        (2.0, (1.59375, 2.375, 2.5)),
        # next_value = 6: delta_2 = 3 + 3 - 1.5 = 4.5; A_1 = 1.75 + 0.25*4.5 = 2.875;
        #                 A_0 = 1 + 0.25*2.875 = 1.71875
        (6.0, (1.71875, 2.875, 4.5)),
    ],
)
def test_gae_rollout_boundary_bootstraps_from_next_value(kernels, next_value, expected):
    out, ref = gae_single(kernels, next_value=next_value)
    assert_close(out, col(*expected), **EXACT)
    assert_close(ref, col(*expected).double(), **EXACT)


def test_gae_termination_at_last_step_ignores_next_value(kernels):
    # delta_2 = 3 - 1.5 = 1.5; A_1 = 1.75 + 0.375 = 2.125; A_0 = 1 + 0.25*2.125 = 1.53125
    for next_value in (2.0, 100.0):
        out, ref = gae_single(kernels, terminations=(0, 0, 1), next_value=next_value)
        assert_close(out, col(1.53125, 2.125, 1.5), **EXACT)
        assert_close(ref, col(1.53125, 2.125, 1.5).double(), **EXACT)


def test_gae_truncation_at_last_step_uses_final_value_not_next_value(kernels):
    # final_values[2] = 4: delta_2 = 3 + 2 - 1.5 = 3.5; A_1 = 1.75 + 0.875 = 2.625;
    # A_0 = 1 + 0.25*2.625 = 1.65625
    out, ref = gae_single(kernels, truncations=(0, 0, 1), final_values=(100, 100, 4), next_value=100.0)
    assert_close(out, col(1.65625, 2.625, 3.5), **EXACT)
    assert_close(ref, col(1.65625, 2.625, 3.5).double(), **EXACT)


def two_env_gae_inputs():
    # env 0: the no-done case above. env 1: r = [4, 0, -2], V = [1, 2, 0], terminated at t = 0,
    # truncated at t = 2 with final_values[2] = 2, next_value = 8 (unused: truncated at the end).
    rewards = torch.tensor([[1, 4], [2, 0], [3, -2]], dtype=torch.float32)
    values = torch.tensor([[0.5, 1], [1, 2], [1.5, 0]], dtype=torch.float32)
    terminations = torch.tensor([[0, 1], [0, 0], [0, 0]], dtype=torch.float32)
    truncations = torch.tensor([[0, 0], [0, 0], [0, 1]], dtype=torch.float32)
    next_value = torch.tensor([2, 8], dtype=torch.float32)
    final_values = torch.tensor([[100, 100], [100, 100], [100, 2]], dtype=torch.float32)
    return [rewards, values, terminations, truncations, next_value, final_values]


def test_gae_two_envs(kernels):
    # env 1: delta_2 = -2 + 0.5*2 - 0 = -1          A_2 = -1
    #        delta_1 = 0 + 0.5*0 - 2 = -2           A_1 = -2 + 0.25*(-1) = -2.25
    #        delta_0 = 4 + 0 - 1 = 3 (terminated)   A_0 = 3
    out = gae(kernels, *two_env_gae_inputs(), G, L)
    expected = torch.tensor([[1.59375, 3], [2.375, -2.25], [2.5, -1]])
    assert_close(out, expected, **EXACT)
    assert_close(gae_reference(*two_env_gae_inputs(), G, L), expected.double(), **EXACT)


def test_gae_env_boundary_no_leakage(kernels):
    inputs = two_env_gae_inputs()
    before = gae(kernels, *inputs, G, L)
    # change everything of env 1: env 0's advantages must not move
    for x in inputs:
        x[..., 1] = x[..., 1] * -3 + 7
    inputs[2][:, 1] = torch.tensor([0, 1, 0])
    inputs[3][:, 1] = torch.tensor([1, 0, 0])
    after = gae(kernels, *inputs, G, L)
    assert_close(after[:, 0], before[:, 0], **EXACT)
    assert not torch.equal(after[:, 1], before[:, 1])


@pytest.mark.parametrize("seed, T, N", GAE_CASES)
def test_gae_random_vs_reference(kernels, seed, T, N):
    inputs, gamma, lam = random_gae_inputs(seed, T, N)
    out = kernels.gae(**inputs, gamma=gamma, lam=lam)
    ref = gae_reference(**inputs, gamma=gamma, lam=lam)
    assert out.dtype == torch.float32 and out.shape == (T, N)
    assert_close(out.double(), ref, **TOL)


@pytest.mark.parametrize("seed, T, N", GAE_CASES[3:])
def test_gae_random_each_env_independent(kernels, seed, T, N):
    # each env's column computed alone (N = 1) equals its column in the batch, bit for bit
    inputs, gamma, lam = random_gae_inputs(seed, T, N)
    out = kernels.gae(**inputs, gamma=gamma, lam=lam)
    for env in range(N):
        alone = kernels.gae(**{k: v[..., env : env + 1].contiguous() for k, v in inputs.items()}, gamma=gamma, lam=lam)
        assert_close(alone[:, 0], out[:, env], **EXACT)


# =============================================================================================
# P3O, by hand. Unless a test says otherwise: one env, T = 4, H = 3,
#   rewards r = [1, 2, 3, 4], mu_t[k] = 0.25 for every (t, k), mu_next = [10, 20, 30],
#   weight = [1, 1, 2] (sum 4, max 2 over a full row).
# Row t predicts steps j = t, t+1, t+2; j >= 4 is past the rollout's end and bootstraps
# from mu_next[j - 4], not known.
# =============================================================================================
R4 = (1, 2, 3, 4)
WEIGHT = (1.0, 1.0, 2.0)


def p3o_single(kernels, normalize, terminations=(0, 0, 0, 0), truncations=(0, 0, 0, 0), weight=WEIGHT):
    """Kernel and reference on the standard one-env case; returns both, targets and known as [T, H]."""
    inputs = dict(
        rewards=col(*R4),
        terminations=col(*terminations),
        truncations=col(*truncations),
        mu=torch.full((4, 3, 1), 0.25),
        mu_next=col(10, 20, 30),
        weight=torch.tensor(weight, dtype=torch.float32),
    )
    adv, targets, known = p3o(kernels, normalize=normalize, **inputs)
    ref = p3o_reference(**inputs, normalize=normalize)
    return (adv[:, 0], targets[..., 0], known[..., 0]), tuple(x[..., 0] for x in ref)


def check_p3o_single(kernels, normalize, expected_adv, expected_targets, expected_known, **case):
    kernel_out, ref_out = p3o_single(kernels, normalize, **case)
    expected = (
        torch.tensor(expected_adv, dtype=torch.float32),
        torch.tensor(expected_targets, dtype=torch.float32),
        torch.tensor(expected_known, dtype=torch.float32),
    )
    for got, want in zip(kernel_out, expected):
        assert_close(got, want, **EXACT)
    for got, want in zip(ref_out, expected):
        assert_close(got, want.double(), **EXACT)


# no done: targets and known are the same for both normalisations
NO_DONE_TARGETS = [[1, 2, 3], [2, 3, 4], [3, 4, 10], [4, 10, 20]]
NO_DONE_KNOWN = [[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0]]


@pytest.mark.parametrize(
    "normalize, expected_adv",
    [
        # row 0: errors y - mu = [0.75, 1.75, 2.75]; weighted 0.75 + 1.75 + 2*2.75 = 8
        # row 1: [1.75, 2.75, 3.75]:                 1.75 + 2.75 + 7.5 = 12
        # row 2: y = [3, 4, mu_next[0] = 10]: [2.75, 3.75, 9.75] -> 2.75 + 3.75 + 19.5 = 26
        # row 3: y = [4, mu_next[0] = 10, mu_next[1] = 20]: [3.75, 9.75, 19.75] -> 53
        ("sum", [8 / 4, 12 / 4, 26 / 4, 53 / 4]),
        ("max", [8 / 2, 12 / 2, 26 / 2, 53 / 2]),
    ],
)
def test_p3o_no_done_row_crosses_rollout_end(kernels, normalize, expected_adv):
    check_p3o_single(kernels, normalize, expected_adv, NO_DONE_TARGETS, NO_DONE_KNOWN)


@pytest.mark.parametrize(
    "normalize, expected_adv",
    [
        # terminated at step 1: the rest of rows 0 and 1 are known zeros, still weighted.
        # row 0: y = [1, 2, 0]: errors [0.75, 1.75, -0.25] -> 0.75 + 1.75 - 0.5 = 2
        # row 1: y = [2, 0, 0]: errors [1.75, -0.25, -0.25] -> 1.75 - 0.25 - 0.5 = 1
        # rows 2, 3 start after the termination: as without done (26, 53)
        ("sum", [2 / 4, 1 / 4, 26 / 4, 53 / 4]),
        ("max", [2 / 2, 1 / 2, 26 / 2, 53 / 2]),
    ],
)
def test_p3o_termination_mid_horizon(kernels, normalize, expected_adv):
    targets = [[1, 2, 0], [2, 0, 0], [3, 4, 10], [4, 10, 20]]
    known = [[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0]]
    check_p3o_single(kernels, normalize, expected_adv, targets, known, terminations=(0, 1, 0, 0))
    # both flags on the same step: the termination wins
    check_p3o_single(kernels, normalize, expected_adv, targets, known, terminations=(0, 1, 0, 0), truncations=(0, 1, 0, 0))


@pytest.mark.parametrize(
    "normalize, expected_adv",
    [
        # terminated at the last step 3: rows crossing the end get known zeros, not mu_next.
        # row 2: y = [3, 4, 0]: errors [2.75, 3.75, -0.25] -> 2.75 + 3.75 - 0.5 = 6
        # row 3: y = [4, 0, 0]: errors [3.75, -0.25, -0.25] -> 3.75 - 0.25 - 0.5 = 3
        ("sum", [8 / 4, 12 / 4, 6 / 4, 3 / 4]),
        ("max", [8 / 2, 12 / 2, 6 / 2, 3 / 2]),
    ],
)
def test_p3o_termination_at_last_step_known_zeros_past_the_end(kernels, normalize, expected_adv):
    targets = [[1, 2, 3], [2, 3, 4], [3, 4, 0], [4, 0, 0]]
    known = [[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1]]
    check_p3o_single(kernels, normalize, expected_adv, targets, known, terminations=(0, 0, 0, 1))


@pytest.mark.parametrize(
    "normalize, expected_adv",
    [
        # truncated at step 1: the truncated step's reward counts, then the row stops.
        # row 0: y = [1, 2, -]: weighted 0.75 + 1.75 = 2.5 over weight [1, 1]: sum 2, max 1
        # row 1: y = [2, -, -]: weighted 1.75 over weight [1]: sum 1, max 1
        # rows 2, 3: as without done
        ("sum", [2.5 / 2, 1.75, 26 / 4, 53 / 4]),
        ("max", [2.5 / 1, 1.75, 26 / 2, 53 / 2]),
    ],
)
def test_p3o_truncation_stops_row(kernels, normalize, expected_adv):
    targets = [[1, 2, 0], [2, 0, 0], [3, 4, 10], [4, 10, 20]]
    known = [[1, 1, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0]]
    check_p3o_single(kernels, normalize, expected_adv, targets, known, truncations=(0, 1, 0, 0))


@pytest.mark.parametrize(
    "normalize, expected_adv",
    [
        # truncated at the last step 3: no bootstrap from mu_next after it.
        # row 2: y = [3, 4, -]: 2.75 + 3.75 = 6.5 over weight [1, 1]: sum 2, max 1
        # row 3: y = [4, -, -]: 3.75 over weight [1]
        ("sum", [8 / 4, 12 / 4, 6.5 / 2, 3.75]),
        ("max", [8 / 2, 12 / 2, 6.5 / 1, 3.75]),
    ],
)
def test_p3o_truncation_at_last_step_no_bootstrap(kernels, normalize, expected_adv):
    targets = [[1, 2, 3], [2, 3, 4], [3, 4, 0], [4, 0, 0]]
    known = [[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0]]
    check_p3o_single(kernels, normalize, expected_adv, targets, known, truncations=(0, 0, 0, 1))


@pytest.mark.parametrize(
    "normalize, expected_adv",
    [
        # truncated at 1, terminated at 2.
        # rows 0, 1: as in test_p3o_truncation_stops_row (the termination comes after the stop)
        # row 2: y = [3, 0, 0] known: errors [2.75, -0.25, -0.25] -> 2.75 - 0.25 - 0.5 = 2
        # row 3: as without done
        ("sum", [2.5 / 2, 1.75, 2 / 4, 53 / 4]),
        ("max", [2.5 / 1, 1.75, 2 / 2, 53 / 2]),
    ],
)
def test_p3o_truncation_then_termination(kernels, normalize, expected_adv):
    targets = [[1, 2, 0], [2, 0, 0], [3, 0, 0], [4, 10, 20]]
    known = [[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]]
    check_p3o_single(kernels, normalize, expected_adv, targets, known, terminations=(0, 0, 1, 0), truncations=(0, 1, 0, 0))


@pytest.mark.parametrize("normalize", ["sum", "max"])
def test_p3o_weight_all_zero_gives_zero_advantage(kernels, normalize):
    # norm = 0 in every row: A = 0 (not NaN); targets and known are unchanged.
    targets = [[1, 2, 0], [2, 0, 0], [3, 4, 10], [4, 10, 20]]
    known = [[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0]]
    check_p3o_single(kernels, normalize, [0, 0, 0, 0], targets, known, terminations=(0, 1, 0, 0), weight=(0, 0, 0))


@pytest.mark.parametrize("normalize", ["sum", "max"])
def test_p3o_zero_weight_on_usable_part_only(kernels, normalize):
    # weight = [0, 1, 1], truncated at step 1: row 1 keeps only k = 0, whose weight is 0 -> A = 0.
    # row 0: usable k = 0, 1: weighted 0*0.75 + 1*1.75 = 1.75, norm 1 (sum and max)
    # row 2: y = [3, 4, -] (truncated at 3): 3.75 over norm 1
    # row 3: y = [4, -, -]: weight 0 -> A = 0
    targets = [[1, 2, 0], [2, 0, 0], [3, 4, 0], [4, 0, 0]]
    known = [[1, 1, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0]]
    check_p3o_single(kernels, normalize, [1.75, 0, 3.75, 0], targets, known,
                     truncations=(0, 1, 0, 1), weight=(0, 1, 1))


@pytest.mark.parametrize("normalize", ["sum", "max"])
def test_p3o_horizon_one(kernels, normalize):
    # H = 1: A_t = y_t - mu_t[0] whatever the flags (they only affect later k), targets = r.
    inputs = dict(
        rewards=col(1, 2, 3),
        terminations=col(0, 1, 0),
        truncations=col(0, 0, 1),
        mu=torch.tensor([0.25, 0.5, 0.75]).reshape(3, 1, 1),
        mu_next=torch.tensor([[10.0]]),
        weight=torch.tensor([4.0]),
    )
    adv, targets, known = p3o(kernels, normalize=normalize, **inputs)
    assert_close(adv, col(0.75, 1.5, 2.25), **EXACT)
    assert_close(targets, col(1, 2, 3).reshape(3, 1, 1), **EXACT)
    assert_close(known, torch.ones(3, 1, 1), **EXACT)
    ref = p3o_reference(**inputs, normalize=normalize)
    for got, want in zip((adv, targets, known), ref):
        assert_close(got.double(), want, **EXACT)


def horizon_longer_than_rollout(terminations=(0, 0)):
    # T = 2, H = 5, one env: r = [1, 2], mu = 0, mu_next = [10, 20, 30, 40, 50],
    # weight = [1, 1, 1, 1, 4] (sum 8, max 4)
    return dict(
        rewards=col(1, 2),
        terminations=col(*terminations),
        truncations=col(0, 0),
        mu=torch.zeros(2, 5, 1),
        mu_next=col(10, 20, 30, 40, 50),
        weight=torch.tensor([1.0, 1, 1, 1, 4]),
    )


@pytest.mark.parametrize(
    "normalize, expected_adv",
    [
        # row 0: y = [1, 2, mu_next[0], mu_next[1], mu_next[2]] = [1, 2, 10, 20, 30]
        #        weighted 1 + 2 + 10 + 20 + 4*30 = 153
        # row 1: y = [2, mu_next[0 .. 3]] = [2, 10, 20, 30, 40] (mu_next indexed by j - T, not k)
        #        weighted 2 + 10 + 20 + 30 + 4*40 = 222
        ("sum", [153 / 8, 222 / 8]),
        ("max", [153 / 4, 222 / 4]),
    ],
)
def test_p3o_horizon_longer_than_rollout(kernels, normalize, expected_adv):
    inputs = horizon_longer_than_rollout()
    adv, targets, known = p3o(kernels, normalize=normalize, **inputs)
    expected_targets = torch.tensor([[1.0, 2, 10, 20, 30], [2, 10, 20, 30, 40]]).unsqueeze(-1)
    expected_known = torch.tensor([[1.0, 1, 0, 0, 0], [1, 0, 0, 0, 0]]).unsqueeze(-1)
    assert_close(adv, col(*expected_adv), **EXACT)
    assert_close(targets, expected_targets, **EXACT)
    assert_close(known, expected_known, **EXACT)
    ref = p3o_reference(**inputs, normalize=normalize)
    for got, want in zip((adv, targets, known), ref):
        assert_close(got.double(), want, **EXACT)


@pytest.mark.parametrize("normalize, expected_adv", [("sum", [1 / 8, 222 / 8]), ("max", [1 / 4, 222 / 4])])
def test_p3o_horizon_longer_than_rollout_terminated(kernels, normalize, expected_adv):
    # terminated at step 0: row 0 is y = [1, 0, 0, 0, 0], all known (past the end too): weighted 1.
    # Row 1 starts after the termination: as without it (222).
    inputs = horizon_longer_than_rollout(terminations=(1, 0))
    adv, targets, known = p3o(kernels, normalize=normalize, **inputs)
    assert_close(adv, col(*expected_adv), **EXACT)
    assert_close(targets[0, :, 0], torch.tensor([1.0, 0, 0, 0, 0]), **EXACT)
    assert_close(known[0, :, 0], torch.ones(5), **EXACT)
    ref = p3o_reference(**inputs, normalize=normalize)
    for got, want in zip((adv, targets, known), ref):
        assert_close(got.double(), want, **EXACT)


def per_state_inputs():
    # T = 2, H = 2, N = 2: r = [1, 2] in both envs, mu = 0, mu_next = [8, 16] in both envs.
    # weight[t, k, env]: env 0 rows t=0: [2, 2], t=1: [1, 0.5]; env 1 rows [0, 4], [4, 0].
    weight = torch.zeros(2, 2, 2)
    weight[0, :, 0] = torch.tensor([2.0, 2.0])
    weight[1, :, 0] = torch.tensor([1.0, 0.5])
    weight[0, :, 1] = torch.tensor([0.0, 4.0])
    weight[1, :, 1] = torch.tensor([4.0, 0.0])
    return dict(
        rewards=torch.tensor([[1.0, 1], [2, 2]]),
        terminations=torch.zeros(2, 2),
        truncations=torch.zeros(2, 2),
        mu=torch.zeros(2, 2, 2),
        mu_next=torch.tensor([[8.0, 8], [16, 16]]),
        weight=weight,
    )


@pytest.mark.parametrize(
    "normalize, expected_adv",
    [
        # y: row 0 = [1, 2], row 1 = [2, mu_next[0] = 8], both envs.
        # env 0: row 0: 2*1 + 2*2 = 6 (sum 4, max 2);  row 1: 1*2 + 0.5*8 = 6 (sum 1.5, max 1)
        # env 1: row 0: 0*1 + 4*2 = 8 (sum 4, max 4);  row 1: 4*2 + 0*8 = 8 (sum 4, max 4)
        ("sum", [[6 / 4, 8 / 4], [6 / 1.5, 8 / 4]]),
        ("max", [[6 / 2, 8 / 4], [6 / 1, 8 / 4]]),
        ("none", [[6.0, 8.0], [6.0, 8.0]]),  # the weighted sums themselves (--weight-rule action)
    ],
)
def test_p3o_per_state_weight(kernels, normalize, expected_adv):
    inputs = per_state_inputs()
    adv, targets, known = p3o(kernels, normalize=normalize, **inputs)
    assert_close(adv, torch.tensor(expected_adv), **EXACT)
    assert_close(targets, torch.tensor([[[1.0, 1], [2, 2]], [[2, 2], [8, 8]]]), **EXACT)
    assert_close(known, torch.tensor([[[1.0, 1], [1, 1]], [[1, 1], [0, 0]]]), **EXACT)
    ref = p3o_reference(**inputs, normalize=normalize)
    for got, want in zip((adv, targets, known), ref):
        assert_close(got.double(), want, **EXACT)


def two_env_p3o_inputs():
    # env 0: the standard case terminated at step 1; env 1: the standard case truncated at 1.
    return dict(
        rewards=torch.tensor(R4, dtype=torch.float32).reshape(4, 1).repeat(1, 2),
        terminations=torch.tensor([[0.0, 0], [1, 0], [0, 0], [0, 0]]),
        truncations=torch.tensor([[0.0, 0], [0, 1], [0, 0], [0, 0]]),
        mu=torch.full((4, 3, 2), 0.25),
        mu_next=torch.tensor([[10.0, 10], [20, 20], [30, 30]]),
        weight=torch.tensor(WEIGHT),
    )


def test_p3o_two_envs(kernels):
    # each env gets its own single-env hand result (see the termination and truncation tests)
    for normalize, norm_full, norm_trunc_row0 in (("sum", 4, 2), ("max", 2, 1)):
        adv, targets, known = p3o(kernels, normalize=normalize, **two_env_p3o_inputs())
        expected = torch.tensor([
            [2 / norm_full, 2.5 / norm_trunc_row0],
            [1 / norm_full, 1.75],
            [26 / norm_full, 26 / norm_full],
            [53 / norm_full, 53 / norm_full],
        ])
        assert_close(adv, expected, **EXACT)
        assert_close(targets[..., 0], torch.tensor([[1.0, 2, 0], [2, 0, 0], [3, 4, 10], [4, 10, 20]]), **EXACT)
        assert_close(targets[..., 1], torch.tensor([[1.0, 2, 0], [2, 0, 0], [3, 4, 10], [4, 10, 20]]), **EXACT)
        assert_close(known[..., 0], torch.tensor([[1.0, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0]]), **EXACT)
        assert_close(known[..., 1], torch.tensor([[1.0, 1, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0]]), **EXACT)


@pytest.mark.parametrize("normalize", ["sum", "max"])
@pytest.mark.parametrize("per_state", [False, True])
def test_p3o_no_leakage_across_envs(kernels, normalize, per_state):
    # change every input of env 1: envs 0 and 2 must not move, bit for bit
    inputs = random_p3o_inputs(11, 12, 20, 3, per_state)  # H > T: rows cross the rollout's end
    before = p3o(kernels, normalize=normalize, **inputs)
    changed = {k: v.clone() for k, v in inputs.items()}
    changed["rewards"][:, 1] += 5
    changed["terminations"][:, 1] = 1 - changed["terminations"][:, 1]
    changed["truncations"][:, 1] = 0
    changed["truncations"][3, 1] = 1
    changed["mu"][..., 1] *= -2
    changed["mu_next"][:, 1] += 100
    if per_state:
        changed["weight"][..., 1] = 4 - changed["weight"][..., 1]  # still in [0, 4]
    after = p3o(kernels, normalize=normalize, **changed)
    for b, a in zip(before, after):
        assert_close(a[..., 0], b[..., 0], **EXACT)
        assert_close(a[..., 2], b[..., 2], **EXACT)
        assert not torch.equal(a[..., 1], b[..., 1])


@pytest.mark.parametrize("lam", [1.0, 0.0, 0.5, 0.95])  # below 1: the lambda-surprise's chain pass
@pytest.mark.parametrize("normalize", ["sum", "max", "none"])
@pytest.mark.parametrize("per_state", [False, True])
@pytest.mark.parametrize("seed, T, H, N", P3O_CASES)
def test_p3o_random_vs_reference(kernels, seed, T, H, N, per_state, normalize, lam):
    inputs = random_p3o_inputs(seed, T, H, N, per_state)
    adv, targets, known = p3o(kernels, normalize=normalize, lam=lam, **inputs)
    ref_adv, ref_targets, ref_known = p3o_reference(**inputs, normalize=normalize, lam=lam)
    assert adv.shape == (T, N) and targets.shape == (T, H, N) and known.shape == (T, H, N)
    assert adv.dtype == targets.dtype == known.dtype == torch.float32
    assert_close(adv.double(), ref_adv, **TOL)
    assert_close(targets.double(), ref_targets, **EXACT)  # targets are copies of inputs
    assert_close(known.double(), ref_known, **EXACT)


@pytest.mark.parametrize("lam", [1.0, 0.9])
@pytest.mark.parametrize("per_state", [False, True])
def test_p3o_random_each_env_independent(kernels, per_state, lam):
    # each env computed alone (N = 1) equals its slice of the batch, bit for bit
    inputs = random_p3o_inputs(21, 10, 14, 5, per_state)
    out = p3o(kernels, normalize="sum", lam=lam, **inputs)
    for env in range(5):
        alone_inputs = {
            k: (v if (k == "weight" and not per_state) else v[..., env : env + 1].contiguous())
            for k, v in inputs.items()
        }
        alone = p3o(kernels, normalize="sum", lam=lam, **alone_inputs)
        for a, b in zip(alone, out):
            assert_close(a[..., 0], b[..., env], **EXACT)


def test_p3o_sum_and_max_differ_only_by_row_scale(kernels):
    # same row, two norms: A_sum * sum(weight_usable) == A_max * max(weight_usable)
    inputs = random_p3o_inputs(5, 6, 4, 3, per_state=False)
    inputs["terminations"].zero_()
    inputs["truncations"].zero_()
    inputs["weight"] = torch.tensor([1.0, 0.5, 0.25, 2.0])
    a_sum, t_sum, k_sum = p3o(kernels, normalize="sum", **inputs)
    a_max, t_max, k_max = p3o(kernels, normalize="max", **inputs)
    assert_close(a_sum * 3.75, a_max * 2.0, **TOL)
    assert torch.equal(t_sum, t_max) and torch.equal(k_sum, k_max)


# =============================================================================================
# P3O with the lambda-surprise (p3o.py --surprise-lambda), by hand. One env, T = 3, H = 2,
# weight [1, 1] normalized by the sum, lambda = 0.5:
#   rewards r = [1, 2, 4]; mu_0 = [0.5, 1], mu_1 = [1, 0.5], mu_2 = [2, 1]; mu_next = [3, 0.25].
#   e_t[0] = r_t - mu_t[0]:  e_0[0] = 0.5, e_1[0] = 1, e_2[0] = 2
#   e_2[1] = mu_next[0] - mu_2[1] = 2                                       (rollout's last step)
#   e_1[1] = mu_2[0] - mu_1[1] + 0.5 e_2[0] = 1.5 + 1 = 2.5    (lambda = 1: 4 - 0.5 = 3.5 = y - mu)
#   e_0[1] = mu_1[0] - mu_0[1] + 0.5 e_1[0] = 0 + 0.5 = 0.5
#   A = [(0.5 + 0.5) / 2, (1 + 2.5) / 2, (2 + 2) / 2] = [0.5, 1.75, 2]
# =============================================================================================
def lambda_single(kernels, lam, terminations=(0, 0, 0), truncations=(0, 0, 0)):
    mu = torch.tensor([[0.5, 1.0], [1.0, 0.5], [2.0, 1.0]]).reshape(3, 2, 1)
    return kernels.p3o_advantage(col(1, 2, 4), col(*terminations), col(*truncations), mu,
                                 torch.tensor([[3.0], [0.25]]), torch.tensor([1.0, 1.0]), False, lam=lam)


@pytest.mark.parametrize(
    "lam, terminations, truncations, expected_adv",
    [
        (0.5, (0, 0, 0), (0, 0, 0), [0.5, 1.75, 2.0]),
        (0.0, (0, 0, 0), (0, 0, 0), [0.25, 1.25, 2.0]),  # one-step changes: e_0[1] = 0, e_1[1] = 1.5
        (1.0, (0, 0, 0), (0, 0, 0), [0.75, 2.25, 2.0]),  # the observed surprise: e_0[1] = 1, e_1[1] = 3.5
        # termination at t = 1: e_1[1] = 0 - mu_1[1] = -0.5 (known zero); row 0's j = 1 still sees r_1
        (0.5, (0, 1, 0), (0, 0, 0), [0.5, 0.25, 2.0]),
        # truncation at t = 1: row 1 stops after k = 0 (A_1 = e_1[0] / 1); row 0 unchanged
        (0.5, (0, 0, 0), (0, 1, 0), [0.5, 1.0, 2.0]),
        # termination at t = 0: e_0[1] = -mu_0[1] = -1, nothing carried from row 1 (next episode)
        (0.5, (1, 0, 0), (0, 0, 0), [-0.25, 1.75, 2.0]),
        # termination at the last step: e_2[1] = 0 - mu_2[1] = -1 instead of the bootstrap
        (0.5, (0, 0, 1), (0, 0, 0), [0.5, 1.75, 0.5]),
    ],
)
def test_p3o_lambda_surprise_by_hand(kernels, lam, terminations, truncations, expected_adv):
    adv, _, _ = lambda_single(kernels, lam, terminations, truncations)
    assert_close(adv, col(*expected_adv), **EXACT)
    ref_adv, _, _ = p3o_reference(col(1, 2, 4), col(*terminations), col(*truncations),
                                  torch.tensor([[0.5, 1.0], [1.0, 0.5], [2.0, 1.0]]).reshape(3, 2, 1),
                                  torch.tensor([[3.0], [0.25]]), torch.tensor([1.0, 1.0]), "sum", lam=lam)
    assert_close(ref_adv, col(*expected_adv).double(), **EXACT)


# A known zero keeps its whole surprise. The same rollout with H = 3 and a termination at t = 1:
#   mu_0 = [0.5, 1, 2], mu_1 = [1, 0.5, 1], mu_2 = [2, 1, 0.5]; mu_next = [3, 0.25, 1]; lambda = 0.5.
#   e_0 = [0.5, 0.5, 0 - 2]: y_2 is a known zero (the chain would give mu_1[1] - mu_0[2] + 0.5 (0 - mu_1[1]) = -1.75)
#   e_1 = [2 - 1, 0 - 0.5, 0 - 1];  e_2 = [4 - 2, 3 - 1, 0.25 - 0.5] (the next episode, bootstrapped)
#   A = [(0.5 + 0.5 - 2) / 3, (1 - 0.5 - 1) / 3, (2 + 2 - 0.25) / 3] = [-1/3, -1/6, 1.25]
def test_p3o_lambda_surprise_keeps_known_zeros_whole(kernels):
    mu = torch.tensor([[0.5, 1.0, 2.0], [1.0, 0.5, 1.0], [2.0, 1.0, 0.5]]).reshape(3, 3, 1)
    inputs = dict(rewards=col(1, 2, 4), terminations=col(0, 1, 0), truncations=col(0, 0, 0), mu=mu,
                  mu_next=torch.tensor([[3.0], [0.25], [1.0]]), weight=torch.ones(3))
    adv, _, _ = kernels.p3o_advantage(**inputs, normalize_max=False, lam=0.5)
    assert_close(adv, col(-1 / 3, -1 / 6, 1.25), **EXACT)
    ref_adv, _, _ = p3o_reference(**inputs, normalize="sum", lam=0.5)
    assert_close(ref_adv, col(-1 / 3, -1 / 6, 1.25).double(), **TOL)


@pytest.mark.parametrize("seed, T, H, N", P3O_CASES)
def test_surprise_lambda_reference_at_one_is_the_observed_surprise(seed, T, H, N):
    # the forward sum telescopes: at lambda = 1 it is y - mu on every entry a row uses
    inputs = random_p3o_inputs(seed, T, H, N, per_state=False)
    e = surprise_lambda_reference(**{k: v for k, v in inputs.items() if k != "weight"}, lam=1.0)
    targets, known, _ = p3o_targets_reference(inputs["rewards"], inputs["terminations"],
                                              inputs["truncations"], inputs["mu_next"])
    usable = (known > 0) | _bootstrapped(inputs, T, H, N)  # the rest: after a truncation in the row
    assert_close(e[usable], (targets - inputs["mu"].double())[usable], **TOL)
    assert (e[~usable] == 0).all()


def _bootstrapped(inputs, T, H, N):
    """[T, H, N]: the entries whose target is the bootstrap mu_next (j >= T, the row alive to T)."""
    mask = torch.zeros(T, H, N, dtype=torch.bool)
    ends = (inputs["terminations"] + inputs["truncations"]) > 0
    for env in range(N):
        for t in range(T):
            if not ends[t:, env].any():
                mask[t, T - t:, env] = True
    return mask


def test_p3o_lambda_near_one_approaches_the_default_path(kernels):
    # lambda < 1 runs the chain pass; lambda = 1 skips it and uses y - mu in the row directly
    inputs = random_p3o_inputs(8, 64, 33, 3, per_state=True)
    default, _, _ = kernels.p3o_advantage(**inputs, normalize_max=False)
    chained, _, _ = kernels.p3o_advantage(**inputs, normalize_max=False, lam=1 - 1e-7)
    assert_close(chained, default, rtol=1e-4, atol=1e-4)
    assert not torch.equal(kernels.p3o_advantage(**inputs, normalize_max=False, lam=0.5)[0], default)


@pytest.mark.parametrize("lam", [-0.1, 1.5, float("nan")])
def test_p3o_rejects_lambda_outside_0_1(kernels, lam):
    inputs = random_p3o_inputs(2, 8, 3, 2, per_state=False)
    with pytest.raises(RuntimeError, match=r"lam \(the surprise's lambda\) must be in \[0, 1\]"):
        kernels.p3o_advantage(**inputs, normalize_max=False, lam=lam)


# =============================================================================================
# p3o_targets: the targets and known mask of p3o_advantage, plus the live mask (rewards of the
# rollout inside the row's episode), which p3o.py uses to measure sigma[k].
# =============================================================================================
@pytest.mark.parametrize(
    "terminations, truncations, expected_live",
    [
        # standard case (T = 4, H = 3): j = t + k >= 4 is past the rollout's end, never live
        ((0, 0, 0, 0), (0, 0, 0, 0), [[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0]]),
        # terminated at step 1: its own reward is live, the zeros after it are not
        ((0, 1, 0, 0), (0, 0, 0, 0), [[1, 1, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0]]),
        # truncated at step 1: the same live rewards (the rest of the row is unknown)
        ((0, 0, 0, 0), (0, 1, 0, 0), [[1, 1, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0]]),
        # terminated at the last step: rows crossing the end have known zeros there, not live
        ((0, 0, 0, 1), (0, 0, 0, 0), [[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0]]),
    ],
)
def test_p3o_targets_live_by_hand(kernels, terminations, truncations, expected_live):
    inputs = dict(rewards=col(*R4), terminations=col(*terminations), truncations=col(*truncations), mu_next=col(10, 20, 30))
    targets, known, live = kernels.p3o_targets(**inputs)
    assert_close(live[..., 0], torch.tensor(expected_live, dtype=torch.float32), **EXACT)
    _, adv_targets, adv_known = p3o(kernels, normalize="sum", mu=torch.full((4, 3, 1), 0.25), weight=torch.tensor(WEIGHT), **inputs)
    assert torch.equal(targets, adv_targets) and torch.equal(known, adv_known)
    for got, want in zip((targets, known, live), p3o_targets_reference(**inputs)):
        assert_close(got.double(), want, **EXACT)


@pytest.mark.parametrize("seed, T, H, N", P3O_CASES)
def test_p3o_targets_random_vs_reference(kernels, seed, T, H, N):
    inputs = random_p3o_inputs(seed, T, H, N, per_state=False)
    del inputs["mu"], inputs["weight"]
    out = kernels.p3o_targets(**inputs)
    for got, want in zip(out, p3o_targets_reference(**inputs)):
        assert got.shape == (T, H, N) and got.dtype == torch.float32
        assert_close(got.double(), want, **EXACT)


@pytest.mark.parametrize(
    "name, bad",
    [("rewards", torch.zeros(3)), ("terminations", torch.zeros(3, 3)), ("truncations", torch.zeros(4, 2)), ("mu_next", torch.zeros(4))],
)
def test_p3o_targets_rejects_wrong_shape(kernels, name, bad):
    inputs = dict(rewards=torch.zeros(3, 2), terminations=torch.zeros(3, 2), truncations=torch.zeros(3, 2), mu_next=torch.zeros(4, 2))
    inputs[name] = bad
    with pytest.raises(RuntimeError, match=rf"\b{name} must"):
        kernels.p3o_targets(**inputs)


# =============================================================================================
# Input validation: a clear RuntimeError naming the argument
# =============================================================================================
def good_gae_inputs(T=3, N=2):
    return dict(
        rewards=torch.zeros(T, N), values=torch.zeros(T, N), terminations=torch.zeros(T, N),
        truncations=torch.zeros(T, N), next_value=torch.zeros(N), final_values=torch.zeros(T, N),
    )


def good_p3o_inputs(T=3, H=4, N=2):
    return dict(
        rewards=torch.zeros(T, N), terminations=torch.zeros(T, N), truncations=torch.zeros(T, N),
        mu=torch.zeros(T, H, N), mu_next=torch.zeros(H, N), weight=torch.zeros(H),
    )


def test_good_inputs_accepted(kernels):
    kernels.gae(**good_gae_inputs(), gamma=0.99, lam=0.95)
    p3o(kernels, normalize="sum", **good_p3o_inputs())
    inputs = good_p3o_inputs()
    inputs["weight"] = torch.zeros(3, 4, 2)
    p3o(kernels, normalize="max", **inputs)


@pytest.mark.parametrize("name", list(good_gae_inputs()))
def test_gae_rejects_wrong_dtype(kernels, name):
    inputs = good_gae_inputs()
    inputs[name] = inputs[name].double()
    with pytest.raises(RuntimeError, match=rf"\b{name} must be float32"):
        kernels.gae(**inputs, gamma=0.99, lam=0.95)


@pytest.mark.parametrize(
    "name, bad",
    [
        ("rewards", torch.zeros(3)),
        ("rewards", torch.zeros(3, 2, 1)),
        ("values", torch.zeros(3, 3)),
        ("values", torch.zeros(2, 2)),
        ("terminations", torch.zeros(3, 1)),
        ("truncations", torch.zeros(4, 2)),
        ("next_value", torch.zeros(3)),
        ("next_value", torch.zeros(1, 2)),
        ("final_values", torch.zeros(2, 3)),
    ],
)
def test_gae_rejects_wrong_shape(kernels, name, bad):
    inputs = good_gae_inputs()
    inputs[name] = bad
    with pytest.raises(RuntimeError, match=rf"\b{name} must"):
        kernels.gae(**inputs, gamma=0.99, lam=0.95)


def test_gae_rejects_non_contiguous(kernels):
    inputs = good_gae_inputs()
    inputs["values"] = torch.zeros(2, 3).t()
    with pytest.raises(RuntimeError, match=r"\bvalues must be contiguous"):
        kernels.gae(**inputs, gamma=0.99, lam=0.95)


@pytest.mark.parametrize("name", list(good_p3o_inputs()))
def test_p3o_rejects_wrong_dtype(kernels, name):
    inputs = good_p3o_inputs()
    inputs[name] = inputs[name].double()
    with pytest.raises(RuntimeError, match=rf"\b{name} must be float32"):
        p3o(kernels, normalize="sum", **inputs)


@pytest.mark.parametrize(
    "name, bad",
    [
        ("rewards", torch.zeros(3)),
        ("rewards", torch.zeros(2, 3)),
        ("terminations", torch.zeros(3, 3)),
        ("truncations", torch.zeros(4, 2)),
        ("mu", torch.zeros(3, 4)),
        ("mu", torch.zeros(3, 4, 2, 1)),
        ("mu_next", torch.zeros(3, 2)),
        ("mu_next", torch.zeros(4)),
        ("weight", torch.zeros(5)),
        ("weight", torch.zeros(3, 4)),
        ("weight", torch.zeros(3, 4, 3)),
        ("weight", torch.zeros(4, 4, 2)),
    ],
)
def test_p3o_rejects_wrong_shape(kernels, name, bad):
    inputs = good_p3o_inputs()
    inputs[name] = bad
    with pytest.raises(RuntimeError, match=rf"\b{name} must"):
        p3o(kernels, normalize="sum", **inputs)


def test_p3o_rejects_non_contiguous(kernels):
    inputs = good_p3o_inputs()
    inputs["mu"] = torch.zeros(2, 4, 3).transpose(0, 2)  # shape (3, 4, 2), not contiguous
    with pytest.raises(RuntimeError, match=r"\bmu must be contiguous"):
        p3o(kernels, normalize="sum", **inputs)


@pytest.mark.parametrize("T, H, N", [(3, 0, 2), (0, 4, 2), (3, 4, 0)])
def test_p3o_rejects_empty_sizes(kernels, T, H, N):
    # H = 0 would leave every advantage unwritten (uninitialised memory); T or N = 0 leaves nothing to do
    inputs = good_p3o_inputs(T, H, N)
    with pytest.raises(RuntimeError, match=r"must each be at least 1"):
        p3o(kernels, normalize="sum", **inputs)
    del inputs["mu"], inputs["weight"]
    with pytest.raises(RuntimeError, match=r"must each be at least 1"):
        kernels.p3o_targets(**inputs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
@pytest.mark.parametrize("per_state", [False, True])
@pytest.mark.parametrize("normalize", ["sum", "max"])
def test_p3o_rejects_non_finite_or_negative_weight(kernels, bad, per_state, normalize):
    # a NaN weight made every advantage of its rows 0 (sum) or NaN (max); now it is an error
    inputs = good_p3o_inputs()
    if per_state:
        inputs["weight"] = torch.ones(3, 4, 2)
        inputs["weight"][1, 2, 0] = bad
    else:
        inputs["weight"] = torch.tensor([1.0, bad, 1.0, 1.0])
    with pytest.raises(RuntimeError, match=r"\bweight must be finite and >= 0"):
        p3o(kernels, normalize=normalize, **inputs)
