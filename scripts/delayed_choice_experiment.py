"""How often does a trained agent make the bonus choice of DelayedChoice? (see scripts/delayed_choice.py)

    python scripts/delayed_choice_experiment.py --bonus 0 3 --seeds 1 2 3 --jobs 2 \
        --config "p3o-H32=p3o.py --horizon 32" "ppo-g0.99=ppo_gae.py --gamma 0.99"
    python scripts/delayed_choice_experiment.py --summary --out results/delayed_choice   # the table

Each (config, bonus, seed) trains once, for --total-timesteps, in its own folder under --out
(runs/ of that folder holds the TensorBoard events). The score of a run is the fraction of the
episodes finished in the last --final-fraction of its steps whose return is the bonus reward
(the return of an episode is the reward of its choice, so it reveals the choice). One CSV row per
run goes to OUT/runs.csv; a finished run (row present) is not rerun.
"""

import argparse
import csv
import os
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from scripts.delayed_choice import DEFAULT_BONUS_REWARD, DEFAULT_DELAYS, clock_id, variant_id  # noqa: E402

FIELDS = ["config", "bonus", "bonus_delay", "seed", "total_timesteps", "final_episodes", "bonus_fraction", "command"]


def episode_returns(run_dir):
    """[(step, return)] of charts/episodic_return in the TensorBoard events under run_dir."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("charts/episodic_return")]


def run_one(config, script_args, bonus, seed, args):
    folder = Path(args.out) / f"{config}__bonus{bonus}__{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    env_id = (clock_id if args.clock else variant_id)(bonus)
    command = [sys.executable, str(ROOT / script_args[0]), *script_args[1:],
               "--env-id", f"scripts.delayed_choice:{env_id}", "--seed", str(seed),
               "--total-timesteps", str(args.total_timesteps), "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    shutil.rmtree(folder / "runs", ignore_errors=True)  # an interrupted earlier try
    with open(folder / "log.txt", "w") as log:
        subprocess.run(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    (run_dir,) = (folder / "runs").iterdir()
    returns = episode_returns(run_dir)
    final = [r for step, r in returns if step > (1 - args.final_fraction) * args.total_timesteps]
    fraction = sum(abs(r - DEFAULT_BONUS_REWARD) < 1e-3 for r in final) / max(len(final), 1)
    print(f"{config} bonus{bonus} seed {seed}: {fraction:.2f} of {len(final)} final episodes", flush=True)
    return dict(config=config, bonus=bonus, bonus_delay=DEFAULT_DELAYS[bonus], seed=seed,
                total_timesteps=args.total_timesteps, final_episodes=len(final), bonus_fraction=round(fraction, 4),
                command=shlex.join(["python", *script_args, "--env-id", f"scripts.delayed_choice:{env_id}",
                                    "--seed", str(seed), "--total-timesteps", str(args.total_timesteps)]))


def summary(table):
    """A markdown table: per config and bonus delay, the mean bonus fraction and each seed's."""
    with open(table) as f:
        rows = list(csv.DictReader(f))
    cells = {}
    for r in rows:
        cells.setdefault((r["config"], int(r["bonus_delay"])), []).append((int(r["seed"]), float(r["bonus_fraction"])))
    delays = sorted({d for _, d in cells})
    lines = ["| config | " + " | ".join(f"bonus at delay {d}" for d in delays) + " |", "|---" * (len(delays) + 1) + "|"]
    for config in dict.fromkeys(c for c, _ in cells):
        row = []
        for d in delays:
            seeds = sorted(cells.get((config, d), []))
            row.append(f"{sum(v for _, v in seeds) / len(seeds):.2f} ({', '.join(f'{v:.2f}' for _, v in seeds)})" if seeds else "")
        lines.append(f"| {config} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", nargs="+", default=[], help='"LABEL=script.py --flag value ..."')
    parser.add_argument("--bonus", nargs="+", type=int, default=[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--clock", action="store_true", help="the DelayedChoice-clock-bonus{i}-v0 variants")
    parser.add_argument("--total-timesteps", type=int, default=200_000)
    parser.add_argument("--final-fraction", type=float, default=0.1, help="the final share of steps scored")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="runs/delayed_choice", help="run folders and runs.csv (results/delayed_choice/ keeps a copy of the CSV)")
    parser.add_argument("--summary", action="store_true", help="run nothing: print OUT/runs.csv as a markdown table")
    args = parser.parse_args()
    if args.summary:
        print(summary(Path(args.out) / "runs.csv"))
        return
    configs = []
    for item in args.config:
        label, sep, rest = item.partition("=")
        if not sep or not rest.split():
            sys.exit(f"error: --config must be LABEL=script.py [flags], got {item!r}")
        configs.append((label, shlex.split(rest)))
    table = Path(args.out) / "runs.csv"
    table.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if table.exists():
        with open(table) as f:
            done = {(r["config"], int(r["bonus"]), int(r["seed"])) for r in csv.DictReader(f)}
    todo = [(c, a, b, s) for c, a in configs for b in args.bonus for s in args.seeds if (c, b, s) not in done]
    with ThreadPoolExecutor(args.jobs) as pool:
        for row in pool.map(lambda job: run_one(*job, args), todo):
            new = not table.exists()
            with open(table, "a", newline="") as f:
                writer = csv.DictWriter(f, FIELDS)
                if new:
                    writer.writeheader()
                writer.writerow(row)


if __name__ == "__main__":
    main()
