"""A run's estimate: per phase and in total, against published figures, with sensitivities.

Sensitivities reuse the simulated points, first order: extra (or fewer) GPUs join data parallelism at the same
global batch, so each pipeline runs ``f = GPUs / GPUs'`` times as many micro-batches per step; the part of a
step that does not grow with micro-batches (pipeline bubble and optimizer, from the simulation's breakdown)
stays, the rest scales by ``f`` (``Point.scaled``). Data parallelism is treated as continuous (a real layout
must divide the batch). A phase given as GPU-hours keeps its GPU-hours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sim.config import RunSpec, Scenario
from sim.estimate.accounting import Cost, Seconds, cost
from sim.estimate.core import PhaseWork, Progress, simulate_phases
from sim.units import SECONDS_PER_HOUR

INTEGRATION = ("step time simulated at each phase's batch size and at batch_ramp.points batch sizes across a "
               "ramp (equally spaced, both ends), interpolated linearly in batch size and integrated exactly "
               "over the ramp's tokens (linear_tokens) or steps (linear_steps)")
QUANTITIES = ("gpu_hours", "days", "usd", "kwh", "co2_kg")


@dataclass
class PhaseResult:
    work: PhaseWork
    steps: float | None
    ramp_steps: float
    ramp_s: float  # training seconds of the ramp, before overheads
    seconds: Seconds
    cost: Cost


@dataclass
class RunEstimate:
    scenario: str
    num_gpus: int
    gpu: str
    mode: str
    usd_per_gpu_hour: float
    spec: RunSpec
    phases: list[PhaseResult]
    total: dict[str, Any]
    sensitivities: dict[str, Any]
    comparison: dict[str, Any] | None
    simulations: int
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "num_gpus": self.num_gpus, "gpu": self.gpu, "mode": self.mode,
            "usd_per_gpu_hour": self.usd_per_gpu_hour,
            "grid_kg_co2_per_kwh": self.spec.energy.grid_kg_co2_per_kwh,
            "overheads": self.spec.overheads.model_dump(),
            "phases": [_phase_dict(p, self.num_gpus) for p in self.phases], "total": self.total,
            "sensitivities": self.sensitivities, "measured": self.comparison,
            "step_simulations": self.simulations, "integration": INTEGRATION,
            "notes": self.notes, "warnings": self.warnings,
        }


def _phase_dict(p: PhaseResult, est_gpus: int) -> dict[str, Any]:
    w, c = p.work, p.cost
    pts = w.points
    reasons = [f"at {q.global_batch_size} sequences: {q.reason}" for q in pts if q.reason]
    out: dict[str, Any] = {
        "name": w.spec.name, "kind": w.spec.kind, "simulated": w.simulated,
        "steps": None if p.steps is None else round(p.steps), "tokens": w.tokens,
        "seq_len": w.seq_len, "global_batch_size": w.global_batch_size,
        "step_time_s": [min(q.step_time_s for q in pts), max(q.step_time_s for q in pts)] if pts else None,
        "gpu_hours": c.gpu_hours, "days": c.days, "usd": c.usd, "kwh": c.kwh, "co2_kg": c.co2_kg,
        "utilization": p.seconds.utilization, "training_s": p.seconds.compute_s, "wall_s": c.wall_s,
        "overheads": {"checkpoint_s": c.checkpoint_s, "failures": c.failures, "failure_s": c.failure_s},
        "layout": pts[-1].layout if pts else None,
        "layout_reason": "; ".join(reasons) if reasons else None,
        "source": w.spec.source or None,
    }
    if w.spec.batch_ramp is not None:
        r = w.spec.batch_ramp
        out["ramp"] = {"start_global_batch_size": r.start_global_batch_size, "ramp_tokens": r.ramp_tokens,
                       "shape": r.shape, "steps": round(p.ramp_steps),
                       "gpu_hours": p.ramp_s * est_gpus / SECONDS_PER_HOUR,
                       "points": [{"global_batch_size": q.global_batch_size, "step_time_s": q.step_time_s,
                                   "num_microbatches": q.num_microbatches, "layout": q.layout,
                                   "layout_reason": q.reason} for q in pts]}
    return out


def price_run(works: list[PhaseWork], spec: RunSpec, scenario: Scenario, num_nodes: int,
              usd_per_gpu_hour: float) -> tuple[list[PhaseResult], dict[str, Any]]:
    """Per-phase results and totals on ``num_nodes`` nodes (simulated points scaled when it is not the job's)."""
    cluster = scenario.cluster
    gpus = num_nodes * cluster.node.gpus_per_node
    f = cluster.num_gpus / gpus
    timed: dict[int, tuple[float, float, float, Seconds]] = {}
    for w in works:
        if w.simulated:
            pts = w.points if f == 1.0 else [q.scaled(f) for q in w.points]
            steps, secs, busy, ramp_steps, ramp_s = w.steps_and_seconds(pts)
            timed[id(w)] = (steps, ramp_steps, ramp_s, Seconds(secs, busy / secs if secs > 0 else 0.0))
    busy_s = sum(t.compute_s * t.utilization for *_, t in timed.values())
    all_s = sum(t.compute_s for *_, t in timed.values())
    default_u = busy_s / all_s if all_s > 0 else 1.0  # given phases only: GPUs assumed fully busy
    results: list[PhaseResult] = []
    for w in works:
        if w.simulated:
            steps, ramp, ramp_s, t = timed[id(w)]
            c = cost(t, cluster, num_nodes, spec.overheads, spec.energy, usd_per_gpu_hour)
            results.append(PhaseResult(w, steps, ramp, ramp_s, t, c))
        else:
            assert w.spec.gpu_hours is not None
            u = w.spec.utilization if w.spec.utilization is not None else default_u
            t = Seconds(w.spec.gpu_hours * SECONDS_PER_HOUR / gpus, u)
            c = cost(t, cluster, num_nodes, spec.overheads, spec.energy, usd_per_gpu_hour, simulated=False)
            results.append(PhaseResult(w, None, 0.0, 0.0, t, c))
    return results, totals(results, gpus)


def totals(results: list[PhaseResult], gpus: int) -> dict[str, Any]:
    out: dict[str, Any] = {"gpus": gpus}
    out["steps"] = round(sum(p.steps for p in results if p.steps is not None))
    out["tokens"] = sum(p.work.tokens or 0.0 for p in results)
    for k in QUANTITIES:
        vals = [getattr(p.cost, k) for p in results]
        out[k] = None if any(v is None for v in vals) else sum(vals)
    return out


def _delta(alt: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    out = {"gpus": alt["gpus"], "delta_gpus": alt["gpus"] - base["gpus"]}
    for k in ("days", "gpu_hours", "usd", "kwh"):
        out[k] = alt[k]
        out[f"delta_{k}"] = alt[k] - base[k]
    return out


def sensitivities(works: list[PhaseWork], spec: RunSpec, scenario: Scenario, price: float,
                  base: dict[str, Any]) -> dict[str, Any]:
    nodes = scenario.cluster.num_nodes

    def total_at(n: int, p: float = price) -> dict[str, Any]:
        return price_run(works, spec, scenario, n, p)[1]

    more = max(nodes + 1, round(nodes * 1.1))
    target = base["days"] + 1.0
    lo, hi = 1, nodes  # fewest nodes that finish within one more day: days fall as nodes grow
    while lo < hi:
        mid = (lo + hi) // 2
        if total_at(mid)["days"] <= target:
            hi = mid
        else:
            lo = mid + 1
    deadline = _delta(total_at(lo), base)
    deadline["deadline_days"] = target
    higher = price * 1.1
    return {
        "model": "extra GPUs join data parallelism at the same global batch; bubble, optimizer and host time "
                 "per step fixed, the rest scales with micro-batches per pipeline (continuous DP)",
        "gpus_plus_10pct": _delta(total_at(more), base),
        "deadline_plus_1_day": deadline,
        "price_plus_10pct": {"usd_per_gpu_hour": higher, "usd": base["gpu_hours"] * higher,
                             "delta_usd": base["gpu_hours"] * (higher - price),
                             "usd_per_1_usd_per_gpu_hour": base["gpu_hours"]},
    }


def compare(spec: RunSpec, results: list[PhaseResult], total: dict[str, Any]) -> dict[str, Any] | None:
    m = spec.measured
    if m is None:
        return None
    by_name = {p.work.spec.name: p for p in results}

    def err(pred: float, meas: float) -> float | None:
        return (pred - meas) / meas if meas else None

    stages = []
    for st in m.stages:
        pred = sum(by_name[n].cost.gpu_hours for n in st.phases)
        stages.append({"name": st.name, "phases": list(st.phases), "gpu_hours": pred,
                       "measured_gpu_hours": st.gpu_hours, "error": err(pred, st.gpu_hours)})
    out: dict[str, Any] = {"source": m.source, "stages": stages}
    if m.total_gpu_hours is not None:
        out["total"] = {"gpu_hours": total["gpu_hours"], "measured_gpu_hours": m.total_gpu_hours,
                        "error": err(total["gpu_hours"], m.total_gpu_hours)}
    if m.total_usd is not None and m.usd_per_gpu_hour is not None:
        usd = total["gpu_hours"] * m.usd_per_gpu_hour
        out["usd"] = {"usd_per_gpu_hour": m.usd_per_gpu_hour, "usd": usd, "measured_usd": m.total_usd,
                      "error": err(usd, m.total_usd)}
    return out


def estimate_run(scenario: Scenario, mode: str = "fast", price: float | None = None,
                 progress: Progress | None = None, max_search_simulations: int = 2,
                 with_sensitivities: bool = True) -> RunEstimate:
    """Estimate the job's whole run (``run:`` section, or its ``training:`` shorthand)."""
    spec, works, sim = simulate_phases(scenario, mode, progress, max_search_simulations)
    usd = scenario.cluster.usd_per_gpu_hour if price is None else price
    results, total = price_run(works, spec, scenario, scenario.cluster.num_nodes, usd)
    sens = sensitivities(works, spec, scenario, usd, total) if with_sensitivities else {}
    notes = []
    gpu = scenario.cluster.gpu
    if gpu.idle_w is None:
        notes.append(f"{gpu.name} has no idle_w in its profile: GPU power taken at TDP throughout")
    if spec.energy.grid_kg_co2_per_kwh is None:
        notes.append("no run.energy.grid_kg_co2_per_kwh: CO2 not estimated")
    return RunEstimate(scenario=scenario.name, num_gpus=scenario.num_gpus, gpu=gpu.name, mode=mode,
                       usd_per_gpu_hour=usd, spec=spec, phases=results, total=total, sensitivities=sens,
                       comparison=compare(spec, results, total), simulations=sim.count, notes=notes,
                       warnings=sorted(sim.warnings))

