"""Memory per GPU: weights, gradients, optimizer states (by ZeRO stage) and activations, per pipeline rank.

The one memory model: ``sim model`` and ``sim run`` both call :func:`memory_per_rank`.

Model states per rank follow ZeRO (Rajbhandari et al. 2020): stage 1 shards the master weights and optimizer
moments across data-parallel ranks, stage 2 also the gradients, stage 3 also the working weights. Routed
experts are sharded over expert parallelism and replicated over the remaining ``dp * tp / ep`` ranks, which
is the data-parallel degree their states are sharded across. A rank holds every stage the schedule places on
it (:mod:`sim.pipeline`): two under DualPipe (two parameter copies), ``vpp`` under interleaved 1F1B.

Activations: a micro-batch's activations on a stage (:mod:`sim.model.activations`) are held from the start of
its forward until the end of the backward that frees them: the full backward, or the deferred weight
gradient when the backward is split (a W still needs the layer inputs). A rank runs one action at a time, so
the peak follows from the order of its actions alone (:func:`peak_activation_bytes`), whatever the durations;
the engine would track the same peak.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sim.config import ParallelSpec, Scenario
from sim.model.activations import stage_activation_bytes
from sim.model.counts import stage_expert_params, stage_params
from sim.model.stages import StagePartition
from sim.pipeline import all_stages_of
from sim.schedules.actions import Phase, Schedule
from sim.units import dtype_bytes


@dataclass(frozen=True, slots=True)
class MemoryBreakdown:
    """Bytes per GPU on one pipeline rank."""

    rank: int
    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


def peak_activation_bytes(schedule: Schedule, stage_bytes: Sequence[float]) -> list[float]:
    """Per rank, the most activation bytes held at once: each forward adds its stage's bytes when it starts,
    each full backward (B) or deferred weight gradient (W) frees them when it ends. Memoized on the
    (immutable) schedule by the stage bytes, for the last few of them."""
    key = tuple(stage_bytes)
    memo = schedule._cache.setdefault("memory.peaks", {})
    assert isinstance(memo, dict)
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = _peaks(schedule, key)
        while len(memo) > 8:
            del memo[next(iter(memo))]
    return list(hit)


def _peaks(schedule: Schedule, stage_bytes: Sequence[float]) -> list[float]:
    peaks = []
    for actions in schedule.ranks:
        held = peak = 0.0
        for a in actions:
            parts = a.parts()
            held += sum(stage_bytes[p.stage] for p in parts if p.phase is Phase.F)
            peak = max(peak, held)
            held -= sum(stage_bytes[p.stage] for p in parts if p.phase in (Phase.B, Phase.W))
        peaks.append(peak)
    return peaks


def model_state_bytes(params: float, expert_params: float, scenario: Scenario) -> tuple[float, float, float]:
    """(weights, gradients, optimizer states) bytes per GPU for ``params`` of which ``expert_params`` are
    routed experts, under the scenario's TP, EP, DP and ZeRO stage."""
    p: ParallelSpec = scenario.parallel
    prec = scenario.precision
    dense = (params - expert_params) / p.tp
    experts = expert_params / p.ep
    dp_dense = scenario.dp
    dp_expert = max(1, scenario.dp * p.tp // p.ep)
    w, g = dtype_bytes(prec.weights), dtype_bytes(prec.grads)
    opt = dtype_bytes(prec.master_weights) + 2 * dtype_bytes(prec.optimizer_states)

    def shard(x: float, dp: int, on: bool) -> float:
        return x / dp if on else x

    z = p.zero_stage
    weights = shard(dense, dp_dense, z >= 3) * w + shard(experts, dp_expert, z >= 3) * w
    grads = shard(dense, dp_dense, z >= 2) * g + shard(experts, dp_expert, z >= 2) * g
    optim = shard(dense, dp_dense, z >= 1) * opt + shard(experts, dp_expert, z >= 1) * opt
    return weights, grads, optim


def memory_per_rank(scenario: Scenario, partition: StagePartition, schedule: Schedule) -> list[MemoryBreakdown]:
    """Memory of each pipeline rank of ``scenario`` run as ``schedule`` over ``partition``."""
    p = scenario.parallel
    sp = stage_params(partition, scenario.model)
    se = stage_expert_params(partition)
    acts = peak_activation_bytes(schedule, stage_activation_bytes(partition, scenario))
    out = []
    for r, stages in enumerate(all_stages_of(p.schedule, p.pp, p.vpp)):
        w, g, o = model_state_bytes(sum(sp[s] for s in stages), sum(se[s] for s in stages), scenario)
        out.append(MemoryBreakdown(r, w, g, o, acts[r]))
    return out
