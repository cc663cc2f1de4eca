"""Speed of `sim sweep` (issue targets: a 10,000-point DeepSeek-V3-sized sweep in <= 60 s on 2 cores with the
local executor and the analytic tier; the same sweep through a Dask LocalCluster within 25 % of it, with the
same DataFrame; GPT-3 175B on 64 A100 over a Calculon-sized space answered in < 60 s).

Cases (specs under ``workloads/sweeps/``):

- ``deepseek_v3_capacity.yml``: 12,960 points (3 Hopper GPUs x 3 cluster sizes x layouts);
- ``gpt3_175b_64_a100.yml``: 1,806,336 points (every TP x PP x DP x micro-batch x interleave x recompute).

For each: pruning timed in full (median of ``--repeats``); then the ranking tier on the survivors. With
``--full`` every survivor is evaluated (local, then Dask); by default a deterministic sample of ``--sample``
survivors is timed on both executors, the results compared, and the full sweep's time extrapolated from the
per-point cost (the fast tier costs seconds per GPT-3 point at 1,536 micro-batches, minutes for the whole
space on 2 cores). When the library has no analytic tier, the time it would take is also projected at its
target of 1 ms per point. The machine is shared: read the figures as medians with that caveat. Asserts nothing.

Run: ``python benchmarks/bench_sweep.py [--sample 48] [--repeats 3] [--full] [--workers 2]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from sim.loading import workloads_dir
from sim.sweep import load_spec
from sim.sweep.core import _Run, resolve_tier
from sim.sweep.executors import DaskExecutor, LocalExecutor, default_workers
from sim.sweep.prune import CANDIDATE, counts_by_rule, prune
from sim.sweep.space import build_space
from sim.sweep.store import Store

ANALYTIC_S = 1e-3  # the analytic tier's target per configuration


def _evaluate(space, v, executor, tier: str, kids: list[int]) -> tuple[float, dict]:
    run = _Run(space, v, executor, Store(None, "", False), None, None)
    t0 = time.perf_counter()
    run.evaluate(tier, "rank", kids, tier)
    wall = time.perf_counter() - t0
    return wall, {k: {f: x for f, x in r.items() if f != "eval_s"} for k, r in run.results[tier].items()}


def case(path: Path, args: argparse.Namespace) -> None:
    spec, spec_dir = load_spec(path)
    tier, _ = resolve_tier(args.tier)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        space = build_space(spec, spec_dir)
        v = prune(space)
        times.append(time.perf_counter() - t0)
    prune_s = statistics.median(times)
    kids = sorted({int(i) // v.num_prices for i in np.flatnonzero(v.status == CANDIDATE)})
    print(f"{spec.name}: {space.size:,} points; pruning {prune_s:.2f} s (median of {args.repeats}: "
          f"{', '.join(f'{t:.2f}' for t in times)}); pruned {counts_by_rule(v)}; {len(kids):,} survivors to simulate")
    sample = kids if args.full else kids[:: max(1, len(kids) // args.sample)][: args.sample]
    warm = [k for k in kids if k not in set(sample)][: 2 * args.workers]
    timed: dict[str, tuple[float, float, dict]] = {}
    for name in ("local", "dask"):
        t0 = time.perf_counter()
        ex = LocalExecutor(args.workers) if name == "local" else DaskExecutor(None, args.workers)
        try:
            _evaluate(space, v, ex, tier, warm)  # start the workers and warm their caches (timed apart)
            start = time.perf_counter() - t0
            wall, results = _evaluate(space, v, ex, tier, sample)
        finally:
            ex.close()
        timed[name] = (start, wall, results)
    (s_local, t_local, r_local), (s_dask, t_dask, r_dask) = timed["local"], timed["dask"]
    per = t_local / len(sample)
    what = "all survivors" if args.full else f"a sample of {len(sample)} survivors"
    print(f"  {tier} tier on {what}, {args.workers} workers, after starting and warming the workers on "
          f"{len(warm)} other points (local {s_local:.1f} s, Dask {s_dask:.1f} s): local {t_local:.1f} s "
          f"({per:.3f} s per point); Dask LocalCluster {t_dask:.1f} s ({t_dask / t_local - 1:+.0%}); "
          f"same results: {r_local == r_dask}")
    full = prune_s + per * len(kids)
    label = "measured" if args.full else "extrapolated"
    print(f"  whole sweep, {tier} tier, local: {full:.0f} s {label} (pruning {prune_s:.1f} s + {len(kids):,} "
          f"x {per:.3f} s)")
    if tier != "analytic":
        proj = prune_s + ANALYTIC_S * len(kids) / args.workers
        print(f"  projected with the analytic tier at {ANALYTIC_S * 1e3:.0f} ms per point: {proj:.1f} s "
              "(plus the detailed top-k)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sample", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--tier", default="auto")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--case", choices=["deepseek", "gpt3", "both"], default="both")
    args = ap.parse_args()
    sweeps = workloads_dir() / "sweeps"
    if args.case in ("deepseek", "both"):
        case(sweeps / "deepseek_v3_capacity.yml", args)
    if args.case in ("gpt3", "both"):
        case(sweeps / "gpt3_175b_64_a100.yml", args)


if __name__ == "__main__":
    main()
