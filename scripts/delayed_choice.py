"""DelayedChoice: one choice at the first step, paid once, after a delay that depends on the choice.

    import scripts.delayed_choice                     # registers the ids below
    env = gymnasium.make("DelayedChoice-v0", bonus=2)
    python p3o.py --env-id scripts.delayed_choice:DelayedChoice-bonus0-v0 ...   # from the repository root

At the first step of an episode (t = 0) the agent picks one of len(delays) choices. Choice i pays a
single reward, in the reward returned by step t = delays[i], and nothing else: every other reward of
the episode is 0. Each choice pays 1, except choice `bonus`, which pays `bonus_reward` (default 1.1).
With the default delays (1, 3, 10, 30, 100), choice 0 is paid by the step right after the choice and
choice 4 a hundred steps later.

The agent acts at every step (Discrete(len(delays)) throughout), but only the first action matters:
the actions of steps 1, 2, ... are accepted and ignored. So the task asks one question, which choice
to make at t = 0, and a learner answers it only if it credits the reward of step delays[bonus] to
the action of step 0 and tells 1.1 from 1.

Episodes last exactly `episode_length` steps (default max(delays) + 1 = 101: the choice and the
100 steps after it, so that every default choice is paid) and end by termination (the end is part of
the task and visible in the observation). A choice whose delay is episode_length or more is never paid.

Observation: float32, shape (1 + len(delays),), Markov:
    [0]      steps remaining / episode_length (1 after reset, 0 in the terminal observation)
    [1 + i]  1 if choice i was made (all 0 before the choice)
With clock=True, episode_length + 1 more entries follow: a one-hot of the step count t (0 after
reset, episode_length in the terminal observation), a clock a small network can read step by step.
Deterministic: seeding is accepted and changes nothing, unless `staggered`.

Staggered starts (`staggered=True`): the first episode after a seeded reset, which is how a vector
env starts its envs (env i gets seed + i), joins at a step drawn uniformly from 0 .. episode_length - 1.
Joined after step 0, that episode has no choice and pays nothing (the observation's time left says
where it is); every later episode starts at step 0. Without it the N envs of a batch run in
lock-step forever (every episode lasts episode_length steps), every rollout row t showing the same
step of the episode in every env; P3O measures sigma[k] over a rollout's rows, and lock-step makes
each offset a measurement of one episode step only (docs/results.md, "Staggered episodes").

Returns: the return of an episode is the reward of its choice if that choice is paid (delay below
episode_length), else 0. So `optimal_return` = the largest paid reward, and the return of an episode
tells the choice apart where the rewards differ (1.1: the bonus choice; 1: another one).

Registered ids (on import of this module; re-importing is harmless):
    DelayedChoice-v0              defaults (bonus 0); every constructor argument through gym.make kwargs
    DelayedChoice-bonus{i}-v0     i = 0 .. 4: the default delays with the bonus on choice i (delay
                                  1, 3, 10, 30, 100), for the training scripts' --env-id
    DelayedChoice-clock-bonus{i}-v0   the same with clock=True
    DelayedChoice-staggered-bonus{i}-v0, DelayedChoice-clock-staggered-bonus{i}-v0   the same two
                                  with staggered=True
    DelayedChoice-malus{i}-v0     the control: choice i pays 0.9 instead (bonus_reward 0.9). A learner
                                  that credits every delay alike avoids it; one biased towards delay i
                                  picks it anyway, and the return 0.9 shows it.
    DelayedChoice-clock-malus{i}-v0   the control for the clock variants
"""

from __future__ import annotations

import math
import numbers

import gymnasium as gym
import numpy as np
from gymnasium import spaces

DEFAULT_DELAYS = (1, 3, 10, 30, 100)
DEFAULT_BONUS_REWARD = 1.1


def resolve_params(delays=DEFAULT_DELAYS, bonus=0, bonus_reward=DEFAULT_BONUS_REWARD, episode_length=None):
    """Validated (delays, bonus, bonus_reward, episode_length), with the defaults filled in."""
    delays = tuple(delays)
    if not delays or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 0 for d in delays):
        raise ValueError(f"DelayedChoice: delays must be a non-empty list of ints >= 0, got {delays!r}")
    delays = tuple(int(d) for d in delays)
    if isinstance(bonus, bool) or not isinstance(bonus, numbers.Integral) or not 0 <= bonus < len(delays):
        raise ValueError(f"DelayedChoice: bonus must be a choice index in 0 .. {len(delays) - 1}, got {bonus!r}")
    if isinstance(bonus_reward, bool) or not isinstance(bonus_reward, numbers.Real) or not math.isfinite(bonus_reward):
        raise ValueError(f"DelayedChoice: bonus_reward must be a finite number, got {bonus_reward!r}")
    if episode_length is None:
        episode_length = max(delays) + 1
    if isinstance(episode_length, bool) or not isinstance(episode_length, numbers.Integral) or episode_length < 1:
        raise ValueError(f"DelayedChoice: episode_length must be a positive int, got {episode_length!r}")
    return delays, int(bonus), float(bonus_reward), int(episode_length)


def choice_rewards(delays=DEFAULT_DELAYS, bonus=0, bonus_reward=DEFAULT_BONUS_REWARD, episode_length=None):
    """The return of each choice: its reward if its delay falls inside the episode, else 0."""
    delays, bonus, bonus_reward, length = resolve_params(delays, bonus, bonus_reward, episode_length)
    return [(bonus_reward if i == bonus else 1.0) if d < length else 0.0 for i, d in enumerate(delays)]


def optimal_return(delays=DEFAULT_DELAYS, bonus=0, bonus_reward=DEFAULT_BONUS_REWARD, episode_length=None):
    """The best return of an episode: the largest reward among the choices that are paid."""
    return max(choice_rewards(delays, bonus, bonus_reward, episode_length))


class DelayedChoice(gym.Env):
    """Choose once at t = 0; choice i pays once, delays[i] steps later. See the module docstring."""

    metadata = {"render_modes": []}

    def __init__(self, delays=DEFAULT_DELAYS, bonus=0, bonus_reward=DEFAULT_BONUS_REWARD, episode_length=None,
                 clock=False, staggered=False, render_mode=None):
        if render_mode is not None:
            raise ValueError(f"DelayedChoice: no render modes, got render_mode={render_mode!r}")
        if not isinstance(staggered, bool):
            raise ValueError(f"DelayedChoice: staggered must be True or False, got {staggered!r}")
        self.staggered = staggered
        self.delays, self.bonus, self.bonus_reward, self.episode_length = resolve_params(
            delays, bonus, bonus_reward, episode_length
        )
        self.render_mode = None
        n = len(self.delays)
        self.clock = bool(clock)
        size = 1 + n + (self.episode_length + 1 if self.clock else 0)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(size,), dtype=np.float32)
        self.action_space = spaces.Discrete(n)
        self._choice = None
        self._t = 0
        self._done = True

    def _observation(self):
        n = len(self.delays)
        obs = np.zeros(self.observation_space.shape, dtype=np.float32)
        obs[0] = (self.episode_length - self._t) / self.episode_length
        if self._choice is not None:
            obs[1 + self._choice] = 1.0
        if self.clock:
            obs[1 + n + self._t] = 1.0
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._choice = None
        self._t = 0
        self._done = False
        if self.staggered and seed is not None:  # join the first episode at a random step (module docstring)
            self._t = int(self.np_random.integers(self.episode_length))
        return self._observation(), {}

    def step(self, action):
        if self._done:
            raise RuntimeError("DelayedChoice: step() called after the episode ended; call reset()")
        if not self.action_space.contains(action):
            raise ValueError(f"DelayedChoice: action must be in 0 .. {len(self.delays) - 1}, got {action!r}")
        if self._t == 0:
            self._choice = int(action)  # the only action that matters
        reward = 0.0
        if self._choice is not None and self._t == self.delays[self._choice]:  # None: joined after the choice
            reward = self.bonus_reward if self._choice == self.bonus else 1.0
        self._t += 1
        terminated = self._t >= self.episode_length
        self._done = terminated
        return self._observation(), reward, terminated, False, {}


def variant_id(bonus, staggered=False):
    return f"DelayedChoice{'-staggered' if staggered else ''}-bonus{bonus}-v0"


def clock_id(bonus, staggered=False):
    return f"DelayedChoice-clock{'-staggered' if staggered else ''}-bonus{bonus}-v0"


def malus_id(choice):
    return f"DelayedChoice-malus{choice}-v0"


def clock_malus_id(choice):
    return f"DelayedChoice-clock-malus{choice}-v0"


def _register():
    entry = f"{__name__ if __name__ != '__main__' else 'scripts.delayed_choice'}:DelayedChoice"
    if "DelayedChoice-v0" not in gym.registry:
        gym.register(id="DelayedChoice-v0", entry_point=entry)
    for bonus in range(len(DEFAULT_DELAYS)):
        for staggered in (False, True):
            more = {"staggered": True} if staggered else {}
            if variant_id(bonus, staggered) not in gym.registry:
                gym.register(id=variant_id(bonus, staggered), entry_point=entry, kwargs=dict(bonus=bonus) | more)
            if clock_id(bonus, staggered) not in gym.registry:
                gym.register(id=clock_id(bonus, staggered), entry_point=entry, kwargs=dict(bonus=bonus, clock=True) | more)
        if malus_id(bonus) not in gym.registry:
            gym.register(id=malus_id(bonus), entry_point=entry, kwargs=dict(bonus=bonus, bonus_reward=0.9))
        if clock_malus_id(bonus) not in gym.registry:
            gym.register(id=clock_malus_id(bonus), entry_point=entry, kwargs=dict(bonus=bonus, bonus_reward=0.9, clock=True))


_register()
