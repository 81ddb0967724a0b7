"""MinAtar games seen as a flat vector instead of a 10x10xC grid: a check of the network, not a benchmark.

gymnax's published PPO on MinAtar reads the flattened grid with an MLP; both scripts give MinAtar grids
MinAtar's CNN and flat observations CleanRL's two 64-64 MLPs. Through these ids the same game reaches
the MLPs, so the two networks can be compared with everything else equal (docs/results.md, the
Breakout gap). Sticky actions are off and difficulty ramps, as in gymnax's MinAtar.

    python ppo_gae.py --env-id scripts.minatar_flat:MinAtarFlat/Breakout-v1
"""

import gymnasium as gym
import minatar.gym

GAMES = ["Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders"]


def make_flat(game: str) -> gym.Env:
    """MinAtar/<game>-v1 (minimal action set) with no sticky actions, its bool grid flattened to C*100 values."""
    return gym.wrappers.FlattenObservation(gym.make(f"MinAtar/{game}-v1", sticky_action_prob=0.0, difficulty_ramping=True))


if "MinAtar/Breakout-v1" not in gym.registry:
    minatar.gym.register_envs()
for _game in GAMES:
    if f"MinAtarFlat/{_game}-v1" not in gym.registry:
        gym.register(id=f"MinAtarFlat/{_game}-v1", entry_point=make_flat, kwargs=dict(game=_game))
