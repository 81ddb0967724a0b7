"""Time the advantage kernels of p3o_kernel.cu against the vectorized PyTorch a user would write.

    python scripts/bench_kernels.py                          # CUDA if PyTorch sees a GPU, else CPU
    python scripts/bench_kernels.py --device cpu --num-envs 8 64 --horizons 32 64 --repeats 3

For each size (N envs x T steps, and H for P3O) it times, in the same run and on the same inputs:
  - kernels.gae             vs  gae_vectorized: a backward loop over t with tensor ops over all envs
  - kernels.p3o_advantage   vs  p3o_vectorized: all (t, k, env) at once, from unfold windows over the
                                rewards padded with the bootstrap mu_next and masks from where each
                                row's episode first ends (termination or truncation)
  - kernels.p3o_targets     vs  p3o_targets_vectorized: the same masks and targets, no advantage
                                (p3o.py calls it first, to measure sigma on the live rewards)
  - kernels.p3o_advantage with lam = 0.95 (p3o.py --surprise-lambda)  vs  p3o_lambda_vectorized: the
                                lambda-surprise by a backward loop over t over all (k, env), then as above
  - the plain-loop references of tests/reference.py, on the smallest size only (they are slow).
Before timing a size, the vectorized outputs are checked against the kernel's (torch.allclose); a
mismatch is printed loudly and marked in the table (and the exit status is 1).

Times are medians over --repeats calls, each bracketed by torch.cuda.synchronize() on the GPU, in
microseconds, wall clock (so they include the kernel launch). On the GPU the table also gives the
achieved memory bandwidth: the bytes the kernel must move at least (each input read once, each
output written once, from the layout documented at the top of p3o_kernel.cu) over the median time,
and that as a fraction of the device's peak (--peak-gbps, else from the memory clock and bus width
the driver reports, else from a table of data-sheet figures by device name; the table says which).
The markdown table goes to --out (default results/bench_kernels_{device}.md) and a CSV next to it.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from p3o_kernel_loader import load_kernels  # noqa: E402

# Peak DRAM bandwidth in GB/s (1e9 bytes/s) by device name, from NVIDIA's data sheets (H100: "NVIDIA H100
# Tensor Core GPU" datasheet, SXM 3.35 TB/s, PCIe 2 TB/s, NVL 3.9 TB/s; H200: product page, 4.8 TB/s;
# A100: "NVIDIA A100 Tensor Core GPU" datasheet, 80GB SXM 2,039 GB/s, 80GB PCIe 1,935 GB/s, 40GB 1,555 GB/s).
# Used only where the driver does not report the memory clock and bus width (see peak_bandwidth).
PEAK_GBPS = [("H100 80GB HBM3", 3350.0), ("H100 PCIe", 2000.0), ("H100 NVL", 3900.0), ("H200", 4800.0),
             ("A100-SXM4-80GB", 2039.0), ("A100 80GB PCIe", 1935.0), ("A100-SXM4-40GB", 1555.0),
             ("A100-PCIE-40GB", 1555.0)]
GAMMA, LAM = 0.99, 0.95


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--num-envs", type=int, nargs="+", default=[8, 64, 256, 1024], help="N values")
    p.add_argument("--num-steps", type=int, default=128, help="T, the rollout length")
    p.add_argument("--horizons", type=int, nargs="+", default=[32, 64, 128, 256], help="H values for P3O")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 50 on GPU, 10 on CPU)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before each measurement")
    p.add_argument("--normalization", choices=["sum", "max"], default="sum")
    p.add_argument("--per-state-precision", action="store_true",
                   help="precision [T, H, N] (p3o.py --state-sigma) instead of one value per k ([H], the default)")
    p.add_argument("--reference-repeats", type=int, default=3,
                   help="timed calls of the plain-loop references (smallest size only); 0 skips them")
    p.add_argument("--peak-gbps", type=float, default=None,
                   help="the device's peak memory bandwidth in GB/s (default: from the driver's memory clock and bus "
                        "width, else a data-sheet table for H100/H200/A100)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for the CPU runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="markdown output (default results/bench_kernels_{device}.md)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda was asked for, but PyTorch sees no CUDA GPU")
    if args.repeats is None:
        args.repeats = 50 if args.device == "cuda" else 10
    if args.out is None:
        args.out = ROOT / "results" / f"bench_kernels_{args.device}.md"
    return args


# ---------------------------------------------------------------------------------------------
# The vectorized PyTorch versions: what a user would write without a custom kernel.
# ---------------------------------------------------------------------------------------------
def gae_vectorized(rewards, values, terminations, truncations, next_value, final_values, gamma, lam):
    """GAE [T, N]: the deltas of all steps at once, then the backward recursion over t."""
    T = rewards.shape[0]
    term = terminations != 0
    trunc = (truncations != 0) & ~term  # termination wins where both are set
    next_values = torch.cat([values[1:], next_value[None]])  # V(s_{t+1}) inside the episode
    bootstrap = torch.where(term, 0.0, torch.where(trunc, final_values, next_values))
    deltas = rewards + gamma * bootstrap - values
    carry = gamma * lam * (~(term | trunc)).float()  # the episode goes on after step t
    advantages = torch.empty_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in range(T - 1, -1, -1):
        last = deltas[t] + carry[t] * last
        advantages[t] = last
    return advantages


def p3o_rows_vectorized(rewards, terminations, truncations, mu_next):
    """Targets, known, live and usable masks [T, H, N] of every P3O row, all (t, k, env) at once."""
    T, N = rewards.shape
    H = mu_next.shape[0]
    device = rewards.device
    # y_j for j = 0 .. T+H-1: the rewards, then the bootstrap predictions past the rollout's end
    y = torch.cat([rewards, mu_next])  # [T + H, N]
    y = y.unfold(0, H, 1)[:T].permute(0, 2, 1)  # [T, H, N]: y[t, k] = y_{t+k}
    t_idx = torch.arange(T, device=device)
    j = t_idx[:, None, None] + torch.arange(H, device=device)[None, :, None]  # [T, H, 1]: j = t + k
    # Where does the episode of row t first end (first step >= t that terminates or truncates)?
    term = terminations != 0
    done = term | (truncations != 0)
    never = torch.full_like(t_idx, T + H)[:, None].expand(T, N)
    end_at = torch.where(done, t_idx[:, None].expand(T, N), never)
    first_end = end_at.flip(0).cummin(0).values.flip(0)  # [T, N]
    ended_by_term = term.gather(0, first_end.clamp(max=T - 1)) & (first_end < T)  # [T, N]
    ended = first_end[:, None, :] < j  # [T, H, N]: the step t+k is after the episode's end
    by_term = ended_by_term[:, None, :]
    targets = torch.where(ended, 0.0, y)
    known = torch.where(ended, by_term, j < T).float()
    live = (~ended & (j < T)).float()
    usable = ~ended | by_term  # after a truncation the row stops
    return targets, known, live, usable


def p3o_targets_vectorized(rewards, terminations, truncations, mu_next):
    """What kernels.p3o_targets returns: targets, known and live masks [T, H, N]."""
    return p3o_rows_vectorized(rewards, terminations, truncations, mu_next)[:3]


def p3o_vectorized(rewards, terminations, truncations, mu, mu_next, precision, normalize_max, surprise=None):
    """P3O advantages [T, N], targets and known mask [T, H, N], over all (t, k, env) at once; surprise
    [T, H, N], if given, in place of y - mu (the lambda-surprise)."""
    targets, known, _, usable = p3o_rows_vectorized(rewards, terminations, truncations, mu_next)
    lam = precision if precision.dim() == 3 else precision[None, :, None]
    lam = lam * usable
    weighted_error = (lam * (targets - mu if surprise is None else surprise)).sum(1)
    norm = lam.amax(1).clamp(min=0) if normalize_max else lam.sum(1)
    safe = torch.where(norm > 0, norm, 1.0)
    advantages = torch.where(norm > 0, weighted_error / safe, 0.0)
    return advantages, targets, known


def p3o_lambda_vectorized(rewards, terminations, truncations, mu, mu_next, precision, normalize_max, lam):
    """P3O advantages with the lambda-surprise e_t[k] = d_t[k] + lam e_{t+1}[k-1] (p3o_kernel.cu),
    e by a backward loop over t, the known zeros after a termination kept whole (0 - mu), then the
    weighted sum of p3o_vectorized with e in place of y - mu."""
    T = rewards.shape[0]
    term = (terminations != 0).float()
    goes_on = (1 - term) * (truncations == 0).float()  # the episode goes on after step t
    e = torch.empty_like(mu)
    later = torch.zeros_like(mu_next)  # e_{t+1}, [H, N]
    later_zero = torch.zeros_like(mu_next, dtype=torch.bool)  # e_{t+1}[k] predicts a known zero
    for t in range(T - 1, -1, -1):
        mu_after = mu[t + 1] if t < T - 1 else mu_next
        carry = goes_on[t] * later[:-1] if t < T - 1 else 0.0
        known_zero = (term[t] > 0) | ((goes_on[t] > 0) & later_zero[:-1])  # [H - 1, N]: for k = 1 .. H-1
        e[t, 0] = rewards[t] - mu[t, 0]
        e[t, 1:] = torch.where(known_zero, -mu[t, 1:], (1 - term[t]) * mu_after[:-1] - mu[t, 1:] + lam * carry)
        later = e[t]
        later_zero = torch.cat([torch.zeros_like(known_zero[:1]), known_zero])
    return p3o_vectorized(rewards, terminations, truncations, mu, mu_next, precision, normalize_max, surprise=e)


# ---------------------------------------------------------------------------------------------
# Inputs shaped like a Breakout rollout: sign-clipped sparse rewards, rare episode ends.
# ---------------------------------------------------------------------------------------------
def make_inputs(T, N, H, device, per_state, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(T, N, generator=g)
    rewards = torch.where(u < 0.05, 1.0, torch.where(u > 0.99, -1.0, 0.0))
    terminations = (torch.rand(T, N, generator=g) < 0.02).float()  # a lost life every ~50 steps
    truncations = (torch.rand(T, N, generator=g) < 0.005).float()  # some both flagged: termination wins
    values = torch.randn(T, N, generator=g)
    next_value = torch.randn(N, generator=g)
    final_values = torch.randn(T, N, generator=g) * truncations
    mu = 0.1 * torch.randn(T, H, N, generator=g)
    mu_next = 0.1 * torch.randn(H, N, generator=g)
    shape = (T, H, N) if per_state else (H,)
    precision = (torch.rand(shape, generator=g) * 2 - 0.5).clamp(min=0)  # about a quarter are zero
    cast = lambda x: x.to(device).contiguous()  # noqa: E731
    gae_in = tuple(map(cast, (rewards, values, terminations, truncations, next_value, final_values)))
    p3o_in = tuple(map(cast, (rewards, terminations, truncations, mu, mu_next, precision)))
    return gae_in, p3o_in


def gae_bytes(T, N):
    # read rewards, values, terminations, truncations, final_values [T, N] and next_value [N];
    # write advantages [T, N]
    return 4 * (6 * T * N + N)


def p3o_targets_bytes(T, N, H):
    return 4 * (3 * T * N + H * N + 3 * T * H * N)  # read rewards, flags, mu_next; write 3 masks


def p3o_bytes(T, N, H, per_state):
    reads = 3 * T * N + T * H * N + H * N + (T * H * N if per_state else H)  # rewards, flags, mu, mu_next, precision
    writes = T * N + 2 * T * H * N  # advantages, targets, known
    return 4 * (reads + writes)


def median_us(fn, repeats, warmup, cuda):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def check_close(name, got, want, atol=1e-5, rtol=1e-4, labels=("advantages", "targets", "known")):
    """None if all close, else a one-line description of the worst difference."""
    problems = []
    as_tuple = lambda x: x if isinstance(x, (tuple, list)) else (x,)  # noqa: E731
    for label, a, b in zip(labels, as_tuple(got), as_tuple(want)):
        a, b = a.double().cpu(), b.double().cpu()
        if a.shape != b.shape:
            problems.append(f"{label}: shape {tuple(a.shape)} vs {tuple(b.shape)}")
        elif not torch.allclose(a, b, rtol=rtol, atol=atol):
            diff = (a - b).abs()
            where = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
            problems.append(f"{label}: max |diff| {diff.max().item():.3g} at {where} "
                            f"({(~torch.isclose(a, b, rtol=rtol, atol=atol)).sum().item()} elements off)")
    if problems:
        message = f"MISMATCH {name}: " + "; ".join(problems)
        print("!" * 100 + f"\n!!! {message}\n" + "!" * 100, flush=True)
        return message
    return None


def peak_bandwidth(args):
    """(device name, peak GB/s, where the peak comes from): --peak-gbps, else the driver's memory clock
    and bus width (double data rate: 2 transfers per clock), else the data-sheet table by name."""
    if args.device != "cuda":
        return None, None, None
    name = torch.cuda.get_device_name()
    if args.peak_gbps is not None:
        return name, args.peak_gbps, "--peak-gbps"
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock_khz > 0 and bus_bits > 0:
        gbps = 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9
        return name, gbps, f"driver: memory clock {clock_khz / 1e3:.0f} MHz x {bus_bits}-bit bus x 2 (DDR)"
    for key, gbps in PEAK_GBPS:
        if key in name:
            return name, gbps, f"data sheet for '{key}'"
    print(f"WARNING: unknown peak bandwidth for '{name}': pass --peak-gbps <GB/s> to get the "
          "fraction-of-peak column (it is left empty).", flush=True)
    return name, None, None


def fmt(x, spec):
    return "" if x is None else format(x, spec)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    gpu_name, peak, peak_source = peak_bandwidth(args)
    kernels = load_kernels(device)
    try:
        sys.path.insert(0, str(ROOT / "tests"))
        from reference import gae_reference, p3o_reference, p3o_targets_reference
    except ImportError as error:
        print(f"note: tests/reference.py not usable ({error}); the reference column stays empty")
        gae_reference = p3o_reference = p3o_targets_reference = None
    normalize_max = args.normalization == "max"
    T = args.num_steps
    smallest_n, smallest_h = min(args.num_envs), min(args.horizons)
    rows, mismatches = [], []

    def record(kind, N, H, kernel_us, vec_us, ref_us, nbytes, check):
        gbps = nbytes / (kernel_us * 1e-6) / 1e9 if cuda else None
        row = dict(kernel=kind, N=N, T=T, H=H if H else "", kernel_us=kernel_us, vectorized_us=vec_us,
                   ratio_vec_over_kernel=vec_us / kernel_us, reference_us=ref_us,
                   ratio_ref_over_kernel=ref_us / kernel_us if ref_us else None, min_bytes=nbytes,
                   achieved_gbps=gbps, fraction_of_peak=gbps / peak if gbps and peak else None,
                   check=check or "ok")
        rows.append(row)
        print(f"{kind:11s} N={N:5d} T={T} H={H or '-':>4} | kernel {kernel_us:10.1f} us | vectorized "
              f"{vec_us:10.1f} us | x{vec_us / kernel_us:7.2f}"
              + (f" | reference {ref_us:12.1f} us" if ref_us else "")
              + (f" | {gbps:8.1f} GB/s" if gbps else "")
              + (f" ({100 * gbps / peak:.1f}% of peak)" if gbps and peak else "")
              + ("" if not check else "  <-- " + check), flush=True)

    def measure(kind, N, H, kernel_fn, vec_fn, ref_fn, nbytes, labels=("advantages", "targets", "known")):
        """Check the vectorized (and, given ref_fn, the reference) outputs against the kernel's, then time."""
        name = f"{kind} N={N}" + (f" H={H}" if H else "")
        check = check_close(name, vec_fn(), kernel_fn(), labels=labels)
        ref_us = None
        if ref_fn is not None and args.reference_repeats > 0:
            check = check or check_close(f"{name} (kernel vs reference)", kernel_fn(), ref_fn(), labels=labels)
            ref_us = median_us(ref_fn, args.reference_repeats, 0, cuda)
        kernel_us = median_us(kernel_fn, args.repeats, args.warmup, cuda)
        vec_us = median_us(vec_fn, args.repeats, args.warmup, cuda)
        record(kind, N, H, kernel_us, vec_us, ref_us, nbytes, check)
        mismatches.extend([check] if check else [])

    for N in args.num_envs:
        gae_in, _ = make_inputs(T, N, 1, device, False, args.seed)
        with_ref = N == smallest_n and gae_reference is not None
        measure("gae", N, None, lambda: kernels.gae(*gae_in, GAMMA, LAM), lambda: gae_vectorized(*gae_in, GAMMA, LAM),
                (lambda: gae_reference(*gae_in, GAMMA, LAM)) if with_ref else None, gae_bytes(T, N))
        for H in args.horizons:
            _, p3o_in = make_inputs(T, N, H, device, args.per_state_precision, args.seed)
            smallest = N == smallest_n and H == smallest_h
            measure("p3o", N, H, lambda: kernels.p3o_advantage(*p3o_in, normalize_max),
                    lambda: p3o_vectorized(*p3o_in, normalize_max),
                    (lambda: p3o_reference(*p3o_in, args.normalization)) if smallest and p3o_reference else None,
                    p3o_bytes(T, N, H, args.per_state_precision))
            # P3O targets: p3o.py's first pass (live rewards for sigma), same row walk
            targets_in = (p3o_in[0], p3o_in[1], p3o_in[2], p3o_in[4])  # rewards, flags, mu_next
            measure("p3o_targets", N, H, lambda: kernels.p3o_targets(*targets_in),
                    lambda: p3o_targets_vectorized(*targets_in),
                    (lambda: p3o_targets_reference(*targets_in)) if smallest and p3o_targets_reference else None,
                    p3o_targets_bytes(T, N, H), labels=("targets", "known", "live"))
            measure("p3o_lambda", N, H, lambda: kernels.p3o_advantage(*p3o_in, normalize_max, lam=LAM),
                    lambda: p3o_lambda_vectorized(*p3o_in, normalize_max, LAM),
                    (lambda: p3o_reference(*p3o_in, args.normalization, lam=LAM)) if smallest and p3o_reference else None,
                    p3o_bytes(T, N, H, args.per_state_precision))
            p3o_in = targets_in = None  # free this size's inputs before the next
            if cuda:
                torch.cuda.empty_cache()

    # Markdown and CSV
    device_desc = gpu_name if cuda else f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} torch threads"
    lines = [
        f"# Advantage kernels vs vectorized PyTorch on {args.device}",
        "",
        f"- device: {device_desc}" + (f"; peak memory bandwidth {peak:,.0f} GB/s ({peak_source})" if peak else ""),
        f"- torch {torch.__version__}, python {platform.python_version()}, {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- T = {T}; median of {args.repeats} calls after {args.warmup} warm-up calls, wall clock per call"
        + (" with torch.cuda.synchronize() before and after" if cuda else ""),
        f"- P3O: normalization `{args.normalization}`, precision {'[T, H, N] (per state)' if args.per_state_precision else '[H]'}",
        "- vectorized: PyTorch ops a user would write (GAE: backward loop over t over all envs; "
        "P3O: all (t, k, env) at once with unfold and end-of-episode masks; P3O lambda: a backward loop over t for "
        "the surprise, then as P3O); ratio = vectorized / kernel",
        "- reference: the plain-loop float64 references of tests/reference.py, smallest size only "
        f"({args.reference_repeats} calls)",
    ]
    if cuda:
        lines.append("- min bytes: each input read once and each output written once (float32); "
                     "GB/s = min bytes / kernel time")
    if mismatches:
        lines.append(f"- **{len(mismatches)} MISMATCH(ES)** between vectorized/reference and kernel: see the check column")
    lines.append("")
    header = ["kernel", "N", "T", "H", "kernel us", "vectorized us", "vectorized/kernel", "reference us"]
    if cuda:
        header += ["min MB", "GB/s", "% of peak"]
    header.append("check")
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        cells = [r["kernel"], str(r["N"]), str(r["T"]), str(r["H"]), f"{r['kernel_us']:.1f}",
                 f"{r['vectorized_us']:.1f}", f"{r['ratio_vec_over_kernel']:.2f}", fmt(r["reference_us"], ".0f")]
        if cuda:
            cells += [f"{r['min_bytes'] / 1e6:.2f}", fmt(r["achieved_gbps"], ".1f"),
                      fmt(r["fraction_of_peak"] and 100 * r["fraction_of_peak"], ".2f")]
        cells.append(r["check"] if r["check"] == "ok" else "**" + r["check"] + "**")
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    csv_path = args.out.with_suffix(".csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["device", *rows[0].keys()])
        writer.writeheader()
        for r in rows:
            writer.writerow({"device": device_desc, **{k: ("" if v is None else v) for k, v in r.items()}})
    print(f"wrote {args.out} and {csv_path}")
    if mismatches:
        print(f"!!! {len(mismatches)} mismatch(es): the vectorized or reference outputs differ from the kernel's")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
