"""The horizon experiment: does P3O adapt to the reward delay where a fixed gamma cannot?

    python scripts/horizon_experiment.py                       # 3 gammas + P3O x far delays 10 30 100 x seeds 1 2 3
    python scripts/horizon_experiment.py --delays 10 --seeds 1 --total-timesteps 20000 --jobs 2   # a quick look
    python scripts/horizon_experiment.py --p3o-args "--horizon 128"   # P3O at another setting
    python scripts/horizon_experiment.py --plot-only           # redraw plot and table from the CSVs

The task is TwoHorizons-far{D}-v0 (scripts/two_horizons.py): collect (+1 paid 3 steps later) or invest
(2 D paid when D invests add up; worth 2 per step, paid up to D steps later). Investing is optimal;
a learner whose credit horizon is much shorter than D learns to collect (myopic, about half of
optimal). Uniformly random play scores about 0.7 of optimal, so the curves start there and go up
(the far reward is learned) or down (it is unlearned). Under a discount gamma, always-invest only
looks better than always-collect for gamma above two_horizons.critical_gamma: 0.76, 0.95, 0.987,
0.996 for D = 10, 30, 100, 300. So each fixed gamma should win some delays and lose others; P3O, which
sets its credit horizon from how far ahead rewards are predictable, should track D, up to its
maximum horizon H (--horizon, 32 by default: less than D = 100, so P3O's default cannot credit the
far reward of D = 100 through its advantage, whatever it learns; try --p3o-args "--horizon 128").

Each run is `python ppo_gae.py|p3o.py --env-id scripts.two_horizons:TwoHorizons-far{D}-v0 --seed S
--total-timesteps N --device cpu --exp-name <unique>` (plus --gamma G, or the --p3o-args), a
subprocess with OMP_NUM_THREADS=1, --jobs of them at once. Its working directory is --out, so that
its TensorBoard folder lands in --out/runs/ (the training scripts write runs/ under their working
directory); the scripts are started by absolute path, so the repository root heads their sys.path
and `scripts.two_horizons` imports.

What --out holds:
    results.csv        method, setting, delay, seed, step, episodic_return: one row per finished episode
    runs.csv           one row per run: status, timings (SPS), final return and fraction of optimal, and
                       for P3O the last values of its horizon diagnostics
    horizon_experiment.png   a panel per delay: fraction of optimal return, mean over seeds, band min..max
    summary.md         method x delay: final fraction of optimal, mean +- std over seeds
    runs/, logs/       the runs' TensorBoard folders and their stdout + stderr

Resuming: a run that runs.csv lists as finished with the same settings is skipped (its rows are in
results.csv); any other is run again from scratch. Both CSVs are written by this process only,
atomically (temp file, then rename; results first), after each run, so interrupting (Ctrl-C or
kill) and rerunning the same command loses no finished run.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import compare  # noqa: E402
from scripts import two_horizons as th  # noqa: E402
from scripts.compare import (  # noqa: E402
    binned,
    FINAL_FRACTION,
    check_changed,
    final_return,
    glob_escape,
    interrupt_on_sigterm,
    parse_with_script_args,
    run_pool,
    steps_axis,
)

SCRIPTS = {"ppo_gae": "ppo_gae.py", "p3o": "p3o.py"}
RESULT_COLUMNS = ["method", "setting", "delay", "seed", "step", "episodic_return"]
P3O_COLUMNS = ["horizon", "credited_steps", "effective_horizon", "sigma_r", "chance_k"]
RUN_COLUMNS = [
    "method", "setting", "delay", "seed", "status", "total_timesteps", "final_return", "final_fraction",
    "episodes", "last_step", "wall_time_s", "sps", *P3O_COLUMNS, "config", "exp_name", "args",
    "run_dir", "returncode", "log",
]  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="PPO+GAE at several gammas and P3O on TwoHorizons-far{D}-v0 over delays x seeds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--delays", nargs="+", type=int, default=[10, 30, 100], help=f"far delays D, of {th.VARIANT_DELAYS}")
    p.add_argument("--gammas", nargs="+", type=float, default=[0.9, 0.99, 0.999], help="a PPO+GAE run per gamma")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="the seeds (a list, not a count)")
    p.add_argument("--total-timesteps", type=int, default=500_000)
    p.add_argument("--methods", nargs="+", choices=sorted(SCRIPTS), default=["ppo_gae", "p3o"])
    p.add_argument("--ppo-args", default="", help='extra flags for every ppo_gae.py run, one string: "--num-envs 16"')
    p.add_argument("--p3o-args", default="", help='flags of the P3O setting, one string: "--horizon 128"')
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at once (each uses one thread)")
    p.add_argument("--out", type=Path, default=Path("results/horizon_experiment"))
    p.add_argument("--plot-only", action="store_true", help="run nothing: redraw plot and table from the CSVs")
    p.add_argument("--rerun-changed", action="store_true", help="rerun finished runs whose settings changed")
    p.add_argument("--bins", type=int, default=100, help="points of the common step grid of the curves")
    p.add_argument("--smooth", type=int, default=5, help="moving-average window of the curves, in grid points")
    p.add_argument("--band", choices=["minmax", "std"], default="minmax", help="shaded band over seeds")
    args = parse_with_script_args(p, argv)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.total_timesteps < 1:
        p.error("--total-timesteps must be positive")
    unknown = [d for d in args.delays if d not in th.VARIANT_DELAYS]
    if unknown:
        p.error(f"--delays {unknown}: only the registered TwoHorizons-far{{D}}-v0 exist, D in {th.VARIANT_DELAYS}")
    if any(not 0 < g <= 1 for g in args.gammas):
        p.error("--gammas must be in (0, 1]")
    for flag, text, banned in (("--ppo-args", args.ppo_args, "--gamma"), ("--p3o-args", args.p3o_args, None)):
        words = shlex.split(text)
        for own in ("--env-id", "--seed", "--total-timesteps", "--exp-name", "--device", banned):
            if own and any(w == own or w.startswith(own + "=") for w in words):
                p.error(f"{flag} must not set {own}: this script sets it")
    return args


@dataclass
class Run:
    method: str  # key of SCRIPTS
    setting: str  # "gamma=0.99", or P3O's flags ("default" when none)
    delay: int
    seed: int
    total_timesteps: int
    extra: list[str]
    config: str = ""
    exp_name: str = ""

    def __post_init__(self):
        blob = "\0".join([SCRIPTS[self.method], str(self.delay), str(self.total_timesteps), *self.extra])
        self.config = hashlib.sha1(blob.encode()).hexdigest()[:8]
        slug = re.sub(r"[^A-Za-z0-9.=]+", "_", self.setting).strip("_")
        self.exp_name = f"{self.method}-{slug}-far{self.delay}-{self.config}"  # no "__" or "/"

    @property
    def key(self):
        return (self.method, self.setting, self.delay, self.seed)

    @property
    def name(self):
        return f"{self.method:>7} {self.setting:>12} D={self.delay} seed {self.seed}"

    @property
    def log_name(self):
        return f"{self.exp_name}__{self.seed}.log"

    def command(self):
        return [
            sys.executable, str(ROOT / SCRIPTS[self.method]),
            "--env-id", f"scripts.two_horizons:{th.variant_id(self.delay)}",
            "--seed", str(self.seed), "--total-timesteps", str(self.total_timesteps),
            "--device", "cpu", "--exp-name", self.exp_name, *self.extra,
        ]  # fmt: skip


def setting_of(method, args, gamma=None):
    if method == "ppo_gae":
        return f"gamma={gamma:g}"
    return args.p3o_args.strip() or "default"


def plan_runs(args) -> list[Run]:
    runs = []
    for delay in args.delays:
        for seed in args.seeds:
            if "ppo_gae" in args.methods:
                for gamma in args.gammas:
                    extra = shlex.split(args.ppo_args) + ["--gamma", f"{gamma:g}"]
                    runs.append(Run("ppo_gae", setting_of("ppo_gae", args, gamma), delay, seed, args.total_timesteps, extra))
            if "p3o" in args.methods:
                extra = shlex.split(args.p3o_args)
                runs.append(Run("p3o", setting_of("p3o", args), delay, seed, args.total_timesteps, extra))
    return runs


def key_of(row):
    return (row["method"], row["setting"], int(row["delay"]), int(row["seed"]))


class Store(compare.Store):
    """compare.py's runs.csv and results.csv store, with this script's columns, keys and row order."""

    def __init__(self, out: Path):
        order = lambda key: (key[2], key[0], key[1], key[3])  # noqa: E731  (delay, method, setting, seed)
        super().__init__(out, RUN_COLUMNS, RESULT_COLUMNS, run_key=key_of, result_key=key_of, order=order)


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
def run_dirs(out: Path, run: Run):
    return sorted((out / "runs").glob(f"*__{glob_escape(run.exp_name)}__{run.seed}__*"))


def read_events(run_dir: Path):
    """(episodes [(step, return)], SPS values, last step, {P3O diagnostic: last value})."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    tags = set(events.Tags()["scalars"])
    scalars = lambda tag: events.Scalars(tag) if tag in tags else []  # noqa: E731
    episodes = [(e.step, e.value) for e in scalars("charts/episodic_return")]
    sps = [e.value for e in scalars("charts/SPS")]
    last_step = max([e.step for e in scalars("charts/SPS")] + [s for s, _ in episodes] + [0])
    p3o = {}
    last = lambda tag: scalars(tag)[-1].value if scalars(tag) else None  # noqa: E731
    for name in ("credited_steps", "effective_horizon", "sigma_r"):
        p3o[name] = last(f"p3o/{name}")
    sigmas = {int(t.rsplit("/k", 1)[1]): last(t) for t in tags if t.startswith("p3o/sigma/k")}
    if sigmas:
        p3o["horizon"] = max(sigmas) + 1  # k = H - 1 is always logged
        if p3o["sigma_r"] is not None:  # the largest logged k whose sigma is below chance (sigma_r)
            below = [k for k, s in sigmas.items() if s < p3o["sigma_r"]]
            p3o["chance_k"] = max(below) if below else -1
    return episodes, sps, last_step, p3o


def optimal(delay):
    return th.optimal_return(**th.variant_params(delay))


def summarize(run: Run, out: Path, status, wall, returncode, log):
    row = {name: "" for name in RUN_COLUMNS}
    row.update(
        method=run.method, setting=run.setting, delay=run.delay, seed=run.seed, status=status,
        total_timesteps=run.total_timesteps, wall_time_s=f"{wall:.1f}" if wall is not None else "",
        config=run.config, exp_name=run.exp_name, args=shlex.join(run.extra),
        returncode=returncode, log=str(log.relative_to(out)),
    )  # fmt: skip
    results = None
    dirs = run_dirs(out, run)
    if dirs:
        run_dir = max(dirs, key=lambda d: d.stat().st_mtime)
        row["run_dir"] = str(run_dir.relative_to(out))
        if status == "finished":
            episodes, sps, last_step, p3o = read_events(run_dir)
            fr = final_return(episodes, last_step)
            row.update(
                final_return="" if math.isnan(fr) else f"{fr:.4f}",
                final_fraction="" if math.isnan(fr) else f"{fr / optimal(run.delay):.4f}",
                sps=f"{sum(sps) / len(sps):.1f}" if sps else "",
                episodes=len(episodes),
                last_step=last_step,
                **{k: ("" if v is None else f"{v:g}") for k, v in p3o.items()},
            )
            results = [
                {"method": run.method, "setting": run.setting, "delay": run.delay, "seed": run.seed,
                 "step": s, "episodic_return": f"{r:.6g}"}
                for s, r in episodes
            ]  # fmt: skip
    elif status == "finished":
        row["status"] = "failed"  # exited 0 but wrote no run folder
    return row, results


def execute(runs, store: Store, args):
    out = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    todo = []
    for run in runs:
        if store.finished(run.key):
            print(f"skip  {run.name}: finished (runs.csv)", flush=True)
        else:
            todo.append(run)
    if not todo:
        print("nothing to run: every run is finished", flush=True)
        return True
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    print(f"{len(todo)} run(s) to do, {args.jobs} at once", flush=True)
    return run_pool(
        todo, store, out, args.jobs, env,
        command=Run.command,
        run_dirs=run_dirs,
        summarize=summarize,
        done_text=lambda row: f"final fraction of optimal {row['final_fraction'] or 'n/a'}",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Plot and table
# ---------------------------------------------------------------------------------------------
def label(method, setting):
    return f"PPO+GAE {setting.replace('gamma=', 'gamma ')}" if method == "ppo_gae" else f"P3O ({setting})"


def method_order(ms):
    method, setting = ms
    gamma = float(setting.split("=", 1)[1]) if setting.startswith("gamma=") else 0.0
    return (method != "ppo_gae", gamma, setting)


def finished_keys(store: Store):
    return [k for k in store.runs if store.finished(k)]


def seed_stats(store: Store, ms, delay, column):
    import numpy as np

    values = [
        float(store.runs[k][column])
        for k in finished_keys(store)
        if (k[0], k[1]) == ms and k[2] == delay and store.runs[k].get(column) not in ("", None)
    ]
    return (float(np.mean(values)), float(np.std(values)), len(values)) if values else (math.nan, math.nan, 0)


def make_plot(store: Store, args):
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = finished_keys(store)
    delays = sorted({k[2] for k in keys})
    methods = sorted({(k[0], k[1]) for k in keys}, key=method_order)
    fig, axes = plt.subplots(1, len(delays), figsize=(max(6, 5 * len(delays)), 4.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, delay in zip(axes[0], delays):
        params = th.variant_params(delay)
        best = th.optimal_return(**params)
        total = max(int(store.runs[k]["last_step"] or store.runs[k]["total_timesteps"]) for k in keys if k[2] == delay)
        edges = np.linspace(0, total, args.bins + 1)
        for i, ms in enumerate(methods):
            curves = []
            for k in keys:
                if (k[0], k[1]) == ms and k[2] == delay and store.results.get(k):
                    eps = sorted((int(r["step"]), float(r["episodic_return"]) / best) for r in store.results[k])
                    curves.append(binned(eps, edges, args.smooth))
            if not curves:
                continue
            ys = np.array(curves)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(ys, axis=0)
                if args.band == "std":
                    lo, hi = mean - np.nanstd(ys, axis=0), mean + np.nanstd(ys, axis=0)
                else:
                    lo, hi = np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)
            color = colors[i % len(colors)]
            ax.plot(edges[1:], mean, color=color, lw=1.6, label=f"{label(*ms)} (n={len(ys)})")
            if len(ys) > 1:
                ax.fill_between(edges[1:], lo, hi, color=color, alpha=0.18, lw=0)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(th.myopic_return(**params) / best, color="k", ls="--", lw=1, label="myopic (always collect)")
        ax.axhline(th.random_return(**params) / best, color="gray", ls=":", lw=1, label="random policy")
        ax.set_title(f"TwoHorizons-far{delay}-v0: far reward {delay} steps away\n(gamma needed > {th.critical_gamma(**params):.3f})", fontsize=10)
        steps_axis(ax)
        ax.set_ylabel("episodic return / optimal")
        ax.set_ylim(0.3, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    band = "min..max" if args.band == "minmax" else "+-std"
    fig.suptitle(f"Fraction of the optimal return: mean over seeds, band {band} (moving average over {args.smooth}/{args.bins} of the steps)", fontsize=9)
    fig.tight_layout()
    path = args.out / "horizon_experiment.png"
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def fmt(mean, std, n, digits=3):
    return f"{mean:.{digits}f} +- {std:.{digits}f}" if n else "n/a"


def summary_table(store: Store):
    keys = finished_keys(store)
    delays = sorted({k[2] for k in keys})
    methods = sorted({(k[0], k[1]) for k in keys}, key=method_order)
    lines = [
        "# Horizon experiment: TwoHorizons-far{D}-v0",
        "",
        f"Final fraction of optimal: each run's mean return over the episodes that ended in the last "
        f"{FINAL_FRACTION:.0%} of its steps, divided by the optimal return; mean +- std over seeds (n).",
        "",
        "| D | optimal | myopic / optimal | random / optimal | gamma needed (critical_gamma) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for d in delays:
        p = th.variant_params(d)
        best = th.optimal_return(**p)
        lines.append(
            f"| {d} | {best:g} | {th.myopic_return(**p) / best:.3f} | {th.random_return(**p) / best:.3f} | "
            f"{th.critical_gamma(**p):.3f} |"
        )
    lines += [
        "",
        "| method | D | final fraction of optimal | n | SPS | H | credited steps | effective horizon | sigma < sigma_r up to k |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for ms in methods:
        for d in delays:
            m, s, n = seed_stats(store, ms, d, "final_fraction")
            if not n and not seed_stats(store, ms, d, "sps")[2]:
                continue
            sps = seed_stats(store, ms, d, "sps")
            cells = [label(*ms), str(d), fmt(m, s, n), str(n), f"{sps[0]:.0f}" if sps[2] else "n/a"]
            if ms[0] == "p3o":
                for col, digits in (("horizon", 0), ("credited_steps", 1), ("effective_horizon", 1), ("chance_k", 0)):
                    cm, cs, cn = seed_stats(store, ms, d, col)
                    cells.append("n/a" if not cn else f"{cm:.0f}" if digits == 0 and cs == 0 else fmt(cm, cs, cn, digits or 1))
            else:
                cells += ["-"] * 4
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "P3O columns (last update of each run, mean over seeds): H = --horizon; credited steps = how many "
        "k have 1/sigma[k]^2 above c/sigma_r^2 (p3o/credited_steps); effective horizon = the weight-averaged "
        "k (p3o/effective_horizon); the last column is the largest logged k (powers of 2 and H - 1) whose "
        "sigma[k] is below sigma_r, the chance level (-1: none). P3O can credit the far reward through its "
        "advantage only if these reach about D: with H < D it cannot, whatever it learns.",
    ]
    other = sorted(f"{k[0]} {k[1]} D={k[2]} seed {k[3]}: {row['status']}" for k, row in store.runs.items() if row["status"] != "finished")
    if other:
        lines += ["", "Not finished: " + "; ".join(other)]
    return "\n".join(lines) + "\n"


def report(store: Store, args):
    if not finished_keys(store):
        print("no finished runs yet: no plot or table", flush=True)
        return
    print(f"plot: {make_plot(store, args)}", flush=True)
    table = summary_table(store)
    tmp = args.out / f".summary.md.{os.getpid()}.tmp"
    tmp.write_text(table)
    os.replace(tmp, args.out / "summary.md")
    print("\n" + table, flush=True)
    print(f"table: {args.out / 'summary.md'}", flush=True)


def main(argv=None):
    args = parse_args(argv)
    interrupt_on_sigterm()
    args.out = args.out.resolve()
    store = Store(args.out)
    ok = True
    if not args.plot_only:
        runs = plan_runs(args)
        check_changed(runs, store, args.rerun_changed)
        try:
            ok = execute(runs, store, args)
        except KeyboardInterrupt:
            report(store, args)
            sys.exit(130)
    report(store, args)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
