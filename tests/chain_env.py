"""A tiny deterministic env for the resume test: `--env-id chain_env:Chain-v0` with tests/ on PYTHONPATH.

Every episode is the same 8 steps whatever the actions and seeds: the observation is a one-hot of the
step, the reward 1 when the action equals the step's parity, and the 8th step is a truncation (so the
scripts bootstrap from the final observation). With rollouts a multiple of 8 steps long, restarting the
envs at a rollout boundary changes nothing, so an interrupted and resumed run sees the same data as an
uninterrupted one.

If $CHAIN_SIGTERM_AT_STEP is set, the env sends SIGTERM to its own process at that total step count
(over all Chain envs of the process): an interruption at a known point, from inside a rollout.
"""

import os
import signal

import gymnasium as gym
import numpy as np

LENGTH = 8


class Chain(gym.Env):
    observation_space = gym.spaces.Box(0.0, 1.0, (LENGTH + 1,), np.float32)
    action_space = gym.spaces.Discrete(2)
    total_steps = 0  # over all instances, for the SIGTERM

    def _obs(self):
        return np.eye(LENGTH + 1, dtype=np.float32)[self.t]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        reward = float(int(action) == self.t % 2)
        self.t += 1
        Chain.total_steps += 1
        if Chain.total_steps == int(os.environ.get("CHAIN_SIGTERM_AT_STEP", -1)):
            os.kill(os.getpid(), signal.SIGTERM)
        return self._obs(), reward, False, self.t == LENGTH, {}


gym.register("Chain-v0", entry_point=Chain)
