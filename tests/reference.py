"""Slow, obviously-correct references for the advantage kernels in p3o_kernel.cu.

Written straight from the maths (see docs/p3o.md and the comments in p3o_kernel.cu), in float64 with
explicit Python loops and no vectorisation, so that a reader can check them line by line. The
tests compare the CPU and CUDA builds of the kernel against these.

Conventions shared with the kernel:
  per-step arrays    [T, N]     (t, env)
  per-horizon arrays [T, H, N]  (t, k, env)
  flags are 0/1: flag[t, env] says that the step taken at t ended the episode.
  If a step is flagged both terminated and truncated, termination wins (the future is known to
  be zero), as in Gymnasium, where `terminated` takes precedence over `truncated`.
"""

import torch


def _f64(x):
    return torch.as_tensor(x, dtype=torch.float64).cpu()


def gae_reference(rewards, values, terminations, truncations, next_value, final_values, gamma, lam):
    """GAE advantages [T, N], by the forward-sum definition.

        delta_j = r_j + gamma * V_next(j) - V(s_j), where
            V_next(j) = 0                    if the step taken at j terminated the episode
                      = final_values[j]      if it was truncated (value of the final observation)
                      = values[j + 1]        otherwise, inside the rollout
                      = next_value           otherwise, at the rollout's last step j = T - 1
        A_t = sum_{l = 0}^{L} (gamma * lam)^l * delta_{t + l}
    where t + L is the first step at or after t that ends the episode (terminated or truncated),
    or T - 1 if none does before the rollout ends.

    This is deliberately not the kernel's backward recursion A_t = delta_t + gamma*lam*A_{t+1}.

    rewards, values, terminations, truncations, final_values: [T, N]; next_value: [N].
    Returns float64 [T, N].
    """
    T, N = _f64(rewards).shape
    # Nested Python lists, only so that the loops run fast enough.
    rewards, values, terminations, truncations, next_value, final_values = (
        _f64(x).tolist() for x in (rewards, values, terminations, truncations, next_value, final_values)
    )

    def delta(j, env):
        if terminations[j][env] != 0:
            v_next = 0.0
        elif truncations[j][env] != 0:
            v_next = final_values[j][env]
        elif j + 1 < T:
            v_next = values[j + 1][env]
        else:
            v_next = next_value[env]
        return rewards[j][env] + gamma * v_next - values[j][env]

    advantages = torch.zeros(T, N, dtype=torch.float64)
    for env in range(N):
        for t in range(T):
            total = 0.0
            for j in range(t, T):  # j = t + l
                total += (gamma * lam) ** (j - t) * delta(j, env)
                if terminations[j][env] != 0 or truncations[j][env] != 0:
                    break  # the episode ended at step j: nothing after it belongs to A_t
            advantages[t, env] = total
    return advantages


def p3o_reference(rewards, terminations, truncations, mu, mu_next, weight, normalize, lam=1.0):
    """P3O advantages [T, N], value targets [T, H, N] and known-target mask [T, H, N].

    For each row (t, env) and k = 0 .. H-1, with j = t + k (the step mu[t, k, env] predicts):
      - the episode ended by termination at some step t .. j-1:
                                                        y = 0,               known = 1, usable
        (this holds past the rollout's end too: the future of a terminated episode is known)
      - it ended by truncation at some step t .. j-1:   target 0, known = 0, NOT usable
        (the row stops; the truncated step's own reward still counts, known)
      - else j < T:                                     y = rewards[j],      known = 1, usable
      - else (past the rollout's end):                  y = mu_next[j - T],  known = 0, usable
        (bootstrap from the prediction made at the observation that follows the rollout)
    weight_k = weight[k] (weight [H]) or weight[t, k, env] (weight [T, H, N]).
        A[t, env] = sum over usable k of weight_k * (y - mu[t, k, env]) / norm,
        norm = sum (normalize='sum') or max (normalize='max') of weight_k over usable k,
        A = 0 where norm == 0;  norm = 1 with normalize='none' (weights already fractions).
    With lam < 1, surprise_lambda_reference's e[t, k, env] takes the place of y - mu[t, k, env].

    rewards, terminations, truncations: [T, N]; mu: [T, H, N]; mu_next: [H, N];
    weight: [H] or [T, H, N]. Returns float64 tensors.
    (Inputs are turned into nested Python lists first, only so that the loops run fast enough.)
    """
    if normalize not in ("sum", "max", "none"):
        raise ValueError(f"normalize must be 'sum', 'max' or 'none', got {normalize!r}")
    T, H, N = _f64(mu).shape
    surprise = surprise_lambda_reference(rewards, terminations, truncations, mu, mu_next, lam).tolist() if lam < 1 else None
    per_state = _f64(weight).dim() == 3
    rewards, terminations, truncations = (_f64(x).tolist() for x in (rewards, terminations, truncations))
    mu, mu_next, weight = (_f64(x).tolist() for x in (mu, mu_next, weight))

    advantages = torch.zeros(T, N, dtype=torch.float64)
    targets = torch.zeros(T, H, N, dtype=torch.float64)
    known = torch.zeros(T, H, N, dtype=torch.float64)
    for env in range(N):
        for t in range(T):
            usable_weights = []
            weighted_error = 0.0
            for k in range(H):
                j = t + k
                # How did the episode end, if it ended at some step t .. j-1 inside the rollout?
                # The first such step decides (termination wins if both flags are set there).
                ended_by = None
                for i in range(t, min(j, T)):
                    if terminations[i][env] != 0:
                        ended_by = "termination"
                        break
                    if truncations[i][env] != 0:
                        ended_by = "truncation"
                        break
                if ended_by == "truncation":
                    targets[t, k, env] = 0.0
                    known[t, k, env] = 0.0
                    continue  # the row has stopped: not usable
                if ended_by == "termination":
                    y, is_known = 0.0, 1.0
                elif j < T:
                    y, is_known = rewards[j][env], 1.0
                else:
                    y, is_known = mu_next[j - T][env], 0.0
                weight_k = weight[t][k][env] if per_state else weight[k]
                weighted_error += weight_k * (surprise[t][k][env] if surprise else y - mu[t][k][env])
                usable_weights.append(weight_k)
                targets[t, k, env] = y
                known[t, k, env] = is_known
            if normalize == "none":
                advantages[t, env] = weighted_error
                continue
            if normalize == "sum":
                norm = sum(usable_weights)
            else:
                norm = max(usable_weights, default=0.0)
            advantages[t, env] = weighted_error / norm if norm > 0 else 0.0
    return advantages, targets, known


def surprise_lambda_reference(rewards, terminations, truncations, mu, mu_next, lam):
    """The lambda-surprise e [T, H, N] (p3o.py --surprise-lambda), by its forward sum.

    The prediction of the reward of step j = t + k changes once per step, from mu_t[k] at t to
    mu_{t+1}[k-1] at t+1 and so on until the reward itself is seen at j:
        d_i[0] = r_i - mu_i[0]
        d_i[m] = next_i[m-1] - mu_i[m]  (m >= 1), where next_i = 0 if the step taken at i terminated
                 (known zeros), mu_{i+1} inside the rollout, mu_next at its last step i = T - 1
        e_t[k] = sum_{i = t}^{L} lam^(i - t) * d_i[j - i]
    where L is the first i >= t that ends the sum: i = j (the reward) or i = T - 1 (past it only
    the bootstrap is known). With lam = 1 the sum telescopes to y - mu_t[k] (p3o_reference's y).
    Where the episode terminated at a step t .. j-1, y_j is a known zero and e_t[k] = 0 - mu_t[k]
    at any lam (the observed surprise, not discounted). Entries after a truncation inside the row
    (not used by the advantage) are 0. This is not the kernel's backward walk along each j.
    """
    T, H, N = _f64(mu).shape
    rewards, terminations, truncations = (_f64(x).tolist() for x in (rewards, terminations, truncations))
    mu, mu_next = (_f64(x).tolist() for x in (mu, mu_next))

    def d(i, m, env):
        if m == 0:
            return rewards[i][env] - mu[i][0][env]
        if terminations[i][env] != 0:
            return 0.0 - mu[i][m][env]
        return (mu[i + 1][m - 1][env] if i + 1 < T else mu_next[m - 1][env]) - mu[i][m][env]

    e = torch.zeros(T, H, N, dtype=torch.float64)
    for env in range(N):
        for t in range(T):
            for k in range(H):
                j = t + k
                ends = [i for i in range(t, min(j, T)) if terminations[i][env] != 0 or truncations[i][env] != 0]
                if ends and terminations[ends[0]][env] == 0:
                    continue  # the row stopped at a truncation before j: not used, left 0
                if ends:  # a termination before j: y_j is a known zero, its surprise kept whole
                    e[t, k, env] = 0.0 - mu[t][k][env]
                    continue
                total = 0.0
                for i in range(t, min(j, T - 1) + 1):  # no episode end at t .. j-1 here
                    total += lam ** (i - t) * d(i, j - i, env)
                e[t, k, env] = total
    return e


def p3o_targets_reference(rewards, terminations, truncations, mu_next):
    """Value targets, known mask and live mask, each [T, H, N] (H = mu_next.shape[0]).

    targets and known are p3o_reference's. live[t, k, env] = 1 where the target is a reward of
    the rollout inside t's episode: j = t + k < T and no step t .. j-1 ended the episode (the
    step that ends it still counts: its own reward is live). Post-termination zeros and
    bootstrapped targets are not live.
    """
    T, N = _f64(rewards).shape
    H = _f64(mu_next).shape[0]
    _, targets, known = p3o_reference(
        rewards, terminations, truncations, torch.zeros(T, H, N), mu_next, torch.zeros(H), "sum"
    )
    terminations, truncations = (_f64(x).tolist() for x in (terminations, truncations))
    live = torch.zeros(T, H, N, dtype=torch.float64)
    for env in range(N):
        for t in range(T):
            for k in range(H):
                j = t + k
                ended = any(terminations[i][env] != 0 or truncations[i][env] != 0 for i in range(t, min(j, T)))
                live[t, k, env] = 1.0 if j < T and not ended else 0.0
    return targets, known, live
