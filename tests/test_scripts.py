"""End-to-end: both training scripts run a couple of updates on real Breakout, and bad input fails fast."""

import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--num-envs", "2", "--num-steps", "32", "--total-timesteps", "128", "--device", "cpu"]


def run(script, *flags, cwd):
    return subprocess.run(
        [sys.executable, str(ROOT / script), *flags], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def scalars(run_dir):
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return set(events.Tags()["scalars"])


CLEANRL_METRICS = {
    "charts/SPS",
    "charts/learning_rate",
    "losses/value_loss",
    "losses/policy_loss",
    "losses/entropy",
    "losses/approx_kl",
    "losses/clipfrac",
    "losses/explained_variance",
}


@pytest.mark.parametrize(
    "script,extra",
    [
        ("ppo_gae.py", []),
        ("p3o.py", ["--horizon", "64"]),
        ("p3o.py", ["--surprise-lambda", "0.95", "--sigma-prior-rows", "0"]),  # no shrinkage: as specified
        ("p3o.py", ["--advantage-sigma", "learned", "--state-sigma", "--sigma-prior-rows", "0"]),
        ("p3o.py", ["--weight-rule", "action", "--horizon", "16"]),
        ("p3o.py", ["--weight-rule", "cumulative", "--horizon", "16"]),
    ],
)
def test_smoke_run_logs_and_checkpoint(tmp_path, script, extra):
    result = run(script, *TINY, *extra, "--save-model", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Using device: cpu" in result.stdout
    assert "step        128/128" in result.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    tags = scalars(run_dir)
    assert CLEANRL_METRICS <= tags
    if script == "p3o.py":
        last_k = int(extra[extra.index("--horizon") + 1]) - 1 if "--horizon" in extra else 31
        assert {"p3o/sigma_r", "p3o/effective_horizon", "p3o/sigma/k000", f"p3o/weight/k{last_k:03d}"} <= tags
        events = EventAccumulator(str(run_dir))
        events.Reload()
        shares, peaks = [e.value for e in events.Scalars("p3o/peak_share")], [e.value for e in events.Scalars("p3o/peak_offset")]
        assert shares and all(0 <= s <= 1 for s in shares) and all(p == int(p) and 0 <= p <= last_k for p in peaks)
        action_rule_tags = {"p3o/action_share_mean", "p3o/action_share_max", "p3o/complete_rows"}
        assert action_rule_tags <= tags if "action" in extra else not action_rule_tags & tags
    checkpoint = next(run_dir.glob("*.pt"))
    evaluation = run(script, "--eval-checkpoint", str(checkpoint), "--eval-episodes", "1", "--device", "cpu", cwd=tmp_path)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert "Breakout: 1 games (the first 1 of each of 1 envs, started together), score" in evaluation.stdout


@pytest.mark.parametrize(
    "script,flags,message",
    [
        ("ppo_gae.py", ["--env-id", "Breakuot"], "Did you mean Breakout"),
        ("ppo_gae.py", ["--num-envs", "0"], "--num-envs must be at least 1"),
        ("ppo_gae.py", ["--gamma", "1.5"], "--gamma must be in (0, 1]"),
        ("ppo_gae.py", ["--num-minibatches", "3"], "must divide num_envs * num_steps"),
        ("p3o.py", ["--horizon", "0"], "--horizon must be at least 1"),
        ("p3o.py", ["--chance-coef", "1.5"], "--chance-coef must be in [0, 1]"),
        ("p3o.py", ["--surprise-lambda", "1.2"], "--surprise-lambda must be in [0, 1]"),
        ("p3o.py", ["--normalization", "mean"], "invalid choice 'mean'"),
        ("p3o.py", ["--gamma", "0.99"], "--gamma"),  # P3O has no gamma
        ("p3o.py", ["--advantage-sigma", "oracle"], "invalid choice 'oracle'"),
        ("p3o.py", ["--state-sigma"], "--state-sigma needs --advantage-sigma learned"),
        ("p3o.py", ["--weight-rule", "action", "--horizon", "128"], "--weight-rule action needs --horizon at most half"),
        ("p3o.py", ["--weight-rule", "action", "--advantage-sigma", "learned"], "it needs --advantage-sigma rollout"),
        ("p3o.py", ["--weight-rule", "cumulative", "--advantage-sigma", "learned", "--sigma-prior-rows", "0"], "it needs --advantage-sigma rollout"),
        ("p3o.py", ["--weight-rule", "cumulative", "--chance-coef", "1"], "--weight-rule cumulative has none: use 0"),
        ("p3o.py", ["--weight-rule", "cumulative", "--surprise-lambda", "0.9"], "--surprise-lambda 0.9 needs --weight-rule precision"),
        ("p3o.py", ["--sigma-min-rows", "-1"], "--sigma-min-rows must not be negative"),
        ("p3o.py", ["--sigma-min-rows", "64", "--advantage-sigma", "learned"], "--sigma-min-rows counts the rollout's rows"),
        ("p3o.py", ["--sigma-prior-rows", "-1"], "--sigma-prior-rows must not be negative"),
        ("p3o.py", ["--sigma-prior-rows", "64", "--advantage-sigma", "learned"], "--sigma-prior-rows (64) shrinks the rollout-measured"),
        ("p3o.py", ["--advantage-sigma", "learned"], "add --sigma-prior-rows 0"),  # the default shrinkage needs rollout
        ("ppo_gae.py", ["--minatar-sticky-prob", "2"], "--minatar-sticky-prob must be in [0, 1]"),
        ("ppo_gae.py", ["--batch-size", "64"], "Unrecognized"),  # computed, not a flag
        ("ppo_gae.py", ["--env-id", "Pendulum-v1", "--device", "cpu"], "Pendulum-v1 has the action space Box"),
        ("p3o.py", ["--resume", "auto"], "--resume auto needs --run-name"),
        ("ppo_gae.py", ["--eval-checkpoint", "missing.pt"], "--eval-checkpoint missing.pt: no such file"),
        ("p3o.py", ["--eval-checkpoint", "."], "--eval-checkpoint .: is a folder, not a checkpoint file"),
    ],
)
def test_bad_arguments_fail_with_a_clear_message(tmp_path, script, flags, message):
    result = run(script, *flags, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_cuda_request_without_gpu_fails_clearly(tmp_path):
    result = run("p3o.py", "--device", "cuda", cwd=tmp_path)
    assert result.returncode != 0
    assert "PyTorch sees no CUDA GPU" in result.stderr
    assert "Traceback" not in result.stderr
