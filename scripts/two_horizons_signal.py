"""How much a Monte-Carlo advantage tells about investing on TwoHorizons, per horizon: exact.

    python scripts/two_horizons_signal.py [--far-delay 30] [--horizons 16 32 64 128 256] [--gamma 0.99] [--lam 0.97]

A flat-weighted surprise sum over H steps is, up to the critic's baseline, the window return
G = r_t + ... + r_{t+h-1} (h = min(H, steps left in the episode)). For a fixed policy this computes,
exactly (dynamic programming over the states (step, progress, pending near rewards), no sampling),
at every state s the policy visits:

    signal(s) = E[G | s, invest] - E[G | s, collect]     what the advantage estimates
    noise(s)^2 = sum_a pi(a | s) Var[G | s, a]            what a sampled return adds, the later
                                                          actions' doing (the task is deterministic)

and prints, over the visited states (each step of the episode weighted alike), the mean signal, the
rms signal, the rms noise and rms signal / rms noise: the signal-to-noise ratio of one sampled
advantage; the samples a learner needs for the same precision go as its inverse square. No critic
removes this noise: it is there at every state, given the action. For comparison, --gamma adds the
discounted return to the episode's end (PPO + GAE's target at lambda = 1), and --lam the whole
episode's lambda-return with an exact critic, G_t = r_t + (1 - lam) V(s_{t+1}) + lam G_{t+1} (the
same signal, less noise: what bootstrapping could give if the critic were right).

Policies: uniformly random play (where every run starts), and the optimal rule (invest while the
cycle can still complete before the episode's end, collect after) with a fraction --eps of uniformly
random actions (near the end of learning).
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.two_horizons import COLLECT, INVEST, resolve_params, variant_params  # noqa: E402


def invest_prob_table(policy, D, L, eps):
    """[L, D]: P(invest | step, progress) ('random', or 'optimal' with eps random actions)."""
    if policy == "random":
        return np.full((L, D), 0.5)
    can_complete = (D - np.arange(D))[None, :] <= (L - np.arange(L))[:, None]
    return np.where(can_complete, 1 - eps / 2, eps / 2)


def transitions(d, D, R):
    """For each action: next progress, next queue and reward, as [D, 2^d] arrays over (progress, queue).
    The queue's bit j is the near reward due j steps from now (bit 0: paid by this step)."""
    progress, queue = np.meshgrid(np.arange(D), np.arange(2**d), indexing="ij")
    paid = (queue & 1).astype(float)
    invested = progress + 1
    return {
        INVEST: (np.where(invested == D, 0, invested), queue >> 1, paid + R * (invested == D)),
        COLLECT: (progress, (queue >> 1) | (1 << (d - 1)), paid),
    }


def window_moments(pinv, trans, D, d, L, h, gamma):
    """First and second moments of sum_{j<h} gamma^j r_{t+j} (stopped at the episode's end), from
    every (t, progress, queue), after each first action: dict a -> (m1, m2), arrays [L, D, 2^d]; h >= 1."""
    m1 = np.zeros((L + 1, D, 2**d))  # h' = 0 remaining steps: nothing
    m2 = np.zeros_like(m1)
    pi = pinv[:, :, None]
    for remaining in range(1, h + 1):
        q_moments = {}
        for a in (COLLECT, INVEST):
            p_next, q_next, r = trans[a]
            n1, n2 = m1[1:, p_next, q_next], m2[1:, p_next, q_next]  # [L, D, 2^d], from step t + 1
            q_moments[a] = (r + gamma * n1, r**2 + 2 * gamma * r * n1 + gamma**2 * n2)
        if remaining == h:
            return q_moments
        m1[:L] = pi * q_moments[INVEST][0] + (1 - pi) * q_moments[COLLECT][0]  # (m1[L], after the end, stays 0)
        m2[:L] = pi * q_moments[INVEST][1] + (1 - pi) * q_moments[COLLECT][1]


def lambda_return_moments(pinv, trans, D, d, L, lam):
    """First and second moments of the undiscounted lambda-return to the episode's end with an exact
    critic V (the policy's own value to the end), G_t = r_t + (1 - lam) V(s_{t+1}) + lam G_{t+1}, after
    each first action: dict a -> (m1, m2), arrays [L, D, 2^d]. Its mean is the return's, whatever lam."""
    whole = window_moments(pinv, trans, D, d, L, L, 1.0)
    pi = pinv[:, :, None]
    value = np.concatenate([pi * whole[INVEST][0] + (1 - pi) * whole[COLLECT][0], np.zeros((1, D, 2**d))])
    m2 = np.zeros((L + 1, D, 2**d))
    first = {a: (np.zeros((L, D, 2**d)), np.zeros((L, D, 2**d))) for a in (COLLECT, INVEST)}
    for t in reversed(range(L)):
        for a in (COLLECT, INVEST):
            p_next, q_next, r = trans[a]
            v_next, n2 = value[t + 1, p_next, q_next], m2[t + 1, p_next, q_next]
            c = r + (1 - lam) * v_next
            first[a][0][t], first[a][1][t] = r + v_next, c**2 + 2 * lam * c * v_next + lam**2 * n2
        m2[t] = pi[t] * first[INVEST][1][t] + (1 - pi[t]) * first[COLLECT][1][t]
    return first


def occupancy(pinv, trans, D, d, L):
    """[L, D, 2^d]: P(progress, queue at step t) under the policy, from the start state."""
    occ = np.zeros((L, D, 2**d))
    occ[0, 0, 0] = 1.0
    for t in range(L - 1):
        for a, pa in ((INVEST, pinv[t][:, None]), (COLLECT, 1 - pinv[t][:, None])):
            p_next, q_next, _ = trans[a]
            np.add.at(occ[t + 1], (p_next, q_next), occ[t] * pa)
    return occ


def signal_and_noise(params, policy="random", horizon=32, gamma=1.0, eps=0.1, lam=None):
    """(mean signal, rms signal, rms noise) over the states the policy visits, for the TwoHorizons
    constructor kwargs `params` (near_delay, far_delay, far_reward, episode_length); see the module
    docstring. With `lam`: the whole episode's lambda-return with an exact critic (horizon and gamma
    unused)."""
    if policy not in ("random", "optimal"):
        raise ValueError(f"policy must be 'random' or 'optimal', got {policy!r}")
    if lam is None and horizon < 1:
        raise ValueError(f"horizon must be at least 1, got {horizon}")
    d, D, R, L = resolve_params(**params)
    pinv = invest_prob_table(policy, D, L, eps)
    trans = transitions(d, D, R)
    if lam is None:
        moments = window_moments(pinv, trans, D, d, L, min(horizon, L), gamma)
    else:
        moments = lambda_return_moments(pinv, trans, D, d, L, lam)
    weight = occupancy(pinv, trans, D, d, L) / L
    mean = {a: m1 for a, (m1, _) in moments.items()}
    var = {a: np.maximum(m2 - m1**2, 0.0) for a, (m1, m2) in moments.items()}  # (rounding can go below 0)
    signal = mean[INVEST] - mean[COLLECT]
    pi = pinv[:, :, None]
    noise2 = pi * var[INVEST] + (1 - pi) * var[COLLECT]
    return float((weight * signal).sum()), float(np.sqrt((weight * signal**2).sum())), float(np.sqrt((weight * noise2).sum()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--far-delay", type=int, default=30, help="the TwoHorizons-far{D}-v0 variant")
    parser.add_argument("--horizons", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--gamma", type=float, default=0.99, help="also the discounted return to the end (0: not)")
    parser.add_argument("--eps", type=float, default=0.1, help="random actions of the near-optimal policy")
    parser.add_argument("--lam", type=float, default=0.97, help="also the whole episode's lambda-return with an exact critic (1: not)")
    args = parser.parse_args()
    if args.far_delay < 1 or any(h < 1 for h in args.horizons) or not all(0 <= x <= 1 for x in (args.gamma, args.eps, args.lam)):
        parser.error("need far-delay and horizons >= 1, and gamma, eps and lam in [0, 1]")
    L = variant_params(args.far_delay)["episode_length"]
    print(f"TwoHorizons-far{args.far_delay}-v0 (episode {L} steps): one sampled advantage of investing, exact")
    print("| later actions | return credited | mean signal | rms signal | rms noise | rms signal / rms noise |")
    print("|---|---|---|---|---|---|")
    for policy, name in (("random", "uniformly random"), ("optimal", f"optimal, {args.eps:g} random")):
        rows = [(f"H = {h}" + (" (the whole episode)" if h >= L else ""), h, 1.0, None) for h in args.horizons]
        rows += [(f"the whole episode, lambda {args.lam:g}, exact critic", L, 1.0, args.lam)] if args.lam < 1 else []
        rows += [(f"gamma {args.gamma:g}, to the end", L, args.gamma, None)] if args.gamma > 0 else []
        for label, h, gamma, lam in rows:
            mean, rms, noise = signal_and_noise(variant_params(args.far_delay), policy, h, gamma, args.eps, lam)
            print(f"| {name} | {label} | {mean:+.3f} | {rms:.3f} | {noise:.2f} | {rms / noise:.3f} |")


if __name__ == "__main__":
    main()
