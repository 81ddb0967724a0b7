"""PPO with generalized advantage estimation (GAE), CleanRL style, on real Atari.

    python ppo_gae.py --env-id Breakout                  # train (10M steps, CleanRL's settings)
    python ppo_gae.py --eval-checkpoint runs/<run>/ppo_gae.pt   # score a saved agent
    python ppo_gae.py --resume runs/<run>/checkpoint.pt          # continue an interrupted run

The file reads top to bottom: arguments, environment, agent, then the training loop
(rollout, advantage, update, logging). p3o.py is this file with the advantage replaced;
`diff ppo_gae.py p3o.py` shows exactly what P3O changes.
"""

import atexit
import dataclasses
import difflib
import importlib
import math
import multiprocessing
import netrc
import os
import random
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal, Optional
from urllib.parse import urlparse

import ale_py
import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
import tyro
from torch.distributions.categorical import Categorical
from torch.utils.tensorboard import SummaryWriter

from p3o_kernel_loader import KernelBuildError, load_kernels

SCRIPT = os.path.basename(__file__)
# Checked once per update by check_finite below, instead of at every call (each check a device sync)
torch.distributions.Distribution.set_default_validate_args(False)


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
    wandb_group: Optional[str] = None
    """the Weights and Biases group of the run (scripts/compare.py puts all runs of one sweep in one group)"""
    save_model: bool = False
    """if toggled, the agent is saved to runs/{run_name}/{exp_name}.pt at the end"""
    eval_checkpoint: Optional[str] = None
    """if given, skip training: load this checkpoint and print its score over `eval_episodes` games"""
    eval_episodes: int = 10
    """the number of full games played by `--eval-checkpoint`"""
    run_name: Optional[str] = None
    """the run's folder is runs/{run_name}; default: {env_id}__{exp_name}__{seed}__{unix time}"""
    checkpoint_every: float = 600.0
    """seconds between checkpoints to runs/{run_name}/checkpoint.pt (checked once per iteration); one is
    also written at the end and on Ctrl-C or SIGTERM; 0: only then"""
    resume: Optional[str] = None
    """continue a run from a checkpoint file; `auto`: from runs/{run_name}/checkpoint.pt if it exists,
    else start afresh. The environments restart at the resume point."""

    # Environment
    env_id: str = "Breakout"
    """the Atari game: `Breakout`, `BreakoutNoFrameskip-v4` and `ALE/Breakout-v5` all name the same game
    (preprocessing is set by the flags here, not by the suffix); a MinAtar game (`MinAtar/Breakout-v1`,
    short `MinAtar-Breakout`); or any registered gymnasium id"""
    sticky_actions: bool = False
    """Atari only: if toggled, v5-style sticky actions (the previous action repeats with probability 0.25)"""
    minatar_sticky_prob: float = 0.1
    """MinAtar only: the probability that the previous action repeats instead of the chosen one
    (MinAtar's default and the MinAtar paper's, 0.1; gymnax's MinAtar has none, 0)"""
    mlp_width: int = 64
    """flat observations only: the units of each of the two hidden layers of the actor's and the
    critic's MLPs (CleanRL's 64; gymnax's MinAtar baselines use 256)"""
    mlp_activation: Literal["tanh", "relu"] = "tanh"
    """flat observations only: the MLPs' activation (CleanRL's tanh; gymnax's MinAtar baselines use relu)"""

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
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda of generalized advantage estimation"""
    num_minibatches: int = 4
    """the number of minibatches per epoch"""
    update_epochs: int = 4
    """the number of passes over the rollout per update"""
    norm_adv: bool = True
    """if toggled, advantages are normalized per minibatch"""
    clip_coef: float = 0.1
    """the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """if toggled, the value loss is clipped as in the PPO paper's code"""
    ent_coef: float = 0.01
    """the entropy bonus coefficient"""
    vf_coef: float = 0.5
    """the value loss coefficient"""
    max_grad_norm: float = 0.5
    """the maximum norm of the gradient"""
    target_kl: Optional[float] = None
    """if set, an update stops early once the approximate KL exceeds it"""

    # Filled in at runtime (not flags)
    batch_size: tyro.conf.Suppress[int] = 0
    """num_envs * num_steps"""
    minibatch_size: tyro.conf.Suppress[int] = 0
    """batch_size // num_minibatches"""
    num_iterations: tyro.conf.Suppress[int] = 0
    """total_timesteps / batch_size, rounded up"""


def check_args(args: Args) -> None:
    """Reject bad values at once, with the flag's name, before anything is built."""
    resolve_env_id(args.env_id)  # exits with the closest valid names if unknown
    errors = []
    for name in ("num_envs", "num_steps", "num_minibatches", "update_epochs", "eval_episodes", "mlp_width"):
        if getattr(args, name) < 1:
            errors.append(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.learning_rate <= 0:
        errors.append(f"--learning-rate must be positive, got {args.learning_rate}")
    if not 0.0 < args.gamma <= 1.0:
        errors.append(f"--gamma must be in (0, 1], got {args.gamma}")
    if not 0.0 <= args.gae_lambda <= 1.0:
        errors.append(f"--gae-lambda must be in [0, 1], got {args.gae_lambda}")
    if not 0.0 <= args.minatar_sticky_prob <= 1.0:
        errors.append(f"--minatar-sticky-prob must be in [0, 1], got {args.minatar_sticky_prob}")
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
    if args.checkpoint_every < 0:
        errors.append(f"--checkpoint-every must not be negative, got {args.checkpoint_every}")
    if args.resume == "auto" and args.run_name is None:
        errors.append("--resume auto needs --run-name (it continues runs/{run_name}/checkpoint.pt)")
    if args.track and args.wandb_mode == "online" and not wandb_logged_in():
        errors.append(
            "--track needs a Weights and Biases login: run `wandb login` (or set WANDB_API_KEY), "
            "or add --wandb-mode offline to sync later"
        )
    if errors:
        sys.exit("error: " + "\n       ".join(errors))


def wandb_logged_in() -> bool:
    """Whether W&B has an API key, found without a prompt or the network: $WANDB_API_KEY or ~/.netrc."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


# ---------------------------------------------------------------------------------------------
# Environment: DeepMind Atari preprocessing, as CleanRL's published scores were obtained with.
# ---------------------------------------------------------------------------------------------
gym.register_envs(ale_py)


MINATAR_GAMES = ["Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders"]


def resolve_env_id(env_id: str) -> tuple[str, str]:
    """Return ("atari", ALE id), ("minatar", MinAtar id) or ("gym", registered id); exit with suggestions if unknown."""
    if env_id.lower().startswith(("minatar/", "minatar-")):  # MinAtar/Breakout-v1, MinAtar/Breakout, MinAtar-Breakout
        name, _, version = env_id[len("minatar/") :].partition("-v")
        game = {game.lower(): game for game in MINATAR_GAMES}.get(name.lower())
        if game is None or version not in ("", "0", "1"):
            close = [game] if game else difflib.get_close_matches(name, MINATAR_GAMES, n=3, cutoff=0.5)
            hint = f" Did you mean {' or '.join('MinAtar/' + game + '-v1' for game in close)}?" if close else ""
            sys.exit(
                f"error: unknown --env-id '{env_id}': MinAtar has {', '.join(MINATAR_GAMES)}, "
                f"as v1 (minimal action set) or v0 (all 6 actions).{hint}"
            )
        if "MinAtar/Breakout-v1" not in gym.registry:
            import minatar.gym

            minatar.gym.register_envs()  # registers MinAtar/<Game>-v0 and -v1 with gymnasium
        return "minatar", f"MinAtar/{game}-v{version or 1}"
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
    hint = f" Did you mean {' or '.join(close)}?" if close else " e.g. Breakout, Pong, SpaceInvaders, MinAtar/Breakout-v1."
    sys.exit(f"error: unknown --env-id '{env_id}': not an Atari game of ale-py, a MinAtar game, nor a registered gymnasium id.{hint}")


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


def make_env(kind: str, env_id: str, sticky_actions: bool, minatar_sticky_prob: float = 0.1):
    def thunk():
        if kind == "gym":
            env = gym.make(env_id)
            return gym.wrappers.RecordEpisodeStatistics(env)
        if kind == "minatar":  # MinAtar's own settings (sticky actions 0.1 by default), difficulty ramping, unclipped rewards
            env = gym.make(env_id, sticky_action_prob=minatar_sticky_prob, difficulty_ramping=True)
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
    """A shared Nature CNN for Atari frames, a shared MinAtar CNN for MinAtar grids, or two MLPs for flat
    observations (64-64 tanh by default); then the actor and critic heads."""

    def __init__(self, envs, args: Args):
        super().__init__()
        obs_space = envs.single_observation_space
        obs_shape = obs_space.shape
        self.obs_kind = "flat" if len(obs_shape) != 3 else "atari" if obs_space.dtype == np.uint8 else "minatar"
        if self.obs_kind == "atari":  # 4 stacked 84x84 grey frames, channels first
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
        elif self.obs_kind == "minatar":  # 10x10 grid, one bool channel per kind of object, channels last
            height, width, channels = obs_shape
            self.network = nn.Sequential(
                layer_init(nn.Conv2d(channels, 16, 3, stride=1)),
                nn.ReLU(),
                nn.Flatten(),
                layer_init(nn.Linear(16 * (height - 2) * (width - 2), 128)),
                nn.ReLU(),
            )
            hidden = 128
        else:  # flat observations: separate two-layer torsos for the actor and the critic, as CleanRL's ppo.py
            activation = nn.Tanh if args.mlp_activation == "tanh" else nn.ReLU
            mlp = lambda: nn.Sequential(  # noqa: E731
                layer_init(nn.Linear(int(np.prod(obs_shape)), args.mlp_width)),
                activation(),
                layer_init(nn.Linear(args.mlp_width, args.mlp_width)),
                activation(),
            )
            self.network, self.critic_network = mlp(), mlp()
            hidden = args.mlp_width
        self.actor = layer_init(nn.Linear(hidden, envs.single_action_space.n), std=0.01)
        self.critic = layer_init(nn.Linear(hidden, 1), std=1)

    def features(self, x):
        """(actor features, critic features): the CNNs are shared, the MLPs are not."""
        if self.obs_kind == "flat":
            x = x.float().flatten(1)
            return self.network(x), self.critic_network(x)
        x = x.float() / 255.0 if self.obs_kind == "atari" else x.float().permute(0, 3, 1, 2)
        hidden = self.network(x)
        return hidden, hidden

    def get_value(self, x):
        return self.critic(self.features(x)[1])

    def get_action_and_value(self, x, action=None):
        hidden, critic_hidden = self.features(x)
        probs = Categorical(logits=self.actor(hidden))
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(critic_hidden)


def explained_variance(y_pred: torch.Tensor, y_true: torch.Tensor) -> float:
    """1 - Var(y_true - y_pred) / Var(y_true): 1 is a perfect prediction, 0 no better than the mean."""
    var_y = torch.var(y_true).item()
    return np.nan if var_y == 0 else 1 - torch.var(y_true - y_pred).item() / var_y


def make_envs(args: Args):
    kind, env_id = resolve_env_id(args.env_id)
    vector_env = gym.vector.AsyncVectorEnv if kind == "atari" else gym.vector.SyncVectorEnv  # a process per Atari env
    envs = vector_env(
        [make_env(kind, env_id, args.sticky_actions, args.minatar_sticky_prob) for _ in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,  # obs after a done step is the new episode's first
    )
    if not isinstance(envs.single_action_space, gym.spaces.Discrete):
        sys.exit(f"error: --env-id {args.env_id} has the action space {envs.single_action_space}; "
                 f"{SCRIPT} supports discrete action spaces only")
    return envs


def finished_episodes(infos):
    """(score, length) of every episode that ended in this step, from the final step's info."""
    final = infos.get("final_info", {})
    if "episode" not in final:
        return []
    done = final["_episode"]
    return list(zip(final["episode"]["r"][done], final["episode"]["l"][done]))


def load_checkpoint(path: str, flag: str, device: torch.device) -> dict:
    """Load a checkpoint of this script, or exit with one line saying what is wrong with it."""
    if not os.path.isfile(path):
        sys.exit(f"error: {flag} {path}: " + ("is a folder, not a checkpoint file" if os.path.isdir(path) else "no such file"))
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
        script = checkpoint.get("script") or ("p3o.py" if "horizon" in checkpoint["args"] else "ppo_gae.py")
        checkpoint["model"]
    except Exception as error:
        reason = f"{type(error).__name__}: {str(error).splitlines()[0][:100]}" if str(error) else type(error).__name__
        sys.exit(f"error: {flag} {path} is not a checkpoint of these scripts, or is damaged ({reason})")
    if script != SCRIPT:
        sys.exit(f"error: {flag} {path} is a checkpoint of {script}, not of {SCRIPT}: python {script} {flag} {path}")
    if flag == "--resume" and "optimizer" not in checkpoint:
        sys.exit(f"error: --resume {path} holds a model only (--save-model); a run resumes from its runs/NAME/checkpoint.pt")
    return checkpoint


def saved_args(checkpoint: dict) -> Args:
    """The Args a checkpoint was trained with (fields that no longer exist are dropped)."""
    return Args(**{k: v for k, v in checkpoint["args"].items() if k in Args.__dataclass_fields__})


def resumed_args(args: Args, checkpoint: dict, path: str) -> Args:
    """The checkpoint's settings; a flag given on the command line may only change how the run is hosted."""
    hosting = {"device", "track", "wandb_project_name", "wandb_entity", "wandb_mode", "wandb_group", "save_model", "checkpoint_every", "resume"}
    saved, default = saved_args(checkpoint), Args()
    for field in dataclasses.fields(Args):
        given = getattr(args, field.name)
        if given == getattr(default, field.name) or given == getattr(saved, field.name):
            continue
        if field.name not in hosting:
            flag = "--" + field.name.replace("_", "-")
            sys.exit(f"error: {flag} {given} differs from the resumed run's {getattr(saved, field.name)} ({path}); "
                     "a resumed run keeps its settings")
        setattr(saved, field.name, given)
    return saved


def rng_states() -> dict:
    """The random generators' states, as plain tensors and lists (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    random.setstate((states["python"][0], tuple(states["python"][1]), states["python"][2]))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: str, state: dict) -> None:
    """Write atomically: a run killed while saving keeps its previous checkpoint."""
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


class StopSignal:
    """Ctrl-C (SIGINT) and SIGTERM: during training, finish the iteration, save a checkpoint and exit with
    128 + the signal's number (130, 143); before training, or at a second signal, exit at once."""

    def __init__(self):
        self.signum, self.training, self.pid = None, False, os.getpid()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self.handle)
        atexit.register(self.end_env_workers)

    def end_env_workers(self):
        """At any exit, end the Atari env workers still running: they ignore the signals that Python's own
        clean-up at exit would send them, and it would wait for them forever."""
        if os.getpid() == self.pid:
            for worker in multiprocessing.active_children():
                worker.kill()

    def handle(self, signum, frame):
        if os.getpid() != self.pid:  # a forked env worker: the main process decides when to stop
            return
        if self.training and self.signum is None:
            self.signum = signum
            print(f"\n{signal.Signals(signum).name}: stopping after this iteration to save a checkpoint "
                  "(send it again to quit at once)", flush=True)
        else:
            print(f"\n{signal.Signals(signum).name}: stopped", flush=True)
            for other in (signal.SIGINT, signal.SIGTERM):  # exiting now: more signals would only break the clean-up
                signal.signal(other, signal.SIG_IGN)
            sys.exit(128 + signum)


def check_finite(iteration: int, **quantities: torch.Tensor) -> None:
    """Stop at the first quantity holding a NaN or an infinity (one device sync for all of them)."""
    finite = torch.stack([quantity.isfinite().all() for quantity in quantities.values()]).tolist()
    for name, ok in zip(quantities, finite):
        if not ok:
            sys.exit(
                f"error: iteration {iteration}: the {name.replace('_', ' ')} is not finite (NaN or inf); training "
                "diverged. Try a smaller --learning-rate (or --max-grad-norm), or rewards on a smaller scale"
            )


def evaluate(args: Args, device: torch.device) -> None:
    """Score a saved agent on `eval_episodes` games: up to 8 envs start together and each plays a fixed
    number of games, so that short games are not favoured over long ones."""
    checkpoint = load_checkpoint(args.eval_checkpoint, "--eval-checkpoint", device)
    num_envs = min(args.eval_episodes, 8)
    train_args = dataclasses.replace(saved_args(checkpoint), num_envs=num_envs, seed=args.seed)
    envs = make_envs(train_args)
    agent = Agent(envs, train_args).to(device)
    agent.load_state_dict(checkpoint["model"])
    games_per_env = [args.eval_episodes // num_envs + (i < args.eval_episodes % num_envs) for i in range(num_envs)]
    scores = [[] for _ in range(num_envs)]  # each env's first games_per_env[i] scores
    next_obs, _ = envs.reset(seed=args.seed)
    while any(len(env_scores) < games for env_scores, games in zip(scores, games_per_env)):
        with torch.no_grad():
            action, _, _, _ = agent.get_action_and_value(torch.as_tensor(next_obs, device=device))
        next_obs, _, _, _, infos = envs.step(action.cpu().numpy())
        final = infos.get("final_info", {})
        for i in np.flatnonzero(final.get("_episode", [])):
            if len(scores[i]) < games_per_env[i]:
                scores[i].append(float(final["episode"]["r"][i]))
    scores = [score for env_scores in scores for score in env_scores]
    games = f"{min(games_per_env)}" + ("" if min(games_per_env) == max(games_per_env) else f" or {max(games_per_env)}")
    print(
        f"{train_args.env_id}: {len(scores)} games (the first {games} of each of {num_envs} envs, started together), "
        f"score {np.mean(scores):.1f} +- {np.std(scores):.1f}: {scores}"
    )
    envs.close()


if __name__ == "__main__":
    args = tyro.cli(Args)
    check_args(args)
    stop = StopSignal()
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    print(f"Using device: {device}" + ("" if device.type == "cuda" else " (no CUDA GPU visible to PyTorch)"))
    if args.eval_checkpoint:
        evaluate(args, device)
        sys.exit(0)
    checkpoint_path = args.resume if args.resume != "auto" else f"runs/{args.run_name}/checkpoint.pt"
    checkpoint = None
    if args.resume is not None and (args.resume != "auto" or os.path.exists(checkpoint_path)):
        checkpoint = load_checkpoint(checkpoint_path, "--resume", device)
        args = resumed_args(args, checkpoint, checkpoint_path)
    elif args.run_name is not None and os.path.exists(f"runs/{args.run_name}/checkpoint.pt"):
        sys.exit(f"error: runs/{args.run_name}/ holds a run already: continue it with --resume auto, or choose another --run-name")
    args.batch_size = int(args.num_envs * args.num_steps)
    args.minibatch_size = int(args.batch_size // args.num_minibatches)
    args.num_iterations = math.ceil(args.total_timesteps / args.batch_size)
    if args.num_iterations * args.batch_size != args.total_timesteps:
        print(f"Note: --total-timesteps {args.total_timesteps:,} is not a multiple of the batch (num_envs * num_steps = "
              f"{args.batch_size:,}): training {args.num_iterations * args.batch_size:,} steps")
    args.run_name = args.run_name or f"{args.env_id.replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_name = args.run_name

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    envs = make_envs(args)  # before the kernel build: an unsupported env fails at once
    try:
        kernels = load_kernels(device)  # compiles p3o_kernel.cu on first use (about a minute), then cached
    except KernelBuildError as error:
        sys.exit(f"error: {error}")

    if args.track:
        import wandb

        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            mode=args.wandb_mode,
            group=args.wandb_group,
            sync_tensorboard=True,
            config=vars(args),
            name=run_name,
            id=checkpoint.get("wandb_id") if checkpoint else None,  # a resumed run continues its W&B run
            resume="allow",
            save_code=True,
        )
    # A resumed run drops the events logged after its checkpoint; a fresh one any left in its folder
    writer = SummaryWriter(f"runs/{run_name}", purge_step=checkpoint["global_step"] + 1 if checkpoint else 0)
    if not checkpoint:
        writer.add_text(
            "hyperparameters",
            "|param|value|\n|-|-|\n%s" % ("\n".join([f"|{key}|{value}|" for key, value in vars(args).items()])),
        )

    agent = Agent(envs, args).to(device)
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    warned = False  # about an entropy collapse

    # Rollout storage, [T, N, ...]: the flags say that the step taken at t ended the episode
    obs = torch.zeros((args.num_steps, args.num_envs) + envs.single_observation_space.shape, dtype=torch.float32 if agent.obs_kind == "flat" else torch.uint8).to(device)
    actions = torch.zeros((args.num_steps, args.num_envs), dtype=torch.long).to(device)
    logprobs = torch.zeros((args.num_steps, args.num_envs)).to(device)
    rewards = torch.zeros((args.num_steps, args.num_envs)).to(device)
    terminations = torch.zeros((args.num_steps, args.num_envs)).to(device)
    truncations = torch.zeros((args.num_steps, args.num_envs)).to(device)
    values = torch.zeros((args.num_steps, args.num_envs)).to(device)
    final_values = torch.zeros((args.num_steps, args.num_envs)).to(device)  # V(final obs) at truncations

    start_iteration, global_step = 0, 0
    recent_scores = deque(maxlen=20)
    if checkpoint:  # model, optimizer, position and random generators; the environments restart here
        agent.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start_iteration, global_step = checkpoint["iteration"], checkpoint["global_step"]
        recent_scores.extend(checkpoint["recent_scores"])
        set_rng_states(checkpoint["rng"])
        print(f"Resuming {run_name} from {checkpoint_path}: iteration {start_iteration}/{args.num_iterations}, "
              f"step {global_step:,}; the environments restart")
    start_time, start_step, last_save = time.time(), global_step, time.time()
    next_obs, _ = envs.reset(seed=args.seed + start_iteration)
    next_obs = torch.as_tensor(next_obs).to(device)

    stop.training = True
    for iteration in range(start_iteration + 1, args.num_iterations + 1):
        if args.anneal_lr:
            frac = 1.0 - (iteration - 1.0) / args.num_iterations
            optimizer.param_groups[0]["lr"] = frac * args.learning_rate

        # Rollout: T steps in N envs with the current policy
        for step in range(0, args.num_steps):
            global_step += args.num_envs
            obs[step] = next_obs
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
                values[step] = value.flatten()
            actions[step] = action
            logprobs[step] = logprob

            next_obs, reward, terminated, truncated, infos = envs.step(action.cpu().numpy())
            rewards[step] = torch.as_tensor(reward, dtype=torch.float32).to(device)
            terminations[step] = torch.as_tensor(terminated, dtype=torch.float32).to(device)
            truncations[step] = torch.as_tensor(truncated, dtype=torch.float32).to(device)
            if truncated.any():  # the episode's future is unknown: bootstrap from its final observation
                final_obs = torch.as_tensor(np.stack(infos["final_obs"][truncated])).to(device)
                with torch.no_grad():
                    final_values[step, torch.as_tensor(truncated).to(device)] = agent.get_value(final_obs).flatten()
            next_obs = torch.as_tensor(next_obs).to(device)

            for score, length in finished_episodes(infos):
                recent_scores.append(score)
                writer.add_scalar("charts/episodic_return", score, global_step)
                writer.add_scalar("charts/episodic_length", length, global_step)

        # Advantage: GAE, computed by the kernel in p3o_kernel.cu
        with torch.no_grad():
            next_value = agent.get_value(next_obs).flatten()
        advantages = kernels.gae(
            rewards, values, terminations, truncations, next_value, final_values, args.gamma, args.gae_lambda
        )
        returns = advantages + values

        # Flatten the batch
        b_obs = obs.reshape((-1,) + envs.single_observation_space.shape)
        b_logprobs = logprobs.reshape(-1)
        b_actions = actions.reshape(-1)
        b_advantages = advantages.reshape(-1)
        b_returns = returns.reshape(-1)
        b_values = values.reshape(-1)

        # Update: clipped PPO objective over minibatches
        b_inds = np.arange(args.batch_size)
        clipfracs, update_losses = [], []
        for epoch in range(args.update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, args.batch_size, args.minibatch_size):
                end = start + args.minibatch_size
                mb_inds = b_inds[start:end]

                _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb_inds], b_actions[mb_inds])
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

                # Value loss
                newvalue = newvalue.view(-1)
                if args.clip_vloss:
                    v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
                    v_clipped = b_values[mb_inds] + torch.clamp(
                        newvalue - b_values[mb_inds], -args.clip_coef, args.clip_coef
                    )
                    v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
                    v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
                else:
                    v_loss = 0.5 * ((newvalue - b_returns[mb_inds]) ** 2).mean()

                entropy_loss = entropy.mean()
                loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef
                if os.environ.get("P3O_FREEZE_ACTOR"):  # prototype: the critic alone learns, the policy stays at its start
                    loss = v_loss * args.vf_coef

                optimizer.zero_grad()
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()
                update_losses.append(torch.stack([pg_loss.detach(), v_loss.detach(), entropy_loss.detach(), grad_norm]))

            if args.target_kl is not None and approx_kl > args.target_kl:
                break

        explained_var = explained_variance(b_values, b_returns)

        losses = torch.stack(update_losses)  # [minibatches, 4]
        check_finite(iteration, advantage=advantages, policy_loss=losses[:, 0], value_loss=losses[:, 1],
                     entropy=losses[:, 2], gradient_norm=losses[:, 3])

        # Logging
        sps = int((global_step - start_step) / (time.time() - start_time))
        writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
        writer.add_scalar("losses/value_loss", v_loss.item(), global_step)
        writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
        writer.add_scalar("losses/entropy", entropy_loss.item(), global_step)
        writer.add_scalar("losses/old_approx_kl", old_approx_kl.item(), global_step)
        writer.add_scalar("losses/approx_kl", approx_kl.item(), global_step)
        writer.add_scalar("losses/clipfrac", np.mean(clipfracs), global_step)
        writer.add_scalar("losses/explained_variance", explained_var, global_step)
        writer.add_scalar("charts/SPS", sps, global_step)
        if sys.stdout.isatty() or iteration % 10 == 0 or iteration == args.num_iterations:
            score = f"{np.mean(recent_scores):8.1f}" if recent_scores else "     n/a"
            last = iteration == args.num_iterations or not sys.stdout.isatty()
            line = f"step {global_step:>10,}/{args.num_iterations * args.batch_size:,} | SPS {sps:>6,} | return (last 20 games) {score}"
            print("\r" + line, end="\n" if last else "", flush=True)
        if iteration <= 10 and entropy_loss.item() < 0.01 * math.log(envs.single_action_space.n) and not warned:
            print(("\n" if sys.stdout.isatty() else "") + f"Warning: iteration {iteration}: the policy's entropy fell to {entropy_loss.item():.2g} "
                  f"(uniform: {math.log(envs.single_action_space.n):.2g}); it stopped exploring in its first updates. "
                  "Is --learning-rate too large?", flush=True)
            warned = True

        # Checkpoint: model, optimizer, position, random generators
        if stop.signum or iteration == args.num_iterations or 0 < args.checkpoint_every <= time.time() - last_save:
            save_checkpoint(f"runs/{run_name}/checkpoint.pt", {
                "script": SCRIPT, "args": vars(args), "model": agent.state_dict(), "optimizer": optimizer.state_dict(),
                "iteration": iteration, "global_step": global_step, "recent_scores": [float(s) for s in recent_scores],
                "rng": rng_states(), "wandb_id": wandb.run.id if args.track else None,
            })
            last_save = time.time()
        if stop.signum:
            break

    if args.save_model and not stop.signum:
        model_path = f"runs/{run_name}/{args.exp_name}.pt"
        torch.save({"script": SCRIPT, "args": vars(args), "model": agent.state_dict()}, model_path)
        print(f"model saved to {model_path}; score it with: python {SCRIPT} --eval-checkpoint {model_path}")

    envs.close()
    writer.close()
    if stop.signum:
        print(f"Checkpoint saved at step {global_step:,}; continue with: python {sys.argv[0]} --resume runs/{run_name}/checkpoint.pt")
        sys.exit(128 + stop.signum)
