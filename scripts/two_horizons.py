"""TwoHorizons: a task where the credit horizon decides what is learned.

    import scripts.two_horizons                       # registers the ids below
    env = gymnasium.make("TwoHorizons-v0", far_delay=50)
    python p3o.py --env-id scripts.two_horizons:TwoHorizons-far100-v0 ...   # from the repository root

Each step the agent picks one of two actions:

    0 "collect": a reward of +1 arrives exactly `near_delay` steps later (default 3): collecting at
                 step t pays in the reward returned by step t + near_delay.
    1 "invest":  adds 1 to a progress counter. On the step the counter reaches `far_delay` (default
                 100) that step pays `far_reward` (default 2 * far_delay) and the counter goes back to 0.
                 Collecting does not reset the counter, so random play finds the far reward too.

Investing is worth far_reward / far_delay = 2 per step against 1 per step for collecting, but it is
paid up to far_delay steps after the action that earns it (the first invest of a cycle is paid
far_delay - 1 steps later). A learner that credits rewards over a horizon much shorter than
far_delay sees only the near reward and learns to collect; one that credits far enough learns to
invest.

Episodes last exactly `episode_length` steps (default 4.5 * far_delay: room for four far rewards and
half a cycle of slack) and end by termination (terminated=True, truncated=False): the end is part of
the task, known from the observation, and rewards that would arrive after it are lost. The slack
matters: with an episode of exactly 4 * far_delay the fourth far reward needs a flawless run of
invests, so a policy that still explores settles for three cycles and collects in the last one
(measured: PPO and P3O both plateaued at 0.86 of optimal on far_delay 30); with the slack, a few
exploratory collects cost nothing and the optimum is reachable by a stochastic policy.

Observation: float32, shape (2 + near_delay,), every entry in [0, 1], Markov:
    [0]      progress / far_delay
    [1]      steps remaining / episode_length (1 after reset, 0 in the terminal observation)
    [2 + j]  1 if a near reward is pending that arrives j + 1 steps from now (the reward of the
             (j + 1)-th next step), else 0; j = 0 .. near_delay - 1
Actions: Discrete(2). Deterministic: no randomness at all (seeding is accepted and changes nothing),
unless `staggered`.

Staggered starts (`staggered=True`): the first episode after a seeded reset, which is how a vector
env starts its envs (env i gets seed + i), joins at a step drawn uniformly from 0 .. episode_length - 1
(the observation's time left says so, and that episode ends early, with less return); every later
episode starts at step 0. Without it the N envs of a batch run in lock-step forever, every rollout
row t showing the same step of the episode in every env, which no Atari batch does: P3O measures
sigma[k] over a rollout's rows, and lock-step makes each far offset a measurement of one episode
step only (docs/results.md, "Staggered episodes"). The returns below are those of a full episode.

Returns (L = episode_length, D = far_delay, R = far_reward, d = near_delay):
    myopic_return  = max(0, L - d)   always collect: collects in the last d steps are never paid.
    optimal_return = max over k = 0 .. L // D of  min(L - k*D, max(0, L - d)) + k*R.
        Proof: with k far rewards the agent invested at least k*D times, so at most L - k*D steps
        collected, and only collects before step L - d are paid; collecting first, then investing
        k*D times reaches the bound. When R > D the bracket grows with k, so k = L // D is best:
        with the defaults (L = 4 D + D // 2, R = 2 D)
            optimal_return = 4 R + D // 2 = 8.5 D    (four far rewards, the slack spent collecting),
        reached by any sequence that completes four cycles and collects otherwise before step L - d.
        Defaults: D = 100 gives optimal 850, myopic 447.
    random_return  = (L - d) / 2 + R * sum_{k>=1} P(Binomial(L, 1/2) >= k*D)   (uniform random
        actions: half the paid-able collects, and a far reward each time the invest count passes a
        multiple of D). About 0.68 to 0.73 of optimal for the registered variants: a learner that
        unlearns the far reward falls from there to myopic / optimal (0.49 .. 0.53), one that
        learns it rises to 1.
    policy-gradient view: invest_advantage(...) is the exact advantage of investing over collecting in
        the return to the episode's end when later actions invest with a fixed probability, and
        mean_invest_advantage(...) its average over the states that policy visits. Under uniformly
        random play it is +0.93 / +0.62 / -0.58 for D = 10 / 30 / 100, and at D = 100 collecting is
        better in 0.91 of the visited states: random play invests about 225 times, which completes two
        cycles whatever one more invest does. So at D = 100 an exact advantage moves random play
        towards collecting, and always-collect is a local optimum (a lone invest never completes a
        cycle): learning D = 100 from random play takes exploration, not only credit over 100 steps.
    discounted view: under a discount gamma, always-invest beats always-collect from the start state
        only when gamma is above `critical_gamma(...)` (0.76, 0.95, 0.987, 0.996 for the variants
        D = 10, 30, 100, 300). A fixed gamma therefore suits some D and not others.

Registered ids (on import of this module; re-importing is harmless):
    TwoHorizons-v0            defaults; every constructor argument can be set through gym.make kwargs
    TwoHorizons-far{D}-v0     for D in VARIANT_DELAYS (10, 20, 30, 50, 100, 200, 300): near_delay 3,
                              far_delay D, far_reward 2 D, episode_length 4 D + D // 2; for the training
                              scripts, whose --env-id passes an id and no kwargs.
    TwoHorizons-far{D}-staggered-v0   the same with staggered=True.
"""

from __future__ import annotations

import math
import numbers

import gymnasium as gym
import numpy as np
from gymnasium import spaces

COLLECT, INVEST = 0, 1
VARIANT_DELAYS = (10, 20, 30, 50, 100, 200, 300)
VARIANT_NEAR_DELAY = 3
_BIT_TABLE_MAX = 12  # near_delay up to this uses a lookup table of the queue's bit patterns


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"TwoHorizons: {name} must be a positive int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"TwoHorizons: {name} must be a positive int, got {value}")
    return int(value)


def resolve_params(near_delay=3, far_delay=100, far_reward=None, episode_length=None):
    """Validated (near_delay, far_delay, far_reward, episode_length), with the defaults filled in."""
    near_delay = _positive_int("near_delay", near_delay)
    far_delay = _positive_int("far_delay", far_delay)
    if far_reward is None:
        far_reward = 2 * far_delay
    if isinstance(far_reward, bool) or not isinstance(far_reward, numbers.Real) or not math.isfinite(far_reward):
        raise ValueError(f"TwoHorizons: far_reward must be a finite positive number, got {far_reward!r}")
    if far_reward <= 0:
        raise ValueError(f"TwoHorizons: far_reward must be positive, got {far_reward}")
    far_reward = float(far_reward)
    if episode_length is None:
        episode_length = 4 * far_delay + far_delay // 2
    episode_length = _positive_int("episode_length", episode_length)
    return near_delay, far_delay, far_reward, episode_length


def variant_params(far_delay):
    """The constructor kwargs of TwoHorizons-far{far_delay}-v0."""
    return dict(near_delay=VARIANT_NEAR_DELAY, far_delay=far_delay, far_reward=2 * far_delay, episode_length=4 * far_delay + far_delay // 2)


def variant_id(far_delay, staggered=False):
    return f"TwoHorizons-far{far_delay}{'-staggered' if staggered else ''}-v0"


def optimal_return(near_delay=3, far_delay=100, far_reward=None, episode_length=None):
    """The best return of an episode (four cycles of invests, with the defaults); see the module docstring."""
    d, D, R, L = resolve_params(near_delay, far_delay, far_reward, episode_length)
    return max(min(L - k * D, max(0, L - d)) + k * R for k in range(L // D + 1))


def myopic_return(near_delay=3, far_delay=100, far_reward=None, episode_length=None):
    """The return of always collecting: every collect is paid except those in the last near_delay steps."""
    d, D, R, L = resolve_params(near_delay, far_delay, far_reward, episode_length)
    return float(max(0, L - d))


def random_return(near_delay=3, far_delay=100, far_reward=None, episode_length=None):
    """The expected return of uniformly random actions (exact)."""
    d, D, R, L = resolve_params(near_delay, far_delay, far_reward, episode_length)
    tail = [0] * (L + 2)  # tail[n] = number of invest sequences with at least n invests, over 2^L
    for n in range(L, -1, -1):
        tail[n] = tail[n + 1] + math.comb(L, n)
    far = sum(tail[k * D] for k in range(1, L // D + 1)) / 2**L
    return max(0, L - d) / 2 + R * far


def discounted_returns(gamma, near_delay=3, far_delay=100, far_reward=None, episode_length=None):
    """(always invest, always collect): discounted returns from the start state under `gamma`."""
    d, D, R, L = resolve_params(near_delay, far_delay, far_reward, episode_length)
    invest = sum(R * gamma ** (k * D - 1) for k in range(1, L // D + 1))
    collect = sum(gamma**t for t in range(d, L))
    return invest, collect


def critical_gamma(near_delay=3, far_delay=100, far_reward=None, episode_length=None):
    """The gamma above which always-invest has the higher discounted return from the start state
    (bisection; nan if collecting wins even at gamma = 1). A guide to which fixed gamma can see the
    far reward, not the exact switch point of the discounted-optimal policy."""
    params = resolve_params(near_delay, far_delay, far_reward, episode_length)
    gap = lambda g: (lambda i, c: i - c)(*discounted_returns(g, *params))  # noqa: E731
    if gap(1.0) <= 0:
        return math.nan
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if gap(mid) > 0 else (mid, hi)
    return hi


def _binomial_pmf(n, q):
    """[n + 1] float64: P(Binomial(n, q) = k) for k = 0 .. n, from log-gamma (no overflow for long episodes)."""
    k = np.arange(n + 1)
    if q in (0.0, 1.0):
        return (k == (n if q == 1.0 else 0)).astype(np.float64)
    log_comb = np.array([math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) for j in k])
    return np.exp(log_comb + k * math.log(q) + (n - k) * math.log1p(-q))


def _invests_mod(n, invest_prob, D):
    """[D]: entry p is the probability that n steps, each investing with invest_prob, invest a number
    of times equal to p mod D (how far they move the counter)."""
    return np.bincount(np.arange(n + 1) % D, weights=_binomial_pmf(n, invest_prob), minlength=D)


def _invest_prob(invest_prob):
    if isinstance(invest_prob, bool) or not isinstance(invest_prob, numbers.Real) or not 0.0 <= invest_prob <= 1.0:
        raise ValueError(f"TwoHorizons: invest_prob must be a number in [0, 1], got {invest_prob!r}")
    return float(invest_prob)


def _advantages_at(t, invest_prob, d, D, R, L):
    """[D]: entry p is the advantage of investing at step t with the counter at p. Investing gains
    far_reward times the probability that the L - t - 1 later steps, each investing with invest_prob,
    leave the counter exactly one short of a cycle (p + invests = -1 mod D): then one more invest now
    completes one more cycle inside the episode. It loses the collect's +1 while that is still paid
    (t + d <= L - 1)."""
    by_residue = _invests_mod(L - t - 1, invest_prob, D)
    return R * by_residue[(D - 1 - np.arange(D)) % D] - (1.0 if t + d <= L - 1 else 0.0)


def invest_advantage(t, progress, invest_prob, near_delay=3, far_delay=100, far_reward=None, episode_length=None):
    """Exact advantage of investing over collecting at step t with the counter at `progress`, in the
    undiscounted return to the episode's end, when every later action invests with probability
    invest_prob (independently of the state): the chance that the extra invest completes one more
    cycle, times far_reward, less the collect's +1 (when it is still paid, t + near_delay < L).
    The advantage an exact whole-episode estimator credits under that policy; checked against every
    continuation on small settings in tests/test_two_horizons.py."""
    d, D, R, L = resolve_params(near_delay, far_delay, far_reward, episode_length)
    q = _invest_prob(invest_prob)
    if not (0 <= t < L and 0 <= progress < D):
        raise ValueError(f"TwoHorizons: need 0 <= t < {L} and 0 <= progress < {D}, got t={t}, progress={progress}")
    return float(_advantages_at(t, q, d, D, R, L)[progress])


def mean_invest_advantage(invest_prob, near_delay=3, far_delay=100, far_reward=None, episode_length=None):
    """(mean, share better, share worse) of invest_advantage over the states the same policy visits
    (each step of its episodes once: at step t the counter is Binomial(t, invest_prob) mod far_delay).
    Uniformly random play (0.5) on the variants D = 10 / 30 / 100: mean +0.93 / +0.62 / -0.58, and at
    D = 100 collecting is better in 0.91 of the states (the module docstring says why that matters)."""
    d, D, R, L = resolve_params(near_delay, far_delay, far_reward, episode_length)
    q = _invest_prob(invest_prob)
    mean = better = worse = 0.0
    for t in range(L):
        visits = _invests_mod(t, q, D)  # P(progress = p at step t)
        adv = _advantages_at(t, q, d, D, R, L)
        mean += visits @ adv
        better += visits[adv > 1e-12].sum()  # (a tie, to rounding, counts as neither)
        worse += visits[adv < -1e-12].sum()
    return float(mean / L), float(better / L), float(worse / L)


_bit_tables = {}


def _bit_table(near_delay):
    """[2^near_delay, near_delay] float32: row q holds the bits of the queue q, lowest first."""
    if near_delay not in _bit_tables:
        q = np.arange(2**near_delay)[:, None]
        _bit_tables[near_delay] = ((q >> np.arange(near_delay)) & 1).astype(np.float32)
    return _bit_tables[near_delay]


class TwoHorizons(gym.Env):
    """Collect (+1 after near_delay steps) or invest (far_reward once far_delay invests add up).
    See the module docstring for the design and its returns."""

    metadata = {"render_modes": []}

    def __init__(self, near_delay=3, far_delay=100, far_reward=None, episode_length=None, staggered=False, render_mode=None):
        if render_mode is not None:
            raise ValueError(f"TwoHorizons: no render modes, got render_mode={render_mode!r}")
        self.near_delay, self.far_delay, self.far_reward, self.episode_length = resolve_params(
            near_delay, far_delay, far_reward, episode_length
        )
        if not isinstance(staggered, bool):
            raise ValueError(f"TwoHorizons: staggered must be True or False, got {staggered!r}")
        self.staggered = staggered
        self.render_mode = None
        self.observation_space = spaces.Box(0.0, 1.0, shape=(2 + self.near_delay,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self._table = _bit_table(self.near_delay) if self.near_delay <= _BIT_TABLE_MAX else None
        self._top = 1 << (self.near_delay - 1)  # queue bit of a reward near_delay steps away
        self._obs = np.zeros(2 + self.near_delay, dtype=np.float32)
        self._progress = 0
        self._t = 0
        self._queue = 0  # bit j: a near reward arrives with the (j + 1)-th next step
        self._done = True

    def _observation(self):
        obs = self._obs
        obs[0] = self._progress / self.far_delay
        obs[1] = (self.episode_length - self._t) / self.episode_length
        if self._table is not None:
            obs[2:] = self._table[self._queue]
        else:
            q = self._queue
            for j in range(self.near_delay):
                obs[2 + j] = (q >> j) & 1
        return obs.copy()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._progress = 0
        self._t = 0
        self._queue = 0
        self._done = False
        if self.staggered and seed is not None:  # join the first episode at a random step (module docstring)
            self._t = int(self.np_random.integers(self.episode_length))
        return self._observation(), {}

    def step(self, action):
        if self._done:
            raise RuntimeError("TwoHorizons: step() called after the episode ended; call reset()")
        q = self._queue
        reward = float(q & 1)  # the near reward due now
        q >>= 1
        if action == INVEST:
            self._progress += 1
            if self._progress == self.far_delay:
                reward += self.far_reward
                self._progress = 0
        elif action == COLLECT:
            q |= self._top
        else:
            raise ValueError(f"TwoHorizons: action must be 0 (collect) or 1 (invest), got {action!r}")
        self._queue = q
        self._t += 1
        terminated = self._t >= self.episode_length
        self._done = terminated
        return self._observation(), reward, terminated, False, {}


def _register():
    entry = f"{__name__ if __name__ != '__main__' else 'scripts.two_horizons'}:TwoHorizons"
    if "TwoHorizons-v0" not in gym.registry:
        gym.register(id="TwoHorizons-v0", entry_point=entry)
    for far_delay in VARIANT_DELAYS:
        for staggered in (False, True):
            if variant_id(far_delay, staggered) not in gym.registry:
                kwargs = variant_params(far_delay) | ({"staggered": True} if staggered else {})
                gym.register(id=variant_id(far_delay, staggered), entry_point=entry, kwargs=kwargs)


_register()
