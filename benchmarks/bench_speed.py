"""Speed of the three tiers (analytic, fast, detailed) and of the ``sim`` command, in one run.

Prints, against the issue's targets (it asserts nothing; tests never time anything):

- per-configuration time of each tier on the default scenario (DeepSeek-V3, 2,048 H800, DualPipe, 120
  micro-batches) and on a dense job (GPT-3 175B, interleaved 1F1B, 96 micro-batches): the first call in a fresh
  process (imports done, caches cold) and the median repeat;
- configurations per second of the analytic tier over 1,000 distinct configurations (schedules x pipeline
  depths x batch sizes of the default job; each layout's first configuration builds its table), and over
  configurations that all need new durations (NIC bandwidths); fast mode over a sample of the same layouts;
- detailed mode at 120 and 480 micro-batches (median repeat) and the peak RSS of each run's process;
- the whole-process time of ``sim --help``, ``sim run --mode fast`` and ``sim run``.

Wall times on a shared machine are noisy: every figure is a median of repeats, and CPU seconds of the process
(less sensitive to other load) are printed beside them. Each case runs in its own subprocess.
Run: python benchmarks/bench_speed.py [--quick]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

QUICK = "--quick" in sys.argv
REPEATS = 3 if QUICK else 7

CASE = r"""
import json, resource, statistics, sys, time
from sim.loading import load_scenario
from sim.step import simulate_step
mode, ref, repeats = sys.argv[1], (None if sys.argv[2] == "-" else sys.argv[2]), int(sys.argv[3])
overrides = sys.argv[4:]
scenario = load_scenario(ref, overrides=overrides)
try:
    t0, c0 = time.perf_counter(), time.process_time()
    r = simulate_step(scenario, mode=mode)
    first, first_cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # one step: imports, caches, its trace
except ValueError as e:  # a mode this version does not have
    print(json.dumps({"error": str(e)}))
    sys.exit(0)
walls, cpus = [], []
for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    r = simulate_step(scenario, mode=mode)
    walls.append(time.perf_counter() - t0)
    cpus.append(time.process_time() - c0)
print(json.dumps({"first": first, "first_cpu": first_cpu, "wall": statistics.median(walls),
                  "cpu": statistics.median(cpus), "step_s": r.step_time_s, "n": scenario.num_microbatches,
                  "rss_mb": rss}))
"""

SWEEP = r"""
import json, sys, time
from sim.config import evolve
from sim.loading import load_scenario
from sim.step import simulate_step
base = load_scenario()
kind, mode, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
configs = []
t0 = time.perf_counter()
if kind == "layouts":  # schedules x pipeline depths x batch sizes: 1,000 distinct configurations
    layouts = [(s, pp, vpp) for pp in (8, 16) for s, vpp in (("gpipe", 1), ("1f1b", 1), ("zb1p", 1),
               ("dualpipe", 1), ("dualpipev", 1), ("interleaved-1f1b", 2))]
    per = 1000 // len(layouts) + 1
    for s, pp, vpp in layouts:
        dp = 2048 // pp
        n, made = 2 * pp, 0
        while made < per and len(configs) < 1000:
            if s != "interleaved-1f1b" or n % pp == 0:
                configs.append(evolve(base, {"parallel.schedule": s, "parallel.pp": pp, "parallel.vpp": vpp,
                                             "training.global_batch_size": n * dp}))
                made += 1
            n += 2
else:  # every configuration needs new action durations
    for i in range(limit):
        configs.append(evolve(base, {"cluster.node.nic_achievable_gb_per_s": 30.0 + 0.05 * i}))
built = time.perf_counter() - t0
configs = configs[::max(1, len(configs) // limit)][:limit]
assert len({c.model_dump_json() for c in configs}) == len(configs)
t0, c0 = time.perf_counter(), time.process_time()
try:
    for c in configs:
        simulate_step(c, mode=mode, record_trace=False)
except ValueError as e:  # a mode this version does not have
    print(json.dumps({"error": str(e)}))
    sys.exit(0)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
t0 = time.perf_counter()
for c in configs:
    simulate_step(c, mode=mode, record_trace=False)
again = time.perf_counter() - t0
print(json.dumps({"configs": len(configs), "build_s": built, "wall": wall, "cpu": cpu, "again": again}))
"""


def _run(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _sim_cmd() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "sim")
    if os.path.exists(script) and "PYTHONPATH" not in os.environ:
        return [script]
    return [sys.executable, "-m", "sim.cli"] if shutil.which(sys.executable) else ["sim"]


def _process(args: list[str], repeats: int) -> tuple[float, float]:
    """Median wall and CPU (user + system, children) seconds of the whole process."""
    walls, cpus = [], []
    for _ in range(repeats):
        before = os.times()
        t0 = time.perf_counter()
        subprocess.run(_sim_cmd() + args, capture_output=True, check=True)
        walls.append(time.perf_counter() - t0)
        after = os.times()
        cpus.append(after.children_user + after.children_system - before.children_user - before.children_system)
    return statistics.median(walls), statistics.median(cpus)


def _tiers() -> None:
    print("per configuration, in-process (first call in a fresh process after imports; repeat: median)")
    targets = {"analytic": "<= 1 ms", "fast": "<= 20 ms", "detailed": "<= 300 ms"}
    for label, ref, overrides in (("default DeepSeek-V3", "-", []), ("dense GPT-3 175B", "gpt3_175b_a100", [])):
        for mode in ("analytic", "fast", "detailed"):
            r = _run(CASE, mode, ref, str(REPEATS), *overrides)
            if "error" in r:
                print(f"  {label:20s} {mode:9s} not available ({r['error']})")
                continue
            print(f"  {label:20s} {mode:9s} first {r['first'] * 1e3:8.1f} ms (cpu {r['first_cpu'] * 1e3:7.1f})"
                  f"   repeat {r['wall'] * 1e3:8.2f} ms (cpu {r['cpu'] * 1e3:8.2f})   target "
                  f"{targets[mode] if ref == '-' else '-':9s} step {r['step_s']:.4f} s, {r['n']} micro-batches")


def _sweeps() -> None:
    print("configurations per second, in-process (configs/s over the whole pass; again: the same pass repeated)")
    r = _run(SWEEP, "layouts", "analytic", "1000")
    if "error" not in r:
        print(f"  analytic over {r['configs']} distinct configurations (12 layouts x batch sizes; scenarios built "
              f"in {r['build_s']:.2f} s, not counted): {r['configs'] / r['wall']:7.0f}/s (cpu "
              f"{r['configs'] / r['cpu']:.0f}/s; the 12 layouts' tables included); again "
              f"{r['configs'] / r['again']:7.0f}/s   target >= 1,000/s")
        r = _run(SWEEP, "nic", "analytic", "20" if QUICK else "50")
        print(f"  analytic over {r['configs']} configurations that all need new durations (NIC bandwidths): "
              f"{r['configs'] / r['wall']:7.1f}/s (cpu {r['configs'] / r['cpu']:.1f}/s); again "
              f"{r['configs'] / r['again']:7.0f}/s")
    r = _run(SWEEP, "layouts", "fast", "24" if QUICK else "60")
    print(f"  fast over {r['configs']} of those layout configurations: {r['configs'] / r['wall']:7.1f}/s "
          f"(cpu {r['configs'] / r['cpu']:.1f}/s); again {r['configs'] / r['again']:7.1f}/s")


def _scale() -> None:
    print("detailed mode and peak RSS by micro-batches (repeat: median; RSS: the process through its first step)")
    for n, target in ((120, "<= 0.3 s"), (480, "<= 1.2 s")):
        r = _run(CASE, "detailed", "-", str(max(1, REPEATS // 2)), f"training.global_batch_size={128 * n}")
        print(f"  {n:4d} micro-batches: detailed {r['wall']:6.3f} s (cpu {r['cpu']:6.3f}) target {target};"
              f"  peak RSS {r['rss_mb']:5.0f} MB (target <= 200 MB)")
    for gpus in (2048, 16384, 65536):
        over = [] if gpus == 2048 else [f"cluster.num_nodes={gpus // 8}",
                                        f"training.global_batch_size={15360 * gpus // 2048}"]
        if gpus > 16384:  # past the two-tier multi-plane fabric's 16,384 GPUs: a three-tier fat tree
            over.append("cluster.fabric=ft3_64")
        row = []
        for mode in ("analytic", "fast", "detailed"):
            r = _run(CASE, mode, "-", "3", *over)
            row.append("n/a" if "error" in r else f"{mode} {r['wall'] * 1e3:7.1f} ms (cpu {r['cpu'] * 1e3:6.1f})")
        print(f"  {gpus:6d} GPUs (120 micro-batches): " + ", ".join(row))


def _commands() -> None:
    print("whole process (median)")
    n = 3 if QUICK else 5
    for args, target in ((["--help"], "<= 0.3 s"), (["run", "--mode", "fast"], "<= 1 s"),
                         (["run"], "<= 1.5 s")):
        wall, cpu = _process(args, n)
        print(f"  sim {' '.join(args):18s} {wall:6.3f} s (cpu {cpu:6.3f})  target {target}")


def main() -> None:
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs (shared: timings are noisy, medians of "
          f"{REPEATS} repeats)")
    _tiers()
    _sweeps()
    _scale()
    _commands()


if __name__ == "__main__":
    main()
