"""Where a far30 run's last points go: probe p3o.py checkpoints on TwoHorizons-far30's slack.

    python scripts/probe_far30_slack.py runs/<sweep>/runs/<run>/checkpoint.pt ... [--episodes 96]

After the fourth far reward an episode has D / 2 = 15 steps left, too few for a fifth: there only
collecting pays (+1 three steps later), and the defaults end at 244-248 by doing so, 240 without.
For each checkpoint this plays --episodes episodes, the policy acting during the four cycles and a
uniformly random action in the slack (so that both actions are sampled there), and prints:
  - P(collect) of the policy in the cycles and in the slack;
  - the critic's mu_{t+1}[2] after a slack collect and after a slack invest: whether the critic
    knows the pending reward a collect leaves in the observation;
  - the mean P3O advantage of each action on the slack steps whose collect is paid, at
    --surprise-lambda 1 and 0.95, with the run's own sigma settings (one rollout of all episodes).
"""

import argparse
import sys
from pathlib import Path

import gymnasium as gym
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import p3o  # noqa: E402
import scripts.two_horizons  # noqa: E402,F401  (registers the ids)
from p3o_kernel_loader import load_kernels  # noqa: E402


def probe(path, episodes, kernels):
    checkpoint = p3o.load_checkpoint(path, "checkpoint", torch.device("cpu"))
    args = p3o.saved_args(checkpoint)
    if args.env_id != "scripts.two_horizons:TwoHorizons-far30-v0":
        sys.exit(f"error: {path} is a run on {args.env_id}, not TwoHorizons-far30")
    args.num_envs = 1
    agent = p3o.Agent(p3o.make_envs(args), args)
    agent.load_state_dict(checkpoint["model"])
    env = gym.make("TwoHorizons-far30-v0")
    T, N, far_reward = env.unwrapped.episode_length, episodes, env.unwrapped.far_reward
    obs = torch.zeros(T, N, *env.observation_space.shape)
    actions = torch.zeros(T, N, dtype=torch.long)
    rewards, terminations = torch.zeros(T, N), torch.zeros(T, N)
    p_collect, in_slack = torch.zeros(T, N), torch.zeros(T, N, dtype=torch.bool)
    for env_i in range(N):  # one episode per column: the rollout is the whole episode
        generator = torch.Generator().manual_seed(env_i)
        observation, _ = env.reset(seed=env_i)
        far_rewards = 0
        for t in range(T):
            obs[t, env_i] = torch.as_tensor(observation)
            with torch.no_grad():
                probs = torch.softmax(agent.actor(agent.features(obs[t, env_i][None])[0]), -1)[0]
            p_collect[t, env_i], in_slack[t, env_i] = probs[0], far_rewards >= 4
            random_action = torch.randint(2, (1,), generator=generator)
            actions[t, env_i] = random_action if far_rewards >= 4 else torch.multinomial(probs, 1, generator=generator)
            observation, rewards[t, env_i], terminated, truncated, _ = env.step(int(actions[t, env_i]))
            far_rewards += int(rewards[t, env_i] >= far_reward)
        terminations[T - 1, env_i] = 1.0  # far30 ends by termination after exactly T steps
    with torch.no_grad():
        mus = agent.get_value(obs.reshape(T * N, -1)).reshape(T, N, -1).permute(0, 2, 1).contiguous()
    truncations, mu_next = torch.zeros(T, N), torch.zeros(args.horizon, N)  # nothing follows the episode
    sigma2 = p3o.rollout_sigma2(kernels, rewards, terminations, truncations, mus, mu_next,
                                args.sigma_min_rows, args.sigma_prior_rows)
    weight = p3o.precision_weight(sigma2, p3o.chance_level(rewards), args.chance_coef).contiguous()
    paid = in_slack & (torch.arange(T)[:, None] < T - 3)  # a collect here is paid before the end
    collect, invest = paid & (actions == 0), paid & (actions == 1)
    after = mus[1:, 2, :]  # mu_{t+1}[2]: the reward of step t + 3, predicted after the action at t
    print(f"{Path(path).parent.name}: P(collect) in the cycles {p_collect[~in_slack].mean():.3f}, in the slack "
          f"{p_collect[in_slack].mean():.3f}; critic mu_(t+1)[2] after a slack collect {after[collect[:-1]].mean():+.3f}, "
          f"after an invest {after[invest[:-1]].mean():+.3f}")
    for lam in (1.0, 0.95):
        advantages = kernels.p3o_advantage(rewards, terminations, truncations, mus, mu_next, weight,
                                           args.normalization == "max", lam=lam)[0]
        print(f"    surprise lambda {lam}: slack advantage, collect {advantages[collect].mean():+.3f}, invest "
              f"{advantages[invest].mean():+.3f} (n {int(collect.sum())} / {int(invest.sum())}; std of all rows "
              f"{advantages.std():.3f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--episodes", type=int, default=96)
    cli = parser.parse_args()
    kernels = load_kernels(torch.device("cpu"))
    for path in cli.checkpoints:
        probe(path, cli.episodes, kernels)
