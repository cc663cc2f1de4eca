"""Memory per GPU: weights, gradients, optimizer states (by ZeRO stage) and activations, per pipeline rank.

The one memory model: ``sim model`` and ``sim run`` both call :func:`memory_per_rank`.

Model states per rank follow ZeRO (Rajbhandari et al. 2020): stage 1 shards the master weights and optimizer
moments across the ranks that hold the same parameters (data- x context-parallel, or the ``fsdp_shard_group``
under hybrid sharding), stage 2 also the gradients, stage 3 also the working weights. ZeRO-3 still holds the
gathered parameters of the units it is computing (``fsdp_prefetch`` + 1 of the largest), and all of them when
it does not reshard after forward (they stay gathered until the backward), and under a pipeline it keeps the
gradients unsharded until the stage's last backward (:mod:`sim.program.sharding`). Routed experts are sharded
over expert parallelism and replicated over the remaining ``dp * tp * cp / ep`` ranks, which is the
data-parallel degree their states are sharded across. EPLB's redundant experts
(:func:`sim.experts.placement.redundant_experts`) are more expert slots per GPU: each holds its weights and
gradients, and replicated optimizer states, while states sharded by ZeRO spread over all replicas (the total
stays that of the logical experts). A rank holds every stage the schedule places on it (:mod:`sim.pipeline`):
two under DualPipe (two parameter copies), ``vpp`` under interleaved 1F1B.

Activations: a micro-batch's activations on a stage (:mod:`sim.model.activations`) are held from the start of
its forward until the end of the backward that frees them: the full backward, or the deferred weight
gradient when the backward is split (a W still needs the layer inputs). A rank runs one action at a time, so
the peak follows from the order of its actions alone (:func:`peak_activation_bytes`), whatever the durations;
the engine would track the same peak. Under a split backward the input-gradient pass (I) re-creates the GEMM
inputs the recompute policy dropped, and they stay until its W (:func:`sim.model.activations.stage_rerun_bytes`):
a second lifetime in the same counts. On top of it a rank holds the working set of the backward it is running
(:func:`sim.model.activations.stage_workspace_bytes`: the tensors recompute re-creates, the loss's logits
gradient, K and V gathered by context parallelism), the largest of its stages'; ``activations`` counts both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sim.config import ParallelSpec, Scenario
from sim.experts.placement import redundant_experts
from sim.model.activations import stage_activation_bytes, stage_rerun_bytes, stage_workspace_bytes
from sim.model.counts import stage_expert_params, stage_params
from sim.model.ops import Op
from sim.model.stages import StagePartition, Unit
from sim.pipeline import all_stages_of
from sim.program.sharding import ShardingPlan
from sim.schedules.actions import Phase, Schedule
from sim.units import dtype_bytes


@dataclass(frozen=True, slots=True)
class MemoryBreakdown:
    """Bytes per GPU on one pipeline rank."""

    rank: int
    weights: float
    gradients: float
    optimizer: float
    activations: float  # kept for backwards at the peak, plus the working set of the backward then running

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


def peak_activation_bytes(schedule: Schedule, stage_bytes: Sequence[float],
                          rerun_bytes: Sequence[float] = ()) -> list[float]:
    """Per rank, the most activation bytes held at once: each forward adds its stage's bytes when it starts,
    each full backward (B) or deferred weight gradient (W) frees them when it ends. Under a split backward the
    input-gradient pass (I) also re-creates ``rerun_bytes`` of its stage (the GEMM inputs recompute dropped),
    which its W still reads: held from the I's start to the W's end. Memoized on the (immutable) schedule by
    the bytes, for the last few of them."""
    rerun = tuple(rerun_bytes) if len(rerun_bytes) else (0.0,) * len(stage_bytes)
    key = (*stage_bytes, *rerun)
    memo = schedule._cache.setdefault("memory.peaks", {})
    assert isinstance(memo, dict)
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = _peaks(schedule, tuple(stage_bytes), rerun)
        while len(memo) > 8:
            del memo[next(iter(memo))]
    return list(hit)


def _peaks(schedule: Schedule, stage_bytes: Sequence[float], rerun: Sequence[float]) -> list[float]:
    """Per rank, the largest ``counts . bytes`` over the rank's in-flight counts after each forward or
    input-gradient pass (:func:`in_flight_counts`): bytes are never negative, so only the counts no other count
    covers can be the peak."""
    out = []
    for stages, frontier in in_flight_counts(schedule):
        per = [stage_bytes[s] for s in stages] + [rerun[s] for s in stages]
        out.append(max((sum(c * b for c, b in zip(counts, per, strict=True)) for counts in frontier), default=0.0))
    return out


def in_flight_counts(schedule: Schedule) -> list[tuple[tuple[int, ...], list[tuple[int, ...]]]]:
    """Per rank, its stages and, right after each forward or split input-gradient pass starts, the count
    vectors of what it holds: the first half, per stage, the micro-batches in flight (each forward adds one,
    each full backward (B) or deferred weight gradient (W) frees one); the second half, per stage, the
    micro-batches between their input-gradient pass (I) and their W. Only the vectors no other covers in every
    entry are kept. Depends on the schedule alone: kept on it."""
    hit = schedule._cache.get("memory.in_flight")
    if isinstance(hit, list):
        return hit
    out = []
    for actions in schedule.ranks:
        stages = sorted({p.stage for a in actions for p in a.parts()})
        n = len(stages)
        col = {s: i for i, s in enumerate(stages)}
        held = [0] * (2 * n)
        seen: set[tuple[int, ...]] = set()
        for a in actions:
            parts = a.parts()
            grew = False
            for p in parts:
                if p.phase is Phase.F:
                    held[col[p.stage]] += 1
                    grew = True
                elif p.phase is Phase.I:
                    held[n + col[p.stage]] += 1
                    grew = True
            if grew:
                seen.add(tuple(held))
            for p in parts:
                if p.phase is Phase.B or p.phase is Phase.W:
                    held[col[p.stage]] -= 1
                if p.phase is Phase.W:
                    held[n + col[p.stage]] -= 1
        if not any(any(c[n:]) for c in seen):  # no split backward on this rank: the kept counts alone
            pad = (0,) * n
            frontier = [c + pad for c in _non_dominated({c[:n] for c in seen})]
        else:
            frontier = _non_dominated(seen)
        out.append((tuple(stages), sorted(frontier)))
    schedule._cache["memory.in_flight"] = out
    return out


def _non_dominated(vectors: set[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The count vectors no other covers in every entry (a single entry: the largest)."""
    if all(len(c) == 1 for c in vectors):
        return [max(vectors)] if vectors else []
    return [c for c in vectors if not any(o != c and all(x >= y for x, y in zip(o, c, strict=True)) for o in vectors)]


@dataclass(frozen=True, slots=True)
class Zero3Gathers:
    """What ZeRO-3 holds gathered on one GPU of a pipeline rank, besides its shards.

    ``working``: bytes of the parameters gathered at once while a rank computes: FSDP gathers whole units (a
    layer, the embedding, the head), the one computing and ``fsdp_prefetch`` ahead, so the largest unit times
    ``fsdp_prefetch + 1``; DeepSpeed (``software.zero3_max_live_params``, its ``stage3_max_live_parameters``)
    gathers module by module and releases once more than that many parameters are live, so at most that many,
    or its largest single module when that is bigger. ``fp8_params``: the linear layers' weights per GPU, which
    FP8 weight gathers (``precision.fp8_weight_gather``, torchao) hold in 1 B; the embedding, the output head and
    the norms are gathered in the weights' dtype."""

    working: float = 0.0
    fp8_params: float = 0.0

    @classmethod
    def of(cls, units: Sequence[Unit], scenario: Scenario) -> Zero3Gathers:
        p, prec = scenario.parallel, scenario.precision
        if p.zero_stage != 3:
            return cls()
        w = dtype_bytes(prec.weights)

        def per_gpu(op: Op) -> float:
            return op.params / (p.ep if op.name.startswith("experts_") else p.tp)

        def fp8(op: Op) -> bool:
            return prec.fp8_weight_gather and op.kind in ("gemm", "grouped_gemm") and op.precision_class == "linear"

        def op_bytes(op: Op) -> float:
            return per_gpu(op) * (dtype_bytes("fp8") if fp8(op) else w)

        units_bytes = [sum(op_bytes(op) for op in u.ops) for u in units]
        working = max(units_bytes, default=0.0) * (p.fsdp_prefetch + 1)
        live = scenario.software.zero3_max_live_params
        if live is not None:
            largest_module = max((op_bytes(op) for u in units for op in u.ops), default=0.0)
            working = max(largest_module, live * w)
        return cls(min(working, sum(units_bytes)), sum(per_gpu(op) for u in units for op in u.ops if fp8(op)))


def model_state_bytes(params: float, expert_params: float, scenario: Scenario,
                      gathers: Zero3Gathers = Zero3Gathers()) -> tuple[float, float, float]:
    """(weights, gradients, optimizer states) bytes per GPU for ``params`` of which ``expert_params`` are
    routed experts, under the scenario's TP, EP, DP x CP and ZeRO stage; ``gathers``: what ZeRO-3 holds
    gathered (:class:`Zero3Gathers`, of the rank's units)."""
    p: ParallelSpec = scenario.parallel
    prec = scenario.precision
    plan = ShardingPlan.of(scenario)
    dense = (params - expert_params) / p.tp
    experts = expert_params / p.ep
    e = scenario.model.n_routed_experts
    slots = (e + redundant_experts(scenario)) / e if e else 1.0
    dp_dense = scenario.fsdp_shard_size
    dp_expert = max(1, scenario.grad_replicas * p.tp // p.ep)
    w, g = dtype_bytes(prec.weights), dtype_bytes(prec.grads)
    opt = dtype_bytes(prec.master_weights) + 2 * dtype_bytes(prec.optimizer_states)

    def held(sharded: bool) -> float:
        """Parameters per GPU of a state, sharded or replicated (redundant experts are more replicas)."""
        return dense / dp_dense + experts / dp_expert if sharded else dense + experts * slots

    z = p.zero_stage
    if z == 3 and (plan.params_stay_gathered or not plan.gather_forward):
        weights = held(False) * w - gathers.fp8_params * (w - dtype_bytes("fp8"))  # all of them, gathered
    elif z == 3:
        weights = held(True) * w + min(gathers.working, held(False) * w)
    else:
        weights = held(False) * w
    grads = held(z >= 2 and (z == 2 or plan.reduce_every_microbatch)) * g
    optim = held(z >= 1) * opt
    return weights, grads, optim


def rank_model_states(partition: StagePartition, scenario: Scenario, stages: Sequence[int],
                      sp: Sequence[float], se: Sequence[float]) -> tuple[float, float, float]:
    """(weights, gradients, optimizer states) bytes per GPU of the rank that holds ``stages`` (``sp``, ``se``:
    parameters and routed-expert parameters per stage)."""
    units = [u for s in stages for u in partition.stages[s]]
    return model_state_bytes(sum(sp[s] for s in stages), sum(se[s] for s in stages), scenario,
                             Zero3Gathers.of(units, scenario))


def memory_per_rank(scenario: Scenario, partition: StagePartition, schedule: Schedule) -> list[MemoryBreakdown]:
    """Memory of each pipeline rank of ``scenario`` run as ``schedule`` over ``partition``."""
    p = scenario.parallel
    sp = stage_params(partition, scenario.model)
    se = stage_expert_params(partition)
    acts = peak_activation_bytes(schedule, stage_activation_bytes(partition, scenario),
                                 stage_rerun_bytes(partition, scenario))
    work = stage_workspace_bytes(partition, scenario)
    out = []
    for r, stages in enumerate(all_stages_of(p.schedule, p.pp, p.vpp)):
        w, g, o = rank_model_states(partition, scenario, stages, sp, se)
        out.append(MemoryBreakdown(r, w, g, o, acts[r] + max(work[s] for s in stages)))
    return out
