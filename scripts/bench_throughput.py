"""Steps per second of the bare vector env, ppo_gae.py and p3o.py, and where each one's time goes.

    python scripts/bench_throughput.py                                  # Breakout, 8 envs, 20480 steps
    python scripts/bench_throughput.py --device cpu --num-envs 2 --num-steps 32 --total-timesteps 1024
    python scripts/bench_throughput.py --env-id MinAtar/Breakout-v1     # any env id the scripts take

Runs, one after another, each in its own subprocess, under identical settings:
  bare          the scripts' vector env (ppo_gae.make_envs), stepped with random actions: the ceiling
  ppo_gae, p3o  each twice, unmodified: plainly (`python p3o.py ...`), for its SPS (the script's own
                figure), then under a line timer, for where the time goes.
The line timer listens to the line events of the script's top-level code only (sys.monitoring on
Python 3.12+, sys.settrace on 3.11): the time from one line of the training loop to the next is
charged to that line, callees included.
Each line is put in a phase by reading the script's syntax tree (ast), by what the statement calls:
  env step          a statement calling envs.step(...)
  rollout inference a statement calling agent.get_action_and_value / agent.get_value outside the
                    update loop (the rollout's forward pass, truncation bootstraps, the last value)
  advantage kernel  a statement calling kernels.<anything> (the calls into p3o_kernel.cu)
  update            every statement inside the `for ... in range(args.update_epochs)` loop
  other             the rest of the loop: storage, host<->device copies, logging
from the line that calls envs.reset(...) to the one that calls envs.close() (the scripts' SPS window).
On 3.11 tracing slows every Python call, so the timed run is slower than the plain one, and
Python-heavy phases (env step) the most: both SPS are shown.
On CUDA the timer calls torch.cuda.synchronize() at every line of the loop, so asynchronous kernels
are charged to the line that launched them (--no-sync turns that off: then only approximate).
Markdown goes to --out (default results/bench_throughput_{device}.md).
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = {"env": "env step", "inference": "rollout inference", "advantage": "advantage kernel",
          "update": "update", "other": "other"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env-id", default="Breakout", help="the scripts' --env-id (an Atari game, or any id they accept)")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--num-steps", type=int, default=128)
    p.add_argument("--total-timesteps", type=int, default=20480)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--horizon", type=int, default=32, help="p3o.py --horizon")
    p.add_argument("--runs", nargs="+", choices=["bare", "ppo_gae", "p3o"], default=["bare", "ppo_gae", "p3o"])
    p.add_argument("--torch-threads", type=int, default=None,
                   help="set OMP_NUM_THREADS for all runs (default: unset, the scripts' own default)")
    p.add_argument("--no-sync", action="store_true", help="no torch.cuda.synchronize() at each timed line")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed per run")
    p.add_argument("--out", type=Path, default=None, help="default results/bench_throughput_{device}.md")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("num_envs", "num_steps", "total_timesteps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.total_timesteps < args.num_envs * args.num_steps:
        p.error(f"--total-timesteps ({args.total_timesteps}) is less than one rollout ({args.num_envs * args.num_steps})")
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.out is None:
        args.out = ROOT / "results" / f"bench_throughput_{args.device}.md"
    return args


# ---------------------------------------------------------------------------------------------
# The phase of each line of a training script, from its syntax tree
# ---------------------------------------------------------------------------------------------
def calls(node):
    """(owner, method) of each `owner.method(...)` call inside node (owner '' where it is no plain name)."""
    found = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute):
            owner = sub.func.value.id if isinstance(sub.func.value, ast.Name) else ""
            found.add((owner, sub.func.attr))
    return found


def line_phases(source):
    """{line number: phase} for the statements of the script's main block (the `if __name__` body)."""
    phases = {}

    def visit(statements, in_update):
        for stmt in statements:
            is_update_loop = (isinstance(stmt, ast.For) and "update_epochs" in ast.unparse(stmt.iter))
            update = in_update or is_update_loop
            body_fields = [f for f in ("body", "orelse", "finalbody", "handlers") if getattr(stmt, f, None)]
            if body_fields:  # compound statement: its header lines, then its body
                first_body = min(getattr(stmt, f)[0].lineno for f in body_fields)
                head_calls = set()
                for field in ("test", "iter", "items"):  # if/while, for, with
                    value = getattr(stmt, field, None)
                    for part in value if isinstance(value, list) else [value]:
                        head_calls |= calls(part) if part is not None else set()
                for line in range(stmt.lineno, first_body):
                    phases[line] = classify(head_calls, update)
                for field in body_fields:
                    visit(getattr(stmt, field), update)
            else:
                for line in range(stmt.lineno, stmt.end_lineno + 1):
                    phases[line] = classify(calls(stmt), update)

    tree = ast.parse(source)
    main = [s for s in tree.body if isinstance(s, ast.If) and "__main__" in ast.unparse(s.test)]
    if not main:
        raise SystemExit("error: the script has no `if __name__ == \"__main__\":` block to time")
    visit(main[0].body, False)
    return phases


def classify(called, in_update):
    if in_update:
        return "update"
    if ("envs", "step") in called:
        return "env"
    if ("agent", "get_action_and_value") in called or ("agent", "get_value") in called:
        return "inference"
    if any(owner == "kernels" for owner, _ in called):
        return "advantage"
    if ("envs", "reset") in called:
        return "start"
    if ("envs", "close") in called:
        return "stop"
    return "other"


class LineTimer:
    """Runs a script's code and charges the time from each line event of its top level to the next to
    the earlier line. Python 3.12+: sys.monitoring's LINE events of that one code object, nothing else
    slowed; Python 3.11: sys.settrace, whose callback runs at every Python call (slower), and is
    turned off in processes forked from this one (the vector env's workers)."""

    def __init__(self, code, phases, sync):
        import torch

        self.code, self.phases = code, phases
        self.sync = sync and torch.cuda.is_available()
        self.torch = torch
        self.seconds = {name: 0.0 for name in PHASES}
        self.hits = {name: 0 for name in PHASES}
        self.running = False  # between the first envs.reset line and the envs.close line
        self.started = self.stopped = None
        self.last_phase, self.last_time = None, 0.0

    def run(self, namespace):
        if hasattr(sys, "monitoring"):
            mon, tool = sys.monitoring, sys.monitoring.PROFILER_ID
            mon.use_tool_id(tool, "bench_throughput")
            mon.register_callback(tool, mon.events.LINE, lambda code, line: self.line(line))
            mon.set_local_events(tool, self.code, mon.events.LINE)
            try:
                exec(self.code, namespace)
            finally:
                mon.set_local_events(tool, self.code, 0)
                mon.free_tool_id(tool)
            return

        def local_trace(frame, event, arg):
            if event == "line":
                self.line(frame.f_lineno)
            return local_trace

        os.register_at_fork(after_in_child=lambda: sys.settrace(None))
        sys.settrace(lambda frame, event, arg: local_trace if frame.f_code is self.code else None)
        try:
            exec(self.code, namespace)
        finally:
            sys.settrace(None)

    def line(self, lineno):
        if self.sync and self.running:
            self.torch.cuda.synchronize()
        now = time.perf_counter()
        if self.running:  # the first envs.reset(...) is env time too
            self.seconds["env" if self.last_phase == "start" else self.last_phase] += now - self.last_time
        phase = self.phases.get(lineno, "other")
        if phase == "start" and self.started is None:
            self.running, self.started = True, now
        elif phase == "stop" and self.running:
            self.running, self.stopped = False, now
        if self.running and phase in self.hits and phase != self.last_phase:
            self.hits[phase] += 1  # entries into the phase: a multi-line statement counts once
        self.last_phase, self.last_time = phase, now


# ---------------------------------------------------------------------------------------------
# Child: one run
# ---------------------------------------------------------------------------------------------
def child_bare(args):
    import numpy as np

    import ppo_gae

    cfg = ppo_gae.Args(env_id=args.env_id, num_envs=args.num_envs, num_steps=args.num_steps,
                       total_timesteps=args.total_timesteps)
    ppo_gae.check_args(cfg)
    envs = ppo_gae.make_envs(cfg)
    rng = np.random.default_rng(1)
    steps = args.total_timesteps // (args.num_envs * args.num_steps) * args.num_steps
    actions = rng.integers(0, envs.single_action_space.n, size=(steps, args.num_envs))
    start = time.perf_counter()  # the window of the training runs: from the reset to the close call
    envs.reset(seed=1)
    env_seconds = time.perf_counter() - start
    for a in actions:
        t = time.perf_counter()
        envs.step(a)
        env_seconds += time.perf_counter() - t
    loop = time.perf_counter() - start
    envs.close()
    seconds = {name: 0.0 for name in PHASES}
    seconds.update(env=env_seconds, other=loop - env_seconds)
    return dict(env_steps=steps * args.num_envs, loop_s=loop, seconds=seconds,
                hits={**{name: 0 for name in PHASES}, "env": steps})


def child_traced(args, script_args):
    script = ROOT / f"{args._child}.py"
    source = script.read_text()
    timer = LineTimer(compile(source, str(script), "exec"), line_phases(source), sync=not args.no_sync)
    main = types.ModuleType("__main__")  # as `python script.py` runs it (tyro reads __main__.__file__)
    main.__file__ = str(script)
    sys.modules["__main__"], sys.argv = main, [str(script), *script_args]
    try:
        timer.run(main.__dict__)
    except SystemExit as exit_:
        if exit_.code not in (None, 0):
            raise
    if timer.stopped is None:
        raise SystemExit(f"error: the line timer never saw {script.name} call envs.reset(...) and envs.close()")
    return dict(env_steps=timer.hits["env"] * args.num_envs, loop_s=timer.stopped - timer.started,
                seconds=timer.seconds, hits=timer.hits)


def child(args, script_args):
    sys.path.insert(0, str(ROOT))
    result = child_bare(args) if args._child == "bare" else child_traced(args, script_args)
    Path(args._result).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# Parent: run them all, tabulate
# ---------------------------------------------------------------------------------------------
def script_sps(log):
    found = re.findall(r"SPS\s+([\d,]+)", log)
    return int(found[-1].replace(",", "")) if found else None


def run(cmd, cwd, env, timeout):
    """(returncode or 'timeout', combined output)"""
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        out = error.stdout.decode(errors="replace") if isinstance(error.stdout, bytes) else (error.stdout or "")
        return "timeout", out
    return proc.returncode, proc.stdout + proc.stderr


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    script_args = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args._child:
        return child(args, script_args)

    common = ["--env-id", args.env_id, "--num-envs", str(args.num_envs), "--num-steps", str(args.num_steps),
              "--total-timesteps", str(args.total_timesteps), "--device", args.device]
    script_flags = {"ppo_gae": common, "p3o": common + ["--horizon", str(args.horizon)]}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.torch_threads:
        env["OMP_NUM_THREADS"] = str(args.torch_threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as work:  # the scripts write runs/ here
        for name in args.runs:
            result_path = Path(work) / f"{name}.json"
            child_cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", name, "--_result",
                         str(result_path), *common] + (["--no-sync"] if args.no_sync else [])
            start = time.perf_counter()
            r = results[name] = dict(status="ok")
            if name != "bare":
                print(f"--- {name}.py {' '.join(script_flags[name])} (plain)", flush=True)
                code, log = run([sys.executable, str(ROOT / f"{name}.py"), *script_flags[name]], work, env, args.timeout)
                r["plain_sps"] = script_sps(log)
                if code != 0 or r["plain_sps"] is None:
                    r["status"] = f"plain run failed ({code})"
                    print(f"!!! {r['status']}:\n{log[-3000:]}", flush=True)
                    continue
                child_cmd += ["--", *script_flags[name]]
            print(f"--- {name}" + (" (line timer)" if name != "bare" else ": bare env, random actions"), flush=True)
            code, log = run(child_cmd, work, env, args.timeout)
            if code != 0 or not result_path.exists():
                r["status"] = f"failed ({code})"
                print(f"!!! {name} {r['status']}:\n{log[-3000:]}", flush=True)
                continue
            r.update(json.loads(result_path.read_text()), process_wall_s=time.perf_counter() - start)
            r["timed_sps"] = r["env_steps"] / r["loop_s"]
            r.setdefault("plain_sps", r["timed_sps"])  # bare: its one run is not traced
            print(f"    SPS {r['plain_sps']:,.0f} plain, {r['timed_sps']:,.0f} timed; "
                  + ", ".join(f"{PHASES[n]} {r['seconds'][n]:.2f} s" for n in PHASES), flush=True)
    text = report(args, results)
    print("\n" + text)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


def report(args, results):
    import torch

    if args.device == "cuda":
        device_desc = torch.cuda.get_device_name()
    else:
        device_desc = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible)"
    ok = {name: r for name, r in results.items() if r["status"] == "ok"}
    lines = [
        f"# Throughput on {args.device}: bare env vs ppo_gae.py vs p3o.py",
        "",
        f"- device: {device_desc}; torch {torch.__version__}, python {platform.python_version()}; "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- command: `python scripts/bench_throughput.py --env-id {args.env_id} --num-envs {args.num_envs} "
        f"--num-steps {args.num_steps} --total-timesteps {args.total_timesteps} --device {args.device} "
        f"--horizon {args.horizon}" + (" --no-sync" if args.no_sync else "")
        + (f" --torch-threads {args.torch_threads}" if args.torch_threads else "") + "`",
        "- SPS: the scripts' own figure (env steps / seconds since the first reset) from a plain run; "
        "bare: env steps / seconds from reset to close, random actions",
        f"- where the time goes: a second run under a line timer ({'sys.monitoring' if hasattr(sys, 'monitoring') else 'sys.settrace'}"
        " line events of the script's top level), "
        "each line put in a phase by what it calls: env step = envs.step; rollout inference = "
        "agent.get_action_and_value / get_value outside the update; advantage kernel = kernels.*; "
        "update = the update_epochs loop; other = the rest of the loop. The timer slows Python (much more "
        "under sys.settrace): its SPS is the 'timed SPS' column",
    ]
    if args.device == "cuda":
        lines.append("- CUDA: " + ("torch.cuda.synchronize() at every timed line, so GPU work is charged to "
                                   "the line that launched it" if not args.no_sync else
                                   "--no-sync: GPU work may be charged to later lines; approximate"))
    lines += ["", "| run | status | env steps | SPS | timed SPS | timed loop s | process wall s |",
              "|---|---|---|---|---|---|---|"]
    for name in args.runs:
        r = results.get(name, {"status": "not run"})
        if r["status"] != "ok":
            lines.append(f"| {name} | {r['status']} | | | | | |")
            continue
        lines.append(f"| {name} | ok | {r['env_steps']:,} | {r['plain_sps']:,.0f} | {r['timed_sps']:,.0f} | "
                     f"{r['loop_s']:.1f} | {r['process_wall_s']:.1f} |")
    lines += ["", "| ratio of SPS | value |", "|---|---|"]
    for a, b in [("p3o", "ppo_gae"), ("ppo_gae", "bare"), ("p3o", "bare")]:
        if a in ok and b in ok:
            lines.append(f"| {a} / {b} | {ok[a]['plain_sps'] / ok[b]['plain_sps']:.3f} |")
    lines += ["", "Where the time goes (seconds of the timed run, share of its loop):", "",
              "| run | " + " | ".join(PHASES.values()) + " |", "|---|" + "---|" * len(PHASES)]
    for name, r in ok.items():
        cells = [f"{r['seconds'][n]:.2f} ({100 * r['seconds'][n] / r['loop_s']:.1f}%)" for n in PHASES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Per call (ms, timed run): env step per vector step, inference per call, advantage and "
              "update per iteration:", "", "| run | env step | rollout inference | advantage | update |",
              "|---|---|---|---|---|"]
    iterations = args.total_timesteps // (args.num_envs * args.num_steps)
    for name, r in ok.items():
        per = {n: (r["seconds"][n] / r["hits"][n] if r["hits"][n] else None) for n in ("env", "inference")}
        per.update({n: r["seconds"][n] / iterations if r["hits"][n] else None for n in ("advantage", "update")})
        lines.append(f"| {name} | " + " | ".join("" if v is None else f"{1e3 * v:.2f}" for v in per.values()) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
