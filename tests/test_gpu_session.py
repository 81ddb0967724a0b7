"""scripts/gpu_session.py end to end as a CPU dry run, its time budget, and the race's resumable state."""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import atari_race  # noqa: E402
from bench_throughput import line_phases  # noqa: E402


def session(tmp_path, *flags, timeout=600):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_session.py"), "--out", str(out),
                           "--work", str(tmp_path / "work"), *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    rows = {}
    summary = out / "summary.md"
    if summary.exists():
        for line in summary.read_text().splitlines()[4:]:
            part, status, seconds, note = [c.strip() for c in line.strip("|").split("|")]
            rows[part] = (status, note)
    return proc, out, rows


def test_dry_run_end_to_end(tmp_path):
    proc, out, rows = session(tmp_path, "--dry-run", "--budget", "400", "--race-algos", "p3o", "--race-max-seconds", "60")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert list(rows) == ["install", "build", "tests", "kernels", "throughput", "race"]
    for part in ("install", "build", "tests"):
        assert rows[part][0] == "skipped" and "dry run" in rows[part][1]
    assert rows["kernels"][0] == "ok" and rows["throughput"][0] == "ok"
    with tarfile.open(out / "results.tar.gz") as tar:
        names = set(tar.getnames())
        throughput = tar.extractfile("results/bench_throughput_cpu.md").read().decode()
    assert {"results/bench_kernels_cpu.md", "results/bench_kernels_cpu.csv", "results/gpu_session/kernels.log",
            "results/gpu_session/throughput.log", "results/gpu_session/summary.md"} <= names
    for run in ("bare", "ppo_gae", "p3o"):
        assert f"| {run} | ok |" in throughput
    if rows["race"][0] == "skipped":  # until the scripts take --resume
        assert "--resume" in rows["race"][1]
        assert not atari_race.has_resume("p3o.py") or not atari_race.has_resume("ppo_gae.py")
    else:
        assert rows["race"][0] == "ok"
        assert "results/atari_race/progress.md" in names
        assert sorted(p.name for p in out.glob("race_state.tar.gz.part*"))[0] == "race_state.tar.gz.part00"
    assert len(list(out.iterdir())) <= 8  # what a transfer back can carry


def test_small_budget_skips_every_part_and_says_why(tmp_path):
    proc, out, rows = session(tmp_path, "--budget", "1", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(rows) == 6
    for part in ("install", "build", "tests", "kernels", "throughput", "race"):
        assert rows[part][0] == "skipped" and "s left, it needs" in rows[part][1]


@pytest.mark.parametrize("script", ["ppo_gae.py", "p3o.py"])
def test_line_timer_finds_every_phase_in_the_scripts(script):
    source = (ROOT / script).read_text()
    phases = line_phases(source)
    lines = source.splitlines()
    found = {phase: [lines[n - 1] for n, p in phases.items() if p == phase] for phase in set(phases.values())}
    assert {"start", "stop", "env", "inference", "advantage", "update", "other"} <= set(found)
    assert all("envs.step(" in line for line in found["env"])
    assert any("kernels." in line for line in found["advantage"])
    assert any("loss.backward()" in line for line in found["update"])
    assert any("optimizer.step()" in line for line in found["update"])
    assert any("get_action_and_value(b_obs" in line for line in found["update"])  # the update's forward
    assert not any("get_action_and_value(b_obs" in line for line in found["inference"])


def test_race_state_round_trip_in_parts(tmp_path):
    work, out, again = tmp_path / "work", tmp_path / "out", tmp_path / "again"
    blobs = {name: os.urandom(2**20 * (i + 2)) for i, name in enumerate(["Pong__p3o__1", "Pong__ppo_gae__1"])}
    for name, blob in blobs.items():
        (work / "runs" / name).mkdir(parents=True)
        (work / "runs" / name / "checkpoint.pt").write_bytes(blob)
    out.mkdir()
    checkpoints, size, n_parts = atari_race.pack(work, out, part_bytes=2**20)
    assert len(checkpoints) == 2 and size > 5 * 2**20  # random bytes: gzip cannot shrink them
    assert n_parts == len(list(out.glob("race_state.tar.gz.part*"))) >= 6
    assert all(p.stat().st_size <= 2**20 for p in out.iterdir())
    again.mkdir()
    atari_race.restore(out, again)
    for name, blob in blobs.items():
        assert (again / "runs" / name / "checkpoint.pt").read_bytes() == blob


def test_race_csv_appends_only_new_steps(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    work, out = tmp_path / "work", tmp_path / "out"
    out.mkdir()
    (out / "Pong__p3o__1.csv").write_text("step,episodic_return\n50,-21.0\n150,-20.0\n")
    writer = SummaryWriter(str(work / "runs" / "Pong__p3o__1"))
    for step, score in [(100, -19.0), (200, -18.0), (300, -17.0)]:  # 100: before the last chunk's end
        writer.add_scalar("charts/episodic_return", score, step)
    writer.add_scalar("charts/SPS", 900, 320)
    writer.close()
    last, rows = atari_race.collect("Pong__p3o__1", work, out)
    assert last == 320
    assert rows == [(50, -21.0), (150, -20.0), (200, -18.0), (300, -17.0)]
    assert (out / "Pong__p3o__1.csv").read_text().splitlines()[1:] == ["50,-21.0", "150,-20.0", "200,-18.0", "300,-17.0"]


FAKE_TRAINING = '''
class Envs:
    def reset(self, seed):
        return 0
    def step(self, action):
        return sum(range(1000))
    def close(self):
        pass
class Agent:
    def get_action_and_value(self, x):
        return x
if __name__ == "__main__":
    envs, agent, update_epochs = Envs(), Agent(), 3
    envs.reset(seed=1)
    for step in range(5):
        action = agent.get_action_and_value(step)
        envs.step(
            action,
        )
    for epoch in range(update_epochs):
        loss = epoch * 2
    envs.close()
'''


def test_line_timer_charges_each_line_of_the_loop_once(tmp_path):
    from bench_throughput import LineTimer

    script = tmp_path / "fake_training.py"
    script.write_text(FAKE_TRAINING)
    timer = LineTimer(compile(FAKE_TRAINING, str(script), "exec"), line_phases(FAKE_TRAINING), sync=False)
    timer.run({"__name__": "__main__"})
    assert timer.hits["env"] == 5 and timer.hits["inference"] == 5 and timer.hits["update"] == 1
    assert sum(timer.seconds.values()) == pytest.approx(timer.stopped - timer.started, abs=1e-9)
    assert all(seconds > 0 for phase, seconds in timer.seconds.items() if phase != "advantage")
