"""Speed and memory of the schedule list scheduler at 64 ranks x 1,024 micro-batches (target: well under 1 s).

For every schedule: the time to generate it, to simulate it the first time (including the one-off compile
into integer keys, cached on the schedule) and again with other durations, to validate it, actions per
second of the first simulation, and the peak Python heap (tracemalloc) of generate + simulate, measured in
a separate pass so tracing does not slow the timed one. Prints figures; asserts nothing.
Run: python benchmarks/bench_schedules.py [RANKS MICROBATCHES]
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc

from sim.schedules.generators import build_schedule
from sim.schedules.listsched import Durations, simulate
from sim.schedules.validate import validate

CASES = (("gpipe", 1), ("1f1b", 1), ("interleaved-1f1b", 2), ("zb1p", 1), ("dualpipe", 1), ("dualpipev", 1))


def _timed(fn, *args):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def _peak_mib(name: str, pp: int, n: int, vpp: int) -> float:
    gc.collect()
    tracemalloc.start()
    simulate(build_schedule(name, pp, n, vpp), Durations(1, 2, 1, 3))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    pp, n = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) == 3 else (64, 1024)
    print(f"{pp} ranks x {n} micro-batches, zero-latency list scheduler (sim.schedules.listsched)")
    print(f"{'schedule':24s} {'actions':>8s} {'generate':>9s} {'simulate':>9s} {'again':>8s} {'validate':>9s} "
          f"{'actions/s':>11s} {'peak heap':>10s}")
    for name, vpp in CASES:
        gc.collect()
        sched, t_gen = _timed(build_schedule, name, pp, n, vpp)
        _, t_sim = _timed(simulate, sched, Durations(1, 2, 1, 3))
        _, t_again = _timed(simulate, sched, Durations(1, 2.5, 0.5, 3))
        _, t_val = _timed(validate, sched)
        peak = _peak_mib(name, pp, n, vpp)
        label = f"{name} (vpp {vpp})" if vpp > 1 else name
        print(f"{label:24s} {sched.num_actions:8d} {t_gen:8.3f}s {t_sim:8.3f}s {t_again:7.3f}s {t_val:8.3f}s "
              f"{sched.num_actions / t_sim:11.0f} {peak:8.1f} MiB")


if __name__ == "__main__":
    main()
