"""Where a trained agent loses MinAtar Breakout: its score and the bricks left when the ball is lost.

    python scripts/breakout_trap.py results/minatar_race/runs/MinAtar_Breakout-v1__ppo_gae-8c52dab0__2/checkpoint.pt

Plays --games games with sampled actions, then the same number with greedy ones (the most likely
action), one env, and prints for each how often each score and each count of bricks left occurred.
Takes checkpoints of either script (only the policy is used).
"""

import argparse
import collections
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import p3o  # noqa: E402
import ppo_gae  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--games", type=int, default=100)
    parser.add_argument("--seed", type=int, default=11)
    options = parser.parse_args()
    if not os.path.isfile(options.checkpoint):
        sys.exit(f"error: no checkpoint file at {options.checkpoint}")
    checkpoint = torch.load(options.checkpoint, map_location="cpu", weights_only=True)  # tensors and plain values only
    module = p3o if checkpoint.get("script", "p3o.py" if "horizon" in checkpoint["args"] else "ppo_gae.py") == "p3o.py" else ppo_gae
    args = dataclasses.replace(module.saved_args(checkpoint), num_envs=1)
    if "Breakout" not in args.env_id:
        sys.exit(f"error: {options.checkpoint} was trained on {args.env_id}, not MinAtar Breakout")
    envs = module.make_envs(args)
    agent = module.Agent(envs, args)
    agent.load_state_dict(checkpoint["model"])
    game = envs.envs[0].unwrapped.game.env  # MinAtar's Breakout: brick_map holds the bricks left
    for mode in ("sampled", "greedy"):
        torch.manual_seed(options.seed)
        scores, bricks_left = [], []
        obs, _ = envs.reset(seed=options.seed)
        score = 0.0
        while len(scores) < options.games:
            with torch.no_grad():
                logits = agent.actor(agent.features(torch.as_tensor(obs))[0])
            action = logits.argmax(-1) if mode == "greedy" else torch.distributions.Categorical(logits=logits).sample()
            left = int(game.brick_map.sum())  # before the step: the reset after a lost ball refills the wall
            obs, reward, terminated, truncated, _ = envs.step(action.numpy())
            score += float(reward[0])
            if terminated[0] or truncated[0]:
                scores.append(score)
                bricks_left.append(left)
                score = 0.0
        print(f"{mode}: score mean {np.mean(scores):.2f}, median {np.median(scores):.1f} over {len(scores)} games")
        print("  games per score:      ", dict(sorted(collections.Counter(int(s) for s in scores).items())))
        print("  games per bricks left:", dict(sorted(collections.Counter(bricks_left).items())))
    envs.close()


if __name__ == "__main__":
    main()
