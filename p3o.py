"""P3O: PPO with a learned, adaptive-horizon advantage in place of GAE, CleanRL style, on real Atari.

    python p3o.py --horizon 32 --env-id Breakout         # train (10M steps, CleanRL's settings)
    python p3o.py --eval-checkpoint runs/<run>/p3o.pt    # score a saved agent

The critic predicts each of the next H rewards as a Gaussian (mean mu[k], std sigma[k]), trained by
Gaussian negative log-likelihood. The advantage weighs each future step's surprise by how precisely
its reward is predicted (above c times chance): no gamma, no lambda (docs/p3o.md has the equations).
The file reads top to bottom: arguments, environment, agent, then the training loop
(rollout, advantage, update, logging). It is ppo_gae.py with the algorithm changed;
`diff ppo_gae.py p3o.py` shows exactly what P3O changes.
"""

import difflib
import importlib
import os
import random
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal, Optional

import ale_py
import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
import tyro
from torch.distributions.categorical import Categorical
from torch.utils.tensorboard import SummaryWriter

from p3o_kernel_loader import load_kernels


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (prefix of the run name)"""
    seed: int = 1
    """seed of the experiment (torch, numpy, random and the environments)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """where the networks and the advantage kernel run; `auto` picks CUDA when PyTorch sees a GPU"""
    track: bool = False
    """if toggled, the run is tracked with Weights and Biases (the TensorBoard scalars are synced)"""
    wandb_project_name: str = "p3o"
    """the Weights and Biases project"""
    wandb_entity: Optional[str] = None
    """the Weights and Biases entity (team); None is your default entity"""
    wandb_mode: Literal["online", "offline"] = "online"
    """`offline` writes the W&B run locally, to upload later with `wandb sync`"""
    save_model: bool = False
    """if toggled, the agent is saved to runs/{run_name}/{exp_name}.pt at the end"""
    eval_checkpoint: Optional[str] = None
    """if given, skip training: load this checkpoint and print its score over `eval_episodes` games"""
    eval_episodes: int = 10
    """the number of full games played by `--eval-checkpoint`"""

    # Environment
    env_id: str = "Breakout"
    """the Atari game: `Breakout`, `BreakoutNoFrameskip-v4` and `ALE/Breakout-v5` all name the same game
    (preprocessing is set by the flags here, not by the suffix); or any registered gymnasium id"""
    sticky_actions: bool = False
    """if toggled, v5-style sticky actions (the previous action repeats with probability 0.25)"""

    # Algorithm
    total_timesteps: int = 10_000_000
    """total environment steps (agent steps, 4 frames each on Atari) of the experiment"""
    learning_rate: float = 2.5e-4
    """the learning rate of the optimizer"""
    num_envs: int = 8
    """the number of parallel environments"""
    num_steps: int = 128
    """the number of steps per environment in each rollout"""
    anneal_lr: bool = True
    """if toggled, the learning rate decays linearly to 0 over training"""
    horizon: int = 32
    """H, the number of future rewards the critic predicts and the advantage can credit"""
    normalization: Literal["sum", "max"] = "sum"
    """how each row's weights are normalized: `sum` (they sum to 1) or `max` (the largest is 1)"""
    chance_coef: float = 0.0
    """c in [0, 1]: a step's precision 1/sigma[k]^2 counts only above c times the chance level 1/sigma_r^2"""
    advantage_sigma: Literal["rollout", "learned"] = "rollout"
    """the sigma[k] the advantage weighs by: `rollout`, the root-mean-square error of mu[k] on this
    rollout's rewards inside the episode (the value the learned sigma converges to, without its lag);
    `learned`, the value head's sigma, as the original P3O (docs/p3o.md)"""
    state_sigma: bool = False
    """if toggled, sigma[k] is predicted per state by a head (needs `--advantage-sigma learned`);
    by default it is one learned parameter per k"""
    num_minibatches: int = 4
    """the number of minibatches per epoch"""
    update_epochs: int = 4
    """the number of passes over the rollout per update"""
    norm_adv: bool = True
    """if toggled, advantages are normalized per minibatch"""
    clip_coef: float = 0.1
    """the surrogate clipping coefficient"""
    ent_coef: float = 0.01
    """the entropy bonus coefficient"""
    vf_coef: float = 0.5
    """the value loss coefficient"""
    max_grad_norm: float = 0.5
    """the maximum norm of the gradient"""
    target_kl: Optional[float] = None
    """if set, an update stops early once the approximate KL exceeds it"""

    # Filled in at runtime
    batch_size: int = 0
    """num_envs * num_steps"""
    minibatch_size: int = 0
    """batch_size // num_minibatches"""
    num_iterations: int = 0
    """total_timesteps // batch_size"""


def check_args(args: Args) -> None:
    """Reject bad values at once, with the flag's name, before anything is built."""
    resolve_env_id(args.env_id)  # exits with the closest valid names if unknown
    errors = []
    for name in ("num_envs", "num_steps", "num_minibatches", "update_epochs", "eval_episodes"):
        if getattr(args, name) < 1:
            errors.append(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.learning_rate <= 0:
        errors.append(f"--learning-rate must be positive, got {args.learning_rate}")
    if args.horizon < 1:
        errors.append(f"--horizon must be at least 1, got {args.horizon}")
    if not 0.0 <= args.chance_coef <= 1.0:
        errors.append(f"--chance-coef must be in [0, 1], got {args.chance_coef}")
    if args.state_sigma and args.advantage_sigma != "learned":
        errors.append("--state-sigma needs --advantage-sigma learned (one rollout cannot measure a per-state sigma)")
    for name in ("clip_coef", "ent_coef", "vf_coef", "max_grad_norm"):
        if getattr(args, name) < 0:
            errors.append(f"--{name.replace('_', '-')} must not be negative, got {getattr(args, name)}")
    if args.num_envs * args.num_steps % max(args.num_minibatches, 1):
        errors.append(
            f"--num-minibatches ({args.num_minibatches}) must divide num_envs * num_steps "
            f"({args.num_envs * args.num_steps})"
        )
    if args.eval_checkpoint is None and args.total_timesteps < args.num_envs * args.num_steps:
        errors.append(
            f"--total-timesteps ({args.total_timesteps}) is less than one rollout "
            f"(num_envs * num_steps = {args.num_envs * args.num_steps})"
        )
    if args.device == "cuda" and not torch.cuda.is_available():
        errors.append("--device cuda was asked for, but PyTorch sees no CUDA GPU (use --device cpu or auto)")
    if errors:
        sys.exit("error: " + "\n       ".join(errors))


# ---------------------------------------------------------------------------------------------
# Environment: DeepMind Atari preprocessing, as CleanRL's published scores were obtained with.
# ---------------------------------------------------------------------------------------------
gym.register_envs(ale_py)


def resolve_env_id(env_id: str) -> tuple[str, str]:
    """Return ("atari", ALE game id) or ("gym", registered id); exit with suggestions if unknown."""
    game = env_id.removeprefix("ALE/").split("-v")[0].removesuffix("NoFrameskip").removesuffix("Deterministic")
    atari_games = sorted({spec.name for spec in gym.registry.values() if spec.namespace == "ALE"})
    if game in atari_games:
        return "atari", f"ALE/{game}-v5"
    if env_id in gym.registry:
        return "gym", env_id
    if ":" in env_id:  # "module:EnvName-v0": importing the module registers the env, as in gym.make
        module, _, name = env_id.partition(":")
        try:
            importlib.import_module(module)
            gym.spec(name)
        except Exception as error:
            sys.exit(f"error: cannot load --env-id '{env_id}': {error}")
        return "gym", env_id
    close = difflib.get_close_matches(game, atari_games, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(close)}?" if close else " e.g. Breakout, Pong, SpaceInvaders."
    sys.exit(f"error: unknown --env-id '{env_id}': not an Atari game of ale-py nor a registered gymnasium id.{hint}")


class EpisodicLifeFireReset(gym.Wrapper):
    """A lost life ends the training episode while the game goes on; FIRE starts play where needed.

    On a life loss, step() reports terminated=True. The vector env then calls reset(), which here
    does not restart the game: it presses FIRE (games like Breakout wait for it to serve the ball)
    or NOOP, and returns that observation. Only at game over does reset() restart the game
    (with AtariPreprocessing's up to 30 no-op steps) and press FIRE.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        meanings = env.unwrapped.get_action_meanings()
        self.start_action = meanings.index("FIRE") if "FIRE" in meanings else 0
        self.lives = 0
        self.game_over = True

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        lives = self.env.unwrapped.ale.lives()
        life_lost = 0 < lives < self.lives
        self.lives = lives
        return obs, reward, terminated or life_lost, truncated, info

    def reset(self, **kwargs):
        if self.game_over:
            obs, info = self.env.reset(**kwargs)
            self.lives = self.env.unwrapped.ale.lives()
        obs, _, terminated, truncated, info = self.env.step(self.start_action)
        if terminated or truncated:  # the game ended within that one step: start a new one
            self.game_over = True
            return self.reset(**kwargs)
        self.game_over = False
        self.lives = self.env.unwrapped.ale.lives()
        return obs, info


def make_env(kind: str, env_id: str, sticky_actions: bool):
    def thunk():
        if kind == "gym":
            env = gym.make(env_id)
            return gym.wrappers.RecordEpisodeStatistics(env)
        env = gym.make(
            env_id,
            frameskip=1,  # AtariPreprocessing skips 4 frames and max-pools the last two
            repeat_action_probability=0.25 if sticky_actions else 0.0,
            full_action_space=False,
            max_num_frames_per_episode=108_000,  # 30 minutes of play, then truncation
        )
        env = gym.wrappers.AtariPreprocessing(
            env, noop_max=30, frame_skip=4, screen_size=84, terminal_on_life_loss=False, grayscale_obs=True
        )
        env = gym.wrappers.RecordEpisodeStatistics(env)  # the real, unclipped full-game score
        env = EpisodicLifeFireReset(env)
        env = gym.wrappers.TransformReward(env, lambda r: float(np.sign(r)))  # train on clipped rewards
        return gym.wrappers.FrameStackObservation(env, 4)

    return thunk


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    """A shared Nature CNN for Atari frames (or two 64-64 MLPs for flat observations); actor and critic heads."""

    def __init__(self, envs, horizon, state_sigma):
        super().__init__()
        obs_shape = envs.single_observation_space.shape
        self.pixels = len(obs_shape) == 3
        if self.pixels:
            self.network = nn.Sequential(
                layer_init(nn.Conv2d(obs_shape[0], 32, 8, stride=4)),
                nn.ReLU(),
                layer_init(nn.Conv2d(32, 64, 4, stride=2)),
                nn.ReLU(),
                layer_init(nn.Conv2d(64, 64, 3, stride=1)),
                nn.ReLU(),
                nn.Flatten(),
                layer_init(nn.Linear(64 * 7 * 7, 512)),
                nn.ReLU(),
            )
            hidden = 512
        else:  # flat observations: separate 64-64 torsos for the actor and the critic, as CleanRL's ppo.py
            mlp = lambda: nn.Sequential(  # noqa: E731
                layer_init(nn.Linear(int(np.prod(obs_shape)), 64)),
                nn.Tanh(),
                layer_init(nn.Linear(64, 64)),
                nn.Tanh(),
            )
            self.network, self.critic_network = mlp(), mlp()
            hidden = 64
        self.actor = layer_init(nn.Linear(hidden, envs.single_action_space.n), std=0.01)
        self.critic = layer_init(nn.Linear(hidden, horizon), std=1)  # mu[k]: predicted r_{t+k}
        self.state_sigma = state_sigma
        if state_sigma:
            self.critic_log_sigma = layer_init(nn.Linear(hidden, horizon), std=0.01)
        else:
            self.log_sigma = nn.Parameter(torch.zeros(horizon))  # log sigma[k], shared by all states

    def features(self, x):
        """(actor features, critic features): the CNN is shared, the MLPs are not."""
        x = x.float() / 255.0 if self.pixels else x.float().flatten(1)
        hidden = self.network(x)
        return hidden, hidden if self.pixels else self.critic_network(x)

    def log_sigma_head(self, critic_hidden):
        """log sigma[k], [batch, H]: the spread of each prediction, per state or shared by all states."""
        if self.state_sigma:
            return self.critic_log_sigma(critic_hidden)
        return self.log_sigma.expand(critic_hidden.shape[0], -1)

    def get_value(self, x):
        """mu, [batch, H]: the predicted next H rewards."""
        return self.critic(self.features(x)[1])

    def get_action_and_value(self, x, action=None):
        """action, log-probability, entropy, and the critic's Gaussian: mu and log_sigma, each [batch, H]."""
        hidden, critic_hidden = self.features(x)
        probs = Categorical(logits=self.actor(hidden))
        if action is None:
            action = probs.sample()
        mu = self.critic(critic_hidden)
        return action, probs.log_prob(action), probs.entropy(), mu, self.log_sigma_head(critic_hidden)


def explained_variance(y_pred: torch.Tensor, y_true: torch.Tensor) -> float:
    """1 - Var(y_true - y_pred) / Var(y_true): 1 is a perfect prediction, 0 no better than the mean."""
    var_y = torch.var(y_true).item()
    return np.nan if var_y == 0 else 1 - torch.var(y_true - y_pred).item() / var_y


# ---------------------------------------------------------------------------------------------
# P3O's weights (docs/p3o.md): how much each future step k counts in the advantage. The kernel
# normalizes them per row (w_t[k] = weight[k] / norm_t) and sums w_t[k] * (y_{t+k} - mu_t[k]).
# ---------------------------------------------------------------------------------------------
def chance_level(rewards: torch.Tensor) -> torch.Tensor:
    """sigma_r^2: the population variance of the batch's one-step rewards, i.e. the mean squared
    error of predicting every reward by their mean (what a critic at chance scores)."""
    return rewards.var(correction=0)


def rollout_sigma2(kernels, rewards, terminations, truncations, mus, mu_next) -> torch.Tensor:
    """sigma[k]^2, [H]: the mean of (r_{t+k} - mu_t[k])^2 over the rollout's live rewards, those
    inside the rollout and inside t's episode (not the zeros after a termination, nothing after a
    truncation or past the rollout's end). It is the value the value loss's sigma[k] converges to,
    without a learned sigma's lag. inf where k has no live reward (its weight is then 0).
    rewards, terminations, truncations: [T, N]; mus: [T, H, N]; mu_next: [H, N]."""
    targets, _, live = kernels.p3o_targets(rewards, terminations, truncations, mu_next)
    live_count = live.sum((0, 2))
    squared_error = (live * (targets - mus) ** 2).sum((0, 2))
    return torch.where(live_count > 0, squared_error / live_count.clamp(min=1), torch.inf)


def precision_weight(sigma2: torch.Tensor, sigma_r2: torch.Tensor, chance_coef: float) -> torch.Tensor:
    """weight[k] = max(0, 1/sigma[k]^2 - c/sigma_r^2), any shape: the precision above c times chance.
    sigma_r^2 = 0 drops the chance term; sigma^2 = inf (unmeasured) gives 0; sigma^2 is floored at
    1e-12. A non-finite result (from a NaN sigma^2: the critic diverged) stops the run."""
    chance = chance_coef / sigma_r2 if sigma_r2 > 0 else 0.0
    weight = (1 / sigma2.clamp(min=1e-12) - chance).clamp(min=0)
    if not torch.isfinite(weight).all():
        sys.exit(f"error: the P3O weight is not finite ({int((~torch.isfinite(weight)).sum())} NaN or inf "
                 f"of {weight.numel()}): sigma[k]^2 has NaN, so the critic's predictions are not finite")
    return weight


def make_envs(args: Args):
    kind, env_id = resolve_env_id(args.env_id)
    vector_env = gym.vector.AsyncVectorEnv if kind == "atari" else gym.vector.SyncVectorEnv  # a process per Atari env
    envs = vector_env(
        [make_env(kind, env_id, args.sticky_actions) for _ in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,  # obs after a done step is the new episode's first
    )
    assert isinstance(envs.single_action_space, gym.spaces.Discrete), "only discrete action spaces are supported"
    return envs


def finished_episodes(infos):
    """(score, length) of every episode that ended in this step, from the final step's info."""
    final = infos.get("final_info", {})
    if "episode" not in final:
        return []
    done = final["_episode"]
    return list(zip(final["episode"]["r"][done], final["episode"]["l"][done]))


def evaluate(args: Args, device: torch.device) -> None:
    """Play `eval_episodes` full games with a saved agent and print the scores."""
    checkpoint = torch.load(args.eval_checkpoint, map_location=device, weights_only=False)
    train_args = Args(**{**checkpoint["args"], "num_envs": min(args.eval_episodes, 8), "seed": args.seed})
    envs = make_envs(train_args)
    agent = Agent(envs, train_args.horizon, train_args.state_sigma).to(device)
    agent.load_state_dict(checkpoint["model"])
    next_obs, _ = envs.reset(seed=args.seed)
    scores = []
    while len(scores) < args.eval_episodes:
        with torch.no_grad():
            action, _, _, _, _ = agent.get_action_and_value(torch.as_tensor(next_obs, device=device))
        next_obs, _, _, _, infos = envs.step(action.cpu().numpy())
        scores += [float(score) for score, _ in finished_episodes(infos)]
    scores = scores[: args.eval_episodes]
    print(f"{train_args.env_id}: {len(scores)} games, score {np.mean(scores):.1f} +- {np.std(scores):.1f}: {scores}")
    envs.close()


if __name__ == "__main__":
    args = tyro.cli(Args)
    check_args(args)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    print(f"Using device: {device}" + ("" if device.type == "cuda" else " (no CUDA GPU visible to PyTorch)"))
    if args.eval_checkpoint:
        evaluate(args, device)
        sys.exit(0)
    args.batch_size = int(args.num_envs * args.num_steps)
    args.minibatch_size = int(args.batch_size // args.num_minibatches)
    args.num_iterations = args.total_timesteps // args.batch_size
    run_name = f"{args.env_id.replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    kernels = load_kernels(device)  # compiles p3o_kernel.cu on first use (about a minute), then cached

    envs = make_envs(args)
    if args.track:
        import wandb

        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            mode=args.wandb_mode,
            sync_tensorboard=True,
            config=vars(args),
            name=run_name,
            save_code=True,
        )
    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text(
        "hyperparameters",
        "|param|value|\n|-|-|\n%s" % ("\n".join([f"|{key}|{value}|" for key, value in vars(args).items()])),
    )

    agent = Agent(envs, args.horizon, args.state_sigma).to(device)
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)

    # Rollout storage, [T, N, ...]: the flags say that the step taken at t ended the episode
    obs = torch.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape, dtype=torch.uint8 if agent.pixels else torch.float32).to(device)
    actions = torch.zeros((args.num_steps, args.num_envs), dtype=torch.long).to(device)
    logprobs = torch.zeros((args.num_steps, args.num_envs)).to(device)
    rewards = torch.zeros((args.num_steps, args.num_envs)).to(device)
    terminations = torch.zeros((args.num_steps, args.num_envs)).to(device)
    truncations = torch.zeros((args.num_steps, args.num_envs)).to(device)
    mus = torch.zeros((args.num_steps, args.horizon, args.num_envs)).to(device)  # [T, H, N], env fastest
    log_sigmas = torch.zeros((args.num_steps, args.horizon, args.num_envs)).to(device)

    global_step = 0
    start_time = time.time()
    recent_scores = deque(maxlen=20)
    next_obs, _ = envs.reset(seed=args.seed)
    next_obs = torch.as_tensor(next_obs).to(device)

    for iteration in range(1, args.num_iterations + 1):
        if args.anneal_lr:
            frac = 1.0 - (iteration - 1.0) / args.num_iterations
            optimizer.param_groups[0]["lr"] = frac * args.learning_rate

        # Rollout: T steps in N envs with the current policy
        for step in range(0, args.num_steps):
            global_step += args.num_envs
            obs[step] = next_obs
            with torch.no_grad():
                action, logprob, _, mu, log_sigma = agent.get_action_and_value(next_obs)
                mus[step] = mu.T
                log_sigmas[step] = log_sigma.T
            actions[step] = action
            logprobs[step] = logprob

            next_obs, reward, terminated, truncated, infos = envs.step(action.cpu().numpy())
            rewards[step] = torch.as_tensor(reward, dtype=torch.float32).to(device)
            terminations[step] = torch.as_tensor(terminated, dtype=torch.float32).to(device)
            truncations[step] = torch.as_tensor(truncated, dtype=torch.float32).to(device)
            next_obs = torch.as_tensor(next_obs).to(device)

            for score, length in finished_episodes(infos):
                recent_scores.append(score)
                writer.add_scalar("charts/episodic_return", score, global_step)
                writer.add_scalar("charts/episodic_length", length, global_step)

        # Advantage: P3O, computed by the kernel in p3o_kernel.cu (docs/p3o.md)
        #   weight[k] = max(0, 1/sigma[k]^2 - c/sigma_r^2),   A_t = sum_k w_t[k] (y_{t+k} - mu_t[k])
        with torch.no_grad():
            mu_next = agent.get_value(next_obs).T.contiguous()  # [H, N]: predictions after the rollout
            sigma_r2 = chance_level(rewards)
            if args.advantage_sigma == "rollout":
                sigma2 = rollout_sigma2(kernels, rewards, terminations, truncations, mus, mu_next)
            else:
                sigma2 = torch.exp(2 * (log_sigmas if args.state_sigma else agent.log_sigma))
            weight = precision_weight(sigma2, sigma_r2, args.chance_coef).contiguous()
        advantages, targets, known = kernels.p3o_advantage(
            rewards, terminations, truncations, mus, mu_next, weight, args.normalization == "max"
        )

        # Flatten the batch
        b_obs = obs.reshape((-1,) + envs.single_observation_space.shape)
        b_logprobs = logprobs.reshape(-1)
        b_actions = actions.reshape(-1)
        b_advantages = advantages.reshape(-1)
        b_targets = targets.permute(0, 2, 1).reshape(-1, args.horizon)  # [T*N, H]: y_{t+k}
        b_known = known.permute(0, 2, 1).reshape(-1, args.horizon)
        b_mus = mus.permute(0, 2, 1).reshape(-1, args.horizon)

        # Update: clipped PPO objective over minibatches
        b_inds = np.arange(args.batch_size)
        clipfracs = []
        for epoch in range(args.update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, args.batch_size, args.minibatch_size):
                end = start + args.minibatch_size
                mb_inds = b_inds[start:end]

                _, newlogprob, entropy, new_mu, new_log_sigma = agent.get_action_and_value(b_obs[mb_inds], b_actions[mb_inds])
                logratio = newlogprob - b_logprobs[mb_inds]
                ratio = logratio.exp()

                with torch.no_grad():
                    # http://joschu.net/blog/kl-approx.html
                    old_approx_kl = (-logratio).mean()
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs += [((ratio - 1.0).abs() > args.clip_coef).float().mean().item()]

                mb_advantages = b_advantages[mb_inds]
                if args.norm_adv:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

                # Policy loss
                pg_loss1 = -mb_advantages * ratio
                pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
                pg_loss = torch.max(pg_loss1, pg_loss2).mean()

                # Value loss: Gaussian negative log-likelihood over the known targets, with the critic's sigma
                nll = new_log_sigma + 0.5 * (b_targets[mb_inds] - new_mu) ** 2 * torch.exp(-2 * new_log_sigma)
                v_loss = (nll * b_known[mb_inds]).sum() / b_known[mb_inds].sum().clamp(min=1)

                entropy_loss = entropy.mean()
                loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef

                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()

            if args.target_kl is not None and approx_kl > args.target_kl:
                break

        explained_var_mu0 = explained_variance(b_mus[:, 0], b_targets[:, 0])  # mu_t[0] against r_t
        explained_var = explained_variance(b_mus.sum(1), b_targets.sum(1))  # sum_k mu[k] against the H-step return

        # Logging
        sps = int(global_step / (time.time() - start_time))
        writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
        writer.add_scalar("losses/value_loss", v_loss.item(), global_step)
        writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
        writer.add_scalar("losses/entropy", entropy_loss.item(), global_step)
        writer.add_scalar("losses/old_approx_kl", old_approx_kl.item(), global_step)
        writer.add_scalar("losses/approx_kl", approx_kl.item(), global_step)
        writer.add_scalar("losses/clipfrac", np.mean(clipfracs), global_step)
        writer.add_scalar("losses/explained_variance", explained_var, global_step)
        writer.add_scalar("charts/SPS", sps, global_step)
        # P3O diagnostics: where sigma[k] crosses sigma_r is the horizon the advantage credits
        sigma = sigma2.sqrt() if sigma2.dim() == 1 else sigma2.sqrt().mean((0, 2))  # [H], inf: unmeasured
        weight_k = weight if weight.dim() == 1 else weight.mean((0, 2))  # [H]
        w = weight_k / (weight_k.max() if args.normalization == "max" else weight_k.sum()).clamp(min=1e-12)
        ks = torch.arange(args.horizon, dtype=torch.float32, device=device)
        writer.add_scalar("p3o/sigma_r", sigma_r2.sqrt().item(), global_step)
        writer.add_scalar("p3o/effective_horizon", ((ks * w).sum() / w.sum().clamp(min=1e-12)).item(), global_step)
        writer.add_scalar("p3o/credited_steps", (weight_k > 0).sum().item(), global_step)
        writer.add_scalar("p3o/explained_variance_mu0", explained_var_mu0, global_step)
        for k in sorted({0, args.horizon - 1} | {2**i for i in range(args.horizon.bit_length()) if 2**i < args.horizon}):
            writer.add_scalar(f"p3o/sigma/k{k:03d}", sigma[k].item(), global_step)
            writer.add_scalar(f"p3o/weight/k{k:03d}", w[k].item(), global_step)
        if sys.stdout.isatty() or iteration % 10 == 0 or iteration == args.num_iterations:
            score = f"{np.mean(recent_scores):8.1f}" if recent_scores else "     n/a"
            last = iteration == args.num_iterations or not sys.stdout.isatty()
            line = f"step {global_step:>10,}/{args.total_timesteps:,} | SPS {sps:>6,} | return (last 20 games) {score}"
            print("\r" + line, end="\n" if last else "", flush=True)

    if args.save_model:
        model_path = f"runs/{run_name}/{args.exp_name}.pt"
        torch.save({"args": vars(args), "model": agent.state_dict()}, model_path)
        print(f"model saved to {model_path}; score it with: python {args.exp_name}.py --eval-checkpoint {model_path}")

    envs.close()
    writer.close()
