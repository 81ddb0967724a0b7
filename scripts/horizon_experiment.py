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

This is a configuration of the runner in scripts/compare.py (its pool on Ray, its store, its
resume and its flags: --jobs, --address, --cpus-per-run, --track, ... see `--help`): this file only
plans the runs and draws its own plot and table. Each run is `python ppo_gae.py|p3o.py --env-id
scripts.two_horizons:TwoHorizons-far{D}-v0 --seed S --total-timesteps N --device cpu` (plus --gamma G,
or the --p3o-args) with OMP_NUM_THREADS = --cpus-per-run, in the folder --out.

What --out holds:
    results.csv.gz     method, setting, delay, seed, step, episodic_return: one row per finished episode (gzipped)
    runs.csv           one row per run: status, timings (SPS), final return and fraction of optimal, and
                       for P3O the last values of its horizon diagnostics
    horizon_experiment.png   a panel per delay: fraction of optimal return, mean over seeds, band min..max
    summary.md         method x delay: final fraction of optimal, mean +- std over seeds
    runs/, logs/       the runs' TensorBoard folders and their stdout + stderr

Resuming: as for scripts/compare.py, a run that runs.csv lists as finished with the same settings is
skipped; any other runs again, from its last checkpoint when it has one. Both CSVs are written by
the driver only, atomically, after each run, so interrupting (Ctrl-C or kill) and rerunning the same
command loses no finished run.
"""

from __future__ import annotations

import math
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import two_horizons as th  # noqa: E402
from scripts.compare import (  # noqa: E402
    FINAL_FRACTION,
    Experiment,
    Run,
    SCRIPTS,
    binned,
    draw_seeds,
    main_of,
    parse_runner_args,
    runner_parser,
    save_figure,
    steps_axis,
    write_summary,
)

RESULT_COLUMNS = ["method", "setting", "delay", "seed", "step", "episodic_return"]
P3O_COLUMNS = ["horizon", "credited_steps", "effective_horizon", "sigma_r", "chance_k"]
RUN_COLUMNS = [
    "method", "setting", "delay", "seed", "status", "total_timesteps", "final_return", "final_fraction",
    "episodes", "last_step", "wall_time_s", "sps", *P3O_COLUMNS, "config", "exp_name", "args",
    "run_dir", "returncode", "log", "node",
]  # fmt: skip


def parse_args(argv=None):
    p = runner_parser(
        "PPO+GAE at several gammas and P3O on TwoHorizons-far{D}-v0 over delays x seeds.",
        total_timesteps=500_000, out="results/horizon_experiment",
    )  # fmt: skip
    p.add_argument("--delays", nargs="+", type=int, default=[10, 30, 100], help=f"far delays D, of {th.VARIANT_DELAYS}")
    p.add_argument("--gammas", nargs="+", type=float, default=[0.9, 0.99, 0.999], help="a PPO+GAE run per gamma")
    p.add_argument("--methods", nargs="+", choices=sorted(SCRIPTS), default=["ppo_gae", "p3o"])
    args = parse_runner_args(p, argv)
    unknown = [d for d in args.delays if d not in th.VARIANT_DELAYS]
    if unknown:
        p.error(f"--delays {unknown}: only the registered TwoHorizons-far{{D}}-v0 exist, D in {th.VARIANT_DELAYS}")
    if any(not 0 < g <= 1 for g in args.gammas):
        p.error("--gammas must be in (0, 1]")
    for flag, text, banned in (("--ppo-args", args.ppo_args, "--gamma"), ("--p3o-args", args.p3o_args, None)):
        for own in ("--env-id", "--seed", "--total-timesteps", "--device", banned):
            if own and any(w == own or w.startswith(own + "=") for w in shlex.split(text)):
                p.error(f"{flag} must not set {own}: this script sets it")
    return args


def plan_runs(args) -> list[Run]:
    runs = []
    for delay in args.delays:
        for seed in args.seeds:
            settings = []
            if "ppo_gae" in args.methods:
                settings += [("ppo_gae", f"gamma={g:g}", shlex.split(args.ppo_args) + ["--gamma", f"{g:g}"]) for g in args.gammas]
            if "p3o" in args.methods:
                settings.append(("p3o", args.p3o_args.strip() or "default", shlex.split(args.p3o_args)))
            for method, setting, extra in settings:
                ids = {"method": method, "setting": setting, "delay": delay, "seed": seed}
                slug = re.sub(r"[^A-Za-z0-9.=]+", "_", setting).strip("_")
                env_id = f"scripts.two_horizons:{th.variant_id(delay)}"
                runs.append(Run(ids, ids, method, env_id, seed, args.total_timesteps, extra, "cpu", f"{method}-{slug}-far{delay}", [str(delay)]))
    return runs


def optimal(delay):
    return th.optimal_return(**th.variant_params(delay))


def finished_columns(run: Run, result):
    """final_fraction, and for P3O the last values of its horizon diagnostics."""
    row, last = {}, result["last"]
    fr = [r for s, r in result["episodes"] if s >= (1 - FINAL_FRACTION) * result["last_step"]]
    if fr:
        row["final_fraction"] = f"{sum(fr) / len(fr) / optimal(run.ids['delay']):.4f}"
    for name in ("credited_steps", "effective_horizon", "sigma_r"):
        if f"p3o/{name}" in last:
            row[name] = f"{last[f'p3o/{name}']:g}"
    sigmas = {int(t.rsplit("/k", 1)[1]): v for t, v in last.items() if t.startswith("p3o/sigma/k")}
    if sigmas:
        row["horizon"] = f"{max(sigmas) + 1}"  # k = H - 1 is always logged
        if "p3o/sigma_r" in last:  # the largest logged k whose sigma is below chance (sigma_r)
            below = [k for k, s in sigmas.items() if s < last["p3o/sigma_r"]]
            row["chance_k"] = f"{max(below) if below else -1}"
    return row


# ---------------------------------------------------------------------------------------------
# Plot and table
# ---------------------------------------------------------------------------------------------
def label(method, setting):
    return f"PPO+GAE {setting.replace('gamma=', 'gamma ')}" if method == "ppo_gae" else f"P3O ({setting})"


def method_order(ms):
    method, setting = ms
    gamma = float(setting.split("=", 1)[1]) if setting.startswith("gamma=") else 0.0
    return (method != "ppo_gae", gamma, setting)


def seed_stats(store, ms, delay, column):
    import numpy as np

    values = [
        float(store.runs[k][column])
        for k in store.finished_keys()
        if (k[0], k[1]) == ms and k[2] == delay and store.runs[k].get(column) not in ("", None)
    ]
    return (float(np.mean(values)), float(np.std(values)), len(values)) if values else (math.nan, math.nan, 0)


def make_plot(store, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = store.finished_keys()
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
            if curves:
                draw_seeds(ax, edges, curves, args.band, label(*ms), colors[i % len(colors)])
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
    save_figure(fig, args.out / "horizon_experiment.png", f"Fraction of the optimal return: mean over seeds, band {band} (moving average over {args.smooth}/{args.bins} of the steps)")


def fmt(mean, std, n, digits=3):
    return f"{mean:.{digits}f} +- {std:.{digits}f}" if n else "n/a"


def summary_table(store):
    keys = store.finished_keys()
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


def report(store, args):
    make_plot(store, args)
    write_summary(args, summary_table(store))


def key(row):
    return (row["method"], row["setting"], int(row["delay"]), int(row["seed"]))


HORIZON_EXPERIMENT = Experiment(
    run_columns=RUN_COLUMNS,
    result_columns=RESULT_COLUMNS,
    key=key,
    result_key=key,
    report=report,
    order=lambda k: (k[2], k[0], k[1], k[3]),  # delay, method, setting, seed
    finished_columns=finished_columns,
    done_text=lambda row: f"final fraction of optimal {row['final_fraction'] or 'n/a'}",
)


def main(argv=None):
    args = parse_args(argv)
    return main_of(HORIZON_EXPERIMENT, args, lambda: plan_runs(args))


if __name__ == "__main__":
    sys.exit(main())
