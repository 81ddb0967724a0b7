"""Interrupted runs: SIGTERM mid-rollout writes a checkpoint and exits 143, and `--resume auto` continues to
the same weights, optimizer state and TensorBoard steps as an uninterrupted run (on an env whose restarts
change nothing: tests/chain_env.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
# 2 envs x 16 steps = 32 steps per iteration, 6 iterations; Chain episodes are 8 steps: rollouts end them
FLAGS = ["--env-id", "chain_env:Chain-v0", "--num-envs", "2", "--num-steps", "16", "--num-minibatches", "2",
         "--total-timesteps", "192", "--device", "cpu", "--checkpoint-every", "0"]


def run(script, *flags, cwd, **env):
    env = {**os.environ, "PYTHONPATH": str(HERE), **env}
    return subprocess.run([sys.executable, str(ROOT / script), *flags], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def steps(run_dir, tag):
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


@pytest.mark.parametrize("script", ["ppo_gae.py", "p3o.py"])
def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, script):
    whole = run(script, *FLAGS, "--run-name", "whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]

    # SIGTERM at step 70, inside iteration 3: the iteration finishes, is checkpointed, and the run exits 143
    cut = run(script, *FLAGS, "--run-name", "cut", "--resume", "auto", cwd=tmp_path, CHAIN_SIGTERM_AT_STEP="70")
    assert cut.returncode == 143, cut.stderr[-3000:]
    assert "Traceback" not in cut.stderr
    assert f"continue with: python {ROOT / script} --resume runs/cut/checkpoint.pt" in cut.stdout
    assert torch.load(tmp_path / "runs/cut/checkpoint.pt")["iteration"] == 3

    resumed = run(script, *FLAGS, "--run-name", "cut", "--resume", "auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming cut from runs/cut/checkpoint.pt: iteration 3/6, step 96" in resumed.stdout

    a, b = (torch.load(tmp_path / f"runs/{name}/checkpoint.pt") for name in ("whole", "cut"))
    assert a["iteration"] == b["iteration"] == 6 and a["global_step"] == b["global_step"] == 192
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name  # bit for bit
    for state_a, state_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)
    # One TensorBoard curve, no gap and no duplicate step
    assert steps(tmp_path / "runs/cut", "losses/value_loss") == [32 * i for i in range(1, 7)]
    assert steps(tmp_path / "runs/cut", "charts/episodic_return") == steps(tmp_path / "runs/whole", "charts/episodic_return")


def test_resume_keeps_the_run_settings(tmp_path):
    first = run("ppo_gae.py", *FLAGS, "--total-timesteps", "64", "--run-name", "r", "--save-model", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    for flags, message in [
        ([*FLAGS, "--run-name", "r"], "runs/r/ holds a run already: continue it with --resume auto, or choose another --run-name"),
        (["--resume", "runs/r/checkpoint.pt", "--learning-rate", "0.1"], "--learning-rate 0.1 differs from the resumed run's 0.00025"),
        (["--resume", "runs/r/ppo_gae.pt"], "holds a model only (--save-model)"),
    ]:
        refused = run("ppo_gae.py", *flags, cwd=tmp_path)
        assert refused.returncode == 1 and message in refused.stderr and "Traceback" not in refused.stderr
    done = run("ppo_gae.py", "--resume", "runs/r/checkpoint.pt", cwd=tmp_path)  # finished: nothing left to do
    assert done.returncode == 0 and "iteration 2/2" in done.stdout, done.stderr[-3000:]
