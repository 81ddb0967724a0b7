"""scripts/compare.py, the runner on Ray, end to end on CartPole-v1 with tiny runs (seconds each):

- the embedded local Ray (no --address): CSVs, plot, summary, skip on rerun, rerun of an unfinished
  run, and no Ray process left behind;
- a two-node Ray cluster on this machine (`ray start --head` plus a second `ray start --address`
  node with its own resources), reached through --address: the second node is killed in the middle
  of the sweep, and every run must still finish exactly once with the CSVs intact;
- resuming from a checkpoint: a sweep stopped by SIGTERM continues its run on the next invocation
  (runs only where the training scripts have --resume);
- a run's status: queued until Ray starts it, then running;
- the store: the gzipped per-episode file, and the plain results.csv of older folders.
"""

import csv
import gzip
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--games", "CartPole-v1", "--seeds", "1", "2", "--total-timesteps", "1024", "--device", "cpu",
    "--ppo-args", "--num-envs 2 --num-steps 32",
    "--p3o-args", "--num-envs 2 --num-steps 32 --horizon 8",
]  # fmt: skip
ONE_SEED = [*TINY, "--seeds", "1"]


def session_pids(sid):
    """Processes of session `sid` (from /proc): the processes a setsid'd command started."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # after pid (comm): state ppid pgrp session
            pids.append(int(stat.parent.name))
    return pids


def kill_session(sid):
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def children_of_session(sid, pattern):
    """Processes whose parent belongs to session `sid` and whose command line matches `pattern`."""
    parents = set(session_pids(sid))
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if ppid in parents and re.search(pattern, cmd):
            found.append(int(stat.parent.name))
    return found


def compare(out, *flags, env=None, timeout=300):
    """Run the runner in its own session; on return no process of that session may be left."""
    proc = subprocess.Popen(
        [sys.executable, "scripts/compare.py", "--out", str(out), *flags],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    finally:
        deadline = time.time() + 20
        while session_pids(proc.pid) and time.time() < deadline:
            time.sleep(0.5)
        left = session_pids(proc.pid)
        kill_session(proc.pid)
    assert not left, f"Ray processes left behind by the runner: {left}"
    assert proc.returncode == 0, stdout[-4000:]
    return stdout


def read(path):
    """(columns, rows) of a CSV file, gzipped or not."""
    with (gzip.open(path, "rt", newline="") if path.suffix == ".gz" else open(path, newline="")) as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def check_finished_once(out, labels, seeds, steps):
    """runs.csv: one finished row per run; results.csv.gz: exactly each run's episodes, within its steps."""
    columns, runs = read(out / "runs.csv")
    assert columns[:8] == ["label", "game", "seed", "total_timesteps", "final_return", "wall_time_s", "sps", "status"]
    assert sorted((r["label"], r["seed"]) for r in runs) == sorted((lab, str(s)) for lab in labels for s in seeds)
    assert not (out / "results.csv").exists()
    columns, results = read(out / "results.csv.gz")
    assert columns == ["algo", "game", "seed", "step", "episodic_return"]
    for row in runs:
        assert row["status"] == "finished" and row["returncode"] == "0", row
        assert float(row["final_return"]) > 0 and float(row["sps"]) > 0 and int(row["last_step"]) == steps
        mine = [r for r in results if (r["algo"], r["seed"]) == (row["label"], row["seed"])]
        assert len(mine) == int(row["episodes"]) > 0
        assert all(0 < int(r["step"]) <= steps for r in mine)
        assert (out / row["run_dir"]).is_dir() and (out / row["log"]).read_text().startswith("$ python ")
    assert len(results) == sum(int(r["episodes"]) for r in runs)
    assert len(list((out / "runs").iterdir())) == len(runs)  # one folder per run: no leftover attempt
    return runs


def snapshot(out):
    """Every file under out/runs with its mtime: the run folders and their event files."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in (out / "runs").rglob("*")}


def test_embedded_ray_runs_resumes_and_reruns_unfinished(tmp_path, ray_env):
    out = tmp_path / "compare"

    # 1. Both algorithms, one seed, on a local Ray started by the runner, two at a time
    stdout = compare(out, *ONE_SEED, "--jobs", "2", env=ray_env)
    assert "Ray: local, 2 CPUs" in stdout
    runs = check_finished_once(out, ["ppo_gae", "p3o"], [1], 1024)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    assert "| ppo_gae |" in summary and "| p3o |" in summary and "(n=1)" in summary
    assert "| ppo_gae |" in stdout  # the table is printed too

    # 2. Same command again: everything is skipped, nothing is touched, Ray is not even started
    before, csv_mtime = snapshot(out), (out / "results.csv.gz").stat().st_mtime_ns
    stdout = compare(out, *ONE_SEED, env=ray_env)
    assert stdout.count("already finished") == 2 and "nothing to run" in stdout and "Ray:" not in stdout
    assert snapshot(out) == before
    assert (out / "results.csv.gz").stat().st_mtime_ns == csv_mtime

    # 3. p3o seed 1's row says it was running when the runner died: only that run is run again
    columns, runs = read(out / "runs.csv")
    (p3o,) = [r for r in runs if (r["label"], r["seed"]) == ("p3o", "1")]
    p3o["status"] = "running"
    with open(out / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(runs)
    old_events = {p.name for p in (out / p3o["run_dir"]).iterdir()}
    mine = f"runs/CartPole-v1__{p3o['exp_name']}__1"  # its folder (--run-name)
    others = {k: v for k, v in before.items() if not k.startswith(mine)}
    stdout = compare(out, *ONE_SEED, "--track", "--wandb-mode", "offline", "--sweep-name", "sweep-xyz", env=ray_env)
    assert stdout.count("already finished") == 1 and "1 run(s) submitted" in stdout
    (wandb_run,) = (out / "wandb").glob("offline-run-*/run-*.wandb")  # W&B's offline record, in --out
    assert b"sweep-xyz" in wandb_run.read_bytes()  # the W&B group: the sweep's name
    assert re.search(r"done +label=p3o game=CartPole-v1 seed=1", stdout)
    assert {k: v for k, v in snapshot(out).items() if not k.startswith(mine)} == others
    runs = check_finished_once(out, ["ppo_gae", "p3o"], [1], 1024)
    (new_p3o,) = [r for r in runs if (r["label"], r["seed"]) == ("p3o", "1")]
    new_events = {p.name for p in (out / new_p3o["run_dir"]).iterdir()}
    # The run's final checkpoint is continued: nothing left to train, the same folder and episodes
    assert "resumed from its checkpoint" in stdout
    assert new_p3o["run_dir"] == p3o["run_dir"] and int(new_p3o["episodes"]) == int(p3o["episodes"])
    assert old_events <= new_events  # the earlier events are kept (resuming a finished run adds an empty file)

    # 4. Plots again from the CSVs alone, with a reference line
    (out / "curves.png").unlink()
    stdout = compare(out, "--plot-only", "--reference", "CartPole-v1=500", env=ray_env)
    assert (out / "curves.png").exists() and "| p3o |" in stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cluster_through_address_survives_a_lost_node(tmp_path, ray_env):
    """Head (1 CPU) + a second node (2 CPUs) on loopback; the second node dies mid-sweep."""
    port, out = free_port(), tmp_path / "cluster"
    address = f"127.0.0.1:{port}"
    ray = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1"]
    fast = '{"health_check_period_ms": 500, "health_check_failure_threshold": 4, "health_check_initial_delay_ms": 0}'
    head_cmd = [*ray, "--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard", "false", "--system-config", fast]
    logs = tmp_path / "ray_start.log"
    with open(logs, "w") as log:
        head = subprocess.Popen(head_cmd, env=ray_env, stdout=log, stderr=log, start_new_session=True)
        node2 = runner = None
        try:
            deadline = time.time() + 120
            while not (Path(ray_env["RAY_TMPDIR"]) / "ray" / "ray_current_cluster").exists() and time.time() < deadline:
                assert head.poll() is None, logs.read_text()[-3000:]
                time.sleep(0.5)
            node2_cmd = [*ray, "--address", address, "--num-cpus", "2", "--resources", '{"node2": 1}']
            node2 = subprocess.Popen(node2_cmd, env=ray_env, stdout=log, stderr=log, start_new_session=True)
            runner = subprocess.Popen(
                [sys.executable, "scripts/compare.py", "--out", str(out), "--address", address, *TINY,
                 "--total-timesteps", "2048"],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ray_env,
            )  # fmt: skip
            # Kill the second node once a training run is under way on it
            deadline = time.time() + 180
            while not children_of_session(node2.pid, r"(ppo_gae|p3o)\.py") and time.time() < deadline:
                assert runner.poll() is None, runner.stdout.read()[-3000:]
                time.sleep(0.2)
            on_node2 = children_of_session(node2.pid, r"(ppo_gae|p3o)\.py")
            assert on_node2, "no run was placed on the second node"
            time.sleep(1.0)
            kill_session(node2.pid)
            stdout, _ = runner.communicate(timeout=300)
            assert runner.returncode == 0, stdout[-4000:]
        finally:
            for proc in (runner, node2, head):
                if proc is not None and proc.poll() is None:
                    proc.kill()
            for proc in (node2, head):
                if proc is not None:
                    kill_session(proc.pid)  # the node's processes; its workers are in its session too
    # The runs the lost node was training were retried on the head; each finished once
    assert all(not os.path.exists(f"/proc/{pid}") for pid in on_node2)
    check_finished_once(out, ["ppo_gae", "p3o"], [1, 2], 2048)
    assert "summary:" in stdout
    # Rerunning the command redoes nothing (and needs no cluster)
    stdout = compare(out, "--address", address, *TINY, "--total-timesteps", "2048", env=ray_env)
    assert stdout.count("already finished") == 4 and "nothing to run" in stdout


def test_interrupted_sweep_continues_from_checkpoint(tmp_path, ray_env):
    out = tmp_path / "resume"
    flags = [
        "--games", "CartPole-v1", "--seeds", "1", "--algos", "p3o", "--total-timesteps", "8192", "--device", "cpu",
        "--p3o-args", "--num-envs 2 --num-steps 32 --horizon 8", "--checkpoint-every", "0.5", "--jobs", "1",
    ]  # fmt: skip
    runner = subprocess.Popen(
        [sys.executable, "scripts/compare.py", "--out", str(out), *flags],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ray_env, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 180
        while not list((out / "runs").glob("*/checkpoint.pt")) and time.time() < deadline:
            assert runner.poll() is None, runner.stdout.read()[-3000:]
            time.sleep(0.2)
        os.kill(runner.pid, signal.SIGTERM)
        stdout, _ = runner.communicate(timeout=120)
    finally:
        kill_session(runner.pid)
    assert runner.returncode == 130, stdout[-3000:]
    _, runs = read(out / "runs.csv")
    assert [r["status"] for r in runs] == ["interrupted"]
    (run_dir,) = (out / "runs").iterdir()
    assert (run_dir / "checkpoint.pt").exists()

    stdout = compare(out, *flags, env=ray_env)
    assert "resumed from its checkpoint" in stdout
    _, runs = read(out / "runs.csv")
    resumed_at = re.search(r"Resuming \S+ from \S+: iteration (\d+)/", (out / runs[0]["log"]).read_text())
    assert resumed_at and int(resumed_at.group(1)) > 0  # the script continued, it did not start over
    assert [(r["status"], r["last_step"], r["run_dir"]) for r in runs] == [("finished", "8192", f"runs/{run_dir.name}")]
    _, results = read(out / "results.csv.gz")
    assert len(results) == int(runs[0]["episodes"]) and all(0 < int(r["step"]) <= 8192 for r in results)


def test_area_under_curve_by_hand():
    from scripts.compare import area_under_curve

    # 4 spans of 25 steps: games ending at 10 (score 2) and 20 (4) -> 3; none in span 2 -> keeps 3;
    # one at 60 (6) -> 6; one at 100 (the last step: the last span) (10) -> 10. Mean (3 + 3 + 6 + 10) / 4.
    assert area_under_curve([(10, 2.0), (20, 4.0), (60, 6.0), (100, 10.0)], 100, bins=4) == 5.5
    # Spans before the first game do not count: (6 + 10) / 2
    assert area_under_curve([(60, 6.0), (100, 10.0)], 100, bins=4) == 8.0
    assert math.isnan(area_under_curve([], 100, bins=4))


def test_runs_are_queued_until_ray_starts_them(tmp_path, ray_env):
    """--jobs 1 and two runs: while the first runs, runs.csv says the second is queued, never running."""
    out, log = tmp_path / "queued", tmp_path / "runner.log"
    with open(log, "w") as f:
        runner = subprocess.Popen(
            [sys.executable, "scripts/compare.py", "--out", str(out), *ONE_SEED, "--jobs", "1"],
            cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, text=True, env=ray_env, start_new_session=True,
        )  # fmt: skip
    seen = set()  # the statuses of the two runs, sorted, at each look
    try:
        deadline = time.time() + 300
        while runner.poll() is None and time.time() < deadline:
            if (out / "runs.csv").exists():  # written atomically: always whole
                seen.add(tuple(sorted(r["status"] for r in read(out / "runs.csv")[1])))
            time.sleep(0.05)
        runner.wait(timeout=10)
    finally:
        kill_session(runner.pid)
    assert runner.returncode == 0, log.read_text()[-4000:]
    assert ("queued", "running") in seen and ("running", "running") not in seen, seen
    check_finished_once(out, ["ppo_gae", "p3o"], [1], 1024)


def test_store_gzips_results_and_reads_a_plain_csv(tmp_path):
    """The results round trip through results.csv.gz, byte for byte the same each time; a folder from
    before (results.csv) is read, then migrated on the next write; any status but finished is rerun."""
    from scripts.compare import COMPARE, RESULT_COLUMNS, RUN_COLUMNS, Store, read_csv, write_csv

    runs = [{"label": "p3o", "game": "G", "seed": s, "status": status}
            for s, status in [(1, "finished"), (2, "queued"), (3, "running"), (4, "interrupted")]]  # fmt: skip
    results = [{"algo": "p3o", "game": "G", "seed": "1", "step": str(8 * i), "episodic_return": f"{i / 3:.6g}"} for i in range(1, 500)]
    write_csv(tmp_path / "runs.csv", RUN_COLUMNS, runs)
    write_csv(tmp_path / "results.csv", RESULT_COLUMNS, results)
    plain = (tmp_path / "results.csv").read_bytes()

    # A plain results.csv alone: read; the next write replaces it by the .gz, same rows
    store = Store(tmp_path, COMPARE)
    assert store.finished_keys() == [("p3o", "G", 1)]  # queued, running, interrupted: run again
    assert store.results[("p3o", "G", 1)] == results and (tmp_path / "results.csv").exists()
    store.save()
    assert not (tmp_path / "results.csv").exists()
    packed = (tmp_path / "results.csv.gz").read_bytes()
    assert gzip.decompress(packed) == plain and read_csv(tmp_path / "results.csv.gz") == results
    assert packed[3] & 0x08 == 0 and packed[4:8] == b"\0\0\0\0"  # no file name, mtime 0
    assert len(packed) < len(plain) / 3

    # Read back from the .gz; saving the same rows again writes the same bytes
    store = Store(tmp_path, COMPARE)
    assert store.results[("p3o", "G", 1)] == results
    store.save()
    assert (tmp_path / "results.csv.gz").read_bytes() == packed

    # Both files: the .gz is the one read
    write_csv(tmp_path / "results.csv", RESULT_COLUMNS, results[:3])
    assert Store(tmp_path, COMPARE).results[("p3o", "G", 1)] == results


def test_peaked_percent_counts_updates_above_half(tmp_path):
    """peaked_percent: the percentage of updates whose p3o/peak_share is above 0.5 (0.5 itself is not),
    read from the run's TensorBoard file; the summary gets its table only where runs have the column."""
    from torch.utils.tensorboard import SummaryWriter

    from scripts.compare import COMPARE, RESULT_COLUMNS, RUN_COLUMNS, Store, p3o_columns, read_events, summary_table, write_csv

    writer = SummaryWriter(tmp_path / "run")
    for step, share in enumerate([0.1, 0.6, 0.5, 0.9, 0.2, 0.51, 0.3, 0.05]):
        writer.add_scalar("p3o/peak_share", share, step)
        writer.add_scalar("p3o/effective_horizon", 10.0 + step, step)
    writer.close()
    episodes, sps, last_step, last, series = read_events(tmp_path / "run")
    assert [round(s, 6) for s in series["p3o/peak_share"]] == [0.1, 0.6, 0.5, 0.9, 0.2, 0.51, 0.3, 0.05]  # float32
    assert last["p3o/effective_horizon"] == 17.0 and last["p3o/peak_share"] == series["p3o/peak_share"][-1]
    assert p3o_columns(None, {"last": last, "series": series}) == {"effective_horizon": "17.00", "peaked_percent": "37.5"}
    assert p3o_columns(None, {"last": {}, "series": {}}) == {}  # PPO + GAE: neither column

    results = [{"algo": a, "game": "G", "seed": "1", "step": str(8 * i), "episodic_return": "1"} for a in ("p3o", "ppo") for i in range(1, 50)]
    runs = [{"label": "p3o", "game": "G", "seed": 1, "status": "finished", "last_step": 400, "effective_horizon": "17.00", "peaked_percent": "37.5"},
            {"label": "ppo", "game": "G", "seed": 1, "status": "finished", "last_step": 400}]  # fmt: skip
    write_csv(tmp_path / "runs.csv", RUN_COLUMNS, runs)
    write_csv(tmp_path / "results.csv", RESULT_COLUMNS, results)
    table = summary_table(Store(tmp_path, COMPARE))
    assert "p3o/peak_share > 0.5" in table and "| p3o | 37.5 +- 0.0 (n=1) |" in table and "| ppo | n/a |" in table
    runs[0]["peaked_percent"] = ""  # a folder from before the column: no such table
    write_csv(tmp_path / "runs.csv", RUN_COLUMNS, runs)
    assert "peak_share" not in summary_table(Store(tmp_path, COMPARE))


def test_plot_from_draws_other_folders_runs_side_by_side(tmp_path, capsys):
    """--plot-only --plot-from A:ppo_gae B:p3o: the summary in --out holds A's PPO + GAE and B's P3O runs
    (each label from the folder named for it), --out gets no CSVs; a run found in two folders, a label a
    folder lacks, a missing folder and --plot-from without --plot-only stop with a message."""
    import pytest

    from scripts.compare import RESULT_COLUMNS, RUN_COLUMNS, main, write_csv

    def folder(name, returns):  # returns: {label: the return of every game of seed 1}
        runs = [{"label": lab, "game": "G", "seed": 1, "status": "finished", "last_step": 400} for lab in returns]
        results = [{"algo": lab, "game": "G", "seed": "1", "step": str(8 * i), "episodic_return": str(ret)}
                   for lab, ret in returns.items() for i in range(1, 51)]  # fmt: skip
        (tmp_path / name).mkdir()
        write_csv(tmp_path / name / "runs.csv", RUN_COLUMNS, runs)
        write_csv(tmp_path / name / "results.csv", RESULT_COLUMNS, results)
        return str(tmp_path / name)

    a, b, out = folder("a", {"ppo_gae": 10, "p3o": 20}), folder("b", {"p3o": 30}), tmp_path / "out"
    assert main(["--out", str(out), "--plot-only", "--plot-from", f"{a}:ppo_gae", f"{b}:p3o"]) == 0
    summary = (out / "summary.md").read_text()
    assert "| ppo_gae | 10.0 +- 0.0 (n=1) |" in summary and "| p3o | 30.0 +- 0.0 (n=1) |" in summary
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "summary.md"]
    assert main(["--out", str(out), "--plot-only", "--plot-from", f"{a}:p3o"]) == 0  # one label, one folder
    assert "| p3o | 20.0 +- 0.0 (n=1) |" in (out / "summary.md").read_text() and "ppo_gae" not in (out / "summary.md").read_text()

    for flags, message in [
        (["--plot-only", "--plot-from", a, b], "is in two folders"),
        (["--plot-only", "--plot-from", f"{b}:ppo_gae"], "has no finished run labelled ppo_gae"),
        (["--plot-only", "--plot-from", str(tmp_path / "missing")], "no runs.csv in"),
        (["--plot-from", a], "add --plot-only"),
    ]:
        with pytest.raises(SystemExit) as stop:  # sys.exit(message) or argparse's error (printed, code 2)
            main(["--out", str(out), *flags])
        assert message in str(stop.value.code) + capsys.readouterr().err
