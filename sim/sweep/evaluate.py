"""Evaluating points: one step simulation per point (in a worker), then the token budget priced (in the
coordinator).

A worker receives the space once and batches of points; for each it validates the scenario (a point the
validators refuse comes back pruned with their message: the rules of ``sim.sweep.rules`` are a subset) and
runs ``sim.step.simulate_step`` at the tier asked for. It returns plain numbers, never a scenario.

Pricing follows ``sim.estimate.accounting``: the budget of ``tokens`` takes ``tokens / tokens_per_step``
steps at the simulated step time (one phase at the job's full batch: a batch ramp and later phases are
``sim estimate``'s business), with the base job's ``run.overheads`` and ``run.energy`` when it has them;
GPU-hours = wall x GPUs, dollars = GPU-hours x price, energy at the simulated utilisation (compute-stream
busy fraction) by ``sim.estimate.energy``.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import ValidationError

from sim.config import ClusterSpec, EnergySpec, OverheadSpec, Scenario
from sim.errors import SimInputError, format_validation_error
from sim.estimate.accounting import Seconds, cost
from sim.step import MODES, simulate_step
from sim.sweep.space import Space

#: What a worker returns per point (besides ``status``, ``rule``, ``reason``).
METRICS = ("step_time_s", "mfu", "tokens_per_s_per_gpu", "memory_per_gpu_bytes", "memory_capacity_bytes",
           "oom", "utilization", "imbalance")


def _tier_mode(tier: str) -> str:
    if tier not in MODES:
        raise SimInputError(f"{tier!r} is not a simulation mode of this build ({', '.join(MODES)})",
                            field="evaluation.tier")
    return tier


def evaluate_point(space: Space, point: tuple[Any, ...], tier: str) -> dict[str, Any]:
    """One point's step at ``tier``: metrics, or why it could not be simulated."""
    t0 = time.perf_counter()
    try:
        scenario = Scenario.model_validate(space.scenario_data(point))
    except ValidationError as e:
        return {"status": "pruned", "rule": "layout", "reason": format_validation_error(e, Scenario)}
    try:
        r = simulate_step(scenario, mode=tier, record_trace=False, strict_calibration=False)  # type: ignore[arg-type]
    except Exception as e:  # a point the library cannot simulate is reported, the sweep goes on
        return {"status": "failed", "rule": None, "reason": f"{type(e).__name__}: {e}"}
    busy = sum(r.busy_per_rank_s) / len(r.busy_per_rank_s) if r.busy_per_rank_s else 0.0
    return {"status": "oom" if r.oom else "ok", "rule": None, "reason": None,
            "step_time_s": r.step_time_s, "mfu": r.mfu.get("bf16_causal"),
            "tokens_per_s_per_gpu": r.tokens_per_s_per_gpu, "memory_per_gpu_bytes": r.peak_memory_per_gpu_bytes,
            "memory_capacity_bytes": r.memory_capacity_bytes, "oom": r.oom,
            "utilization": busy / r.step_time_s if r.step_time_s > 0 else 0.0, "imbalance": r.imbalance,
            "tokens_per_step": r.tokens_per_step, "warnings": sorted(set(r.warnings)),
            "eval_s": time.perf_counter() - t0}


def evaluate_batch(space: Space, batch: list[tuple[int, tuple[Any, ...]]], tier: str) -> list[tuple[int, dict]]:
    """``(key id, point)`` pairs -> ``(key id, result)`` pairs (the task a worker runs)."""
    _tier_mode(tier)
    return [(kid, evaluate_point(space, point, tier)) for kid, point in batch]


def price(space: Space, cluster: ClusterSpec, result: dict[str, Any], usd_per_gpu_hour: float) -> dict[str, float]:
    """GPU-hours, days, dollars and MWh of the space's token budget at the point's step (module docstring)."""
    run = space.base_scenario.run
    overheads = run.overheads if run is not None else OverheadSpec()
    energy = run.energy if run is not None else EnergySpec()
    steps = space.tokens / result["tokens_per_step"]
    c = cost(Seconds(steps * result["step_time_s"], result["utilization"]), cluster, cluster.num_nodes,
             overheads, energy, usd_per_gpu_hour)
    return {"gpu_hours": c.gpu_hours, "days": c.days, "usd": c.usd, "mwh": c.kwh / 1e3}
