"""Trace + scenario -> StepResult: step time and where it goes, MFU, throughput, memory.

Breakdown, per rank, of the step's wall time (the ranks' breakdowns each sum to the step time; the reported
breakdown is their mean):
- ``forward``, ``backward_input``, ``backward_weight``: compute-stream busy time inside non-overlapped
  actions, by the part of the chunk the phase belongs to (a full backward splits into input and weight);
- ``overlapped``: compute-stream busy time inside overlapped forward/backward pairs;
- ``exposed_comm``: time inside actions when the compute stream waits for communication, plus waiting for
  gradient synchronization and an exposed parameter gather at the end of the step;
- ``optimizer``: the optimizer step;
- ``bubble``: everything else: waiting for a neighbouring stage, and idling after the rank's work is done
  while other ranks finish.

MFU = model FLOPs per step / (step time x GPUs x dense peak). Model FLOPs are the training FLOPs of the
main model and the MTP modules (``sim.model.counts``: forward + input gradient + weight gradient, no
recompute) times the tokens of the step; attention is counted causal (S/2 keys per query) or non-causal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sim.model import counts
from sim.model.memory import memory_per_rank
from sim.units import SECONDS_PER_HOUR

CATEGORIES = ("forward", "backward_input", "backward_weight", "overlapped", "bubble", "exposed_comm", "optimizer")


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
    trace: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("trace", None)
        return d


def _rank_breakdown(actions: list, step: float, nranks: int) -> list[dict[str, float]]:
    out = [dict.fromkeys(CATEGORIES, 0.0) for _ in range(nranks)]
    for r, start, end, _label, category, busy in actions:
        b = out[r]
        dur = end - start
        if category in ("optimizer", "exposed_comm"):
            b[category] += dur
        elif category == "overlapped":
            b["overlapped"] += sum(busy)
            b["exposed_comm"] += dur - sum(busy)
        else:
            b["forward"] += busy[0]
            b["backward_input"] += busy[1]
            b["backward_weight"] += busy[2]
            b["exposed_comm"] += dur - sum(busy)
    for b in out:
        b["bubble"] = max(0.0, step - sum(v for k, v in b.items() if k != "bubble"))
    return out


def step_result(ctx: Any, step: float, finish: list[float], trace: Any, peak_act: list[float], mode: str,
                wall_s: float) -> StepResult:
    s = ctx.scenario
    m = s.model
    gpu = s.cluster.gpu
    tokens = s.training.tokens_per_step
    seq = s.training.seq_len
    nranks = len(finish)
    per_rank = _rank_breakdown(trace.actions, step, nranks)
    mean = {k: sum(b[k] for b in per_rank) / nranks for k in CATEGORIES}
    busy = [sum(v for k, v in b.items() if k in ("forward", "backward_input", "backward_weight", "overlapped",
                                                   "optimizer")) for b in per_rank]

    def mfu(causal: bool, dtype: str) -> float | None:
        if dtype == "fp8" and not gpu.supports_fp8:
            return None
        per_token = counts.train_flops_per_token(m, seq, causal) + counts.train_flops_per_token_mtp(m, seq, causal)
        flops = tokens * per_token
        return flops / (step * s.num_gpus * gpu.peak_flops_per_s(dtype))

    mem = memory_per_rank(ctx.layout, s)
    rows = []
    for b, act in zip(mem, peak_act, strict=True):
        total = b.weights + b.gradients + b.optimizer + act
        rows.append({"rank": b.rank, "weights_bytes": b.weights, "gradients_bytes": b.gradients,
                     "optimizer_bytes": b.optimizer, "activations_bytes": act, "total_bytes": total})
    peak = max(r["total_bytes"] for r in rows)
    tps = tokens / step / s.num_gpus
    notes = sorted(ctx.costs.notes)
    return StepResult(
        scenario=s.name, mode=mode, step_time_s=step, tokens_per_step=tokens, tokens_per_s_per_gpu=tps,
        gpu_hours_per_trillion_tokens=1e12 / tps / SECONDS_PER_HOUR,
        mfu={"bf16_causal": mfu(True, "bf16"), "bf16_noncausal": mfu(False, "bf16"),
             "fp8_causal": mfu(True, "fp8")},
        breakdown_s=mean, breakdown_per_rank_s=per_rank, busy_per_rank_s=busy, finish_per_rank_s=list(finish),
        peak_memory_per_gpu_bytes=peak, memory_per_rank=rows, memory_capacity_bytes=gpu.hbm_bytes,
        oom=peak > gpu.hbm_bytes, imbalance=ctx.loads.imbalance,
        num_events=len(trace.phases) + len(trace.actions), wall_time_s=wall_s, notes=notes,
        warnings=sorted(ctx.costs.warnings), trace=trace)
