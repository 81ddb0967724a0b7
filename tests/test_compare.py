"""scripts/compare.py end to end on CartPole-v1 (cheap): CSVs, plot, summary, skip on rerun, rerun of an unfinished run."""

import csv
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--games", "CartPole-v1", "--seeds", "1", "--total-timesteps", "2048", "--device", "cpu",
    "--ppo-args", "--num-envs 2 --num-steps 64",
    "--p3o-args", "--num-envs 2 --num-steps 64 --horizon 8",
]  # fmt: skip


def compare(out, *flags):
    result = subprocess.run(
        [sys.executable, "scripts/compare.py", "--out", str(out), *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def read(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def snapshot(out):
    """Every file under out/runs with its mtime: the run folders and their event files."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in (out / "runs").rglob("*")}


def test_compare_runs_resumes_and_reruns_unfinished(tmp_path):
    out = tmp_path / "compare"

    # 1. Both algorithms, one seed, two at a time
    stdout = compare(out, *TINY, "--jobs", "2")
    columns, results = read(out / "results.csv")
    assert columns == ["algo", "game", "seed", "step", "episodic_return"]
    assert {r["algo"] for r in results} == {"ppo_gae", "p3o"}
    assert {(r["game"], r["seed"]) for r in results} == {("CartPole-v1", "1")}
    assert all(0 < int(r["step"]) <= 2048 for r in results)
    columns, runs = read(out / "runs.csv")
    assert columns[:8] == ["label", "game", "seed", "total_timesteps", "final_return", "wall_time_s", "sps", "status"]
    assert sorted(r["label"] for r in runs) == ["p3o", "ppo_gae"]
    for row in runs:
        assert row["status"] == "finished" and row["total_timesteps"] == "2048"
        assert float(row["final_return"]) > 0 and float(row["sps"]) > 0 and float(row["wall_time_s"]) > 0
        assert int(row["episodes"]) == sum(r["algo"] == row["label"] for r in results)
        assert (out / row["run_dir"]).is_dir()  # the run's TensorBoard folder, found by its exp-name
    assert len(list((out / "runs").iterdir())) == 2
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    assert "| ppo_gae |" in summary and "| p3o |" in summary and "(n=1)" in summary
    assert "| ppo_gae |" in stdout  # the table is printed too

    # 2. Same command again: everything is skipped, nothing is touched
    before, csv_mtime = snapshot(out), (out / "results.csv").stat().st_mtime_ns
    stdout = compare(out, *TINY)
    assert stdout.count("already finished") == 2 and "nothing to run" in stdout
    assert snapshot(out) == before
    assert (out / "results.csv").stat().st_mtime_ns == csv_mtime

    # 3. p3o's row says it was interrupted: only p3o is rerun, from scratch
    columns, runs = read(out / "runs.csv")
    (p3o,) = [r for r in runs if r["label"] == "p3o"]
    (ppo,) = [r for r in runs if r["label"] == "ppo_gae"]
    p3o["status"] = "running"
    with open(out / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(runs)
    old_events = {p.name for p in (out / p3o["run_dir"]).glob("events.out.tfevents.*")}
    ppo_files = {k: v for k, v in before.items() if k.startswith(ppo["run_dir"])}
    stdout = compare(out, *TINY)
    assert re.search(r"skip +ppo_gae CartPole-v1 seed 1", stdout) and not re.search(r"start +ppo_gae", stdout)
    assert re.search(r"start +p3o CartPole-v1 seed 1", stdout) and "removing partial" in stdout
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k.startswith(ppo["run_dir"])} == ppo_files
    _, runs = read(out / "runs.csv")
    assert [r["status"] for r in runs] == ["finished", "finished"]
    (new_p3o,) = [r for r in runs if r["label"] == "p3o"]
    new_events = {p.name for p in (out / new_p3o["run_dir"]).glob("events.out.tfevents.*")}  # not checkpoint.pt
    assert new_events and not new_events & old_events  # a fresh run, not the old files
    assert len(list((out / "runs").iterdir())) == 2  # the partial folder is gone
    _, results = read(out / "results.csv")
    assert {r["algo"] for r in results} == {"ppo_gae", "p3o"}
    assert sum(r["algo"] == "p3o" for r in results) == int(new_p3o["episodes"])

    # 4. Plots again from the CSVs alone, with a reference line
    (out / "curves.png").unlink()
    stdout = compare(out, "--plot-only", "--reference", "CartPole-v1=500")
    assert (out / "curves.png").exists() and "| p3o |" in stdout
