"""Speed and memory of the expert-balancing dynamics (issue 5 target: 256 experts x 58 layers x 1,000 steps of
the bias policy in <= 5 s), and of the per-micro-batch loads the engine asks for (58 layers x 120 micro-batches
x EP64). DeepSeek-V3 pre-training, Zipf 1.0 start. Prints figures; asserts nothing.

Peak memory is tracemalloc's peak of Python allocations (numpy included) during the timed call.
Run: python benchmarks/bench_experts.py
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from sim.experts import microbatch_loads, moe_layers, simulate_balancing
from sim.loading import load_scenario


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, wall, peak / 2**20


def main() -> None:
    steps = 1000
    scenario = load_scenario(None, overrides=["experts.skew=zipf", "experts.policy=bias"])
    layers = moe_layers(scenario)
    simulate_balancing(scenario, 5)  # warm imports
    for record in (False, True):
        h, wall, peak = timed(lambda r=record: simulate_balancing(scenario, steps, record_bias=r))
        print(f"bias dynamics  {scenario.model.n_routed_experts} experts x {len(layers)} layers x {steps} steps"
              f"  record_bias={record!s:5s}  wall {wall:6.2f} s  {steps / wall:7.0f} steps/s"
              f"  peak {peak:7.1f} MiB  (max/mean per GPU {h.imbalance_by_step[0]:.2f} -> "
              f"{h.imbalance_by_step[-1]:.3f})")
    for policy in ("none", "aux", "eplb"):
        s = load_scenario(None, overrides=["experts.skew=zipf", f"experts.policy={policy}",
                                           "experts.num_redundant_experts=64"])
        _, wall, peak = timed(lambda s=s: simulate_balancing(s, steps, record_bias=False))
        print(f"{policy:5s} dynamics  {steps} steps  wall {wall:6.2f} s  {steps / wall:7.0f} steps/s"
              f"  peak {peak:7.1f} MiB")
    mb = scenario.num_microbatches
    loads, wall, peak = timed(lambda: microbatch_loads(scenario, layers, mb))
    print(f"microbatch_loads  {len(layers)} layers x {mb} micro-batches x EP{scenario.parallel.ep}"
          f" (after {scenario.experts.balancing_steps} balancing steps)  wall {wall:6.2f} s  peak {peak:7.1f} MiB"
          f"  imbalance {loads.imbalance_overall:.3f}")


if __name__ == "__main__":
    main()
