"""Memory per GPU: weights, gradients, optimizer states (by ZeRO stage), activations, KV cache.

Model states per rank follow ZeRO (Rajbhandari et al. 2020): stage 1 shards the master weights and optimizer
moments across data-parallel ranks, stage 2 also the gradients, stage 3 also the working weights. Routed
experts are sharded over expert parallelism and replicated over the remaining ``dp * tp / ep`` ranks, which
is the data-parallel degree their states are sharded across. A rank holds every stage the schedule places on
it: two under DualPipe (two parameter copies), ``vpp`` under interleaved 1F1B.

Activations are the tensors each op saves for its backward (``sim.model.ops.Saved``), minus what the
recompute policy recomputes: ``selective`` re-runs the activation functions (the down projections' inputs
are not kept) and the attention core, which FlashAttention recomputes anyway (Korthikanti et al. 2022's
selective recompute saves nothing more once the S x S scores are never stored); ``norm_and_up_proj`` is
DeepSeek-V3's recipe: norms, MLA up-projections (3.2.3) and the SwiGLU output (3.3.3) are recomputed;
``full`` keeps only each layer's input. Under an FP8 forward the inputs of FP8
GEMMs are cached in FP8 with one FP32 scale per activation tile, and the input of the attention output
projection in E5M6 (tech report 3.3.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sim.config import ModelSpec, ParallelSpec, PrecisionSpec, Scenario
from sim.model.counts import stage_expert_params, stage_params
from sim.model.layout import StageLayout, Unit
from sim.pipeline import stages_per_rank
from sim.units import dtype_bytes

DROPPED_BY_POLICY: dict[str, frozenset[str]] = {
    "none": frozenset(),
    "selective": frozenset({"act_out"}),
    "norm_and_up_proj": frozenset({"norm_out", "up_proj_out", "act_out"}),
}


def kv_cache_bytes_per_token(m: ModelSpec, dtype: str = "bf16") -> float:
    """KV cache per token for inference: MLA caches the compressed latent plus the RoPE key (ISCA'25 Table 1:
    70,272 bytes for DeepSeek-V3 in BF16); MHA/GQA cache K and V of every KV head."""
    per_layer = (m.kv_lora_rank + m.qk_rope_head_dim) if m.attention == "mla" else 2 * m.kv_heads * m.attn_head_dim
    return m.n_layers * per_layer * dtype_bytes(dtype)


def _saved_dtype_bytes(dtype: str, precision: PrecisionSpec) -> float:
    if dtype == "gemm_in":
        if precision.fprop == "fp8":
            return 1.0 + 4.0 / precision.activation_tile
        return 2.0
    if dtype == "o_proj_in":
        return dtype_bytes("e5m6") if precision.fprop == "fp8" else 2.0
    return dtype_bytes(dtype)


def unit_activation_bytes_per_token(unit: Unit, policy: str, precision: PrecisionSpec) -> float:
    """Bytes one unit keeps per token of a micro-batch until its backward."""
    if unit.kind == "embed":
        return 0.0
    if policy == "full":
        return _layer_input_bytes(unit)
    dropped = DROPPED_BY_POLICY[policy]
    return sum(s.elems * _saved_dtype_bytes(s.dtype, precision)
               for op in unit.ops for s in op.saves if s.tag not in dropped)


def _layer_input_bytes(unit: Unit) -> float:
    """Full recompute keeps the BF16 input of each unit (a checkpoint) and nothing else."""
    first_norm = next((op for op in unit.ops if op.kind == "norm"), None)
    return 2.0 * (first_norm.width if first_norm else 0)


def stage_activation_bytes(layout: StageLayout, scenario: Scenario) -> list[float]:
    """Activation bytes one micro-batch leaves on each stage (per GPU, after TP/SP sharding)."""
    p = scenario.parallel
    tokens = scenario.tokens_per_microbatch
    out = []
    for units in layout.stages:
        per_token = sum(unit_activation_bytes_per_token(u, p.recompute, scenario.precision) for u in units)
        out.append(per_token * tokens / p.tp)
    return out


def rank_stages(schedule: str, pp: int, num_stages: int) -> list[list[int]]:
    """The stages each pipeline rank holds."""
    if schedule == "dualpipe":
        return [[r, pp - 1 - r] for r in range(pp)]
    if schedule == "dualpipev":
        return [[r, 2 * pp - 1 - r] for r in range(pp)]
    return [[s for s in range(num_stages) if s % pp == r] for r in range(pp)]


@dataclass(frozen=True, slots=True)
class MemoryBreakdown:
    """Bytes per GPU on one pipeline rank."""

    rank: int
    weights: float
    gradients: float
    optimizer: float
    activations: float
    total: float


def _model_state_bytes(params: float, expert_params: float, scenario: Scenario) -> tuple[float, float, float]:
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


def memory_per_rank(layout: StageLayout, scenario: Scenario,
                    inflight: Sequence[Sequence[float]] | None = None) -> list[MemoryBreakdown]:
    """Memory of each pipeline rank. ``inflight[r][i]`` is the peak number of micro-batches whose
    activations rank ``r`` holds for its ``i``-th stage; by default from the schedule (``default_inflight``).
    ``sim run`` replaces the activations with the peak its simulation tracked."""
    p = scenario.parallel
    m = scenario.model
    sp = stage_params(layout, m)
    se = stage_expert_params(layout)
    acts = stage_activation_bytes(layout, scenario)
    owned = rank_stages(p.schedule, p.pp, layout.num_stages)
    if inflight is None:
        inflight = default_inflight(p.schedule, p.pp, scenario.num_microbatches, p.vpp)
    out = []
    for r, stages in enumerate(owned):
        w, g, o = _model_state_bytes(sum(sp[s] for s in stages), sum(se[s] for s in stages), scenario)
        a = sum(inflight[r][i] * acts[s] for i, s in enumerate(stages))
        out.append(MemoryBreakdown(r, w, g, o, a, w + g + o + a))
    return out


def default_inflight(schedule: str, pp: int, num_microbatches: int, vpp: int = 1) -> list[list[float]]:
    """Peak in-flight micro-batches per rank and stage, before a full simulation: the schedule's own peak
    (its list-scheduler with uniform durations; the peak depends on the action order, not the durations),
    shared evenly among the rank's stages. An activation counts from its forward until its weight gradient."""
    from sim.schedules.generators import build_schedule
    from sim.schedules.listsched import simulate

    result = simulate(build_schedule(schedule, pp, num_microbatches, vpp))
    k = stages_per_rank(schedule, vpp)
    return [[peak / k] * k for peak in result.peak_activations_per_rank]
