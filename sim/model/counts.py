"""Parameter and FLOP counts: total, activated, per stage, per op and pass.

Conventions (stated so results can be compared with published figures):
- ``params_total`` is the main model: embedding, transformer layers, final norm and head (once if tied);
  MTP modules are counted apart (``params_mtp``), as DeepSeek does (671B main + MTP, tech report 4.2 and
  README_WEIGHTS.md).
- ``params_active`` counts the parameters a token touches *excluding* the input embedding table (a lookup,
  no arithmetic), including the head: 36.6B for DeepSeek-V3. ``params_active_with_embedding`` adds the table
  (37.5B for DeepSeek-V3).
- Training FLOPs per token = 3 x forward (forward, input-gradient, weight-gradient GEMMs), with the attention
  core's backward counted as twice its forward and no weight gradient; causal attention sees S/2 keys per
  query on average. MTP is excluded from ``train_flops_per_token`` (DeepSeek's 250 GFLOPs per token, ISCA'25
  Table 2, excludes it) and reported as ``train_flops_per_token_mtp``. Recompute is hardware work, not model
  arithmetic: it is costed by the program, not counted here.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.config import ModelSpec
from sim.model.ops import Op
from sim.model.stages import StagePartition, model_units


def keys_per_query(seq_len: int, causal: bool) -> float:
    return seq_len / 2 if causal else float(seq_len)


def _units(m: ModelSpec, kinds: tuple[str, ...]) -> list:
    return [u for u in model_units(m) if u.kind in kinds]


def params_total(m: ModelSpec) -> int:
    return sum(op.params for u in _units(m, ("embed", "layer", "head")) for op in u.ops)


def params_mtp(m: ModelSpec) -> int:
    return sum(op.params for u in _units(m, ("mtp",)) for op in u.ops)


def params_active(m: ModelSpec, include_embedding: bool = False) -> float:
    kinds = ("embed", "layer", "head") if include_embedding else ("layer", "head")
    total = sum(op.active_params for u in _units(m, kinds) for op in u.ops)
    if not include_embedding and m.tie_word_embeddings:
        # A tied head uses the embedding matrix for arithmetic: it is active even without the lookup.
        total += m.vocab_size * m.dim
    return total


def params_expert(m: ModelSpec) -> int:
    """Routed-expert parameters of the main model and MTP (sharded by expert parallelism)."""
    return sum(op.params for u in _units(m, ("layer", "mtp")) for op in u.ops if op.name.startswith("experts_"))


@dataclass(frozen=True, slots=True)
class PassFlops:
    """Model FLOPs per token of one op in each pass."""

    fwd: float
    dgrad: float
    wgrad: float

    @property
    def total(self) -> float:
        return self.fwd + self.dgrad + self.wgrad


def op_flops(op: Op, seq_len: int, causal: bool = True) -> PassFlops:
    g = op.gemm_flops_per_token()
    a = op.attention_fwd_flops_per_token(keys_per_query(seq_len, causal))
    return PassFlops(fwd=g + a, dgrad=g + 2.0 * a, wgrad=g)


def op_bytes(op: Op) -> tuple[float, float]:
    """Bytes one op's forward reads and writes: (per token of activations, per micro-batch of weights), in
    BF16. A GEMM reads its ``rows x k`` input and writes ``rows x n``; attention reads Q, K, V and writes the
    output; norms and elementwise ops read and write their width; weights are read once per micro-batch."""
    if op.kind in ("gemm", "grouped_gemm"):
        return 2.0 * op.rows_per_token * (op.k + op.n), 2.0 * op.params
    if op.kind == "attention":
        return 2.0 * op.heads * (2 * op.qk_dim + 2 * op.v_dim), 0.0
    if op.kind == "embedding":
        return 4.0 * op.width, 0.0
    return 4.0 * op.width, 2.0 * op.params


def _train_flops(ops: list[Op], seq_len: int, causal: bool) -> float:
    return sum(op_flops(op, seq_len, causal).total for op in ops)


def train_flops_per_token(m: ModelSpec, seq_len: int, causal: bool = True) -> float:
    """Training FLOPs per token of the main model (no MTP, no recompute)."""
    return _train_flops([op for u in _units(m, ("embed", "layer", "head")) for op in u.ops], seq_len, causal)


def train_flops_per_token_mtp(m: ModelSpec, seq_len: int, causal: bool = True) -> float:
    return _train_flops([op for u in _units(m, ("mtp",)) for op in u.ops], seq_len, causal)


def forward_flops_per_token(m: ModelSpec, seq_len: int, causal: bool = True) -> float:
    ops = [op for u in _units(m, ("embed", "layer", "head")) for op in u.ops]
    return sum(op_flops(op, seq_len, causal).fwd for op in ops)


def stage_params(layout: StagePartition, m: ModelSpec) -> list[int]:
    """Parameters held by each stage; a tied head on a stage without the embedding holds its own copy."""
    out = []
    for s, units in enumerate(layout.stages):
        n = sum(op.params for u in units for op in u.ops)
        if m.tie_word_embeddings and s != 0 and any(u.kind == "head" for u in units):
            n += m.vocab_size * m.dim
        out.append(n)
    return out


def stage_expert_params(layout: StagePartition) -> list[int]:
    return [sum(op.params for u in units for op in u.ops if op.name.startswith("experts_"))
            for units in layout.stages]


def stage_params_per_gpu(layout: StagePartition, m: ModelSpec, tp: int, ep: int) -> tuple[list[float], list[float]]:
    """Per stage, (dense parameters per GPU, routed-expert parameters per GPU): dense split by TP, experts by EP."""
    experts = stage_expert_params(layout)
    dense = [(a - e) / tp for a, e in zip(stage_params(layout, m), experts, strict=True)]
    return dense, [e / ep for e in experts]
