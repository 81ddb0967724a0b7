"""Runs that go wrong stop with one line and a non-zero exit, before expensive work; and --eval-checkpoint
scores a fixed set of games."""

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CARTPOLE = ["--env-id", "CartPole-v1", "--num-envs", "2", "--num-steps", "32", "--device", "cpu"]


def run(script, *flags, cwd, **env):
    env = {**os.environ, **env}
    return subprocess.run([sys.executable, str(ROOT / script), *flags], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


def test_diverging_run_stops_at_the_first_non_finite_update(tmp_path):
    result = run("p3o.py", *CARTPOLE, "--total-timesteps", "640", "--learning-rate", "1e3", cwd=tmp_path)
    assert result.returncode == 1
    assert "error: iteration 1: the policy loss is not finite (NaN or inf)" in result.stderr
    assert "--learning-rate" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_entropy_collapse_in_the_first_updates_is_warned_about(tmp_path):
    result = run("p3o.py", *CARTPOLE, "--total-timesteps", "128", "--learning-rate", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Warning: iteration 1: the policy's entropy fell to" in result.stdout


def test_sane_run_is_not_warned_about_and_total_timesteps_round_up(tmp_path):
    result = run("ppo_gae.py", *CARTPOLE, "--total-timesteps", "100", "--save-model", "--run-name", "ok", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--total-timesteps 100 is not a multiple of the batch (num_envs * num_steps = 64): training 128 steps" in result.stdout
    assert "step        128/128" in result.stdout
    assert "Warning" not in result.stdout + result.stderr
    # Evaluation: 10 games over 8 envs started together, the first 1 or 2 games of each
    evaluation = run("ppo_gae.py", "--eval-checkpoint", "runs/ok/ppo_gae.pt", "--eval-episodes", "10", cwd=tmp_path)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert "CartPole-v1: 10 games (the first 1 or 2 of each of 8 envs, started together), score" in evaluation.stdout
    # The other script names the one this checkpoint belongs to
    other = run("p3o.py", "--eval-checkpoint", "runs/ok/checkpoint.pt", cwd=tmp_path)
    assert other.returncode == 1 and "is a checkpoint of ppo_gae.py, not of p3o.py" in other.stderr


def test_bad_checkpoint_files_fail_with_one_line(tmp_path):
    (tmp_path / "text.pt").write_text("not a checkpoint")
    torch.save({"args": {"horizon": 32}, "model": {}}, tmp_path / "old_p3o.pt")  # saved before checkpoints named their script
    for script, path, message in [
        ("ppo_gae.py", "text.pt", "text.pt is not a checkpoint of these scripts, or is damaged"),
        ("ppo_gae.py", "old_p3o.pt", "old_p3o.pt is a checkpoint of p3o.py, not of ppo_gae.py"),
    ]:
        result = run(script, "--eval-checkpoint", path, cwd=tmp_path)
        assert result.returncode == 1 and message in result.stderr
        assert "Traceback" not in result.stderr


def test_track_without_a_wandb_login_fails_at_once(tmp_path):
    env = {"HOME": str(tmp_path), "WANDB_API_KEY": "", "NETRC": str(tmp_path / "no_netrc"), "WANDB_MODE": ""}
    result = run("ppo_gae.py", "--track", *CARTPOLE, cwd=tmp_path, **env)
    assert result.returncode == 1
    assert "--track needs a Weights and Biases login: run `wandb login`" in result.stderr
    assert "--wandb-mode offline" in result.stderr and "Traceback" not in result.stderr


def test_missing_compiler_fails_with_one_line(tmp_path):
    env = {"TORCH_EXTENSIONS_DIR": str(tmp_path / "empty_cache"), "CXX": str(tmp_path / "no-such-c++")}
    result = run("ppo_gae.py", *CARTPOLE, "--total-timesteps", "64", cwd=tmp_path, **env)
    assert result.returncode == 1
    assert "error: Building p3o_kernel.cu needs a C++ compiler" in result.stderr and "Traceback" not in result.stderr
