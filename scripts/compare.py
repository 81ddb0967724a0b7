"""Race PPO + GAE against P3O (or P3O against itself over horizons) over games x seeds.

    python scripts/compare.py --games Breakout Pong --seeds 1 2 3 --total-timesteps 10000000 --out results/compare
    python scripts/compare.py --sweep-horizons 32 64 128 256 --games Breakout --seeds 1 2 --out results/sweep
    python scripts/compare.py --out results/compare --plot-only --reference Breakout=414.66

Each run is `ppo_gae.py` or `p3o.py` started as a subprocess (sys.executable, the script from the
repository root) with the working directory set to --out, so its TensorBoard folder lands in
--out/runs/{env}__{exp_name}__{seed}__{time}/. The exp-name is deterministic,
`{label}-{config hash}`, so the folder of any run can be found again.

What --out holds:
    results.csv   algo (the label), game, seed, step, episodic_return: one row per finished game
    runs.csv      one row per run: label, game, seed, total_timesteps, final_return (mean return of
                  the games that ended in the last 10% of the steps), wall_time_s, sps (mean of
                  charts/SPS), status (finished, failed, interrupted, running) and how it was run
    curves.png    the comparison: a panel per game, mean over seeds with a min..max (or std) band
    horizon_sweep.png   the same for a horizon sweep, plus the final return against H
    summary.md    label x game: final return mean +- std over seeds (n seeds)
    logs/         the stdout + stderr of each run

Resuming: rerunning the same command skips every run that runs.csv says is finished (with the same
settings); any other run (interrupted, failed, never started) is rerun from scratch, its partial
run folder deleted first. The CSVs are written by this process only, atomically (temp file and
os.replace, with Ctrl-C held back while writing), when a run starts and when it ends, so a Ctrl-C
or a crash never loses the results of a finished run.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"ppo_gae": "ppo_gae.py", "p3o": "p3o.py"}
RESULT_COLUMNS = ["algo", "game", "seed", "step", "episodic_return"]
RUN_COLUMNS = [
    "label", "game", "seed", "total_timesteps", "final_return", "wall_time_s", "sps", "status",
    "episodes", "last_step", "algo", "exp_name", "config", "args", "run_dir", "returncode", "log",
]  # fmt: skip
FINAL_FRACTION = 0.10  # final_return: the games that ended in the last 10% of the steps


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Run ppo_gae.py and p3o.py over games x seeds (or p3o.py over horizons) and compare.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--games", nargs="+", default=["Breakout"], help="--env-id of each game (Atari name or gymnasium id)")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--total-timesteps", type=int, default=10_000_000)
    p.add_argument("--algos", nargs="+", choices=sorted(SCRIPTS), default=["ppo_gae", "p3o"])
    p.add_argument("--ppo-args", default="", help='extra flags for ppo_gae.py, one string: "--num-envs 16"')
    p.add_argument("--p3o-args", default="", help='extra flags for p3o.py, one string: "--horizon 64"')
    p.add_argument(
        "--sweep-horizons", nargs="+", type=int, metavar="H",
        help="horizon sweep instead of the comparison: p3o.py once per H (labels p3o-H32, ...), same other flags",
    )  # fmt: skip
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="passed to every run")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (several can share one GPU)")
    p.add_argument("--out", type=Path, default=Path("results/compare"))
    p.add_argument("--plot-only", action="store_true", help="run nothing: redraw plots and summary from the CSVs")
    p.add_argument(
        "--rerun-changed", action="store_true",
        help="rerun finished runs whose settings differ from those in runs.csv (otherwise: stop with an error)",
    )  # fmt: skip
    p.add_argument(
        "--reference", nargs="+", default=[], metavar="GAME=SCORE",
        help="published score(s) drawn as a dashed line, e.g. Breakout=414.66 (give the source's number)",
    )  # fmt: skip
    p.add_argument("--bins", type=int, default=100, help="points of the common step grid of the curves")
    p.add_argument("--smooth", type=int, default=5, help="moving-average window of the curves, in grid points")
    p.add_argument("--band", choices=["minmax", "std"], default="minmax", help="shaded band over seeds")
    args = parse_with_script_args(p, argv)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.total_timesteps < 1:
        p.error("--total-timesteps must be positive")
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


def parse_with_script_args(parser, argv=None):
    """parser.parse_args, letting --ppo-args / --p3o-args take a value that looks like a flag
    ("--p3o-args --state-sigma"), which argparse alone refuses. Also used by horizon_experiment.py."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, item in enumerate(argv[:-1]):
        if item in ("--ppo-args", "--p3o-args"):
            argv[i : i + 2] = [f"{item}={argv[i + 1]}", None]
    return parser.parse_args([a for a in argv if a is not None])


@dataclass
class Run:
    label: str
    algo: str  # key of SCRIPTS
    game: str
    seed: int
    total_timesteps: int
    extra: list[str]
    config: str = ""
    exp_name: str = ""

    def __post_init__(self):
        blob = "\0".join([SCRIPTS[self.algo], str(self.total_timesteps), *self.extra])
        self.config = hashlib.sha1(blob.encode()).hexdigest()[:8]
        self.exp_name = f"{self.label}-{self.config}"  # no "__" or "/": the run folder's name stays parseable

    @property
    def key(self):
        return (self.label, self.game, self.seed)

    @property
    def name(self):
        return f"{self.label:>12} {self.game} seed {self.seed}"

    @property
    def log_name(self):
        return f"{self.label}__{self.game.replace('/', '_')}__{self.seed}.log"

    def command(self, device):
        return [
            sys.executable, str(ROOT / SCRIPTS[self.algo]),
            "--env-id", self.game, "--seed", str(self.seed), "--total-timesteps", str(self.total_timesteps),
            "--exp-name", self.exp_name, "--device", device, *self.extra,
        ]  # fmt: skip


def plan_runs(args) -> list[Run]:
    runs = []
    for game in args.games:
        for seed in args.seeds:
            if args.sweep_horizons:
                for h in args.sweep_horizons:
                    extra = shlex.split(args.p3o_args) + ["--horizon", str(h)]
                    runs.append(Run(f"p3o-H{h}", "p3o", game, seed, args.total_timesteps, extra))
            else:
                for algo in args.algos:
                    extra = shlex.split(args.ppo_args if algo == "ppo_gae" else args.p3o_args)
                    runs.append(Run(algo, algo, game, seed, args.total_timesteps, extra))
    return runs


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


def write_csv_atomic(path: Path, columns, rows):
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_csv(path: Path):
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class Store:
    """runs.csv and results.csv in memory; results are kept for finished runs only.

    run_key(row) and result_key(row) give the key of the run a CSV row belongs to, and the rows are
    written sorted by order(key). The defaults are this script's; scripts/horizon_experiment.py
    passes its own.
    """

    def __init__(
        self, out: Path, run_columns=RUN_COLUMNS, result_columns=RESULT_COLUMNS,
        run_key=lambda row: (row["label"], row["game"], int(row["seed"])),
        result_key=lambda row: (row["algo"], row["game"], int(row["seed"])),
        order=lambda key: key,
    ):  # fmt: skip
        self.out, self.run_columns, self.result_columns, self.order = out, run_columns, result_columns, order
        self.runs_path, self.results_path = out / "runs.csv", out / "results.csv"
        self.runs = {run_key(row): row for row in read_csv(self.runs_path)}
        self.results = defaultdict(list)  # key -> [row]
        for row in read_csv(self.results_path):
            if self.finished(result_key(row)):
                self.results[result_key(row)].append(row)

    def finished(self, key):
        return self.runs.get(key, {}).get("status") == "finished"

    def set_run(self, key, row, results=None):
        self.runs[key] = row
        if results is not None:
            self.results[key] = results
        elif row.get("status") != "finished":
            self.results.pop(key, None)
        self.save()

    def save(self):
        self.out.mkdir(parents=True, exist_ok=True)
        runs = [self.runs[k] for k in sorted(self.runs, key=self.order)]
        results = [r for k in sorted(self.results, key=self.order) if self.finished(k) for r in self.results[k]]
        with sigint_deferred():  # results first: rows of a run count only once runs.csv says finished
            write_csv_atomic(self.results_path, self.result_columns, results)
            write_csv_atomic(self.runs_path, self.run_columns, runs)


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
def run_dirs(out: Path, run: Run):
    env = run.game.replace("/", "_")
    return sorted((out / "runs").glob(f"{glob_escape(env)}__{glob_escape(run.exp_name)}__{run.seed}__*"))


def glob_escape(text):
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def read_events(run_dir: Path):
    """(episodes [(step, return)], SPS values, last step) from a run's TensorBoard files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    tags = set(events.Tags()["scalars"])
    episodes = [(e.step, e.value) for e in events.Scalars("charts/episodic_return")] if "charts/episodic_return" in tags else []
    sps = [e for e in events.Scalars("charts/SPS")] if "charts/SPS" in tags else []
    last_step = max([s.step for s in sps] + [s for s, _ in episodes] + [0])
    return episodes, [s.value for s in sps], last_step


def final_return(episodes, last_step):
    cut = (1.0 - FINAL_FRACTION) * last_step
    tail = [r for s, r in episodes if s >= cut]
    return sum(tail) / len(tail) if tail else float("nan")


def summarize(run: Run, out: Path, status, wall, returncode, log):
    row = {
        "label": run.label, "game": run.game, "seed": run.seed, "total_timesteps": run.total_timesteps,
        "final_return": "", "wall_time_s": f"{wall:.1f}" if wall is not None else "", "sps": "",
        "status": status, "episodes": "", "last_step": "", "algo": SCRIPTS[run.algo], "exp_name": run.exp_name,
        "config": run.config, "args": shlex.join(run.extra), "run_dir": "", "returncode": returncode,
        "log": str(log.relative_to(out)),
    }  # fmt: skip
    results = None
    dirs = run_dirs(out, run)
    if dirs:
        run_dir = max(dirs, key=lambda d: d.stat().st_mtime)
        row["run_dir"] = str(run_dir.relative_to(out))
        if status == "finished":
            episodes, sps, last_step = read_events(run_dir)
            fr = final_return(episodes, last_step)
            row.update(
                final_return="" if math.isnan(fr) else f"{fr:.4f}",
                sps=f"{sum(sps) / len(sps):.1f}" if sps else "",
                episodes=len(episodes),
                last_step=last_step,
            )
            results = [
                {"algo": run.label, "game": run.game, "seed": run.seed, "step": s, "episodic_return": f"{r:.6g}"}
                for s, r in episodes
            ]
    elif status == "finished":
        row["status"] = "failed"  # exited 0 but wrote no run folder
    return row, results


def stop_group(proc, grace=10.0):
    """SIGINT the run's process group (the script and its env workers), then SIGKILL after `grace` s."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            pass


def execute(runs, store: Store, args):
    out = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    todo = []
    for run in runs:
        if store.finished(run.key):
            print(f"skip  {run.name}: already finished (runs.csv)", flush=True)
            continue
        todo.append(run)
    if not todo:
        print("nothing to run: every run is finished", flush=True)
        return True

    env = dict(os.environ)
    if args.jobs > 1 and "OMP_NUM_THREADS" not in env:  # keep parallel CPU runs from oversubscribing cores
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))
    return run_pool(
        todo, store, out, args.jobs, env,
        command=lambda run: run.command(args.device),
        run_dirs=run_dirs,
        summarize=summarize,
        done_text=lambda row: f"final return {row['final_return'] or 'n/a'}",
    )  # fmt: skip


def run_pool(todo, store, out: Path, jobs, env, command, run_dirs, summarize, done_text):
    """Run `todo` as subprocesses in `out`, `jobs` at a time, and record each in `store` as it starts and ends.

    Each run has .key, .name (how it is printed) and .log_name (its log file under out/logs). command(run)
    is its argv; run_dirs(out, run) finds its TensorBoard folders, deleted before it starts (they are
    left from an unfinished attempt); summarize(run, out, status, wall, returncode, log) gives its
    runs.csv row and result rows; done_text(row) ends its "done" line. Also used by
    scripts/horizon_experiment.py. Returns False if a run failed. On Ctrl-C the active runs are
    stopped and recorded as interrupted, and the KeyboardInterrupt goes on up.
    """
    active = {}  # Popen -> (run, start time, log path, log file)
    pending = list(todo)
    ok = True
    try:
        while pending or active:
            while pending and len(active) < jobs:
                run = pending.pop(0)
                old = store.runs.get(run.key, {})
                stale = run_dirs(out, run)
                if old.get("run_dir"):
                    stale.append(out / old["run_dir"])
                for d in stale:  # an interrupted or failed attempt: start from scratch
                    if d.exists():
                        print(f"clean {run.name}: removing partial {d}", flush=True)
                        shutil.rmtree(d)
                log = out / "logs" / run.log_name
                logf = open(log, "w")
                cmd = command(run)
                logf.write("$ " + shlex.join(cmd) + "\n")
                logf.flush()
                row, _ = summarize(run, out, "running", None, "", log)
                store.set_run(run.key, row)
                proc = subprocess.Popen(
                    cmd, cwd=out, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
                active[proc] = (run, time.time(), log, logf)
                print(f"start {run.name} -> {log}", flush=True)
            time.sleep(0.2)
            for proc in [p for p in active if p.poll() is not None]:
                run, start, log, logf = active.pop(proc)
                logf.close()
                status = "finished" if proc.returncode == 0 else "failed"
                row, results = summarize(run, out, status, time.time() - start, proc.returncode, log)
                store.set_run(run.key, row, results)
                if row["status"] == "finished":
                    print(
                        f"done  {run.name}: {done_text(row)}, "
                        f"{float(row['wall_time_s']):.0f} s, {row['sps'] or '?'} SPS",
                        flush=True,
                    )
                else:
                    ok = False
                    tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                    print(f"FAIL  {run.name} (exit {proc.returncode}), see {log}:", flush=True)
                    print("\n".join("      " + line for line in tail), flush=True)
    except KeyboardInterrupt:
        print(f"\ninterrupted: stopping {len(active)} run(s); finished runs are kept in {store.runs_path}", flush=True)
        with sigint_deferred():
            for proc, (run, start, log, logf) in active.items():
                stop_group(proc)
                logf.close()
                row, _ = summarize(run, out, "interrupted", time.time() - start, proc.returncode, log)
                store.runs[run.key] = row
                store.results.pop(run.key, None)
            store.save()
        raise
    return ok


# ---------------------------------------------------------------------------------------------
# Plots and summary
# ---------------------------------------------------------------------------------------------
def curves_by_label_game(store: Store):
    """{(label, game): {seed: [(step, return)]}} of finished runs."""
    data = defaultdict(dict)
    for (label, game, seed), rows in store.results.items():
        if store.finished((label, game, seed)):
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


def plot_curves(ax, data, labels, game, args, total_steps):
    import numpy as np

    edges = np.linspace(0, total_steps, args.bins + 1)
    centers = edges[1:]
    for label in labels:
        seeds = data.get((label, game), {})
        if not seeds:
            continue
        ys = np.array([binned(eps, edges, args.smooth) for eps in seeds.values() if eps])
        if not len(ys):
            continue
        with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
            __import__("warnings").simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(ys, axis=0)
            if args.band == "std":
                lo, hi = mean - np.nanstd(ys, axis=0), mean + np.nanstd(ys, axis=0)
            else:
                lo, hi = np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)
        (line,) = ax.plot(centers, mean, label=f"{label} (n={len(ys)})", lw=1.5)
        if len(ys) > 1:
            ax.fill_between(centers, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    if game in args.references:
        ax.axhline(args.references[game], ls="--", color="k", lw=1, label=f"reference {args.references[game]:g}")
    ax.set_title(game)
    steps_axis(ax)
    ax.set_ylabel("episodic return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def final_stats(store: Store, label, game):
    import numpy as np

    values = []
    for (lab, g, seed), row in store.runs.items():
        if lab == label and g == game and row.get("status") == "finished" and row.get("final_return"):
            values.append(float(row["final_return"]))
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
    finished = [k for k in store.runs if store.finished(k)]
    games = list(dict.fromkeys(g for _, g, _ in sorted(finished, key=lambda k: (k[1], k[0], k[2]))))
    labels = sorted({lab for lab, _, _ in finished}, key=label_order)
    steps = {g: max([int(store.runs[k]["last_step"] or store.runs[k]["total_timesteps"]) for k in finished if k[1] == g]) for g in games}
    written = []
    groups = [
        ("curves.png", [lab for lab in labels if horizon_of(lab) is None], "PPO + GAE vs P3O"),
        ("horizon_sweep.png", [lab for lab in labels if horizon_of(lab) is not None], "P3O horizon sweep"),
    ]
    for name, group, title in groups:
        if not group:
            continue
        group_games = [g for g in games if any((lab, g) in data for lab in group)]
        if not group_games:
            continue
        sweep = name == "horizon_sweep.png"
        rows = 2 if sweep else 1
        fig, axes = plt.subplots(rows, len(group_games), figsize=(max(6, 5 * len(group_games)), 4 * rows), squeeze=False)
        for j, game in enumerate(group_games):
            plot_curves(axes[0][j], data, group, game, args, steps[game])
            if sweep:
                ax = axes[1][j]
                hs, means, stds = [], [], []
                for lab in group:
                    m, s, n = final_stats(store, lab, game)
                    if n:
                        hs.append(horizon_of(lab)), means.append(m), stds.append(s)
                ax.errorbar(hs, means, yerr=stds, marker="o", capsize=3)
                if game in args.references:
                    ax.axhline(args.references[game], ls="--", color="k", lw=1)
                ax.set_xscale("log", base=2)
                ax.set_xticks(hs, [str(h) for h in hs])
                ax.set_xlabel("horizon H")
                ax.set_ylabel(f"final return (last {FINAL_FRACTION:.0%} of steps)")
                ax.grid(alpha=0.3)
        band = "min..max" if args.band == "minmax" else "+-std"
        fig.suptitle(f"{title}: mean over seeds, band {band}\nmoving average over {args.smooth}/{args.bins} of the steps", fontsize=9)
        fig.tight_layout()
        path = args.out / name
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        os.replace(tmp, path)
        written.append(path)
    return written


def summary_table(store: Store):
    finished = [k for k in store.runs if store.finished(k)]
    games = sorted({g for _, g, _ in finished})
    labels = sorted({lab for lab, _, _ in finished}, key=label_order)
    lines = [
        f"Final return: mean of the games that ended in the last {FINAL_FRACTION:.0%} of each run's steps, "
        "then mean +- std over seeds (n seeds).",
        "",
        "| label | " + " | ".join(games) + " |",
        "| --- |" + " --- |" * len(games),
    ]
    for label in labels:
        cells = []
        for game in games:
            m, s, n = final_stats(store, label, game)
            cells.append(f"{m:.1f} +- {s:.1f} (n={n})" if n else "n/a")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    other = sorted(f"{lab} {g} seed {s}: {row['status']}" for (lab, g, s), row in store.runs.items() if row["status"] != "finished")
    if other:
        lines += ["", "Not finished: " + "; ".join(other)]
    return "\n".join(lines) + "\n"


def report(store: Store, args):
    if not any(store.finished(k) for k in store.runs):
        print("no finished runs yet: no plot or summary", flush=True)
        return
    for path in make_plots(store, args):
        print(f"plot: {path}", flush=True)
    table = summary_table(store)
    tmp = args.out / f".summary.md.{os.getpid()}.tmp"
    tmp.write_text(table)
    os.replace(tmp, args.out / "summary.md")
    print("\n" + table, flush=True)
    print(f"summary: {args.out / 'summary.md'}", flush=True)


def check_changed(runs, store: Store, rerun_changed):
    """Finished runs recorded with other settings: stop (or, with --rerun-changed, mark them for a rerun).
    Also used by scripts/horizon_experiment.py."""
    changed = [r for r in runs if store.finished(r.key) and store.runs[r.key].get("config") != r.config]
    if not changed:
        return
    lines = [
        f"  {r.name}: recorded `{store.runs[r.key].get('args', '')}` "
        f"({store.runs[r.key].get('total_timesteps')} steps), now `{shlex.join(r.extra)}` ({r.total_timesteps} steps)"
        for r in changed
    ]
    if not rerun_changed:
        sys.exit(
            "error: runs.csv has finished runs made with other settings:\n" + "\n".join(lines)
            + "\nUse another --out, or --rerun-changed to replace them."
        )  # fmt: skip
    print("rerunning runs whose settings changed:\n" + "\n".join(lines), flush=True)
    for r in changed:
        store.runs[r.key] = {**store.runs[r.key], "status": "changed"}
        store.results.pop(r.key, None)


def interrupt_on_sigterm():
    """`kill` (SIGTERM) stops a comparison as cleanly as Ctrl-C does."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, handler)


def main(argv=None):
    args = parse_args(argv)
    interrupt_on_sigterm()
    args.out = args.out.resolve()
    store = Store(args.out)
    ok = True
    if not args.plot_only:
        for script in SCRIPTS.values():
            if not (ROOT / script).exists():
                sys.exit(f"error: {ROOT / script} not found")
        runs = plan_runs(args)
        check_changed(runs, store, args.rerun_changed)
        print(f"{len(runs)} run(s) planned in {args.out}, {args.jobs} at a time, device {args.device}", flush=True)
        try:
            ok = execute(runs, store, args)
        except KeyboardInterrupt:
            report(store, args)
            return 130
    elif not store.runs:
        sys.exit(f"error: --plot-only found no runs.csv in {args.out}")
    report(store, args)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
