"""Env stepping only: the scripts' vector env against ale-py's C++ AtariVectorEnv, side by side.

    python scripts/bench_atari_vector.py                        # Breakout, 8 envs, 5 repeats of 2000 steps
    python scripts/bench_atari_vector.py --env-id Pong --steps 500 --repeats 3

Both step the same number of envs with uniformly random actions:
  gymnasium  ppo_gae.make_envs: AsyncVectorEnv, a process per env, with the scripts' wrappers
             (AtariPreprocessing, episodic life with FIRE on reset, sign-clipped rewards, 4-frame stack)
  ale        ale_py.AtariVectorEnv: the same DeepMind preprocessing in C++ threads, in one process,
             with life_loss_info=True (a lost life ends the training episode, the game goes on), the
             closest of its modes to the scripts' (see results/atari_vector_env.md for what differs)
The two are timed in alternation, `--repeats` times each, and the median SPS is reported
(SPS = env steps / seconds; an env step is one agent step, 4 frames). Creation and the first
reset are not timed. Beside wall-clock SPS it reports env steps per CPU second (user + system time
of this process's threads and of the env worker processes, from /proc): the cost of a step, which a
busy machine does not change as much, and which bounds what a machine full of packed runs can do.
`--out` writes a markdown table.
"""

import argparse
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env-id", default="Breakout", help="an Atari game, as the scripts' --env-id")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--steps", type=int, default=2000, help="vector steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--num-threads", type=int, default=0, help="AtariVectorEnv num_threads (0: its default)")
    p.add_argument("--out", type=Path, default=None, help="markdown table (default: print only)")
    args = p.parse_args(argv)
    for name in ("num_envs", "steps", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def make_gymnasium(args):
    import ppo_gae

    cfg = ppo_gae.Args(env_id=args.env_id, num_envs=args.num_envs)
    kind, _ = ppo_gae.resolve_env_id(args.env_id)
    if kind != "atari":
        sys.exit(f"error: --env-id {args.env_id} is not an Atari game")
    return ppo_gae.make_envs(cfg)


def make_ale(args):
    from ale_py import AtariVectorEnv
    from gymnasium.vector import AutoresetMode

    import ppo_gae

    _, env_id = ppo_gae.resolve_env_id(args.env_id)  # "ALE/MsPacman-v5" -> ROM "ms_pacman"
    rom = re.sub(r"(?<!^)(?=[A-Z])", "_", env_id.split("/")[1].split("-v")[0]).lower()
    return AtariVectorEnv(rom, args.num_envs, num_threads=args.num_threads, life_loss_info=True,
                          autoreset_mode=AutoresetMode.SAME_STEP, noop_max=30, frameskip=4, stack_num=4,
                          max_num_frames_per_episode=108_000, repeat_action_probability=0.0)


def cpu_seconds(envs):
    """CPU time (user + system) of this process, all its threads, and the vector env's worker processes."""
    tick = os.sysconf("SC_CLK_TCK")
    total = time.process_time()
    for proc in getattr(envs, "processes", []):  # AsyncVectorEnv: one process per env
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def time_steps(envs, steps, rng):
    """(env steps per wall-clock second, env steps per CPU second)"""
    n = envs.single_action_space.n
    actions = rng.integers(0, n, size=(steps, envs.num_envs))
    start, cpu_start = time.perf_counter(), cpu_seconds(envs)
    for a in actions:
        envs.step(a)
    wall, cpu = time.perf_counter() - start, cpu_seconds(envs) - cpu_start
    return steps * envs.num_envs / wall, steps * envs.num_envs / cpu


def main(argv=None):
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    makers = {"gymnasium": make_gymnasium, "ale": make_ale}
    envs, sps, per_cpu = {}, {name: [] for name in makers}, {name: [] for name in makers}
    try:
        for name, make in makers.items():
            envs[name] = make(args)
            envs[name].reset(seed=1)
            time_steps(envs[name], 20, rng)  # warm-up, untimed
        for repeat in range(args.repeats):
            for name in makers:
                wall_sps, cpu_sps = time_steps(envs[name], args.steps, rng)
                sps[name].append(wall_sps)
                per_cpu[name].append(cpu_sps)
            print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(
                f"{n} {sps[n][-1]:,.0f} SPS ({per_cpu[n][-1]:,.0f} per CPU second)" for n in makers), flush=True)
    finally:
        for e in envs.values():
            e.close()
    med = {name: statistics.median(s) for name, s in sps.items()}
    med_cpu = {name: statistics.median(s) for name, s in per_cpu.items()}
    lines = [
        f"| vector env ({args.env_id}, {args.num_envs} envs) | median SPS | min | max | median steps per CPU second |",
        "|---|---|---|---|---|",
        *(f"| {n} | {med[n]:,.0f} | {min(s):,.0f} | {max(s):,.0f} | {med_cpu[n]:,.0f} |" for n, s in sps.items()),
        "",
        f"ale / gymnasium: {med['ale'] / med['gymnasium']:.2f}x in SPS, {med_cpu['ale'] / med_cpu['gymnasium']:.2f}x "
        f"in steps per CPU second (medians of {args.repeats} repeats of "
        f"{args.steps} vector steps, timed in alternation; {os.cpu_count()} CPU cores visible, "
        f"{platform.processor() or platform.machine()})",
    ]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
