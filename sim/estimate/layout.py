"""A legal layout for each simulated point: the job's when it is legal and fits, else the best of a small search.

The job's layout can be illegal in a phase: DualPipe needs an even number of micro-batches, at least twice
the pipeline ranks (deepseek-ai/DualPipe; ``sim.pipeline.check_schedule``), so DeepSeek-V3's PP16 x DP128
layout cannot run the ramp's first batch (3,072 sequences: 24 micro-batches) or the 32K phase (1,920: 15);
the 128K phase's 480 sequences do not even divide over 128 data-parallel ranks. Long sequences can also
outgrow the GPU's memory.

The search widens in tiers and stops at the first tier that has a legal layout that fits:

1. schedule (all but GPipe, which has 1F1B's bubble and holds every micro-batch; interleaved 1F1B with two
   virtual stages), micro-batch size (1, 2, 4 and the job's) and pipeline ranks (half, same, double the
   job's): the knobs a schedule change touches;
2. plus tensor and context parallelism (TP 1, 2, 4, 8; CP 1, 2, 4, 8; TP x CP inside a node, where the
   context-parallel ring runs on NVLink), which also divide activations (CP splits every one by sequence);
3. plus full recompute, which keeps only each layer's input.

Every candidate is validated like a job (``Scenario``). Within a tier the legal ones are grouped by TP, CP and
recompute policy (whose costs only a simulation can rank) and, inside a group, ranked by the published bubble
of their schedule (``sim.schedules.formulas``) in layer-tokens of work: a heuristic for the search only. Each
group's best that fits the memory model (``sim.model.memory``: states plus the activations of the schedule's
peak in-flight micro-batches) is simulated, then the next ones of the fastest group while the budget lasts;
the fastest whose simulated peak memory fits is chosen, and the reason says what was wrong and what was chosen.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sim.config import ParallelSpec, Scenario
from sim.context import peak_memory_bytes
from sim.estimate.phases import validate_phase
from sim.pipeline import SCHEDULE_NAMES
from sim.schedules.formulas import published_bubble
from sim.schedules.listsched import Durations
from sim.units import GB

Simulate = Callable[[Scenario], Any]
#: GPipe is left out: the same bubble as 1F1B with every micro-batch's activations held at once.
SCHEDULES = tuple(x for x in SCHEDULE_NAMES if x != "gpipe")


@dataclass(frozen=True)
class Choice:
    """The layout of one simulated point and the step it gives."""

    scenario: Scenario
    result: Any
    reason: str | None = None  # set when the job's layout was replaced
    simulations: int = 1


def layout_of(s: Scenario) -> dict[str, Any]:
    p = s.parallel
    out: dict[str, Any] = {"schedule": p.schedule, "tp": p.tp, "cp": p.cp, "pp": p.pp, "dp": s.dp, "ep": p.ep,
                           "micro_batch_size": p.micro_batch_size, "num_microbatches": s.num_microbatches,
                           "recompute": p.recompute}
    if p.schedule == "interleaved-1f1b":
        out["vpp"] = p.vpp
    return out


def describe(s: Scenario) -> str:
    p = s.parallel
    vpp = f" vpp{p.vpp}" if p.schedule == "interleaved-1f1b" else ""
    cp = f" CP{p.cp}" if p.cp > 1 else ""
    return (f"{p.schedule}{vpp} TP{p.tp}{cp} PP{p.pp} DP{s.dp} mbs{p.micro_batch_size} "
            f"({s.num_microbatches} micro-batches), recompute {p.recompute}")


def memory_estimate_bytes(s: Scenario) -> float:
    """Peak bytes per GPU before simulating: what ``sim run`` reports (:func:`sim.context.peak_memory_bytes`)."""
    return peak_memory_bytes(s)


def bubble_proxy(s: Scenario) -> float:
    """The published bubble per rank (``sim.schedules.formulas``, F=1, B=2, W=1, F&B=3) in layer-tokens of
    work per GPU: a ranking heuristic for the search only; the simulation decides."""
    units = published_bubble(s.parallel.schedule, s.parallel.pp, Durations(), s.parallel.vpp)
    p = s.parallel
    layers = s.model.n_layers + s.model.n_mtp_layers
    return units * layers / s.num_stages * s.tokens_per_microbatch / (p.tp * p.cp)


def _tiers(p: ParallelSpec, gpn: int) -> list[list[dict[str, Any]]]:
    """Parallel settings to try, tier by tier (see the module docstring)."""
    pps = sorted({x for x in (p.pp // 2 if p.pp % 2 == 0 else 0, p.pp, 2 * p.pp) if x >= 1})
    mbss = sorted({1, 2, 4, p.micro_batch_size})
    tps = sorted({t for t in (1, 2, 4, 8, p.tp) if t <= gpn})
    cps = sorted({c for c in (1, 2, 4, 8, p.cp) if c <= gpn})

    def grid(tp_cp: list[tuple[int, int]], recompute: Sequence[str | tuple[str, ...]]) -> list[dict[str, Any]]:
        out = []
        for sched, pp, mbs, (tp, cp), rc in itertools.product(SCHEDULES, pps, mbss, tp_cp, recompute):
            out.append({"schedule": sched, "vpp": 2 if sched == "interleaved-1f1b" else 1, "pp": pp,
                        "micro_batch_size": mbs, "tp": tp, "cp": cp, "recompute": rc})
        return out

    job = (p.tp, p.cp)
    wider = [(t, c) for t in tps for c in cps if t * c <= gpn and (t, c) != job]
    full = ["full"] if p.recompute != "full" else []
    return [grid([job], [p.recompute]), grid(wider, [p.recompute]), grid([job, *wider], full) if full else []]


def _candidate(data: dict[str, Any], base: ParallelSpec, change: dict[str, Any]) -> Scenario | None:
    par = dict(data["parallel"])
    par.update(change, dp=None, num_microbatches=None)
    if change["pp"] != base.pp or change["schedule"] != base.schedule:
        par["stage_layers"] = None
    if change["tp"] != base.tp:  # a searched TP runs with sequence parallelism (an MoE with TP needs it)
        par["sequence_parallel"] = change["tp"] > 1
    s, _ = validate_phase({**data, "parallel": par})
    return s


def check(s: Scenario) -> str | None:
    """Why a legal scenario does not fit in memory (by the estimate), or None."""
    peak = memory_estimate_bytes(s)
    cap = s.cluster.gpu.hbm_bytes
    if peak > cap:
        return f"needs {peak / GB:.0f} GB per GPU of {cap / GB:.0f} GB ({describe(s)})"
    return None


def _fits(s: Scenario) -> bool:
    peak = memory_estimate_bytes(s)
    return peak <= s.cluster.gpu.hbm_bytes


def search(data: dict[str, Any], base: ParallelSpec, gpus_per_node: int, problem: str, simulate: Simulate,
           max_simulations: int) -> Choice | None:
    """The fastest legal layout that fits, from the first tier that has one; None when no tier has one.

    In a tier, legal layouts are grouped by (TP, recompute), whose costs the proxy cannot rank, and sorted by
    the bubble proxy within a group; each group's best that fits by the memory estimate is simulated, then
    the next ones of the fastest group while simulations are left (at least one per group)."""
    seen: set[str] = set()
    history: list[str] = []
    for tier, changes in enumerate(_tiers(base, gpus_per_node), start=1):
        groups: dict[tuple[int, int, str], list[tuple[float, str, Scenario]]] = {}
        for change in changes:
            s = _candidate(data, base, change)
            if s is None or describe(s) in seen:
                continue
            seen.add(describe(s))
            key = (s.parallel.tp, s.parallel.cp, str(s.parallel.recompute))
            groups.setdefault(key, []).append((bubble_proxy(s), describe(s), s))
        queues = [iter(sorted(g, key=lambda x: (x[0], x[1]))) for g in groups.values()]
        simulated: list[tuple[float, int, Scenario, Any]] = []
        sims = 0

        def next_fitting(q: Any) -> Scenario | None:
            return next((s for _, _, s in q if _fits(s)), None)

        for gi, q in enumerate(queues):
            s = next_fitting(q)
            if s is not None:
                r = simulate(s)
                sims += 1
                simulated.append((r.step_time_s if not r.oom else float("inf"), gi, s, r))
        open_groups = {gi for _, gi, _, _ in simulated}
        while open_groups and sims < max_simulations:
            best_group = min((x for x in simulated if x[1] in open_groups), key=lambda x: x[0])[1]
            s = next_fitting(queues[best_group])
            if s is None:
                open_groups.discard(best_group)
                continue
            r = simulate(s)
            sims += 1
            simulated.append((r.step_time_s if not r.oom else float("inf"), best_group, s, r))
        fitting = [x for x in simulated if x[0] < float("inf")]
        legal = sum(len(g) for g in groups.values())
        if fitting:
            t, _, s, r = min(fitting, key=lambda x: x[0])
            before = f" ({'; '.join(history)})" if history else ""
            reason = (f"{problem}; chose {describe(s)} at {t:.2f} s per step, the fastest of {sims} simulated "
                      f"in search tier {tier}, {_TIER_NAMES[tier - 1]}: {legal} legal layouts in "
                      f"{len(groups)} TP/CP/recompute group(s), best by pipeline bubble within a group{before}")
            return Choice(s, r, reason, sims)
        history.append(f"tier {tier}: {legal} legal, none fits in memory" if legal else f"tier {tier}: none legal")
    return None


_TIER_NAMES = ("schedule, micro-batch size, PP", "plus TP and CP", "plus full recompute")
