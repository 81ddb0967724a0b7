"""What a DelayedChoice agent's critic makes of each choice: row 0's sum of surprises at several lambdas.

For a checkpoint of p3o.py trained on a DelayedChoice id, play one episode per choice (the choice at the
first step, action 0 after it; later actions change nothing) and print, per choice,

    pi         the policy's probability of the choice at the first step
    mu_1[d-1]  the critic's prediction, one step after the choice, of the reward the choice pays at its delay d
    q_0[d]     (checkpoints of --weight-rule action only) the action-conditional head's prediction, at the
               choice itself, of the same reward after this choice: q_0[d, choice]
    row sum    sum_k e_0[k] over row 0's H offsets, the lambda-surprise of p3o.py's --surprise-lambda
               (lambda 1: the observed surprise r_k - mu_0[k]), i.e. --weight-rule action's advantage of the
               choice before its row share (the same for every choice in a state where the action matters)

The row sums are the kernel's (p3o_kernel.cu, tested against tests/reference.py) on the episode seen as
one env's rollout. Used in docs/long_horizons.md, sections 17 and 18:

    python scripts/probe_lambda_delayed_choice.py runs/NAME/checkpoint.pt [--lambdas 1 0.97]
"""

import argparse
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import p3o  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint.pt (or --save-model file) of p3o.py on a DelayedChoice id")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[1.0, 0.97], help="the lambdas of the row sums")
    args_cli = parser.parse_args()
    checkpoint = p3o.load_checkpoint(args_cli.checkpoint, "checkpoint", torch.device("cpu"))
    args = p3o.saved_args(checkpoint)
    if "DelayedChoice" not in args.env_id:
        sys.exit(f"error: {args_cli.checkpoint} was trained on {args.env_id}, not a DelayedChoice id")
    args.num_envs = 1
    envs = p3o.make_envs(args)
    agent = p3o.Agent(envs, args)
    agent.load_state_dict(checkpoint["model"])
    envs.close()
    kernels = p3o.load_kernels(torch.device("cpu"))
    env = gym.make(args.env_id.split(":")[-1]).unwrapped
    print(f"{args_cli.checkpoint}: {args.env_id}, step {checkpoint.get('global_step', 'n/a')}, H = {args.horizon}")
    for choice, delay in enumerate(env.delays):
        obs, _ = env.reset(seed=0)
        observations, rewards, terminated, done, action = [obs], [], [], False, choice
        while not done:
            obs, reward, term, trunc, _ = env.step(action)
            observations.append(obs), rewards.append(reward), terminated.append(term)
            done, action = term or trunc, 0
        with torch.no_grad():
            x = torch.as_tensor(np.array(observations), dtype=torch.float32)
            mus = agent.get_value(x)  # [T + 1, H]
            pi = torch.softmax(agent.actor(agent.features(x[:1])[0]), -1)[0, choice].item()
            q_0 = agent.action_effect(x[:1], torch.tensor([choice]))[0][0] if args.weight_rule == "action" else None
        T = len(rewards)
        sums = []
        for lam in args_cli.lambdas:  # the episode as one env's rollout: weight 1 at every k, not normalized
            advantages, _, _ = kernels.p3o_advantage(
                torch.tensor(rewards, dtype=torch.float32)[:, None], torch.tensor(terminated, dtype=torch.float32)[:, None],
                torch.zeros(T, 1), mus[:T, :, None].contiguous(), mus[T][:, None].contiguous(), torch.ones(args.horizon),
                False, normalize=False, lam=lam,
            )  # fmt: skip
            sums.append(advantages[0, 0].item())
        ahead = f"{mus[1, delay - 1].item():6.3f}" if delay - 1 < args.horizon else "   n/a"
        if q_0 is not None:
            ahead += f"  q_0[d] {q_0[delay].item():6.3f}" if delay < args.horizon else "  q_0[d]    n/a"
        print(f"choice {choice} (delay {delay:3d}, pays {sum(rewards):.2f}): pi {pi:.3f}  mu_1[d-1] {ahead}  "
              + "  ".join(f"row sum at lambda {lam:g}: {s:+.3f}" for lam, s in zip(args_cli.lambdas, sums)))


if __name__ == "__main__":
    main()
