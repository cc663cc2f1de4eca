"""Speed and memory of one simulated step (issue targets: detailed <= 2 s, fast <= 0.2 s, <= 500 MB peak,
16,384 GPUs within 20 % of 2,048 at the same PP and micro-batches).

Each case runs in a fresh subprocess so its peak resident memory (ru_maxrss, imports included) is its own.
Prints figures; asserts nothing. Run: python benchmarks/bench_engine.py
"""

from __future__ import annotations

import json
import subprocess
import sys

CASE = r"""
import json, resource, sys, time
from sim.loading import load_scenario
from sim.step import simulate_step
mode, gpus = sys.argv[1], int(sys.argv[2])
overrides = [] if gpus == 2048 else [f"training.global_batch_size={15360 * gpus // 2048}"]
scenario = load_scenario(None, gpus=None if gpus == 2048 else gpus, overrides=overrides)
simulate_step(scenario, mode=mode)  # warm caches of imports and lazy modules
t0 = time.perf_counter()
r = simulate_step(scenario, mode=mode)
wall = time.perf_counter() - t0
print(json.dumps({"wall_s": wall, "events": r.num_events, "step_s": r.step_time_s,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    rows = []
    for mode, gpus in (("detailed", 2048), ("fast", 2048), ("detailed", 16384), ("fast", 16384)):
        out = subprocess.run([sys.executable, "-c", CASE, mode, str(gpus)], capture_output=True, text=True,
                             check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((mode, gpus, r))
        print(f"{mode:9s} {gpus:6d} GPUs  wall {r['wall_s']:7.3f} s  {r['events'] / r['wall_s']:10.0f} events/s  "
              f"peak RSS {r['rss_mb']:6.0f} MB  (simulated step {r['step_s']:.3f} s, {r['events']} trace events)")
    base = {m: r["wall_s"] for m, g, r in rows if g == 2048}
    for m, g, r in rows:
        if g != 2048:
            print(f"{m}: 16,384 GPUs take {r['wall_s'] / base[m]:.2f}x the wall time of 2,048")


if __name__ == "__main__":
    main()
