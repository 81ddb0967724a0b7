"""Steps per second of the bare vector env, ppo_gae.py and p3o.py, and where each one's time goes.

    python scripts/bench_throughput.py                                  # Breakout, 8 envs, 20480 steps
    python scripts/bench_throughput.py --device cpu --num-envs 2 --num-steps 32 --total-timesteps 1024

Three runs, one after another, each in its own subprocess, under identical settings:
  (a) bare: the vector env of the scripts (ppo_gae.make_envs), stepped with random actions: the ceiling
  (b) ppo_gae.py and (c) p3o.py, training, unmodified.
The training scripts are run in-process in that subprocess (runpy, as `python script.py ...` would run
them), with timers wrapped around library and agent entry points; the scripts' files are not edited:
  env step          gymnasium AsyncVectorEnv.step / SyncVectorEnv.step
  rollout inference Agent.get_action_and_value without grad, and Agent.get_value (truncation final
                    observations and the bootstrap value; the Agent class is wrapped as it is defined,
                    through builtins.__build_class__)
  advantage         kernels.gae / kernels.p3o_targets + kernels.p3o_advantage (the calls into p3o_kernel.cu)
  update            wall time from the advantage kernel's return to the iteration's last
                    optimizer.step() (minibatch forward, losses, backward, clipping, Adam)
  other             the rest of the training loop: rollout storage, host<->device copies,
                    precision/normalization, logging
SPS is steps / time from the first envs.reset() to envs.close(), the window the scripts' own SPS
uses. On CUDA each timed call is bracketed by torch.cuda.synchronize(), so asynchronous kernels are
charged to the phase that launched them (the scripts already synchronize every step through
action.cpu() and every minibatch through .item(), so this costs little; --no-sync turns it off,
and then the attribution is only approximate). --cprofile also saves a cProfile of each run.
Markdown goes to --out (default results/bench_throughput_{device}.md).
"""

from __future__ import annotations

import argparse
import builtins
import datetime
import functools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ["env", "inference", "advantage", "update", "other"]
PHASE_TITLES = {
    "env": "env step",
    "inference": "rollout inference",
    "advantage": "advantage kernel",
    "update": "update",
    "other": "other",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env-id", default="Breakout")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--num-steps", type=int, default=128)
    p.add_argument("--total-timesteps", type=int, default=20480)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--horizon", type=int, default=32, help="p3o.py --horizon")
    p.add_argument("--runs", nargs="+", choices=["bare", "ppo_gae", "p3o"], default=["bare", "ppo_gae", "p3o"])
    p.add_argument("--torch-threads", type=int, default=None,
                   help="set OMP_NUM_THREADS for all three runs (default: unset, the scripts' own default)")
    p.add_argument("--no-sync", action="store_true", help="no torch.cuda.synchronize() around the timed calls")
    p.add_argument("--cprofile", action="store_true", help="also save a cProfile (.prof) of each run next to --out")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed per run")
    p.add_argument("--out", type=Path, default=None, help="default results/bench_throughput_{device}.md")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    p.add_argument("--_prof", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.out is None:
        args.out = ROOT / "results" / f"bench_throughput_{args.device}.md"
    return args


# ---------------------------------------------------------------------------------------------
# Child: one run, instrumented
# ---------------------------------------------------------------------------------------------
class Recorder:
    def __init__(self, sync):
        import torch

        self.torch = torch
        self.sync_enabled = sync
        self.seconds = {name: 0.0 for name in PHASES}
        self.calls = {name: 0 for name in PHASES}
        self.active = 0  # >0 inside a timed call: nested timed calls are not counted twice
        self.env_steps = 0
        self.t_reset = None
        self.t_close = None
        self.advantage_starts = []
        self.adv_end = None
        self.opt_end = None

    def sync(self):
        if self.sync_enabled and self.torch.cuda.is_initialized():
            self.torch.cuda.synchronize()

    def timed(self, phase, fn, phase_of_call=None, counted=True):
        """fn, timed into `phase`; counted=False adds its time but not a call (part of a counted step)."""
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            if self.active:
                return fn(*a, **kw)
            name = phase_of_call() if phase_of_call else phase
            self.sync()
            self.active += 1
            start = time.perf_counter()
            try:
                result = fn(*a, **kw)
                self.sync()
            finally:
                self.active -= 1
                end = time.perf_counter()
                if name is not None:
                    self.seconds[name] += end - start
                    self.calls[name] += counted
            return result

        return wrapper

    def close_update_window(self, now):
        if self.adv_end is not None and self.opt_end is not None and self.opt_end > self.adv_end:
            self.seconds["update"] += self.opt_end - self.adv_end
            self.calls["update"] += 1
        self.adv_end = self.opt_end = None


def instrument(rec: Recorder):
    import gymnasium as gym
    import torch

    import p3o_kernel_loader

    # Environment stepping, and the training window (first reset .. close)
    for cls in (gym.vector.AsyncVectorEnv, gym.vector.SyncVectorEnv):
        step, reset, close = cls.step, cls.reset, cls.close

        def timed_step(self, actions, _step=rec.timed("env", step)):
            rec.env_steps += self.num_envs
            return _step(self, actions)

        def first_reset(self, *a, _reset=reset, **kw):
            if rec.t_reset is None:
                rec.t_reset = time.perf_counter()
            return _reset(self, *a, **kw)

        def marked_close(self, *a, _close=close, **kw):
            if rec.t_close is None and rec.t_reset is not None:
                rec.sync()
                rec.t_close = time.perf_counter()
                rec.close_update_window(rec.t_close)
            return _close(self, *a, **kw)

        cls.step, cls.reset, cls.close = timed_step, first_reset, marked_close

    # The advantage kernels
    load = p3o_kernel_loader.load_kernels

    class TimedKernels:
        def __init__(self, module):
            self._module = module

        def __getattr__(self, name):
            attr = getattr(self._module, name)
            if name == "p3o_targets":  # p3o.py's first pass (live rewards for sigma): same step, counted once
                return rec.timed("advantage", attr, counted=False)
            if name not in ("gae", "p3o_advantage"):
                return attr
            timed = rec.timed("advantage", attr)

            def call(*a, **kw):
                rec.close_update_window(time.perf_counter())
                rec.advantage_starts.append(time.perf_counter())
                result = timed(*a, **kw)
                rec.adv_end = time.perf_counter()
                return result

            return call

    p3o_kernel_loader.load_kernels = lambda device: TimedKernels(load(device))

    # The update: the window closes at the iteration's last optimizer step
    adam_step = torch.optim.Adam.step

    @functools.wraps(adam_step)
    def marked_adam_step(self, *a, **kw):
        result = adam_step(self, *a, **kw)
        rec.sync()
        rec.opt_end = time.perf_counter()
        return result

    torch.optim.Adam.step = marked_adam_step

    # Inference: the Agent class of the script, wrapped as the script defines it
    build_class = builtins.__build_class__

    def rollout_or_update():
        return "inference" if not torch.is_grad_enabled() else None  # with grad: inside the update window

    def wrapping_build_class(func, name, *bases, **kw):
        cls = build_class(func, name, *bases, **kw)
        if name == "Agent" and getattr(cls, "__module__", None) == "__main__":
            cls.get_action_and_value = rec.timed("inference", cls.get_action_and_value, rollout_or_update)
            cls.get_value = rec.timed("inference", cls.get_value)
        return cls

    builtins.__build_class__ = wrapping_build_class


def child(args, script_args):
    import runpy

    sys.path.insert(0, str(ROOT))
    rec = Recorder(sync=not args.no_sync)
    instrument(rec)
    profiler = None
    if args._prof:
        import cProfile

        profiler = cProfile.Profile()
    start = time.perf_counter()
    status = "ok"
    if args._child == "bare":
        import numpy as np

        import ppo_gae

        cfg = ppo_gae.Args(env_id=args.env_id, num_envs=args.num_envs, num_steps=args.num_steps,
                           total_timesteps=args.total_timesteps)
        ppo_gae.check_args(cfg)
        iterations = args.total_timesteps // (args.num_envs * args.num_steps)
        envs = ppo_gae.make_envs(cfg)
        rng = np.random.default_rng(1)
        n_actions = envs.single_action_space.n
        if profiler:
            profiler.enable()
        envs.reset(seed=1)
        for _ in range(iterations * args.num_steps):
            envs.step(rng.integers(0, n_actions, size=args.num_envs))
        envs.close()
    else:
        script = ROOT / f"{args._child}.py"
        sys.argv = [str(script), *script_args]
        if profiler:
            profiler.enable()
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as exit_:
            if exit_.code not in (None, 0):
                status = f"exited: {exit_.code}"
    if profiler:
        profiler.disable()
        profiler.dump_stats(args._prof)
    wall = time.perf_counter() - start
    loop = (rec.t_close - rec.t_reset) if rec.t_close and rec.t_reset else None
    timed = sum(rec.seconds[name] for name in PHASES if name != "other")
    if loop:
        rec.seconds["other"] = max(0.0, loop - timed)
    adv = rec.advantage_starts
    steady = None
    if len(adv) >= 2:
        steady = (len(adv) - 1) * args.num_envs * args.num_steps / (adv[-1] - adv[0])
    result = dict(run=args._child, status=status, process_wall_s=wall, loop_s=loop, env_steps=rec.env_steps,
                  sps=rec.env_steps / loop if loop else None, sps_steady=steady,
                  seconds=rec.seconds, calls=rec.calls, iterations=len(adv))
    Path(args._result).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# Parent: run the three, tabulate
# ---------------------------------------------------------------------------------------------
def script_sps(log):
    found = re.findall(r"SPS\s+([\d,]+)", log)
    return int(found[-1].replace(",", "")) if found else None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:
        i = argv.index("--")
        argv, script_args = argv[:i], argv[i + 1:]
    else:
        script_args = []
    args = parse_args(argv)
    if args._child:
        return child(args, script_args)

    common = ["--env-id", args.env_id, "--num-envs", str(args.num_envs), "--num-steps", str(args.num_steps),
              "--total-timesteps", str(args.total_timesteps), "--device", args.device]
    script_flags = {"bare": [], "ppo_gae": common, "p3o": common + ["--horizon", str(args.horizon)]}
    work = Path(tempfile.mkdtemp(prefix="bench_throughput_"))  # the scripts write runs/ into their cwd
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = {}
    try:
        for run in args.runs:
            result_path = work / f"{run}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", run, "--_result", str(result_path),
                   "--env-id", args.env_id, "--num-envs", str(args.num_envs), "--num-steps", str(args.num_steps),
                   "--total-timesteps", str(args.total_timesteps), "--device", args.device]
            if args.no_sync:
                cmd.append("--no-sync")
            if args.cprofile:
                cmd += ["--_prof", str(args.out.with_name(f"{args.out.stem}_{run}.prof"))]
            cmd += ["--", *script_flags[run]]
            shown = f"{run}.py " + " ".join(script_flags[run]) if run != "bare" else "bare env, random actions"
            print(f"--- {run}: {shown}", flush=True)
            start = time.perf_counter()
            env = dict(os.environ)
            if args.torch_threads:
                env["OMP_NUM_THREADS"] = str(args.torch_threads)
            try:
                proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired as error:
                log = (error.stdout or b"").decode() if isinstance(error.stdout, bytes) else (error.stdout or "")
                print(f"!!! {run} timed out after {args.timeout:.0f} s\n{log[-2000:]}", flush=True)
                results[run] = dict(run=run, status="timeout")
                continue
            log = proc.stdout + proc.stderr
            if proc.returncode != 0 or not result_path.exists():
                print(f"!!! {run} failed (exit {proc.returncode}):\n{log[-4000:]}", flush=True)
                results[run] = dict(run=run, status=f"failed (exit {proc.returncode})")
                continue
            result = json.loads(result_path.read_text())
            result["script_sps"] = script_sps(proc.stdout)
            results[run] = result
            s = result["seconds"]
            print(f"    {time.perf_counter() - start:.1f} s; SPS {result['sps'] or 0:,.0f}"
                  + (f" (script says {result['script_sps']:,})" if result["script_sps"] else "")
                  + "; " + ", ".join(f"{PHASE_TITLES[n]} {s[n]:.2f} s" for n in PHASES if s[n]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(args, results)
    print("\n" + text)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0 if all(r.get("status") == "ok" for r in results.values()) else 1


def report(args, results):
    import torch

    if args.device == "cuda":
        device_desc = torch.cuda.get_device_name()
    else:
        device_desc = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible)"
    ok = {name: r for name, r in results.items() if r.get("status") == "ok" and r.get("sps")}
    lines = [
        f"# Throughput on {args.device}: bare env vs ppo_gae.py vs p3o.py",
        "",
        f"- device: {device_desc}; torch {torch.__version__}, python {platform.python_version()}; "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- settings: --env-id {args.env_id} --num-envs {args.num_envs} --num-steps {args.num_steps} "
        f"--total-timesteps {args.total_timesteps} --device {args.device}; p3o.py --horizon {args.horizon}; "
        "other flags at the scripts' defaults"
        + (f"; OMP_NUM_THREADS={args.torch_threads}" if args.torch_threads else ""),
        "- SPS: env steps / seconds from the first envs.reset() to envs.close() (the scripts' own SPS window); "
        "steady SPS: from the first to the last advantage call (leaves out the first rollout's warm-up)",
        "- phases: env step = VectorEnv.step; rollout inference = Agent.get_action_and_value without grad + "
        "Agent.get_value; advantage = the kernels.gae call / the kernels.p3o_targets + p3o_advantage calls; update = from the "
        "kernel's return to the last optimizer.step() of the iteration; other = the rest of the loop "
        "(storage, host/device copies, logging)",
    ]
    if args.device == "cuda":
        lines.append("- CUDA: " + ("each timed call is bracketed by torch.cuda.synchronize(), so work is charged "
                                   "to the phase that launched it" if not args.no_sync else
                                   "--no-sync: CUDA work is asynchronous, so phases may be charged for kernels "
                                   "launched by earlier phases; the attribution is approximate"))
    lines += ["", "| run | status | env steps | loop s | SPS | steady SPS | script's SPS | process wall s |",
              "|---|---|---|---|---|---|---|---|"]
    for name in args.runs:
        r = results.get(name, {"status": "not run"})
        if r.get("status") != "ok":
            lines.append(f"| {name} | {r['status']} | | | | | | |")
            continue
        fmt = lambda x, spec=",.0f": "" if x is None else format(x, spec)  # noqa: E731
        lines.append(f"| {name} | ok | {r['env_steps']:,} | {fmt(r['loop_s'], '.1f')} | {fmt(r['sps'])} | "
                     f"{fmt(r['sps_steady'])} | {fmt(r.get('script_sps'))} | {r['process_wall_s']:.1f} |")
    ratios = [("p3o / ppo_gae", "p3o", "ppo_gae"), ("ppo_gae / bare", "ppo_gae", "bare"), ("p3o / bare", "p3o", "bare")]
    lines += ["", "| ratio of SPS | value | steady |", "|---|---|---|"]
    for label, a, b in ratios:
        if a in ok and b in ok:
            steady = ""
            if ok[a].get("sps_steady") and ok[b].get("sps_steady"):
                steady = f"{ok[a]['sps_steady'] / ok[b]['sps_steady']:.3f}"
            elif b == "bare" and ok[a].get("sps_steady"):
                steady = f"{ok[a]['sps_steady'] / ok[b]['sps']:.3f}"
            lines.append(f"| {label} | {ok[a]['sps'] / ok[b]['sps']:.3f} | {steady} |")
    lines += ["", "Where the time goes (seconds, share of the loop):", "",
              "| run | " + " | ".join(PHASE_TITLES[n] for n in PHASES) + " |",
              "|---|" + "---|" * len(PHASES)]
    for name in args.runs:
        r = ok.get(name)
        if not r:
            continue
        loop = r["loop_s"]
        cells = [f"{r['seconds'][n]:.2f} ({100 * r['seconds'][n] / loop:.1f}%)" for n in PHASES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Per call (ms): env step per vector step, inference per call, advantage per call, "
              "update per iteration:", "", "| run | env step | rollout inference | advantage | update |",
              "|---|---|---|---|---|"]
    for name in args.runs:
        r = ok.get(name)
        if not r:
            continue
        per = lambda n: (f"{1e3 * r['seconds'][n] / r['calls'][n]:.2f}" if r["calls"][n] else "")  # noqa: E731
        lines.append(f"| {name} | {per('env')} | {per('inference')} | {per('advantage')} | {per('update')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
