"""How often does a trained agent make the bonus choice of DelayedChoice? (see scripts/delayed_choice.py)

    python scripts/delayed_choice_experiment.py --bonus 0 3 --seeds 1 2 3 --jobs 2 \
        --config "p3o-H32=p3o.py --horizon 32" --config "ppo-g0.99=ppo_gae.py --gamma 0.99"
    python scripts/delayed_choice_experiment.py --summary --out results/delayed_choice   # the table

Each (config, bonus, seed) trains once, for --total-timesteps, on DelayedChoice-bonus{i}-v0 (with
--clock, DelayedChoice-clock-bonus{i}-v0; with --staggered, the staggered variants of either). The
score of a run is the fraction of the episodes finished in the last 10% of its steps whose return is
the bonus reward (the return of an episode is the reward of its choice, so it reveals the choice).
--summary prints the table: per config and bonus delay, the mean score over seeds and each seed's.

This is a configuration of the runner in scripts/compare.py (its pool on Ray, its store, its resume
and its flags: --jobs, --address, --cpus-per-run, ... see `--help`), like scripts/horizon_experiment.py.
OUT/runs.csv holds one row per run with its command and score, OUT/results.csv.gz one row per episode,
OUT/runs/ and OUT/logs/ the TensorBoard folders and logs; a finished run is not rerun.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.compare import FINAL_FRACTION, SCRIPTS, Experiment, Run, main_of, parse_runner_args, runner_parser, write_summary  # noqa: E402
from scripts.delayed_choice import DEFAULT_BONUS_REWARD, DEFAULT_DELAYS, clock_id, variant_id  # noqa: E402

RUN_COLUMNS = [
    "label", "bonus", "bonus_delay", "seed", "status", "total_timesteps", "final_episodes", "bonus_fraction", "command",
    "episodes", "last_step", "wall_time_s", "sps", "algo", "exp_name", "config", "args", "run_dir", "returncode", "log", "node",
]  # fmt: skip
OWN_FLAGS = ("--env-id", "--seed", "--total-timesteps", "--device", "--run-name", "--resume", "--checkpoint-every", "--exp-name", "--track", "--wandb-group")


def parse_args(argv=None):
    p = runner_parser(__doc__.split("\n")[0], total_timesteps=200_000, out="runs/delayed_choice")
    p.add_argument("--config", action="append", default=[], help='"LABEL=p3o.py|ppo_gae.py --flag value ...", repeated')
    p.add_argument("--bonus", nargs="+", type=int, default=[0], help=f"the bonus choice i (its delay: {DEFAULT_DELAYS}[i])")
    p.add_argument("--clock", action="store_true", help="the DelayedChoice-clock-bonus{i}-v0 variants")
    p.add_argument("--staggered", action="store_true", help="the staggered variants (DelayedChoice-staggered-bonus{i}-v0, ...)")
    p.add_argument("--summary", dest="plot_only", action="store_true", help="run nothing: print the table of OUT/runs.csv")
    args = parse_runner_args(p, argv)
    if args.ppo_args or args.p3o_args:
        p.error("--ppo-args / --p3o-args: give each script's flags in its --config")
    if any(not 0 <= b < len(DEFAULT_DELAYS) for b in args.bonus):
        p.error(f"--bonus must be in 0..{len(DEFAULT_DELAYS) - 1}")
    args.configs = []
    for item in args.config:
        label, _, rest = item.partition("=")
        words = shlex.split(rest)
        algo = {v: k for k, v in SCRIPTS.items()}.get(words[0] if words else "")
        if not label or "/" in label or "__" in label or algo is None:
            p.error(f"--config must be LABEL=p3o.py|ppo_gae.py [flags] (LABEL without / or __), got {item!r}")
        for own in OWN_FLAGS:
            if any(w == own or w.startswith(own + "=") for w in words[1:]):
                p.error(f"--config {label}: must not set {own}: this script sets it")
        args.configs.append((label, algo, words[1:]))
    if not args.configs and not args.plot_only:
        p.error("--config: give at least one (or --summary)")
    return args


def plan_runs(args) -> list[Run]:
    runs = []
    for label, algo, extra in args.configs:
        for bonus in args.bonus:
            env_id = f"scripts.delayed_choice:{(clock_id if args.clock else variant_id)(bonus, args.staggered)}"
            for seed in args.seeds:
                ids = {"label": label, "bonus": bonus, "bonus_delay": DEFAULT_DELAYS[bonus], "seed": seed}
                result_ids = {"label": label, "bonus": bonus, "seed": seed}
                runs.append(Run(ids, result_ids, algo, env_id, seed, args.total_timesteps, extra, "cpu", label, [env_id]))
    return runs


def finished_columns(run: Run, result):
    """The score: the share of the final episodes whose return is the bonus reward, and the command."""
    final = [r for step, r in result["episodes"] if step > (1 - FINAL_FRACTION) * run.total_timesteps]
    fraction = sum(abs(r - DEFAULT_BONUS_REWARD) < 1e-3 for r in final) / max(len(final), 1)
    command = ["python", SCRIPTS[run.algo], *run.extra, "--env-id", run.env_id, "--seed", str(run.seed), "--total-timesteps", str(run.total_timesteps)]
    return dict(final_episodes=len(final), bonus_fraction=round(fraction, 4), command=shlex.join(command))


def summary_table(store):
    """A markdown table: per config and bonus delay, the mean bonus fraction and each seed's."""
    cells = {}
    for k in store.finished_keys():
        r = store.runs[k]
        cells.setdefault((r["label"], int(r["bonus_delay"])), []).append((int(r["seed"]), float(r["bonus_fraction"])))
    delays = sorted({d for _, d in cells})
    lines = ["| config | " + " | ".join(f"bonus at delay {d}" for d in delays) + " |", "|---" * (len(delays) + 1) + "|"]
    for label in dict.fromkeys(c for c, _ in cells):
        row = []
        for d in delays:
            seeds = sorted(cells.get((label, d), []))
            row.append(f"{sum(v for _, v in seeds) / len(seeds):.2f} ({', '.join(f'{v:.2f}' for _, v in seeds)})" if seeds else "")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def key(row):
    return (row["label"], int(row["bonus"]), int(row["seed"]))


def main(argv=None):
    args = parse_args(argv)
    experiment = Experiment(
        RUN_COLUMNS, ["label", "bonus", "seed", "step", "episodic_return"], key, key,
        report=lambda store, args: write_summary(args, summary_table(store)),
        order=lambda k: 0,  # runs.csv keeps the order in which the runs were first planned
        finished_columns=finished_columns,
        done_text=lambda row: f"bonus chosen in {row['bonus_fraction']} of {row['final_episodes']} final episodes",
    )  # fmt: skip
    return main_of(experiment, args, lambda: plan_runs(args))


if __name__ == "__main__":
    sys.exit(main())
