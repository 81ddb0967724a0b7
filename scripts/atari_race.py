"""The Atari race in chunks: ppo_gae.py and p3o.py on Atari games, several runs at once, resumable.

    python scripts/atari_race.py --seconds 300 --out results/atari_race --state race_state
    python scripts/atari_race.py --seconds 300 --games Pong --seeds 1 2 3 --out ...

One call is one chunk. It
  1. restores the runs' checkpoints from --state (race_state.tar.gz.part00, part01, ...: what the last
     chunk left), when there are any;
  2. starts every run at once, one process each, `python {algo}.py --env-id GAME --seed S
     --run-name GAME__algo__S --resume auto --checkpoint-every 60` at the scripts' defaults otherwise
     (CleanRL's Atari settings, 10M steps), in --work (the scripts write runs/NAME/ there);
  3. sends SIGTERM to those still running --stop-before seconds before --seconds are up: the scripts
     then write runs/NAME/checkpoint.pt and exit (143);
  4. writes, under --out: each run's episodic returns (charts/episodic_return from its TensorBoard
     events) as NAME.csv, appended to the rows an earlier chunk left there, progress.md (steps
     reached, mean of the last 20 scores), the runs' logs under logs/, and, under --state-out, the
     checkpoints packed into race_state.tar.gz.partNN files of at most --part-mib MiB, for the next
     chunk's --state.
The checkpoints (the agent and Adam's state, about 20 MB a run) are not for git: keep the parts
outside the repository's history and hand them back as --state.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATE_PREFIX = "race_state.tar.gz.part"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, required=True, help="wall-clock time of this chunk, start to finish")
    p.add_argument("--out", type=Path, required=True, help="where the CSVs, progress.md and the state parts go")
    p.add_argument("--state", type=Path, default=None, help="a folder with the last chunk's race_state.tar.gz.part* files")
    p.add_argument("--work", type=Path, default=Path("/tmp/atari_race"), help="the runs' working folder (runs/NAME)")
    p.add_argument("--games", nargs="+", default=["Breakout", "Pong"])
    p.add_argument("--algos", nargs="+", choices=["ppo_gae", "p3o"], default=["ppo_gae", "p3o"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--stop-before", type=float, default=30.0,
                   help="seconds before the end at which the runs get SIGTERM (time to checkpoint and exit)")
    p.add_argument("--checkpoint-every", type=float, default=60.0)
    p.add_argument("--state-out", type=Path, default=None, help="where the state parts go (default: --out)")
    p.add_argument("--part-mib", type=float, default=15.0, help="size of each state part")
    p.add_argument("--max-state-mib", type=float, default=None,
                   help="warn when the packed state is larger than this (what the transfer back can carry)")
    p.add_argument("--extra", default="", help="more flags for every run, e.g. '--num-envs 2 --num-steps 32'")
    args = p.parse_args(argv)
    args.state_out = args.state_out or args.out
    if args.seconds <= args.stop_before:
        p.error(f"--seconds ({args.seconds:g}) must be more than --stop-before ({args.stop_before:g})")
    return args


def has_resume(script):
    """Whether the training script takes --resume (the checkpoint contract)."""
    help_text = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                               timeout=120, env=dict(os.environ, COLUMNS="200")).stdout
    return "--resume" in help_text


def restore(state, work):
    parts = sorted(state.glob(STATE_PREFIX + "*")) if state and state.is_dir() else []
    if not parts:
        print(f"no state in {state}: every run starts fresh" if state else "no --state: every run starts fresh")
        return
    joined = work / "race_state.tar.gz"
    with open(joined, "wb") as f:
        for part in parts:
            f.write(part.read_bytes())
    with tarfile.open(joined) as tar:
        tar.extractall(work, filter="data")
    joined.unlink()
    print(f"restored {len(parts)} state part(s) from {state}: " + ", ".join(
        str(p.parent.relative_to(work)) for p in sorted(work.glob("runs/*/checkpoint.pt"))))


def pack(work, out, part_bytes):
    """The runs' checkpoints as one gzipped tar, cut into parts of at most part_bytes."""
    for old in out.glob(STATE_PREFIX + "*"):
        old.unlink()
    checkpoints = sorted(work.glob("runs/*/checkpoint.pt"))
    joined = work / "race_state.tar.gz"
    with tarfile.open(joined, "w:gz", compresslevel=6) as tar:
        for path in checkpoints:
            tar.add(path, arcname=str(path.relative_to(work)))
    data = joined.read_bytes()
    joined.unlink()
    parts = [data[i:i + part_bytes] for i in range(0, len(data), part_bytes)]
    for i, chunk in enumerate(parts):
        (out / f"{STATE_PREFIX}{i:02d}").write_bytes(chunk)
    return checkpoints, len(data), len(parts)


def episodes(run_dir):
    """[(step, score)] of charts/episodic_return, and the last step logged, from TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    rows = [(e.step, e.value) for e in events.Scalars("charts/episodic_return")] if "charts/episodic_return" in tags else []
    last = max((events.Scalars(t)[-1].step for t in tags), default=0)
    return rows, last


def collect(name, work, out):
    """Append this chunk's episodes to out/NAME.csv; return (last step reached, all rows)."""
    path = out / f"{name}.csv"
    rows = []
    if path.exists():
        with open(path) as f:
            rows = [(int(r["step"]), float(r["episodic_return"])) for r in csv.DictReader(f)]
    new, last = episodes(work / "runs" / name) if (work / "runs" / name).is_dir() else ([], 0)
    done = max((s for s, _ in rows), default=0)
    rows += [(s, v) for s, v in new if s > done]  # a resumed run logs only steps after its checkpoint
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "episodic_return"])
        writer.writerows(rows)
    return max(last, done), rows


def main(argv=None):
    args = parse_args(argv)
    start = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    args.state_out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "logs").mkdir(exist_ok=True)
    missing = [algo for algo in args.algos if not has_resume(f"{algo}.py")]
    if missing:
        print(f"race skipped: {', '.join(m + '.py' for m in missing)} take(s) no --resume yet (the checkpoint "
              "contract: --run-name, --resume auto, --checkpoint-every)")
        (args.out / "progress.md").write_text("race skipped: the scripts take no --resume yet\n")
        return 2
    restore(args.state, args.work)
    runs = {}
    for game in args.games:
        for algo in args.algos:
            for seed in args.seeds:
                name = f"{game}__{algo}__{seed}"
                cmd = [sys.executable, str(ROOT / f"{algo}.py"), "--env-id", game, "--seed", str(seed),
                       "--run-name", name, "--resume", "auto", "--checkpoint-every", str(args.checkpoint_every),
                       *args.extra.split()]
                log = open(args.work / "logs" / f"{name}.log", "a")
                runs[name] = subprocess.Popen(cmd, cwd=args.work, stdout=log, stderr=subprocess.STDOUT,
                                              env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
    print(f"started {len(runs)} runs: {', '.join(runs)}", flush=True)

    stop_at = start + args.seconds - args.stop_before
    while time.monotonic() < stop_at and any(p.poll() is None for p in runs.values()):
        time.sleep(1.0)
    for proc in runs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the main process only: it stops its env workers itself
    grace_end = start + args.seconds - 10  # the last seconds are for collecting and packing
    for name, proc in runs.items():
        try:
            proc.wait(timeout=max(1.0, grace_end - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"{name} did not exit after SIGTERM: killed (it keeps its last periodic checkpoint)", flush=True)
            os.killpg(proc.pid, signal.SIGKILL)  # the run and its env workers
            proc.wait()

    lines = [f"# Atari race: progress after this chunk ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             "| run | exit | steps reached | episodes | mean of the last 20 scores |", "|---|---|---|---|---|"]
    for name, proc in runs.items():
        last, rows = collect(name, args.work, args.out)
        recent = [v for _, v in rows[-20:]]
        mean = f"{sum(recent) / len(recent):.1f}" if recent else ""
        lines.append(f"| {name} | {proc.returncode} | {last:,} | {len(rows)} | {mean} |")
    checkpoints, size, n_parts = pack(args.work, args.state_out, int(args.part_mib * 2**20))
    lines += ["", f"state: {len(checkpoints)} checkpoints, {size / 2**20:.1f} MiB in {n_parts} part(s) "
              f"{STATE_PREFIX}NN; the next chunk takes them as --state"]
    if args.max_state_mib and size > args.max_state_mib * 2**20:
        lines.append(f"**WARNING: the state ({size / 2**20:.1f} MiB) is more than --max-state-mib "
                     f"({args.max_state_mib:g}): not all of it can come back; race fewer runs at once**")
    no_checkpoint = [n for n in runs if not (args.work / "runs" / n / "checkpoint.pt").exists()]
    if no_checkpoint:
        lines.append(f"runs without a checkpoint (they start over next time): {', '.join(no_checkpoint)}")
    text = "\n".join(lines) + "\n"
    (args.out / "progress.md").write_text(text)
    shutil.copytree(args.work / "logs", args.out / "logs", dirs_exist_ok=True)  # git ignores results/*/logs/
    print(text, flush=True)
    return 0 if not no_checkpoint else 1


if __name__ == "__main__":
    sys.exit(main())
