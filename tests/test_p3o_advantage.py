"""The weight functions p3o.py runs (imported from it), against hand-worked numbers and slow loops.

chance_level, rollout_sigma2 and precision_weight (or cumulative_weight, or action_weight) decide which
future steps P3O's advantage credits;
the kernel that applies the weights is tested in test_kernels.py.
"""

import math

import pytest
import torch
from torch.testing import assert_close

from p3o import action_weight, chance_level, complete_rows, cumulative_weight, precision_weight, rollout_sigma2
from p3o_kernel_loader import load_kernels
from reference import p3o_targets_reference

EXACT = dict(rtol=0.0, atol=0.0)


@pytest.fixture(scope="module")
def kernels():
    return load_kernels(torch.device("cpu"))


# =============================================================================================
# chance_level: sigma_r^2, the population variance of the batch's one-step rewards
# =============================================================================================
def test_chance_level_is_the_population_variance():
    rewards = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # mean 0.5, every squared deviation 0.25
    assert chance_level(rewards).item() == 0.25  # the unbiased variance would be 1/3
    assert chance_level(torch.tensor([[3.0]])).item() == 0.0  # one reward: no spread, not NaN


def test_critic_at_chance_gets_zero_weight(kernels):
    # mu = the batch's mean reward everywhere: sigma[0]^2 equals the chance level, so with c = 1
    # the weight is exactly 0 (with the unbiased variance it was a small positive number).
    rewards = torch.tensor([[0.0, 2.0], [1.0, 1.0], [0.0, 4.0], [2.0, 2.0]])  # mean 1.5
    zeros = torch.zeros(4, 2)
    mus = torch.full((4, 1, 2), 1.5)
    sigma2 = rollout_sigma2(kernels, rewards, zeros, zeros, mus, torch.zeros(1, 2))
    assert sigma2.item() == chance_level(rewards).item() == 1.5
    assert precision_weight(sigma2, chance_level(rewards), 1.0).item() == 0.0
    assert precision_weight(sigma2, chance_level(rewards), 0.5).item() == pytest.approx(0.5 / 1.5)


# =============================================================================================
# rollout_sigma2: mean of (r_{t+k} - mu_t[k])^2 over the live rewards of the rollout
# =============================================================================================
def test_rollout_sigma2_by_hand(kernels):
    # T = 3, H = 4, three envs, every mu = 0 (so each live term is r^2):
    #   env 0: rewards [1, 2, 3], no episode end
    #   env 1: rewards [4, 0, 8], terminated at t = 0 (row 0 stops being live after k = 0)
    #   env 2: rewards [2, 6, 10], truncated at t = 0 (row 0 stops after k = 0)
    # k = 0: every (t, env) is live: 1 + 4 + 9 + 16 + 0 + 64 + 4 + 36 + 100 = 234 over 9 = 26
    # k = 1: env 0 rows 0, 1 (2, 3); env 1 row 1 (8); env 2 row 1 (10); row 2 is past the
    #        rollout's end: 4 + 9 + 64 + 100 = 177 over 4 = 44.25
    # k = 2: env 0 row 0 (3) only: 9
    # k = 3: t + 3 >= T for every row, nothing live: inf (weight 0)
    rewards = torch.tensor([[1.0, 4.0, 2.0], [2.0, 0.0, 6.0], [3.0, 8.0, 10.0]])
    terminations = torch.tensor([[0.0, 1.0, 0.0], [0, 0, 0], [0, 0, 0]])
    truncations = torch.tensor([[0.0, 0.0, 1.0], [0, 0, 0], [0, 0, 0]])
    mus = torch.zeros(3, 4, 3)
    mu_next = torch.full((4, 3), 100.0)  # bootstrapped targets never enter sigma
    sigma2 = rollout_sigma2(kernels, rewards, terminations, truncations, mus, mu_next)
    assert_close(sigma2, torch.tensor([26.0, 44.25, 9.0, math.inf]), **EXACT)
    assert_close(precision_weight(sigma2, chance_level(rewards), 0.0), 1 / torch.tensor([26.0, 44.25, 9.0, math.inf]))
    # min_rows = 2: k = 2 rests on one reward and gets no weight; k = 0 (9 rows) and k = 1 (4) stay
    sigma2 = rollout_sigma2(kernels, rewards, terminations, truncations, mus, mu_next, min_rows=2)
    assert_close(sigma2, torch.tensor([26.0, 44.25, math.inf, math.inf]), **EXACT)
    # min_rows = 5: only k = 0; min_rows = 0 and 1 are the default (any live reward counts)
    sigma2 = rollout_sigma2(kernels, rewards, terminations, truncations, mus, mu_next, min_rows=5)
    assert_close(sigma2, torch.tensor([26.0, math.inf, math.inf, math.inf]), **EXACT)
    for min_rows in (0, 1):
        sigma2 = rollout_sigma2(kernels, rewards, terminations, truncations, mus, mu_next, min_rows=min_rows)
        assert_close(sigma2, torch.tensor([26.0, 44.25, 9.0, math.inf]), **EXACT)
    # prior_rows = 2: each measured k after the first as if 2 more rows had measured the nearer offset's value:
    # k = 1: (177 + 2 * 26) / (4 + 2) = 229 / 6; k = 2: (9 + 2 * 229 / 6) / (1 + 2) = 256 / 9; k = 3 stays inf
    sigma2 = rollout_sigma2(kernels, rewards, terminations, truncations, mus, mu_next, prior_rows=2)
    assert_close(sigma2, torch.tensor([26.0, 229 / 6, 256 / 9, math.inf]))
    # with min_rows = 2 the unmeasured k = 2 stays inf: shrinkage never gives weight to an offset without it
    sigma2 = rollout_sigma2(kernels, rewards, terminations, truncations, mus, mu_next, min_rows=2, prior_rows=2)
    assert_close(sigma2, torch.tensor([26.0, 229 / 6, math.inf, math.inf]))


def test_rollout_sigma2_subtracts_the_prediction_of_its_own_row(kernels):
    # one env, T = 2, H = 2, rewards [1, 3]; mu_t[k] differs per (t, k):
    # k = 0: (1 - 0.5)^2 + (3 - 2)^2 = 1.25 over 2 = 0.625; k = 1: row 0 only, (3 - 1)^2 = 4
    rewards = torch.tensor([[1.0], [3.0]])
    zeros = torch.zeros(2, 1)
    mus = torch.tensor([[[0.5], [1.0]], [[2.0], [-7.0]]])  # mu_1[1] predicts past the rollout: unused
    sigma2 = rollout_sigma2(kernels, rewards, zeros, zeros, mus, torch.zeros(2, 1))
    assert_close(sigma2, torch.tensor([0.625, 4.0]), **EXACT)


def rollout_sigma2_reference(rewards, terminations, truncations, mus, mu_next, min_rows=1, prior_rows=0.0):
    """Slow: for each k, the mean of (target - mu)^2 over the (t, env) the reference marks live, if
    there are at least min_rows of them (else inf); with prior_rows m, prior_rows more "rows" at the
    previous k's value (when both are measured)."""
    targets, _, live = p3o_targets_reference(rewards, terminations, truncations, mu_next)
    T, H, N = targets.shape
    out = []
    for k in range(H):
        errors = [(targets[t, k, env] - float(mus[t, k, env])) ** 2 for t in range(T) for env in range(N) if live[t, k, env]]
        if not errors or len(errors) < min_rows:
            out.append(math.inf)
        elif k > 0 and out[k - 1] != math.inf:
            out.append((sum(errors) + prior_rows * out[k - 1]) / (len(errors) + prior_rows))
        else:
            out.append(sum(errors) / len(errors))
    return torch.tensor(out, dtype=torch.float64)


def random_rollout(seed, T, H, N):
    """rewards, terminations (15%), truncations (10%), mus [T, H, N] and mu_next [H, N], random."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(T, N, generator=g)
    terminations = (torch.rand(T, N, generator=g) < 0.15).float()
    truncations = (torch.rand(T, N, generator=g) < 0.1).float()
    return rewards, terminations, truncations, torch.randn(T, H, N, generator=g), torch.randn(H, N, generator=g)


@pytest.mark.parametrize("min_rows, prior_rows", [(1, 0.0), (6, 0.0), (1, 3.5), (6, 40.0)])
@pytest.mark.parametrize("seed, T, H, N", [(0, 1, 1, 1), (1, 8, 3, 2), (2, 16, 20, 4), (3, 5, 9, 7)])
def test_rollout_sigma2_random_vs_reference(kernels, seed, T, H, N, min_rows, prior_rows):
    rewards, terminations, truncations, mus, mu_next = random_rollout(seed, T, H, N)
    got = rollout_sigma2(kernels, rewards, terminations, truncations, mus, mu_next, min_rows, prior_rows)
    expected = rollout_sigma2_reference(rewards, terminations, truncations, mus, mu_next, min_rows, prior_rows)
    assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


# =============================================================================================
# precision_weight: weight = max(0, 1/sigma^2 - c/sigma_r^2)
# =============================================================================================
def test_precision_weight_chance_level():
    sigma2 = torch.tensor([0.25, 1.0, 4.0, 16.0])
    # sigma_r^2 = 4, c = 1: 1/sigma^2 - 1/4
    assert_close(precision_weight(sigma2, torch.tensor(4.0), 1.0), torch.tensor([3.75, 0.75, 0.0, 0.0]), **EXACT)
    # c = 0.25, sigma_r^2 = 1: the same chance term 1/4
    assert_close(precision_weight(sigma2, torch.tensor(1.0), 0.25), torch.tensor([3.75, 0.75, 0.0, 0.0]), **EXACT)
    # above chance: 0, never negative
    assert torch.all(precision_weight(torch.tensor([4.0, 5.0, 1e6]), torch.tensor(4.0), 1.0) == 0)


def test_precision_weight_zero_sigma_r_drops_chance_term():
    sigma2 = torch.tensor([0.25, 1.0, 4.0])
    for c in (0.0, 0.5, 1.0):
        assert_close(precision_weight(sigma2, torch.tensor(0.0), c), torch.tensor([4.0, 1.0, 0.25]), **EXACT)


def test_precision_weight_unmeasured_and_exact_steps():
    # inf (no live reward at k): weight 0; sigma^2 = 0 (an exactly predicted reward): floored at 1e-12
    weight = precision_weight(torch.tensor([math.inf, 0.0, 1.0]), torch.tensor(1.0), 0.0)
    assert weight[0].item() == 0.0 and weight[1].item() == pytest.approx(1e12) and weight[2].item() == 1.0


def test_precision_weight_per_state_shape():
    sigma2 = torch.rand(5, 3, 2) + 0.5
    assert_close(precision_weight(sigma2, torch.tensor(2.0), 0.5), (1 / sigma2 - 0.25).clamp(min=0))


@pytest.mark.parametrize("shape", [(4,), (3, 4, 2)])
def test_precision_weight_nan_stops_the_run(shape):
    sigma2 = torch.ones(shape)
    sigma2.view(-1)[1] = math.nan
    with pytest.raises(SystemExit, match=r"^error: the P3O weight is not finite \(1 NaN or inf"):
        precision_weight(sigma2, torch.tensor(1.0), 0.0)


# =============================================================================================
# --weight-rule cumulative: an inverse-variance mix of each row's K-step surprises
# =============================================================================================
def test_cumulative_weight_by_hand(kernels):
    # The rollout of test_rollout_sigma2_by_hand (T = 3, H = 4, mu = 0), so S_t[K] sums the row's live rewards:
    # K = 0: every (t, env) is live, S = r: 234 over 9 = 26
    # K = 1: env 0 rows 0, 1 (1 + 2 = 3, 2 + 3 = 5); env 1 row 1 (0 + 8 = 8); env 2 row 1 (6 + 10 = 16);
    #        9 + 25 + 64 + 256 = 354 over 4 = 88.5 (row 0 of envs 1 and 2 ended at t = 0)
    # K = 2: env 0 row 0 (1 + 2 + 3 = 6): 36;  K = 3: nothing live, inf
    rewards = torch.tensor([[1.0, 4.0, 2.0], [2.0, 0.0, 6.0], [3.0, 8.0, 10.0]])
    terminations = torch.tensor([[0.0, 1.0, 0.0], [0, 0, 0], [0, 0, 0]])
    truncations = torch.tensor([[0.0, 0.0, 1.0], [0, 0, 0], [0, 0, 0]])
    mus, mu_next = torch.zeros(3, 4, 3), torch.full((4, 3), 100.0)  # bootstrapped targets never enter V

    def shares(*variances):  # weight[k] = sum_{K>=k} 1/V[K] / sum_K 1/V[K]
        precision = [1 / v for v in variances]
        return torch.tensor([sum(precision[k:]) / sum(precision) for k in range(len(precision))])

    weight = cumulative_weight(kernels, rewards, terminations, truncations, mus, mu_next)
    assert_close(weight, shares(26.0, 88.5, 36.0, math.inf))
    assert weight[0].item() == 1.0 and weight[3].item() == 0.0
    # min_rows = 2: K = 2 rests on one row and gets no share
    weight = cumulative_weight(kernels, rewards, terminations, truncations, mus, mu_next, min_rows=2)
    assert_close(weight, shares(26.0, 88.5, math.inf, math.inf))
    # prior_rows = 2: V[1] = (354 + 2 * 26) / (4 + 2) = 406 / 6;  V[2] = (36 + 2 * 406 / 6) / (1 + 2) = 514 / 9
    weight = cumulative_weight(kernels, rewards, terminations, truncations, mus, mu_next, prior_rows=2)
    assert_close(weight, shares(26.0, 406 / 6, 514 / 9, math.inf))


def test_cumulative_weight_keeps_a_late_reward_that_precision_drops(kernels):
    # Rows 0 and 2 expect the reward 1 at k = 0; it comes one step late, at k = 1. Each offset alone
    # misses by 1 there (sigma[0]^2 = 2/4, sigma[1]^2 = 2/3: the precision weight gives the two offsets
    # about the same weight), but every two-step sum is exact (S[1] = -1 + 1 = 0), so nearly all the
    # precision is at K = 1 and both surprises keep weight ~1: the row's advantage is ~0, what happened
    # (the reward came, late) against what was expected.
    T, N = 4, 1
    rewards = torch.tensor([[0.0], [1.0], [0.0], [1.0]])
    zeros = torch.zeros(T, N)
    mus = torch.zeros(T, 2, N)
    mus[0, 0] = mus[2, 0] = 1.0  # rows 0 and 2 expect their reward now; it comes at k = 1
    mus[1, 0] = mus[3, 0] = 1.0  # rows 1 and 3 expect theirs now, and it comes now
    weight = cumulative_weight(kernels, rewards, zeros, zeros, mus, torch.zeros(2, N))
    sigma2 = rollout_sigma2(kernels, rewards, zeros, zeros, mus, torch.zeros(2, N))
    assert_close(sigma2, torch.tensor([0.5, 2 / 3]))  # k = 0: rows 0, 2 miss by 1 (2 of 4); k = 1: 2 of 3 rows miss
    assert weight[0].item() == 1.0 and weight[1].item() > 0.999  # V[1] = 0 (floored at 1e-12)


def test_cumulative_weight_nan_stops_the_run(kernels):
    zeros = torch.zeros(3, 2)
    mus = torch.zeros(3, 2, 2)
    mus[1, 0, 1] = math.nan  # a diverged critic
    with pytest.raises(SystemExit, match=r"^error: the P3O cumulative weight is not finite"):
        cumulative_weight(kernels, torch.ones(3, 2), zeros, zeros, mus, torch.zeros(2, 2))


def cumulative_weight_loop(rewards, terminations, truncations, mus, mu_next, min_rows=1, prior_rows=0.0):
    """Slow: the formula of cumulative_weight's docstring, one row at a time, on the reference's live mask."""
    targets, _, live = p3o_targets_reference(rewards, terminations, truncations, mu_next)
    T, H, N = targets.shape
    variance = []
    for K in range(H):
        squares = []
        for t in range(T):
            for env in range(N):
                if live[t, K, env]:
                    partial_sum = sum(targets[t, k, env] - float(mus[t, k, env]) for k in range(K + 1))
                    squares.append(partial_sum**2)
        if not squares or len(squares) < min_rows:
            variance.append(math.inf)
        elif K > 0 and variance[K - 1] != math.inf:
            variance.append((sum(squares) + prior_rows * variance[K - 1]) / (len(squares) + prior_rows))
        else:
            variance.append(sum(squares) / len(squares))
    precision = [0.0 if v == math.inf else 1 / v for v in variance]
    if sum(precision) == 0:  # nothing measured on enough rows: no share anywhere (every advantage 0)
        return torch.zeros(H, dtype=torch.float64)
    return torch.tensor([sum(precision[k:]) / sum(precision) for k in range(H)], dtype=torch.float64)


@pytest.mark.parametrize("min_rows, prior_rows", [(1, 0.0), (6, 0.0), (1, 3.5), (6, 40.0)])
@pytest.mark.parametrize("seed, T, H, N", [(0, 1, 1, 1), (1, 8, 3, 2), (2, 16, 20, 4), (3, 5, 9, 7)])
def test_cumulative_weight_random_vs_loop(kernels, seed, T, H, N, min_rows, prior_rows):
    rewards, terminations, truncations, mus, mu_next = random_rollout(seed, T, H, N)
    got = cumulative_weight(kernels, rewards, terminations, truncations, mus, mu_next, min_rows, prior_rows)
    expected = cumulative_weight_loop(rewards, terminations, truncations, mus, mu_next, min_rows, prior_rows)
    assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cumulative_advantage_is_the_mix_of_k_step_surprises(kernels, seed):
    # The kernel with these shares (no row normalization) gives, for every row, including those cut by a
    # termination, a truncation or the rollout's end (bootstrapped terms), exactly
    #   A_t = sum_K (1/V[K]) S'_t[K] / sum_K (1/V[K]),   S'_t[K] = sum of the row's usable surprises k <= K
    # (after a truncation a row has no more terms: S' stops growing).
    T, H, N = 12, 6, 3
    rewards, terminations, truncations, mus, mu_next = random_rollout(seed, T, H, N)
    weight = cumulative_weight(kernels, rewards, terminations, truncations, mus, mu_next)
    advantages, _, _ = kernels.p3o_advantage(rewards, terminations, truncations, mus, mu_next, weight, False, normalize=False, lam=1.0)
    targets, _, _ = p3o_targets_reference(rewards, terminations, truncations, mu_next)
    precision = torch.cat([weight[:-1] - weight[1:], weight[-1:]]).double()  # 1/V[K] / sum_K 1/V[K]
    for t in range(T):
        for env in range(N):
            usable = H
            for k in range(min(H, T - t)):  # a truncation at step t + k ends the row after k; a termination
                if terminations[t + k, env]:  # makes the rest known zeros, usable
                    break
                if truncations[t + k, env]:
                    usable = k + 1
                    break
            surprises = [float(targets[t, k, env] - mus[t, k, env]) if k < usable else 0.0 for k in range(H)]
            mix = sum(precision[K] * sum(surprises[: K + 1]) for K in range(H))
            assert advantages[t, env].item() == pytest.approx(mix.item(), rel=1e-5, abs=1e-5)


# =============================================================================================
# --weight-rule action: action_weight (each row's share of surprise its action explains) and
# complete_rows (the rows whose whole horizon lies inside the rollout)
# =============================================================================================
def action_weight_loop(tau2, s2):
    """Slow reference: the formula of action_weight's docstring, one row at a time."""
    T, H, N = tau2.shape
    weight = torch.zeros(T, H, N)
    measured = [k for k in range(H) if math.isfinite(s2[k].item())]
    unexplained = sum(s2[k].item() for k in measured)
    for t in range(T):
        for env in range(N):
            explained = sum(tau2[t, k, env].item() for k in measured)
            share = explained / (explained + unexplained) if explained + unexplained > 0 else 0.0
            for k in measured:
                weight[t, k, env] = share
    return weight


def test_action_weight_by_hand():
    # One env, T = 2, H = 3, k = 2 unmeasured (s2 = inf). Row 0: the action explains 0.3 + 0.1 of
    # the variance at the measured k, 0.4 against 0.1 + 0.1 left unexplained: share 0.4 / 0.6.
    # Row 1: the action changes nothing there (tau2 = 0): share 0. A large tau2 at the unmeasured
    # k changes nothing.
    tau2 = torch.tensor([[[0.3], [0.1], [5.0]], [[0.0], [0.0], [5.0]]])
    s2 = torch.tensor([0.1, 0.1, math.inf])
    expected = torch.tensor([[[2 / 3], [2 / 3], [0.0]], [[0.0], [0.0], [0.0]]])
    assert_close(action_weight(tau2, s2), expected)


def test_action_weight_ignores_predictability():
    # Step k = 1 is exactly predictable (s2 -> 0): under the precision rule it would take all the
    # weight; here the share only grows towards 1 as what the action explains dominates, never above.
    tau2 = torch.tensor([[[0.2], [0.0]]])
    for tiny in (1e-2, 1e-6, 0.0):
        weight = action_weight(tau2, torch.tensor([0.2, tiny]))
        assert weight.max().item() <= 0.5 + 1e-6  # 0.2 / (0.2 + 0.2 + tiny)
        assert weight[0, 0, 0] == weight[0, 1, 0]  # one share for every measured k of the row


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_action_weight_random_vs_loop(seed):
    g = torch.Generator().manual_seed(seed)
    tau2 = torch.rand(5, 4, 3, generator=g) * (torch.rand(5, 4, 3, generator=g) > 0.5)
    s2 = torch.rand(4, generator=g)
    s2[3] = math.inf
    assert_close(action_weight(tau2, s2), action_weight_loop(tau2, s2))


def complete_rows_loop(terminations, truncations, horizon):
    T, N = terminations.shape
    out = torch.zeros(T, N, dtype=torch.bool)
    for t in range(T):
        for env in range(N):
            ends = any(terminations[j, env] or truncations[j, env] for j in range(t, T))
            out[t, env] = t + horizon <= T or ends
    return out


def test_complete_rows_by_hand():
    # T = 5, H = 2. env 0: no end: rows 0..3 see k = 0, 1 inside the rollout, row 4 needs step 5.
    # env 1: terminated at t = 4 (the last step): every row's future is known. env 2: truncated
    # at t = 1: rows 0, 1 stop there; rows 2, 3 see their horizon; row 4 runs past the rollout.
    terminations = torch.zeros(5, 3)
    truncations = torch.zeros(5, 3)
    terminations[4, 1] = 1
    truncations[1, 2] = 1
    expected = torch.tensor([[True, True, True]] * 4 + [[False, True, False]])
    assert torch.equal(complete_rows(terminations, truncations, 2), expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_complete_rows_random_vs_loop(seed):
    g = torch.Generator().manual_seed(seed)
    terminations = (torch.rand(12, 4, generator=g) < 0.1).float()
    truncations = (torch.rand(12, 4, generator=g) < 0.1).float()
    for horizon in (1, 3, 12, 20):
        assert torch.equal(complete_rows(terminations, truncations, horizon),
                           complete_rows_loop(terminations, truncations, horizon))
