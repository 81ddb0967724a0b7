"""scripts/delayed_choice.py: the DelayedChoice env, checked by playing it out; and its experiment,
scripts/delayed_choice_experiment.py, run for real through the runner of scripts/compare.py."""

import itertools
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import p3o  # noqa: E402
import scripts.delayed_choice as dc  # noqa: E402  (registers the ids)
from test_compare import kill_session, read  # noqa: E402  (ray_env: the fixture in conftest.py)
from test_two_horizons import in_step  # noqa: E402


def play(env, actions):
    """The rewards of one episode and its last flags; actions past the episode's end are not used."""
    env.reset(seed=0)
    rewards = []
    for a in actions:
        _, r, terminated, truncated, _ = env.step(a)
        rewards.append(r)
        if terminated or truncated:
            return rewards, terminated, truncated
    raise AssertionError("the episode did not end")


@pytest.mark.parametrize("bonus", range(5))
def test_default_variant_by_brute_force(bonus):
    # every first choice, with several sequences of later actions (which must not matter)
    env = gym.make(dc.variant_id(bonus)).unwrapped
    rng = np.random.default_rng(bonus)
    returns = {}
    for choice in range(5):
        for later in (np.zeros(100, int), np.full(100, 4), rng.integers(0, 5, 100)):
            rewards, terminated, truncated = play(env, [choice, *later])
            assert len(rewards) == 101 and terminated and not truncated
            paid = [t for t, r in enumerate(rewards) if r != 0]
            assert paid == [dc.DEFAULT_DELAYS[choice]]  # one reward, at step t = delay
            assert rewards[paid[0]] == (1.1 if choice == bonus else 1.0)
            returns.setdefault(choice, set()).add(sum(rewards))
    assert all(len(r) == 1 for r in returns.values())
    brute = [returns[c].pop() for c in range(5)]
    assert brute == dc.choice_rewards(bonus=bonus)
    assert max(brute) == dc.optimal_return(bonus=bonus) == 1.1


def test_small_settings_every_action_sequence():
    # delays (0, 2, 5), episode 4 steps: choice 2 is never paid; bonus on choice 1 pays 3.
    params = dict(delays=(0, 2, 5), bonus=1, bonus_reward=3.0, episode_length=4)
    env = dc.DelayedChoice(**params)
    best = 0.0
    for actions in itertools.product(range(3), repeat=4):
        rewards, _, _ = play(env, actions)
        expected = [0.0] * 4
        if actions[0] == 0:
            expected[0] = 1.0
        elif actions[0] == 1:
            expected[2] = 3.0
        assert rewards == expected
        best = max(best, sum(rewards))
    assert dc.choice_rewards(**params) == [1.0, 3.0, 0.0]
    assert dc.optimal_return(**params) == best == 3.0


def test_observation():
    env = dc.DelayedChoice(delays=(1, 2), episode_length=4)
    obs, _ = env.reset()
    assert obs.tolist() == [1.0, 0.0, 0.0]  # nothing chosen yet
    obs, *_ = env.step(1)
    assert obs.tolist() == [0.75, 0.0, 1.0]
    obs, *_ = env.step(0)  # ignored
    assert obs.tolist() == [0.5, 0.0, 1.0]


def test_passes_gymnasium_env_checker():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(dc.DelayedChoice(), skip_render_check=True)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(delays=()), "delays"),
        (dict(delays=(1, -1)), "delays"),
        (dict(bonus=5), "bonus"),
        (dict(bonus=True), "bonus"),
        (dict(bonus_reward=float("nan")), "bonus_reward"),
        (dict(episode_length=0), "episode_length"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=rf"DelayedChoice: {message} must"):
        dc.DelayedChoice(**kwargs)


def test_step_after_end_and_bad_action():
    env = dc.DelayedChoice(delays=(0,), episode_length=1)
    env.reset()
    with pytest.raises(ValueError, match="action must be in"):
        env.step(3)
    env.step(0)
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step(0)


def test_malus_variant():
    env = gym.make(dc.malus_id(3)).unwrapped
    assert [sum(play(env, [c] + [0] * 100)[0]) for c in range(5)] == [1.0, 1.0, 1.0, 0.9, 1.0]
    assert dc.optimal_return(bonus=3, bonus_reward=0.9) == 1.0
    clock = gym.make(dc.clock_malus_id(3)).unwrapped  # the same payments, with the clock in the observation
    assert clock.observation_space.shape == (6 + 102,)
    assert [sum(play(clock, [c] + [0] * 100)[0]) for c in range(5)] == [1.0, 1.0, 1.0, 0.9, 1.0]


def test_clock_variant():
    env = gym.make(dc.clock_id(0)).unwrapped
    obs, _ = env.reset()
    assert obs.shape == (6 + 102,) and obs[6] == 1.0 and obs[6:].sum() == 1.0
    for t in range(1, 101):
        obs, *_ = env.step(0)
        assert obs[6 + t] == 1.0 and obs[6:].sum() == 1.0
    assert [sum(play(env, [c] + [0] * 100)[0]) for c in range(5)] == dc.choice_rewards(bonus=0)


def rest_of_episode(env, action):
    """The rewards of the steps left in the current episode, always playing `action`."""
    rewards, terminated = [], False
    while not terminated:
        _, r, terminated, truncated, _ = env.step(action)
        assert not truncated
        rewards.append(r)
    return rewards


def test_staggered_first_episode_joins_late_and_later_ones_start_at_zero():
    # delays (1, 2), bonus 0, 4-step episodes: choice 0 pays 1.1 at step 1, choice 1 pays 1 at step 2
    L = 4
    starts = set()
    for seed in range(20):
        env = dc.DelayedChoice(delays=(1, 2), episode_length=L, staggered=True)
        obs, _ = env.reset(seed=seed)
        start = L - round(obs[0] * L)  # the step it joined at, from the observation's time left
        assert obs[1:].tolist() == [0.0, 0.0]  # no choice made
        starts.add(start)
        # joined at step 0: the choice is made and paid; joined later: no choice, nothing paid
        assert rest_of_episode(env, 1) == ([0.0, 0.0, 1.0, 0.0] if start == 0 else [0.0] * (L - start))
        assert round(env.reset(seed=seed)[0][0] * L) == L - start  # the same seed joins at the same step
        assert env.reset()[0].tolist() == [1.0, 0.0, 0.0]  # unseeded resets (a vector env's autoreset): step 0
        assert rest_of_episode(env, 0) == [0.0, 1.1, 0.0, 0.0]
        plain = dc.DelayedChoice(delays=(1, 2), episode_length=L)
        assert plain.reset(seed=seed)[0].tolist() == [1.0, 0.0, 0.0]  # not staggered: always step 0
    assert starts == {0, 1, 2, 3}  # the seeds spread the starts over every step


def test_staggered_vector_env_stays_out_of_step():
    for staggered in (False, True):  # three episodes and more (each autoreset takes a step of its own)
        steps = in_step(dc.variant_id(1, staggered), seed=3, steps=3 * 102, time_left_index=0)
        assert all(steps) if not staggered else not any(steps)


def test_staggered_registered_ids_and_bad_flag():
    for make_id in (dc.variant_id, dc.clock_id):
        assert gym.make(make_id(2, True)).unwrapped.staggered is True
        assert gym.make(make_id(2)).unwrapped.staggered is False
    clock = gym.make(dc.clock_id(0, True)).unwrapped
    obs, _ = clock.reset(seed=5)
    start = 101 - round(obs[0] * 101)
    assert obs[6 + start] == 1.0 and obs[6:].sum() == 1.0  # the clock shows the step it joined at
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(dc.DelayedChoice(staggered=True), skip_render_check=True)
    for bad in (1, "yes", None):
        with pytest.raises(ValueError, match="DelayedChoice: staggered must be True or False"):
            dc.DelayedChoice(staggered=bad)


def test_experiment_through_the_runner(tmp_path, ray_env):
    """scripts/delayed_choice_experiment.py on the runner of scripts/compare.py: one tiny run, its score
    recomputed by hand from the per-episode CSV, then a rerun that skips it and prints the same table."""
    def experiment(*flags):
        proc = subprocess.Popen(
            [sys.executable, "scripts/delayed_choice_experiment.py", "--out", str(tmp_path), *flags],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ray_env, start_new_session=True,
        )  # fmt: skip
        stdout, _ = proc.communicate(timeout=300)
        kill_session(proc.pid)
        assert proc.returncode == 0, stdout[-4000:]
        return stdout

    flags = ["--bonus", "1", "--seeds", "3", "--total-timesteps", "2048", "--jobs", "1"]
    first = experiment(*flags, "--config", "ppo=ppo_gae.py --num-envs 2 --num-steps 32")
    _, (run,) = read(tmp_path / "runs.csv")
    assert (run["label"], run["bonus"], run["bonus_delay"], run["seed"], run["status"]) == ("ppo", "1", "3", "3", "finished")
    assert run["command"] == (
        "python ppo_gae.py --num-envs 2 --num-steps 32 --env-id scripts.delayed_choice:DelayedChoice-bonus1-v0"
        " --seed 3 --total-timesteps 2048"
    )  # fmt: skip
    _, episodes = read(tmp_path / "results.csv.gz")
    final = [round(float(e["episodic_return"]), 4) for e in episodes if int(e["step"]) > 0.9 * 2048]
    assert set(final) <= {1.0, 1.1} and int(run["final_episodes"]) == len(final) > 0  # the return is the choice's reward
    assert float(run["bonus_fraction"]) == pytest.approx(final.count(1.1) / len(final), abs=1e-4)
    table = f"| config | bonus at delay 3 |\n|---|---|\n| ppo | {float(run['bonus_fraction']):.2f} ({float(run['bonus_fraction']):.2f}) |\n"
    assert table in first and (tmp_path / "summary.md").read_text() == table
    again = experiment(*flags, "--config", "ppo=ppo_gae.py --num-envs 2 --num-steps 32")
    assert "skip  label=ppo bonus=1 bonus_delay=3 seed=3: already finished" in again and table in again
    assert experiment("--summary").endswith(f"{table}\nsummary: {tmp_path / 'summary.md'}\n")


@pytest.mark.parametrize(
    "config, message",
    [("ppo", "--config must be LABEL=p3o.py|ppo_gae.py"), ("x=train.py", "--config must be"), ("x=p3o.py --seed 2", "must not set --seed")],
)
def test_experiment_bad_config(config, message):
    result = subprocess.run(
        [sys.executable, "scripts/delayed_choice_experiment.py", "--config", config], cwd=ROOT, capture_output=True, text=True
    )  # fmt: skip
    assert result.returncode == 2 and message in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("flags, env_id", [([], "DelayedChoice-bonus3-v0"), (["--staggered"], "DelayedChoice-staggered-bonus3-v0"),
                                           (["--clock", "--staggered"], "DelayedChoice-clock-staggered-bonus3-v0")])  # fmt: skip
def test_experiment_plans_the_variant(flags, env_id):
    from scripts.delayed_choice_experiment import parse_args, plan_runs

    (run,) = plan_runs(parse_args(["--bonus", "3", "--seeds", "1", "--config", "p=p3o.py", *flags]))
    assert run.env_id == f"scripts.delayed_choice:{env_id}" and gym.make(env_id).unwrapped.bonus == 3


def test_lambda_probe_row_sums(tmp_path):
    # scripts/probe_lambda_delayed_choice.py on a one-update checkpoint: at lambda 1 the row sum is the observed
    # surprise sum_k (r_k - mu_0[k]) with mu_0 the same before every choice, so choices that pay 1.0 inside the horizon (delays 1, 3, 10) tie, and the bonus
    # (1.1 at delay 30, H = 32) is exactly 0.1 above them
    flags = ["--env-id", "scripts.delayed_choice:DelayedChoice-clock-bonus3-v0", "--num-envs", "2", "--num-steps", "64",
             "--total-timesteps", "128", "--weight-rule", "action", "--surprise-lambda", "0.97", "--device", "cpu",
             "--run-name", "probe"]  # fmt: skip
    subprocess.run([sys.executable, str(ROOT / "p3o.py"), *flags], cwd=tmp_path, check=True, capture_output=True, timeout=600)
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "probe_lambda_delayed_choice.py"), "runs/probe/checkpoint.pt", "--lambdas", "1", "0.97"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("choice")]
    assert len(rows) == 5
    at_one = [float(row.split("row sum at lambda 1: ")[1].split()[0]) for row in rows]
    assert at_one[0] == pytest.approx(at_one[1], abs=2e-3) and at_one[0] == pytest.approx(at_one[2], abs=2e-3)
    assert at_one[3] - at_one[0] == pytest.approx(0.1, abs=2e-3)
    assert all("row sum at lambda 0.97: " in row for row in rows)
    # q_0[d]: the action head at the first step, offset d (the reward returned by step d), for the choice made
    checkpoint = torch.load(tmp_path / "runs/probe/checkpoint.pt", weights_only=True)
    bias = checkpoint["model"]["critic_q.bias"].view(32, 5)  # [H, A]; the first observation is the same for every choice
    weight = checkpoint["model"]["critic_q.weight"].view(32, 5, -1)
    args = p3o.saved_args(checkpoint)
    envs = p3o.make_envs(args)
    agent = p3o.Agent(envs, args)
    agent.load_state_dict(checkpoint["model"])
    envs.close()
    obs, _ = gym.make("DelayedChoice-clock-bonus3-v0").reset(seed=0)
    with torch.no_grad():
        hidden = agent.features(torch.as_tensor(obs[None]))[1][0]
    for choice, (row, delay) in enumerate(zip(rows, (1, 3, 10, 30))):
        expected = (weight[delay, choice] @ hidden + bias[delay, choice]).item()
        assert float(row.split("q_0[d] ")[1].split()[0]) == pytest.approx(expected, abs=1e-3)
    assert "q_0[d]    n/a" in rows[4]  # delay 100 lies beyond H = 32
