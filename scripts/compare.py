"""Race PPO + GAE against P3O (or P3O against itself over horizons) over games x seeds, on Ray.

    python scripts/compare.py --games Breakout Pong --seeds 1 2 3 --total-timesteps 10000000 --out results/compare
    python scripts/compare.py --sweep-horizons 32 64 128 256 --games Breakout --seeds 1 2 --out results/sweep
    python scripts/compare.py --out results/compare --plot-only --reference Breakout=414.66
    python scripts/compare.py --out results/both --plot-only --plot-from results/a:ppo_gae results/b:p3o
    python scripts/compare.py ... --address auto          # the same sweep on a running Ray cluster

This file is the one experiment runner of the repository; scripts/horizon_experiment.py is another
configuration of it (its own runs, columns, plot and table; the same pool, store and resume).

Each run is a Ray task with the resources --cpus-per-run and --gpus-per-run (a fraction lets several
runs share a GPU); Ray decides where it runs. By default this process starts a local Ray instance
(--jobs runs at once); --address HOST:PORT or auto sends the runs to an existing cluster. The task
starts `ppo_gae.py` or `p3o.py` as a subprocess (the scripts know nothing of Ray), with the worker's
Python and the repository at the path it has here (so every node needs the repository at the same
path, with the requirements installed), in the directory --out (created on the worker). The run's
TensorBoard folder, --out/runs/{env}__{exp_name}__{seed}, stays on the node that ran it; the task
returns the run's episodes, SPS, last scalars and its log to this process, which alone writes the
files below. The exp-name is deterministic, `{label}-{config hash}`, and so is the run name.

What --out holds:
    results.csv.gz   algo (the label), game, seed, step, episodic_return: one row per finished game,
                  gzipped (a results.csv from before is read, and replaced by the .gz on the next write)
    runs.csv      one row per run: label, game, seed, total_timesteps, final_return (mean return of
                  the games that ended in the last 10% of the steps), wall_time_s, sps (mean of
                  charts/SPS), status (queued: submitted, not started yet; running; finished; failed;
                  interrupted), how it was run, the node whose disk holds its TensorBoard folder, and
                  for P3O effective_horizon (its last p3o/effective_horizon) and peaked_percent (the
                  percentage of updates whose p3o/peak_share was above 0.5)
    curves.png    the comparison: a panel per game, mean over seeds with a min..max (or std) band
    horizon_sweep.png   the same for a horizon sweep, plus the final return against H
    summary.md    label x game: final return and area under the curve, mean +- std over seeds (n
                  seeds), and for P3O the two columns above
    logs/         the stdout + stderr of each run (written as it runs on the node running it, and
                  here by this process when it ends)

Resuming: rerunning the same command skips every run that runs.csv says is finished (with the same
settings). Any other run (queued, running, interrupted, failed) is run again, and continues from its
last checkpoint (the scripts' --run-name NAME --resume auto --checkpoint-every S) when one is in its
run folder on the node that runs it; otherwise it starts from scratch in a clean folder. A task whose
worker dies (process killed, node lost) is retried by Ray (--retries). The CSVs are written by this
process only, atomically (temp file and os.replace, with Ctrl-C held back while writing), when runs
are submitted and whenever one ends, so a Ctrl-C or a crash never loses the results of a finished run.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import hashlib
import io
import math
import os
import shlex
import signal
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"ppo_gae": "ppo_gae.py", "p3o": "p3o.py"}
RESULT_COLUMNS = ["algo", "game", "seed", "step", "episodic_return"]
RUN_COLUMNS = [
    "label", "game", "seed", "total_timesteps", "final_return", "wall_time_s", "sps", "status",
    "episodes", "last_step", "algo", "exp_name", "config", "args", "run_dir", "returncode", "log", "node",
    "effective_horizon", "peaked_percent",
]  # fmt: skip
FINAL_FRACTION = 0.10  # final_return: the games that ended in the last 10% of the steps
AUC_BINS = 100  # area under the curve: the mean of the curve over this many equal spans of steps


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------
def runner_parser(description, total_timesteps, out):
    """The flags every experiment of this runner shares (scripts/horizon_experiment.py adds its own)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="the seeds (a list, not a count)")
    p.add_argument("--total-timesteps", type=int, default=total_timesteps)
    p.add_argument("--ppo-args", default="", help='extra flags for every ppo_gae.py run, one string: "--num-envs 16"')
    p.add_argument("--p3o-args", default="", help='extra flags for every p3o.py run, one string: "--horizon 64"')
    p.add_argument("--out", type=Path, default=Path(out))
    p.add_argument("--plot-only", action="store_true", help="run nothing: redraw plots and summary from the CSVs")
    p.add_argument(
        "--plot-from", nargs="+", default=[], metavar="FOLDER[:LABEL,...]",
        help="with --plot-only: plot the finished runs of these folders (only those whose first runs.csv column,"
        " label or method, is one of the LABELs, if given) into --out, instead of --out's own runs",
    )  # fmt: skip
    p.add_argument(
        "--rerun-changed", action="store_true",
        help="rerun finished runs whose settings differ from those in runs.csv (otherwise: stop with an error)",
    )  # fmt: skip
    p.add_argument("--bins", type=int, default=100, help="points of the common step grid of the curves")
    p.add_argument("--smooth", type=int, default=5, help="moving-average window of the curves, in grid points")
    p.add_argument("--band", choices=["minmax", "std"], default="minmax", help="shaded band over seeds")
    ray = p.add_argument_group("where the runs run (Ray)")
    ray.add_argument("--address", help="HOST:PORT of the Ray cluster this node is part of, or auto; default: a local Ray in this process")
    ray.add_argument("--jobs", type=int, help="local Ray only: runs at once (default: the machine's cores / --cpus-per-run)")
    ray.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs Ray reserves for each run (also its OMP_NUM_THREADS)")
    ray.add_argument(
        "--gpus-per-run", type=float,
        help="GPUs Ray reserves for each run, 0.25 = four runs per GPU (default, if the runs use a GPU and Ray has one: 1,"
        " or locally with --jobs the GPUs shared evenly by the --jobs runs; else 0)",
    )  # fmt: skip
    ray.add_argument("--retries", type=int, default=3, help="times Ray reruns a run whose worker died (node lost, killed)")
    ray.add_argument("--checkpoint-every", type=float, default=300.0, help="seconds between the runs' checkpoints (--checkpoint-every of the scripts)")
    ray.add_argument("--track", action="store_true", help="track every run with W&B, all in one group: --sweep-name")
    ray.add_argument("--wandb-mode", choices=["online", "offline"], default="online", help="with --track")
    ray.add_argument("--sweep-name", help="the W&B group of the runs (default: the name of --out)")
    return p


def parse_runner_args(parser, argv=None):
    """parser.parse_args, letting --ppo-args / --p3o-args take a value that looks like a flag
    ("--p3o-args --state-sigma"), which argparse alone refuses; then the shared checks."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, item in enumerate(argv[:-1]):
        if item in ("--ppo-args", "--p3o-args"):
            argv[i : i + 2] = [f"{item}={argv[i + 1]}", None]
    args = parser.parse_args([a for a in argv if a is not None])
    if args.total_timesteps < 1:
        parser.error("--total-timesteps must be positive")
    if args.jobs is not None and args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.jobs is not None and args.address:
        parser.error("--jobs is for the local Ray; on a cluster, --cpus-per-run and --gpus-per-run decide how many run at once")
    if args.cpus_per_run <= 0:
        parser.error("--cpus-per-run must be positive")
    if args.gpus_per_run is not None and not (0 <= args.gpus_per_run <= 1 or args.gpus_per_run == int(args.gpus_per_run)):
        parser.error("--gpus-per-run must be 0, a fraction below 1, or a whole number of GPUs")
    if args.retries < 0 or args.checkpoint_every < 0:
        parser.error("--retries and --checkpoint-every must not be negative")
    for flag in ("--ppo-args", "--p3o-args"):
        for own in ("--run-name", "--resume", "--checkpoint-every", "--exp-name", "--track", "--wandb-group"):
            if any(w == own or w.startswith(own + "=") for w in shlex.split(getattr(args, flag[2:].replace("-", "_")))):
                parser.error(f"{flag} must not set {own}: this runner sets it")
    if args.plot_from and not args.plot_only:
        parser.error("--plot-from only chooses what --plot-only draws: add --plot-only")
    sources = []
    for item in args.plot_from:
        folder, _, labels = (item, "", "") if Path(item).is_dir() or ":" not in item else item.rpartition(":")
        folder, labels = Path(folder).resolve(), [lab for lab in labels.split(",") if lab]
        if not (folder / "runs.csv").exists():
            parser.error(f"--plot-from {item}: no runs.csv in {folder}")
        sources.append((folder, labels))
    args.plot_from = sources
    args.out = args.out.resolve()
    args.sweep_name = args.sweep_name or args.out.name
    return args


def parse_args(argv=None):
    p = runner_parser(
        "Run ppo_gae.py and p3o.py over games x seeds (or p3o.py over horizons) and compare.",
        total_timesteps=10_000_000, out="results/compare",
    )  # fmt: skip
    p.add_argument("--games", nargs="+", default=["Breakout"], help="--env-id of each game (Atari name or gymnasium id)")
    p.add_argument("--algos", nargs="+", choices=sorted(SCRIPTS), default=["ppo_gae", "p3o"])
    p.add_argument(
        "--sweep-horizons", nargs="+", type=int, metavar="H",
        help="horizon sweep instead of the comparison: p3o.py once per H (labels p3o-H32, ...), same other flags",
    )  # fmt: skip
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="passed to every run")
    p.add_argument(
        "--reference", nargs="+", default=[], metavar="GAME=SCORE",
        help="published score(s) drawn as a dashed line, e.g. Breakout=414.66 (give the source's number)",
    )  # fmt: skip
    args = parse_runner_args(p, argv)
    if args.sweep_horizons:
        if any(h < 1 for h in args.sweep_horizons):
            p.error("--sweep-horizons must be positive")
        if "--horizon" in shlex.split(args.p3o_args):
            p.error("--sweep-horizons sets --horizon itself; remove it from --p3o-args")
    try:
        args.references = {}
        for item in args.reference:
            game, score = item.rsplit("=", 1)
            args.references[game] = float(score)
    except ValueError:
        p.error(f"--reference takes GAME=SCORE, e.g. Breakout=414.66; got {args.reference}")
    return args


# ---------------------------------------------------------------------------------------------
# Runs and experiments
# ---------------------------------------------------------------------------------------------
@dataclass
class Run:
    ids: dict  # the run's columns in runs.csv that name it, e.g. label, game, seed
    result_ids: dict  # the same in results.csv.gz
    algo: str  # key of SCRIPTS
    env_id: str
    seed: int
    total_timesteps: int
    extra: list[str]
    device: str
    label: str  # the start of its exp-name
    hashed: list[str] = field(default_factory=list)  # settings besides script, steps and flags in its config hash
    config: str = ""
    exp_name: str = ""

    def __post_init__(self):
        blob = "\0".join([SCRIPTS[self.algo], *self.hashed, str(self.total_timesteps), *self.extra])
        self.config = hashlib.sha1(blob.encode()).hexdigest()[:8]
        self.exp_name = f"{self.label}-{self.config}"  # no "__" or "/": the run folder's name stays parseable
        self.run_name = f"{self.env_id.replace('/', '_')}__{self.exp_name}__{self.seed}"
        self.name = " ".join(f"{k}={v}" for k, v in self.ids.items())
        self.log_name = f"{self.exp_name}__{self.env_id.replace('/', '_').replace(':', '_')}__{self.seed}.log"

    def argv(self, args):
        """The script's flags (the script path first), as the worker runs it."""
        argv = [
            str(ROOT / SCRIPTS[self.algo]), "--env-id", self.env_id, "--seed", str(self.seed),
            "--total-timesteps", str(self.total_timesteps), "--exp-name", self.exp_name, "--device", self.device,
            *self.extra,
        ]  # fmt: skip
        argv += ["--run-name", self.run_name, "--resume", "auto", "--checkpoint-every", f"{args.checkpoint_every:g}"]
        if args.track:
            argv += ["--track", "--wandb-group", args.sweep_name, "--wandb-mode", args.wandb_mode]
        return argv


@dataclass
class Experiment:
    """What one configuration of the runner decides: its CSV columns, how a row's key is read, the
    extra columns of a finished run, the end of its "done" line, and its plots and table."""

    run_columns: list[str]
    result_columns: list[str]
    key: Callable  # runs.csv row (or Run.ids) -> key
    result_key: Callable  # results.csv.gz row -> key
    report: Callable  # (store, args) -> None
    order: Callable = lambda key: key
    finished_columns: Callable = lambda run, result: {}
    done_text: Callable = lambda row: f"final return {row['final_return'] or 'n/a'}"


# ---------------------------------------------------------------------------------------------
# CSVs: written by this process only, atomically, with SIGINT held back while writing
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def sigint_deferred():
    """Hold a Ctrl-C until the block is done, so it never lands between a write and its rename."""
    pending = []
    try:
        previous = signal.signal(signal.SIGINT, lambda *a: pending.append(a))
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending and callable(previous):
            previous(*pending[0])


def replace_atomic(path: Path, write):
    """write(tmp) then rename tmp to path: a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    write(tmp)
    os.replace(tmp, path)


def write_csv(path: Path, columns, rows):
    """A CSV file, gzipped if its name ends in .gz (with mtime 0 and no name inside: same rows, same bytes)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    data = text.getvalue().encode()
    with open(path, "wb") as f:
        f.write(gzip.compress(data, compresslevel=6, mtime=0) if path.suffix == ".gz" else data)
        f.flush()
        os.fsync(f.fileno())


def read_csv(path: Path):
    """The rows of a CSV file (gzipped if its name ends in .gz); none if there is no file."""
    if not path.exists():
        return []
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return list(csv.DictReader(io.StringIO(data.decode(), newline="")))


class Store:
    """runs.csv and results.csv.gz in memory; results are kept for finished runs only. A results.csv from
    before the gzip is read when there is no results.csv.gz, and deleted once the .gz is written."""

    def __init__(self, out: Path, exp: Experiment):
        self.out, self.exp = out, exp
        self.runs_path, self.results_path = out / "runs.csv", out / "results.csv.gz"
        self.legacy_path = out / "results.csv"
        self.migrate = not self.results_path.exists() and self.legacy_path.exists()
        self.runs = {exp.key(row): row for row in read_csv(self.runs_path)}
        self.results = defaultdict(list)  # key -> [row]
        for row in read_csv(self.legacy_path if self.migrate else self.results_path):
            if self.finished(exp.result_key(row)):
                self.results[exp.result_key(row)].append(row)

    def finished(self, key):
        return self.runs.get(key, {}).get("status") == "finished"

    def merge(self, sources):
        """--plot-from: hold the finished runs of the folders `sources`, [(folder, labels)], in place of this
        folder's own (in memory only; an empty labels list takes every run). Each label asked for must have
        runs there, and no run may come from two folders."""
        self.runs, self.results = {}, defaultdict(list)
        for folder, labels in sources:
            source = Store(folder, self.exp)
            keys = [k for k in source.finished_keys() if not labels or k[0] in labels]
            for label in sorted(set(labels) - {k[0] for k in keys}):
                sys.exit(f"error: --plot-from: {folder} has no finished run labelled {label}")
            for k in keys:
                if k in self.runs:
                    sys.exit(f"error: --plot-from: the run {k} is in two folders; name the labels to take from each")
                self.runs[k], self.results[k] = source.runs[k], source.results[k]

    def finished_keys(self):
        return [k for k in self.runs if self.finished(k)]

    def set_run(self, key, row, results=None):
        self.runs[key] = row
        if results is not None:
            self.results[key] = results
        elif row.get("status") != "finished":
            self.results.pop(key, None)
        self.save()

    def save(self, results_changed=True):
        """Write runs.csv, and results.csv.gz unless `results_changed` is False (a status change of
        unfinished runs, which have no results rows: the large gzipped file is then left as it is)."""
        self.out.mkdir(parents=True, exist_ok=True)
        keys = sorted(self.runs, key=self.exp.order)
        results = [r for k in keys if self.finished(k) for r in self.results.get(k, [])]
        runs = [self.runs[k] for k in keys]
        with sigint_deferred():  # results first: rows of a run count only once runs.csv says finished
            if results_changed or self.migrate or not self.results_path.exists():
                replace_atomic(self.results_path, lambda tmp: write_csv(tmp, self.exp.result_columns, results))
            replace_atomic(self.runs_path, lambda tmp: write_csv(tmp, self.exp.run_columns, runs))
            if self.migrate:
                self.legacy_path.unlink(missing_ok=True)
                self.migrate = False


# ---------------------------------------------------------------------------------------------
# On the worker: one run as a subprocess, its results returned to the driver
# ---------------------------------------------------------------------------------------------
def die_with_parent():
    """A function for the child to call before exec that has it SIGKILLed when the Ray worker that
    started it dies (Linux; None elsewhere), so a lost worker leaves no orphan training on in the
    folder its retry will use. libc is loaded here, in the parent: the child only makes the call."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def stop_group(proc, grace=30.0):
    """SIGINT the run's process group (the script writes its checkpoint and exits), SIGKILL after `grace` s."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(Exception):
            proc.wait(timeout=wait)


def read_events(run_dir: Path):
    """(episodes [(step, return)], SPS values, last step, {tag: last value}, {tag: every value}) from a run's
    TensorBoard files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    scalars = {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}
    episodes = [(e.step, e.value) for e in scalars.get("charts/episodic_return", [])]
    sps = scalars.get("charts/SPS", [])
    last_step = max([s.step for s in sps] + [s for s, _ in episodes] + [0])
    series = {tag: [v.value for v in values] for tag, values in scalars.items()}
    return episodes, [s.value for s in sps], last_step, {tag: values[-1] for tag, values in series.items() if values}, series


def run_on_worker(argv, out, run_name, log_name, threads, start_log=None):
    """Run `python argv` in `out` on this node, its output in out/logs/log_name as it runs; return what
    the driver records, the log's text included (no shared disk needed). First tell `start_log` (a
    StartLog actor) that the run started, so the driver can mark it running."""
    import shutil
    import socket
    import subprocess

    if start_log is not None:
        start_log.add.remote(run_name)  # no wait: a lost message leaves only the run's status "queued"
    runs = Path(out) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    folders = lambda: sorted(runs.glob(glob_escape(run_name)))  # noqa: E731  (the scripts' --run-name)
    for d in folders():  # an earlier attempt: kept only if the script can continue from its checkpoint
        if not (d / "checkpoint.pt").exists():
            shutil.rmtree(d)
    resumed = any(folders())
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    start = time.time()
    (Path(out) / "logs").mkdir(exist_ok=True)
    with open(Path(out) / "logs" / log_name, "w+", errors="replace") as log:
        log.write("$ " + shlex.join(["python", *argv]) + "\n")
        log.flush()
        proc = subprocess.Popen(
            [sys.executable, *argv], cwd=out, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, preexec_fn=die_with_parent(),
        )  # fmt: skip
        try:
            proc.wait()
        except KeyboardInterrupt:  # ray.cancel: let the run checkpoint and stop, then end the task
            stop_group(proc)
            raise
        log.seek(0)
        text = log.read()
    found = folders()
    episodes, sps, last_step, last, series = read_events(found[-1]) if found else ([], [], 0, {}, {})
    return dict(
        returncode=proc.returncode, wall=time.time() - start, log=text, node=socket.gethostname(), resumed=resumed,
        run_dir=str(found[-1].relative_to(out)) if found else "", episodes=episodes, sps=sps, last_step=last_step, last=last,
        series=series,
    )  # fmt: skip


def glob_escape(text):
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


class StartLog:
    """A Ray actor on the driver's node: each task adds its run's name when it starts, the driver takes them."""

    def __init__(self):
        self.names = []

    def add(self, run_name):
        self.names.append(run_name)

    def take(self):
        names, self.names = self.names, []
        return names


# ---------------------------------------------------------------------------------------------
# The driver: submit the runs to Ray, record each as it ends
# ---------------------------------------------------------------------------------------------
def final_return(episodes, last_step):
    cut = (1.0 - FINAL_FRACTION) * last_step
    tail = [r for s, r in episodes if s >= cut]
    return sum(tail) / len(tail) if tail else float("nan")


def record(run: Run, exp: Experiment, out: Path, status, result=None, log=None):
    """The run's runs.csv row and, when it finished, its results.csv.gz rows."""
    result = result or {}
    row = {c: "" for c in exp.run_columns}
    row.update(run.ids)
    row.update(
        status=status, total_timesteps=run.total_timesteps, algo=SCRIPTS[run.algo], exp_name=run.exp_name,
        config=run.config, args=shlex.join(run.extra), run_dir=result.get("run_dir", ""),
        returncode=result.get("returncode", ""), node=result.get("node", ""),
        wall_time_s=f"{result['wall']:.1f}" if "wall" in result else "", log=str(log.relative_to(out)) if log else "",
    )  # fmt: skip
    if status != "finished":
        return row, None
    if not result["run_dir"]:
        row["status"] = "failed"  # exited 0 but wrote no run folder
        return row, None
    episodes, sps = result["episodes"], result["sps"]
    fr = final_return(episodes, result["last_step"])
    row.update(
        final_return="" if math.isnan(fr) else f"{fr:.4f}", sps=f"{sum(sps) / len(sps):.1f}" if sps else "",
        episodes=len(episodes), last_step=result["last_step"], **exp.finished_columns(run, result),
    )  # fmt: skip
    results = [{**run.result_ids, "step": s, "episodic_return": f"{r:.6g}"} for s, r in episodes]
    return row, results


def connect(args, runs):
    """Start the local Ray (or join --address) and settle --gpus-per-run; returns the run task."""
    import logging

    import ray

    quiet = dict(logging_level=logging.ERROR, log_to_driver=False, include_dashboard=False)
    if args.address:
        print(f"connecting to the Ray cluster at {args.address} (Ray retries for a while if none answers)", flush=True)
        try:
            ray.init(address=args.address, **quiet)
        except (ConnectionError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            sys.exit(
                f"error: --address {args.address}: no Ray cluster answered ({first}). Start one with `ray start --head`;"
                " if it uses token authentication, set RAY_AUTH_MODE=token and give this machine its token file"
            )  # fmt: skip
    else:
        cpus = int(math.ceil(args.jobs * args.cpus_per_run)) if args.jobs else None
        ray.init(num_cpus=cpus, **quiet)
    interrupt_on_sigterm()
    total = ray.cluster_resources()
    if args.gpus_per_run is None:  # a GPU per run; locally with --jobs, the GPUs shared among the --jobs runs
        gpus = total.get("GPU", 0) if any(r.device != "cpu" for r in runs) else 0
        args.gpus_per_run = math.floor(min(1.0, gpus / args.jobs) * 1e4) / 1e4 if gpus and args.jobs else min(gpus, 1.0)
    for name, need in (("CPU", args.cpus_per_run), ("GPU", args.gpus_per_run)):
        if need > total.get(name, 0):
            message = f"--{name.lower()}s-per-run {need:g}: the Ray cluster has {total.get(name, 0):g} {name}s in all"
            if not args.address:
                sys.exit(f"error: {message}")
            print(f"warning: {message}; the runs wait until the cluster grows", flush=True)
    print(
        f"Ray: {'cluster ' + args.address if args.address else 'local'}, {total.get('CPU', 0):g} CPUs, "
        f"{total.get('GPU', 0):g} GPUs; each run {args.cpus_per_run:g} CPU, {args.gpus_per_run:g} GPU",
        flush=True,
    )
    return ray.remote(run_on_worker).options(
        num_cpus=args.cpus_per_run, num_gpus=args.gpus_per_run, max_retries=args.retries, retry_exceptions=False
    )


def start_log_here():
    """A StartLog actor pinned to this (the driver's) node, so it lives as long as the driver does."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(StartLog).options(num_cpus=0, scheduling_strategy=here).remote()


def mark_started(start_log, pending, store: Store):
    """Runs still pending whose task started since the last call: queued -> running in runs.csv."""
    import ray

    try:
        names = set(ray.get(start_log.take.remote(), timeout=30))
    except ray.exceptions.RayError:  # the log is lost: the rows stay as they are
        return
    rows = [store.runs[store.exp.key(run.ids)] for run in pending.values() if run.run_name in names]
    for row in rows:
        row["status"] = "running"
    if rows:
        store.save(results_changed=False)


def execute(runs, store: Store, args):
    """Run every unfinished run on Ray; returns False if one failed. A run is recorded queued when
    submitted and running once its task starts. On Ctrl-C (or kill) the running runs are asked to
    checkpoint and stop, recorded as interrupted (those not started stay queued), and
    KeyboardInterrupt goes on up."""
    import ray

    out, exp = args.out, store.exp
    todo = [run for run in runs if not store.finished(exp.key(run.ids))]
    for run in runs:
        if run not in todo:
            print(f"skip  {run.name}: already finished (runs.csv)", flush=True)
    if not todo:
        print("nothing to run: every run is finished", flush=True)
        return True
    (out / "logs").mkdir(parents=True, exist_ok=True)
    task = connect(args, todo)
    threads = str(max(1, int(args.cpus_per_run)))
    start_log = start_log_here()
    pending = {}  # ObjectRef -> Run
    try:
        for run in todo:
            ref = task.remote(run.argv(args), str(out), run.run_name, run.log_name, threads, start_log)
            pending[ref] = run
            store.runs[exp.key(run.ids)] = record(run, exp, out, "queued")[0]
        store.save()
        print(f"{len(todo)} run(s) submitted; they continue from their checkpoints where they have one", flush=True)
        ok = True
        while pending:
            mark_started(start_log, pending, store)
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in done:
                run = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as e:  # the worker died more than --retries times
                    result = dict(returncode="", log=f"Ray: {type(e).__name__}: {e}\n")
                log = out / "logs" / run.log_name
                log.write_text(result["log"])
                status = "finished" if result["returncode"] == 0 else "failed"
                row, results = record(run, exp, out, status, result, log)
                store.set_run(exp.key(run.ids), row, results)
                if row["status"] == "finished":
                    again = ", resumed from its checkpoint" if result["resumed"] else ""
                    print(
                        f"done  {run.name}: {exp.done_text(row)}, {result['wall']:.0f} s, "
                        f"{row['sps'] or '?'} SPS on {result['node']}{again}",
                        flush=True,
                    )  # fmt: skip
                else:
                    ok = False
                    tail = result["log"].strip().splitlines()[-5:]
                    print(f"FAIL  {run.name} (exit {result['returncode']}), see {log}:", flush=True)
                    print("\n".join("      " + line for line in tail), flush=True)
        return ok
    except KeyboardInterrupt:
        print(f"\ninterrupted: stopping {len(pending)} run(s); finished runs are kept in {store.runs_path}", flush=True)
        with sigint_deferred():
            for ref in pending:
                ray.cancel(ref)  # KeyboardInterrupt in the task: it stops its run, which checkpoints
            ray.wait(list(pending), num_returns=len(pending), timeout=40.0)
            mark_started(start_log, pending, store)
            for run in pending.values():
                started = store.runs[exp.key(run.ids)]["status"] == "running"
                store.runs[exp.key(run.ids)] = record(run, exp, out, "interrupted" if started else "queued")[0]
                store.results.pop(exp.key(run.ids), None)
            store.save()
        raise
    finally:
        ray.shutdown()


def check_changed(runs, store: Store, rerun_changed):
    """Finished runs recorded with other settings: stop (or, with --rerun-changed, mark them for a rerun)."""
    changed = [r for r in runs if store.finished(store.exp.key(r.ids)) and store.runs[store.exp.key(r.ids)].get("config") != r.config]
    if not changed:
        return
    rows = [store.runs[store.exp.key(r.ids)] for r in changed]
    lines = [
        f"  {r.name}: recorded `{row.get('args', '')}` ({row.get('total_timesteps')} steps), "
        f"now `{shlex.join(r.extra)}` ({r.total_timesteps} steps)"
        for r, row in zip(changed, rows)
    ]
    if not rerun_changed:
        sys.exit(
            "error: runs.csv has finished runs made with other settings:\n" + "\n".join(lines)
            + "\nUse another --out, or --rerun-changed to replace them."
        )  # fmt: skip
    print("rerunning runs whose settings changed:\n" + "\n".join(lines), flush=True)
    for r, row in zip(changed, rows):
        row["status"] = "changed"
        store.results.pop(store.exp.key(r.ids), None)


def interrupt_on_sigterm():
    """`kill` (SIGTERM) stops a sweep as cleanly as Ctrl-C does (set again after ray.init, which sets its own)."""

    def sigterm(signum, frame):
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, sigterm)


def main_of(exp: Experiment, args, plan):
    """The runner's main: run what `plan()` lists (unless --plot-only), then the experiment's report."""
    interrupt_on_sigterm()
    store = Store(args.out, exp)
    if args.plot_from:
        store.merge(args.plot_from)
    ok = True
    if not args.plot_only:
        runs = plan()
        check_changed(runs, store, args.rerun_changed)
        where = args.address or f"local Ray, {args.jobs or 'as many as the cores allow'} at a time"
        print(f"{len(runs)} run(s) planned in {args.out}, on {where}", flush=True)
        try:
            ok = execute(runs, store, args)
        except KeyboardInterrupt:
            ok = None
    elif not store.runs:
        sys.exit(f"error: --plot-only found no runs in {args.out}" + (" (--plot-from)" if args.plot_from else ""))
    if not store.finished_keys():
        print("no finished runs yet: no plot or summary", flush=True)
    else:
        args.out.mkdir(parents=True, exist_ok=True)  # --plot-from may draw into a new folder
        exp.report(store, args)
    return 130 if ok is None else 0 if ok else 1


# ---------------------------------------------------------------------------------------------
# The comparison and the horizon sweep: runs, plots and summary
# ---------------------------------------------------------------------------------------------
def plan_runs(args) -> list[Run]:
    runs = []
    for game in args.games:
        for seed in args.seeds:
            if args.sweep_horizons:
                configs = [(f"p3o-H{h}", "p3o", shlex.split(args.p3o_args) + ["--horizon", str(h)]) for h in args.sweep_horizons]
            else:
                configs = [(a, a, shlex.split(args.ppo_args if a == "ppo_gae" else args.p3o_args)) for a in args.algos]
            for label, algo, extra in configs:
                ids = {"label": label, "game": game, "seed": seed}
                result_ids = {"algo": label, "game": game, "seed": seed}
                runs.append(Run(ids, result_ids, algo, game, seed, args.total_timesteps, extra, args.device, label))
    return runs


def curves_by_label_game(store: Store):
    """{(label, game): {seed: [(step, return)]}} of finished runs."""
    data = defaultdict(dict)
    for label, game, seed in store.finished_keys():
        rows = store.results.get((label, game, seed), [])
        data[(label, game)][seed] = sorted((int(r["step"]), float(r["episodic_return"])) for r in rows)
    return data


def steps_axis(ax):
    """x axis in environment steps, ticks as 100k / 2.5M instead of 100000 / 2500000."""
    from matplotlib.ticker import FuncFormatter

    short = lambda x, _: f"{x / 1e6:g}M" if abs(x) >= 1e6 else f"{x / 1e3:g}k" if abs(x) >= 1e3 else f"{x:g}"  # noqa: E731
    ax.xaxis.set_major_formatter(FuncFormatter(short))
    ax.set_xlabel("environment steps")


def binned(episodes, edges, smooth):
    """Mean return per bin of the step grid, carried forward over empty bins, then a moving average."""
    import numpy as np

    steps = np.array([s for s, _ in episodes], dtype=float)
    values = np.array([r for _, r in episodes], dtype=float)
    idx = np.clip(np.searchsorted(edges, steps, side="right") - 1, 0, len(edges) - 2)
    sums = np.bincount(idx, weights=values, minlength=len(edges) - 1)
    counts = np.bincount(idx, minlength=len(edges) - 1)
    y = np.full(len(edges) - 1, np.nan)
    y[counts > 0] = sums[counts > 0] / counts[counts > 0]
    for i in range(1, len(y)):  # carry the last seen value over bins with no finished game
        if np.isnan(y[i]):
            y[i] = y[i - 1]
    if smooth > 1:
        out = np.full_like(y, np.nan)
        for i in range(len(y)):
            window = y[max(0, i - smooth + 1) : i + 1]
            window = window[~np.isnan(window)]
            if len(window):
                out[i] = window.mean()
        y = out
    return y


def draw_seeds(ax, edges, curves, band, label, color=None):
    """Mean over seeds of binned curves, with a min..max (or +-std) band when there are several."""
    import numpy as np

    ys = np.array(curves)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(ys, axis=0)
        if band == "std":
            lo, hi = mean - np.nanstd(ys, axis=0), mean + np.nanstd(ys, axis=0)
        else:
            lo, hi = np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)
    (line,) = ax.plot(edges[1:], mean, color=color, lw=1.6, label=f"{label} (n={len(ys)})")
    if len(ys) > 1:
        ax.fill_between(edges[1:], lo, hi, color=line.get_color(), alpha=0.2, lw=0)


def save_figure(fig, path: Path, suptitle):
    import matplotlib.pyplot as plt

    fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    replace_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
    print(f"plot: {path}", flush=True)


def write_summary(args, table):
    replace_atomic(args.out / "summary.md", lambda tmp: tmp.write_text(table))
    print("\n" + table, flush=True)
    print(f"summary: {args.out / 'summary.md'}", flush=True)


def plot_curves(ax, data, labels, game, args, total_steps):
    import numpy as np

    edges = np.linspace(0, total_steps, args.bins + 1)
    for label in labels:
        curves = [binned(eps, edges, args.smooth) for eps in data.get((label, game), {}).values() if eps]
        if curves:
            draw_seeds(ax, edges, curves, args.band, label)
    if game in args.references:
        ax.axhline(args.references[game], ls="--", color="k", lw=1, label=f"reference {args.references[game]:g}")
    ax.set_title(game)
    steps_axis(ax)
    ax.set_ylabel("episodic return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def final_stats(store: Store, label, game):
    import numpy as np

    values = [float(store.runs[k]["final_return"]) for k in store.finished_keys() if k[:2] == (label, game) and store.runs[k].get("final_return")]
    return (float(np.mean(values)), float(np.std(values)), len(values)) if values else (math.nan, math.nan, 0)


def horizon_of(label):
    return int(label[len("p3o-H") :]) if label.startswith("p3o-H") and label[len("p3o-H") :].isdigit() else None


def label_order(label):
    """ppo_gae, p3o, then the sweep's labels by horizon."""
    return (horizon_of(label) is not None, horizon_of(label) or 0, label != "ppo_gae", label)


def make_plots(store: Store, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = curves_by_label_game(store)
    finished = store.finished_keys()
    games = list(dict.fromkeys(g for _, g, _ in sorted(finished, key=lambda k: (k[1], k[0], k[2]))))
    labels = sorted({lab for lab, _, _ in finished}, key=label_order)
    steps = {g: max([int(store.runs[k]["last_step"] or store.runs[k]["total_timesteps"]) for k in finished if k[1] == g]) for g in games}
    groups = [
        ("curves.png", [lab for lab in labels if horizon_of(lab) is None], "PPO + GAE vs P3O"),
        ("horizon_sweep.png", [lab for lab in labels if horizon_of(lab) is not None], "P3O horizon sweep"),
    ]
    for name, group, title in groups:
        group_games = [g for g in games if any((lab, g) in data for lab in group)]
        if not group or not group_games:
            continue
        sweep = name == "horizon_sweep.png"
        rows = 2 if sweep else 1
        fig, axes = plt.subplots(rows, len(group_games), figsize=(max(6, 5 * len(group_games)), 4 * rows), squeeze=False)
        for j, game in enumerate(group_games):
            plot_curves(axes[0][j], data, group, game, args, steps[game])
            if sweep:
                ax = axes[1][j]
                stats = [(horizon_of(lab), *final_stats(store, lab, game)) for lab in group]
                hs, means, stds = [h for h, _, _, n in stats if n], [m for _, m, _, n in stats if n], [s for *_, s, n in stats if n]
                ax.errorbar(hs, means, yerr=stds, marker="o", capsize=3)
                if game in args.references:
                    ax.axhline(args.references[game], ls="--", color="k", lw=1)
                ax.set_xscale("log", base=2)
                ax.set_xticks(hs, [str(h) for h in hs])
                ax.set_xlabel("horizon H")
                ax.set_ylabel(f"final return (last {FINAL_FRACTION:.0%} of steps)")
                ax.grid(alpha=0.3)
        band = "min..max" if args.band == "minmax" else "+-std"
        save_figure(fig, args.out / name, f"{title}: mean over seeds, band {band}\nmoving average over {args.smooth}/{args.bins} of the steps")


def area_under_curve(episodes, last_step, bins=AUC_BINS):
    """The learning curve's mean height: over `bins` equal spans of the run's steps, the mean return of the
    games that ended in each span (a span without one keeps the previous value), averaged over the spans."""
    sums, counts = [0.0] * bins, [0] * bins
    for step, score in episodes:
        i = min(int(step * bins / max(last_step, 1)), bins - 1)
        sums[i], counts[i] = sums[i] + score, counts[i] + 1
    heights, height = [], None
    for total, count in zip(sums, counts):
        height = total / count if count else height
        if height is not None:
            heights.append(height)
    return sum(heights) / len(heights) if heights else math.nan


def seed_stats(values):
    import numpy as np

    values = [v for v in values if not math.isnan(v)]
    return (float(np.mean(values)), float(np.std(values)), len(values)) if values else (math.nan, math.nan, 0)


def summary_table(store: Store):
    finished = store.finished_keys()
    games = sorted({g for _, g, _ in finished})
    labels = sorted({lab for lab, _, _ in finished}, key=label_order)
    curves = curves_by_label_game(store)
    auc = lambda label, game: [  # noqa: E731
        area_under_curve(episodes, int(store.runs[(label, game, seed)]["last_step"] or 0) or max([s for s, _ in episodes] + [1]))
        for seed, episodes in curves[(label, game)].items()
    ]
    column = lambda name: lambda label, game: seed_stats([  # noqa: E731  (a P3O column of runs.csv, over seeds)
        float(store.runs[k][name]) for k in finished if k[:2] == (label, game) and store.runs[k].get(name)
    ])
    tables = [
        (f"Final return: mean of the games that ended in the last {FINAL_FRACTION:.0%} of each run's steps, "
         "then mean +- std over seeds (n seeds).", lambda label, game: final_stats(store, label, game)),
        (f"Area under the curve: the learning curve's mean height over the run (mean return of the games ending "
         f"in each of {AUC_BINS} equal spans of steps, averaged), then mean +- std over seeds.",
         lambda label, game: seed_stats(auc(label, game))),
    ]  # fmt: skip
    if any(row.get("effective_horizon") for row in store.runs.values()):
        tables.append(("P3O's effective horizon at the end of the run (p3o/effective_horizon), mean +- std over seeds.",
                       column("effective_horizon")))  # fmt: skip
    if any(row.get("peaked_percent") for row in store.runs.values()):
        tables.append(("P3O: the percentage of updates in which one offset held more than half of a row's weight "
                       "(p3o/peak_share > 0.5), mean +- std over seeds.", column("peaked_percent")))  # fmt: skip
    lines = []
    for title, stats in tables:
        lines += ([""] if lines else []) + [title, "", "| label | " + " | ".join(games) + " |", "| --- |" + " --- |" * len(games)]
        for label in labels:
            cells = []
            for game in games:
                m, s, n = stats(label, game)
                cells.append(f"{m:.1f} +- {s:.1f} (n={n})" if n else "n/a")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    other = sorted(f"{lab} {g} seed {s}: {row['status']}" for (lab, g, s), row in store.runs.items() if row["status"] != "finished")
    if other:
        lines += ["", "Not finished: " + "; ".join(other)]
    return "\n".join(lines) + "\n"


def report(store: Store, args):
    make_plots(store, args)
    write_summary(args, summary_table(store))


def p3o_columns(run: Run, result):
    """P3O's p3o/effective_horizon at the end of the run, and the share of its updates in which one offset
    held more than half the weight (p3o/peak_share > 0.5), in percent: the summary's last two tables."""
    last, shares = result["last"].get("p3o/effective_horizon"), result.get("series", {}).get("p3o/peak_share", [])
    row = {"effective_horizon": f"{last:.2f}"} if last is not None else {}
    if shares:
        row["peaked_percent"] = f"{100 * sum(s > 0.5 for s in shares) / len(shares):.1f}"
    return row


COMPARE = Experiment(
    run_columns=RUN_COLUMNS,
    finished_columns=p3o_columns,
    result_columns=RESULT_COLUMNS,
    key=lambda row: (row["label"], row["game"], int(row["seed"])),
    result_key=lambda row: (row["algo"], row["game"], int(row["seed"])),
    report=report,
)


def main(argv=None):
    args = parse_args(argv)
    for script in SCRIPTS.values():
        if not (ROOT / script).exists():
            sys.exit(f"error: {ROOT / script} not found")
    return main_of(COMPARE, args, lambda: plan_runs(args))


if __name__ == "__main__":
    sys.exit(main())
