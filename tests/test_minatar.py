"""MinAtar in both scripts: id resolution, MinAtar's own settings, the MinAtar network, a short run."""

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import p3o
import ppo_gae

ROOT = Path(__file__).resolve().parents[1]
GAMES = ["Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders"]
CHANNELS = {"Asterix": 4, "Breakout": 4, "Freeway": 7, "Seaquest": 10, "SpaceInvaders": 6}  # MinAtar's state_shape


@pytest.mark.parametrize(
    "name,expected",
    [
        ("MinAtar/Breakout-v1", "MinAtar/Breakout-v1"),
        ("MinAtar/Breakout-v0", "MinAtar/Breakout-v0"),
        ("MinAtar/Breakout", "MinAtar/Breakout-v1"),
        ("MinAtar-Breakout", "MinAtar/Breakout-v1"),
        ("minatar-spaceinvaders", "MinAtar/SpaceInvaders-v1"),
    ],
)
def test_resolve_minatar_ids(name, expected):
    assert ppo_gae.resolve_env_id(name) == ("minatar", expected)


@pytest.mark.parametrize(
    "name,hint",
    [("MinAtar/Brekout", "Did you mean MinAtar/Breakout-v1"), ("MinAtar/Breakout-v3", "Did you mean MinAtar/Breakout-v1")],
)
def test_unknown_minatar_ids_exit_with_suggestions(name, hint):
    with pytest.raises(SystemExit) as excinfo:
        ppo_gae.resolve_env_id(name)
    message = str(excinfo.value.code)
    assert message.startswith(f"error: unknown --env-id '{name}'")
    assert hint in message and "Asterix, Breakout, Freeway, Seaquest, SpaceInvaders" in message


@pytest.mark.parametrize("game", GAMES)
def test_minatar_env_keeps_minatars_settings(game):
    kind, env_id = ppo_gae.resolve_env_id(f"MinAtar/{game}-v1")
    env = ppo_gae.make_env(kind, env_id, sticky_actions=False)()
    obs, _ = env.reset(seed=0)
    assert obs.shape == (10, 10, CHANNELS[game]) and obs.dtype == bool  # channels last, one per object kind
    assert env.observation_space.dtype == bool
    game_env = env.unwrapped.game
    assert game_env.sticky_action_prob == 0.1  # MinAtar's default, as in the MinAtar paper
    assert env.action_space.n == len(game_env.minimal_action_set())  # v1: the minimal action set
    env.close()


@pytest.mark.parametrize("module", [ppo_gae, p3o])
@pytest.mark.parametrize("probability", [0.0, 0.1, 0.5])
def test_minatar_sticky_prob_reaches_every_env(module, probability):
    args = module.Args(env_id="MinAtar/Breakout-v1", num_envs=2, minatar_sticky_prob=probability)
    envs = module.make_envs(args)
    assert [env.unwrapped.game.sticky_action_prob for env in envs.envs] == [probability, probability]
    envs.close()


@pytest.mark.parametrize("probability", [0.0, 0.1])
def test_minatar_sticky_prob_decides_how_often_the_last_action_repeats(probability):
    # Breakout's paddle moves one cell per 'l' or 'r': count the steps where it did not follow the command
    kind, env_id = ppo_gae.resolve_env_id("MinAtar/Breakout-v1")
    env = ppo_gae.make_env(kind, env_id, False, minatar_sticky_prob=probability)()
    env.reset(seed=0)
    game = env.unwrapped.game.env
    left, right = (env.unwrapped.game.minimal_action_set().index(a) for a in (1, 3))  # MinAtar's 'l' and 'r'
    disobeyed, steps = 0, 2000
    for step in range(steps):
        before = game.pos
        action = left if step % 2 else right  # alternate, so a repeated action moves the wrong way
        _, _, terminated, truncated, _ = env.step(action)
        disobeyed += game.pos != (max(0, before - 1) if action == left else min(9, before + 1))
        if terminated or truncated:
            env.reset()
    if probability == 0.0:
        assert disobeyed == 0
    else:  # a repeat of the other command: about probability * steps (200 expected; 5 sigma is 67)
        assert 133 < disobeyed < 267, disobeyed
    env.close()


@pytest.mark.parametrize("module", [ppo_gae, p3o])
@pytest.mark.parametrize("probability", [-0.1, 1.5])
def test_minatar_sticky_prob_out_of_range_is_rejected(module, probability):
    with pytest.raises(SystemExit) as excinfo:
        module.check_args(module.Args(env_id="MinAtar/Breakout-v1", minatar_sticky_prob=probability))
    assert f"--minatar-sticky-prob must be in [0, 1], got {probability}" in str(excinfo.value.code)


def test_minatar_episodes_are_seeded():
    kind, env_id = ppo_gae.resolve_env_id("MinAtar/Asterix-v1")
    rollouts = []
    for _ in range(2):
        env = ppo_gae.make_env(kind, env_id, sticky_actions=False)()
        obs, _ = env.reset(seed=3)
        frames = [obs]
        for step in range(200):
            obs, reward, terminated, truncated, _ = env.step(step % env.action_space.n)
            frames.append(obs)
            if terminated or truncated:
                break
        rollouts.append(np.stack(frames))
    assert np.array_equal(rollouts[0], rollouts[1])


@pytest.mark.parametrize("module", [ppo_gae, p3o])
def test_minatar_network_is_one_conv_then_128_units(module):
    envs = gym.vector.SyncVectorEnv(
        [module.make_env(*module.resolve_env_id("MinAtar/Seaquest-v1"), False) for _ in range(2)]
    )
    agent = module.Agent(envs, module.Args())
    assert agent.obs_kind == "minatar"
    conv, _, _, linear, _ = agent.network
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (10, 16, (3, 3), (1, 1))
    assert (linear.in_features, linear.out_features) == (16 * 8 * 8, 128)
    obs, _ = envs.reset(seed=0)
    hidden, critic_hidden = agent.features(torch.as_tensor(obs))
    assert hidden.shape == (2, 128) and critic_hidden is hidden  # actor and critic share the torso
    # The network reads channels last: moving one object on the grid changes the features
    moved = torch.as_tensor(obs).clone()
    moved[0] = torch.roll(moved[0], 1, dims=1)
    assert not torch.equal(agent.features(moved)[0][0], hidden[0])
    envs.close()


def test_p3o_has_the_same_agent_torso():
    for name in ["resolve_env_id", "make_env", "make_envs"]:
        assert inspect.getsource(getattr(p3o, name)) == inspect.getsource(getattr(ppo_gae, name)), name
    torso = inspect.getsource(ppo_gae.Agent.features)
    assert torso == inspect.getsource(p3o.Agent.features)


@pytest.mark.parametrize("script", ["ppo_gae.py", "p3o.py"])
def test_short_minatar_run(tmp_path, script):
    flags = ["--env-id", "MinAtar-Breakout", "--num-envs", "2", "--num-steps", "64", "--total-timesteps", "256"]
    result = subprocess.run(
        [sys.executable, str(ROOT / script), *flags, "--device", "cpu"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step        256/256" in result.stdout
    assert "Overriding environment" not in result.stderr  # MinAtar registered once


def test_flat_minatar_reaches_the_mlp_with_the_same_game():
    # scripts/minatar_flat.py: the same game, the grid flattened, so the scripts build their flat-input MLPs
    kind, env_id = ppo_gae.resolve_env_id("scripts.minatar_flat:MinAtarFlat/Breakout-v1")
    assert kind == "gym"
    flat = ppo_gae.make_env(kind, env_id, False)()
    grid = ppo_gae.make_env(*ppo_gae.resolve_env_id("MinAtar/Breakout-v1"), False, minatar_sticky_prob=0.0)()
    flat_obs, _ = flat.reset(seed=4)
    grid_obs, _ = grid.reset(seed=4)
    assert flat_obs.shape == (400,) and np.array_equal(flat_obs, grid_obs.reshape(-1))
    assert flat.unwrapped.game.sticky_action_prob == 0.0
    for action in [0, 1, 2, 2, 1, 0, 0, 2]:
        flat_obs, flat_reward, *_ = flat.step(action)
        grid_obs, grid_reward, *_ = grid.step(action)
        assert np.array_equal(flat_obs, grid_obs.reshape(-1)) and flat_reward == grid_reward
    envs = gym.vector.SyncVectorEnv([ppo_gae.make_env(kind, env_id, False)])
    assert ppo_gae.Agent(envs, ppo_gae.Args()).obs_kind == "flat"
    envs.close(), flat.close(), grid.close()


@pytest.mark.parametrize("script", ["ppo_gae.py", "p3o.py"])
def test_breakout_trap_reads_a_saved_agent(tmp_path, script):
    flags = ["--env-id", "MinAtar-Breakout", "--num-envs", "2", "--num-steps", "64", "--total-timesteps", "128"]
    subprocess.run(
        [sys.executable, str(ROOT / script), *flags, "--device", "cpu", "--save-model", "--run-name", "trap", "--exp-name", "agent"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "breakout_trap.py"), "runs/trap/agent.pt", "--games", "3"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[::3]] == ["sampled", "greedy"]
    for counts in lines[1::3] + lines[2::3]:  # each histogram counts the 3 games once
        histogram = ast.literal_eval(counts[counts.index("{") :])
        assert sum(histogram.values()) == 3


@pytest.mark.parametrize("module", [ppo_gae, p3o])
def test_flat_mlp_width_and_activation(module):
    # --mlp-width / --mlp-activation (gymnax's MinAtar baselines: 256-256 relu) shape both flat torsos alike
    envs = gym.vector.SyncVectorEnv([module.make_env(*module.resolve_env_id("scripts.minatar_flat:MinAtarFlat/Breakout-v1"), False)])
    agent = module.Agent(envs, module.Args(mlp_width=256, mlp_activation="relu"))
    for torso in (agent.network, agent.critic_network):
        first, act1, second, act2 = torso
        assert (first.in_features, first.out_features, second.in_features, second.out_features) == (400, 256, 256, 256)
        assert isinstance(act1, torch.nn.ReLU) and isinstance(act2, torch.nn.ReLU)
    assert agent.actor.in_features == 256 and agent.critic.in_features == 256
    default = module.Agent(envs, module.Args())  # CleanRL's 64-64 tanh
    assert default.network[0].out_features == 64 and isinstance(default.network[1], torch.nn.Tanh)
    envs.close()


@pytest.mark.parametrize("script", ["ppo_gae.py", "p3o.py"])
def test_saved_agent_keeps_its_mlp(tmp_path, script):
    # A checkpoint trained with --mlp-width 32 --mlp-activation relu is rebuilt with them when scored
    flags = ["--env-id", "CartPole-v1", "--num-envs", "2", "--num-steps", "32", "--total-timesteps", "64",
             "--mlp-width", "32", "--mlp-activation", "relu"]  # fmt: skip
    subprocess.run(
        [sys.executable, str(ROOT / script), *flags, "--device", "cpu", "--save-model", "--run-name", "mlp", "--exp-name", "agent"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    result = subprocess.run(
        [sys.executable, str(ROOT / script), "--eval-checkpoint", "runs/mlp/agent.pt", "--eval-episodes", "2", "--device", "cpu"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CartPole-v1: 2 games" in result.stdout


@pytest.mark.parametrize("script", ["ppo_gae.py", "p3o.py"])
def test_mlp_width_must_be_positive(tmp_path, script):
    result = subprocess.run(
        [sys.executable, str(ROOT / script), "--env-id", "CartPole-v1", "--mlp-width", "0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0 and "--mlp-width must be" in result.stderr
    assert "Traceback" not in result.stderr


def test_breakout_trap_without_a_checkpoint_says_so(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "breakout_trap.py"), "runs/none/agent.pt"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1 and "error: no checkpoint file at runs/none/agent.pt" in result.stderr
    assert "Traceback" not in result.stderr
