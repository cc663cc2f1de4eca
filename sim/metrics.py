"""Engine result + scenario -> StepResult: step time and where it goes, MFU, throughput, memory.

Breakdown, per rank, of the step's wall time (the ranks' breakdowns each sum to the step time; the reported
breakdown is their mean):
- ``forward``, ``backward_input``, ``backward_weight``: compute-stream busy time inside non-overlapped
  actions, by the part of the chunk the task belongs to (a full backward splits into input and weight);
- ``overlapped``: compute-stream busy time inside overlapped forward/backward pairs;
- ``exposed_comm``: time inside actions when the compute stream waits for communication, plus waiting for
  gradient synchronization and an exposed parameter gather at the end of the step;
- ``optimizer``: the optimizer step;
- ``host``: host work per step that every GPU waits for (``software.step_overhead_s``: data loading, logging,
  synchronization), after the simulated step; not in the trace;
- ``bubble``: everything else: waiting for a neighbouring stage, and idling after the rank's work is done
  while other ranks finish.

MFU = model FLOPs per step / (step time x GPUs x dense peak). Model FLOPs are the training FLOPs of the
main model and the MTP modules (``sim.model.counts``: forward + input gradient + weight gradient, no
recompute) times the tokens of the step; attention is counted causal (S/2 keys per query) or non-causal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from sim.config import ModelSpec, Scenario
from sim.context import StepContext
from sim.engine import EngineResult
from sim.model import counts
from sim.timeline import ActionEvent, Category, Trace
from sim.units import SECONDS_PER_HOUR, TERA

CATEGORIES = ("forward", "backward_input", "backward_weight", "overlapped", "bubble", "exposed_comm", "optimizer",
              "host")


@dataclass
class StepResult:
    scenario: str
    mode: str
    step_time_s: float
    tokens_per_step: int
    tokens_per_s_per_gpu: float
    gpu_hours_per_trillion_tokens: float
    mfu: dict[str, float | None]
    breakdown_s: dict[str, float]
    breakdown_per_rank_s: list[dict[str, float]]
    busy_per_rank_s: list[float]
    finish_per_rank_s: list[float]
    peak_memory_per_gpu_bytes: float
    memory_per_rank: list[dict[str, float]]
    memory_capacity_bytes: float
    oom: bool
    imbalance: float
    num_events: int
    wall_time_s: float
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    imbalance_cost_s: float | None = None  # step time minus the same step with balanced routing
    trace: Trace | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("trace", None)
        return d


def rank_breakdown(actions: Sequence[ActionEvent], step_s: float, num_ranks: int) -> list[dict[str, float]]:
    """Per rank, the step's seconds by category (see the module docstring)."""
    out = [dict.fromkeys(CATEGORIES, 0.0) for _ in range(num_ranks)]
    whole = (Category.OPTIMIZER, Category.EXPOSED_COMM)  # enum members looked up once (slow on 3.11)
    overlapped = Category.OVERLAPPED
    for a in actions:
        b = out[a.rank]
        dur = a.end - a.start
        if a.category in whole:
            b[a.category] += dur
        elif a.category == overlapped:
            b["overlapped"] += a.busy
            b["exposed_comm"] += dur - a.busy
        else:
            b["forward"] += a.busy_forward
            b["backward_input"] += a.busy_input
            b["backward_weight"] += a.busy_weight
            b["exposed_comm"] += dur - a.busy
    for b in out:
        b["bubble"] = max(0.0, step_s - sum(v for k, v in b.items() if k != "bubble"))
    return out


@lru_cache(maxsize=64)
def flops_per_token(model: ModelSpec, seq_len: int, causal: bool) -> float:
    """Training FLOPs per token of the main model and the MTP modules (memoized: a pure function of its
    arguments, cleared by :func:`sim.step.clear_caches`)."""
    return counts.train_flops_per_token(model, seq_len, causal) + counts.train_flops_per_token_mtp(
        model, seq_len, causal)


def step_result(ctx: StepContext, result: EngineResult, *, mode: str, wall_s: float) -> StepResult:
    s = ctx.scenario
    step = result.makespan_s
    rows = [{"rank": b.rank, "weights_bytes": b.weights, "gradients_bytes": b.gradients,
             "optimizer_bytes": b.optimizer, "activations_bytes": b.activations, "total_bytes": b.total}
            for b in ctx.memory]
    return result_of(s, mode=mode, step=step, per_rank=rank_breakdown(result.trace.actions, step,
                                                                      len(result.finish_s)),
                     finish=result.finish_s, memory_rows=rows, imbalance=ctx.loads.imbalance,
                     num_events=result.trace.num_tasks + len(result.trace.actions), wall_s=wall_s,
                     notes=[*ctx.notes, *ctx.costs.notes], warnings=list(ctx.warnings), trace=result.trace)


def result_of(s: Scenario, *, mode: str, step: float, per_rank: list[dict[str, float]], finish: list[float],
              memory_rows: list[dict[str, float]], imbalance: float, num_events: int, wall_s: float,
              notes: list[str], warnings: list[str], trace: Trace | None) -> StepResult:
    """The :class:`StepResult` of a step of ``s`` lasting ``step`` seconds, from its per-rank breakdown and
    memory rows (every tier reports through here: the means, busy times, MFU and throughput are derived once).
    The software stack's host work per step (``software.step_overhead_s``) is added here, once for every tier."""
    gpu = s.cluster.gpu
    host = s.software.step_overhead_s
    if host > 0:
        step += host
        per_rank = [{**b, "host": b["host"] + host} for b in per_rank]
    tokens = s.training.tokens_per_step
    nranks = len(per_rank)
    mean = {k: sum(b[k] for b in per_rank) / nranks for k in CATEGORIES}
    busy = [sum(b[k] for k in ("forward", "backward_input", "backward_weight", "overlapped", "optimizer"))
            for b in per_rank]

    def mfu(causal: bool, dtype: str) -> float | None:
        if dtype == "fp8" and not gpu.supports_fp8:
            return None
        flops = tokens * flops_per_token(s.model, s.training.seq_len, causal)
        return flops / (step * s.num_gpus * gpu.peak_flops_per_s(dtype))

    peak = max(row["total_bytes"] for row in memory_rows)
    tps = tokens / step / s.num_gpus
    return StepResult(
        scenario=s.name, mode=mode, step_time_s=step, tokens_per_step=tokens, tokens_per_s_per_gpu=tps,
        gpu_hours_per_trillion_tokens=TERA / tps / SECONDS_PER_HOUR,
        mfu={"bf16_causal": mfu(True, "bf16"), "bf16_noncausal": mfu(False, "bf16"),
             "fp8_causal": mfu(True, "fp8")},
        breakdown_s=mean, breakdown_per_rank_s=per_rank, busy_per_rank_s=busy, finish_per_rank_s=finish,
        peak_memory_per_gpu_bytes=peak, memory_per_rank=memory_rows, memory_capacity_bytes=gpu.hbm_bytes,
        oom=peak > gpu.hbm_bytes, imbalance=imbalance, num_events=num_events, wall_time_s=wall_s,
        notes=notes, warnings=warnings, trace=trace)
