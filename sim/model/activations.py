"""Activation bytes a unit keeps from its forward to its backward, by recompute policy (pure arithmetic).

Activations are the tensors each op saves for its backward (``sim.model.ops.Saved``), minus what the
recompute policy recomputes: ``selective`` re-runs the activation functions (the down projections' inputs
are not kept) and the attention core, which FlashAttention recomputes anyway (Korthikanti et al. 2022's
selective recompute saves nothing more once the S x S scores are never stored); ``norm_and_up_proj`` is
DeepSeek-V3's recipe: norms, MLA up-projections (3.2.3) and the SwiGLU output (3.3.3) are recomputed;
``full`` keeps only each layer's input. Under an FP8 forward the inputs of FP8 GEMMs are cached in FP8 with
one FP32 scale per activation tile, and the input of the attention output projection in E5M6 (tech report
3.3.3). The KV cache (inference) is here too: it is per-token model arithmetic of the same kind.
"""

from __future__ import annotations

from sim.config import ModelSpec, PrecisionSpec, Scenario
from sim.model.stages import StagePartition, Unit
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


def _saved_dtype_bytes(dtype: str, precision: PrecisionSpec, hidden_dropout: bool) -> float:
    if dtype == "dropout_mask":  # a byte per element, kept only when the stack drops out hidden states
        return 1.0 if hidden_dropout else 0.0
    if dtype == "gemm_in":
        if precision.fprop == "fp8":
            return 1.0 + 4.0 / precision.activation_tile
        return 2.0
    if dtype == "o_proj_in":
        return dtype_bytes("e5m6") if precision.fprop == "fp8" else 2.0
    return dtype_bytes(dtype)


def unit_activation_bytes_per_token(unit: Unit, policy: str, precision: PrecisionSpec,
                                    hidden_dropout: bool = False) -> float:
    """Bytes one unit keeps per token of a micro-batch until its backward."""
    if unit.kind == "embed":
        return 0.0
    if policy == "full":
        return _layer_input_bytes(unit)
    dropped = DROPPED_BY_POLICY[policy]
    return sum(s.elems * _saved_dtype_bytes(s.dtype, precision, hidden_dropout)
               for op in unit.ops for s in op.saves if s.tag not in dropped)


def _layer_input_bytes(unit: Unit) -> float:
    """Full recompute keeps the BF16 input of each unit (a checkpoint) and nothing else."""
    first_norm = next((op for op in unit.ops if op.kind == "norm"), None)
    return 2.0 * (first_norm.width if first_norm else 0)


def stage_activation_bytes(partition: StagePartition, scenario: Scenario) -> list[float]:
    """Activation bytes one micro-batch leaves on each stage (per GPU, after TP/SP sharding)."""
    p = scenario.parallel
    tokens = scenario.tokens_per_microbatch
    out = []
    for units in partition.stages:
        per_token = sum(unit_activation_bytes_per_token(u, p.recompute, scenario.precision,
                                                        scenario.software.hidden_dropout > 0) for u in units)
        out.append(per_token * tokens / p.tp)
    return out
