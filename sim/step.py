"""One training step of a scenario, end to end: scenario -> costs -> program -> schedule -> engine -> metrics.

:func:`build_context` builds the pieces (stage partition, cost model with the scenario's calibration table,
network, expert loads, program, schedule, the step's tail); :func:`simulate_step` assembles the ranks' plans
(:mod:`sim.assemble`), lets the engine run them and hands the result to :mod:`sim.metrics`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Literal

from sim import analytic, assemble
from sim.assemble import rank_plans, routing_is_skewed, scenario_key
from sim.config import Scenario, evolve
from sim.context import StepContext, build_context, stage_partition
from sim.costs.kernels import clear_shared
from sim.engine import RankPlan, run_pipeline
from sim.experts.loads import clear_caches as clear_load_caches
from sim.metrics import StepResult, flops_per_token, step_result
from sim.model.stages import model_units, split_min_max
from sim.schedules.generators import build_schedule

__all__ = ["MODES", "StepContext", "StepResult", "build_context", "clear_caches", "num_actions",
           "routing_is_skewed", "simulate_step", "step_time_by_policy", "with_policy"]

Mode = Literal["detailed", "fast", "analytic"]
MODES: tuple[str, ...] = ("detailed", "fast", "analytic")


def simulate_step(scenario: Scenario, *, mode: Mode = "detailed", allow_cpu_calibration: bool = False,
                  strict_calibration: bool = True, imbalance_cost: bool = False, record_trace: bool = True,
                  progress: Callable[[int], None] | None = None) -> StepResult:
    """Simulate one optimizer step of ``scenario`` at its full batch size.

    ``mode``: ``detailed`` simulates every task, ``fast`` each action as one timed event, ``analytic`` combines
    the same action durations without an event loop (:mod:`sim.analytic`; no trace: ``record_trace`` and
    ``progress`` do not apply).
    ``allow_cpu_calibration``: accept a CPU-measured table (pipeline validation). ``strict_calibration``:
    refuse a table of another GPU (else set it aside, with a warning). ``imbalance_cost``: when routing is
    skewed, also simulate balanced routing and report the difference. ``record_trace``: keep every task and
    transfer for the Perfetto export and the Gantt chart. ``progress(n)`` is called as actions complete
    (``num_actions(scenario)`` in all).
    """
    if mode not in MODES:
        raise ValueError(f"mode: {mode!r} is not one of {', '.join(MODES)}")
    t0 = time.perf_counter()
    if mode == "analytic":
        out = analytic.analytic_step(scenario, allow_cpu_calibration=allow_cpu_calibration,
                                     strict_calibration=strict_calibration)
    else:
        ctx, plans = _prepared(scenario, allow_cpu_calibration, strict_calibration, mode == "fast")
        gpu = scenario.cluster.gpu
        result = run_pipeline(plans, num_sms=gpu.num_sms, comm_sms=scenario.parallel.comm_sms,
                              static_sms=scenario.sm_partition == "static", fast=mode == "fast",
                              record_tasks=record_trace, progress=progress)
        out = step_result(ctx, result, mode=mode, wall_s=time.perf_counter() - t0)
    if imbalance_cost and routing_is_skewed(scenario):
        even = evolve(scenario, {"experts.skew": "balanced", "experts.drift_per_step": 0.0})
        balanced = simulate_step(even, mode=mode, allow_cpu_calibration=allow_cpu_calibration,
                                 strict_calibration=strict_calibration, record_trace=False)
        out.imbalance_cost_s = out.step_time_s - balanced.step_time_s
    return out


#: The contexts and rank plans of the last few scenarios simulated, keyed by every field of the scenario,
#: its calibration file's identity and the calibration flags (see :func:`sim.assemble.scenario_key`): a repeated
#: scenario reuses its costs, program and plans. Plans are immutable; a context's program only memoizes.
_PREPARED: OrderedDict[tuple, tuple[StepContext, dict[bool, list[RankPlan]]]] = OrderedDict()
_PREPARED_SIZE = 4


def _prepared(scenario: Scenario, allow_cpu: bool, strict: bool, fast: bool) -> tuple[StepContext, list[RankPlan]]:
    base = scenario_key(scenario)
    key = None if base is None else (*base, allow_cpu, strict)
    hit = _PREPARED.get(key) if key is not None else None
    if hit is None:
        ctx = build_context(scenario, allow_cpu_calibration=allow_cpu, strict_calibration=strict)
        hit = (ctx, {})
        if key is not None:
            _PREPARED[key] = hit
            while len(_PREPARED) > _PREPARED_SIZE:
                _PREPARED.popitem(last=False)
    elif key is not None:
        _PREPARED.move_to_end(key)
    ctx, plans = hit
    if fast not in plans:
        plans[fast] = rank_plans(ctx.inputs, fast=fast)
    return ctx, plans[fast]


def clear_caches() -> None:
    """Empty every cache the step simulation keeps between calls: prepared contexts and plans, isolated work
    timings, the analytic tier's tables, shared cost memos, expert loads, schedules, stage partitions (and their
    splits), model units and FLOPs.
    Results never depend on them (each is keyed by everything its value depends on); this frees their memory,
    and lets tests start cold."""
    _PREPARED.clear()
    assemble.clear_caches()
    analytic.clear_caches()
    clear_shared()
    clear_load_caches()
    build_schedule.cache_clear()
    flops_per_token.cache_clear()
    stage_partition.cache_clear()
    split_min_max.cache_clear()
    model_units.cache_clear()


def num_actions(scenario: Scenario) -> int:
    """Schedule actions one step of ``scenario`` runs (for progress reporting)."""
    p = scenario.parallel
    return build_schedule(p.schedule, p.pp, scenario.num_microbatches, p.vpp, p.ep_overlap).num_actions


def with_policy(scenario: Scenario, policy: str) -> Scenario:
    """The scenario with another balancing policy; ``eplb`` gets the scenario's redundant experts, by default
    one spare slot per GPU of the EP group (``sim.experts.placement.redundant_experts``), as ``sim run`` and
    ``sim experts`` do."""
    return evolve(scenario, {"experts.policy": policy})


def step_time_by_policy(scenario: Scenario, policies: Sequence[str]) -> dict[str, float]:
    """Seconds per training step under each balancing policy (fast mode)."""
    return {p: simulate_step(with_policy(scenario, p), mode="fast", record_trace=False).step_time_s
            for p in policies}
