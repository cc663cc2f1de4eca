"""Activation bytes a unit keeps from its forward to its backward, by recompute policy and layout (pure arithmetic).

Activations are the tensors each op saves for its backward (``sim.model.ops.Saved``), minus those the recompute
policy re-creates in the backward (:mod:`sim.model.parallelism`: a tensor is dropped when its producer is
re-run). ``full`` keeps only each layer's input (a checkpoint); no policy re-runs the output head and the loss
(``NEVER_RECOMPUTED``), so the head keeps its input and the loss its logits under every policy. With
FlashAttention the ``S x S`` scores are never stored, so Korthikanti et al.'s ``selective`` policy saves only
the attention output here; an unfused attention (``software.attention``) keeps its softmax output, dropout
mask and dropped-out scores, which the ``selective`` policy drops with the core. A backward also holds a
working set of its own while it runs (:func:`unit_workspace_bytes_per_token`).

Per GPU (Korthikanti et al. 2022, section 4.2): a tensor read inside the tensor-parallel region is split by TP;
the norm inputs, the inputs of column-parallel and replicated GEMMs and the full-recompute checkpoint are
replicated on every TP rank unless sequence parallelism splits them too (``sbh(10 + 24/t + 5as/ht)`` without SP,
``sbh(34/t + 5as/ht)`` with it, for a GPT layer); context parallelism splits every activation by CP (each GPU
holds 1/CP of the sequence). Under an FP8 forward the inputs of FP8 GEMMs are cached in FP8 with one FP32 scale
per activation tile, and the input of the attention output projection in E5M6 (DeepSeek-V3 tech report 3.3.3).
The KV cache (inference) is here too: it is per-token model arithmetic of the same kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sim.config import ModelSpec, ParallelSpec, PrecisionSpec, Scenario, SoftwareSpec
from sim.config.parallel import RECOMPUTE_POLICIES
from sim.model.ops import Op
from sim.model.parallelism import NEVER_RECOMPUTED, dropped, recompute_spec, recomputed, saved_tp_split
from sim.model.stages import StagePartition, Unit
from sim.units import dtype_bytes

#: The named policies ``sim model`` reports.
POLICIES = RECOMPUTE_POLICIES


def kv_cache_bytes_per_token(m: ModelSpec, dtype: str = "bf16") -> float:
    """KV cache per token for inference: MLA caches the compressed latent plus the RoPE key (ISCA'25 Table 1:
    70,272 bytes for DeepSeek-V3 in BF16); MHA/GQA cache K and V of every KV head."""
    per_layer = (m.kv_lora_rank + m.qk_rope_head_dim) if m.attention == "mla" else 2 * m.kv_heads * m.attn_head_dim
    return m.n_layers * per_layer * dtype_bytes(dtype)


def _saved_dtype_bytes(dtype: str, precision: PrecisionSpec, software: SoftwareSpec | None) -> float:
    if dtype == "dropout_mask":  # a byte per element, kept only when the stack drops out hidden states
        return 1.0 if software is not None and software.hidden_dropout > 0 else 0.0
    if dtype == "loss":  # the loss's saved logits: FP32 softmax, or what a fused loss keeps (BF16)
        fp32 = software is not None and not software.loss_compiled and software.cross_entropy != "fused"
        return dtype_bytes("fp32") if fp32 else dtype_bytes("bf16")
    if dtype == "gemm_in":
        if precision.fprop == "fp8":
            return dtype_bytes("fp8") + dtype_bytes("fp32") / precision.activation_tile
        return dtype_bytes("bf16")
    if dtype == "o_proj_in":
        return dtype_bytes("e5m6") if precision.fprop == "fp8" else dtype_bytes("bf16")
    return dtype_bytes(dtype)


_MEMO: dict[tuple[Any, ...], tuple[float, tuple[Any, ...]]] = {}


def _memo(name: str, unit: Unit, configs: tuple[Any, ...], values: tuple[Any, ...],
          compute: Callable[[], float]) -> float:
    """``compute()`` once per unit shape (its kind and its ``ops`` tuple, which ``model_units`` shares among the
    layers of one kind) and set of configuration objects, both by identity (pydantic specs with dict fields do
    not hash, and hashing every op costs more than the count; the memo keeps the objects alive so an identity
    is never reused), and plain ``values``. Bounded: cleared past 50,000 entries."""
    key = (name, unit.kind, unit.moe, id(unit.ops), *(id(c) for c in configs), *values)
    hit = _MEMO.get(key)
    if hit is not None:
        return hit[0]
    value = compute()
    if len(_MEMO) > 50_000:
        _MEMO.clear()
    _MEMO[key] = (value, (unit.ops, *configs))
    return value


def unit_activation_bytes_per_token(unit: Unit, policy: str | tuple[str, ...], precision: PrecisionSpec,
                                    model: ModelSpec, tp: int = 1, sp: bool = False,
                                    software: SoftwareSpec | None = None, seq_len: int = 0) -> float:
    """Bytes one unit keeps per token of a micro-batch until its backward, on one GPU of a TP group of ``tp``
    (``sp``: sequence parallelism on). ``software`` (default: FlashAttention, no dropout) says whether residual
    dropout masks are kept and whether an unfused attention keeps its ``seq_len``-wide score rows."""
    return _memo("kept", unit, (precision, model, software), (policy, tp, sp, seq_len),
                 lambda: _unit_activation_bytes(unit, policy, precision, model, tp, sp, software, seq_len))


def _unit_activation_bytes(unit: Unit, policy: str | tuple[str, ...], precision: PrecisionSpec, model: ModelSpec,
                           tp: int, sp: bool, software: SoftwareSpec | None, seq_len: int) -> float:
    if unit.kind == "embed":
        return 0.0
    spec = recompute_spec(model, policy)
    total = 0.0
    if spec[1] and unit.kind in ("layer", "mtp"):
        total = _layer_input_bytes(unit) / (tp if sp else 1)
    # the attention kernel keeps the K and V it was given: repeated ones only when no recompute re-creates them
    # (a policy that re-runs anything recomputes the cheap repeat from the projections' outputs it keeps)
    repeat = software if not (spec[0] or spec[1] or spec[2]) else None
    for i, op in enumerate(unit.ops):
        if spec[1] and op.block not in NEVER_RECOMPUTED:
            continue  # inside the checkpoint: re-created in the backward
        for s in op.saves:
            kept = 1.0 - dropped(unit.ops, i, s, spec)
            if kept > 0:
                total += (kept * s.elems * _kv_repeat(op, s.name, model, repeat)
                          * _saved_dtype_bytes(s.dtype, precision, software) / saved_tp_split(op, tp, sp))
        if op.kind == "attention" and not recomputed(spec, op):
            total += _unfused_scores_bytes(op, software, seq_len) / tp
    return total


def _kv_repeat(op: Op, name: str, model: ModelSpec, software: SoftwareSpec | None) -> float:
    """How many times the attention kernel's saved K and V are the projections' (``software.repeat_kv``: the
    stack repeats the KV heads to the query heads before the kernel, which saves what it was given); 1 when
    ``software`` is None (the repeat is recomputed)."""
    if op.kind != "attention" or name not in ("k", "v") or model.attention == "mla":
        return 1.0
    return model.n_heads / model.kv_heads if software is not None and software.repeat_kv else 1.0


def _unfused_scores_bytes(op: Op, software: SoftwareSpec | None, seq_len: int) -> float:
    """Per query token: what an unfused attention keeps of its ``S x S`` scores for the backward, per head and key
    (Korthikanti et al. 2022, 4.2.1: the softmax output in BF16; with attention dropout its 1-byte mask and the
    dropped-out probabilities in BF16 too: ``5as`` per token); FlashAttention keeps none."""
    if software is None or software.attention != "unfused":
        return 0.0
    per_key = dtype_bytes("bf16") + ((1.0 + dtype_bytes("bf16")) if software.attention_dropout > 0 else 0.0)
    return op.heads * seq_len * per_key


def _layer_input_bytes(unit: Unit) -> float:
    """Full recompute keeps the BF16 input of each unit (a checkpoint) and nothing else."""
    first_norm = next((op for op in unit.ops if op.kind == "norm"), None)
    return dtype_bytes("bf16") * (first_norm.width if first_norm else 0)


def _per_stage(partition: StagePartition, value: Callable[[Unit], float],
               reduce: Callable[[list[float]], float]) -> list[float]:
    """``reduce`` of ``value`` over each stage's units, ``value`` computed once per unit shape (layers of one
    kind share their ops tuple)."""
    seen: dict[tuple[str, bool, int], float] = {}
    out = []
    for units in partition.stages:
        vals = []
        for u in units:
            k = (u.kind, u.moe, id(u.ops))
            v = seen.get(k)
            if v is None:
                v = seen[k] = value(u)
            vals.append(v)
        out.append(reduce(vals))
    return out


def stage_activation_bytes(partition: StagePartition, scenario: Scenario) -> list[float]:
    """Activation bytes one micro-batch leaves on each stage, per GPU (after TP, SP and CP)."""
    p, prec, m, sw = scenario.parallel, scenario.precision, scenario.model, scenario.software
    seq, tokens = scenario.training.seq_len, scenario.tokens_per_gpu
    sp = p.sequence_parallel and p.tp > 1
    return [x * tokens for x in _per_stage(
        partition, lambda u: unit_activation_bytes_per_token(u, p.recompute, prec, m, p.tp, sp, sw, seq), sum)]


def _loss_grad_bytes(software: SoftwareSpec) -> float:
    """Bytes per logit the loss's backward allocates beside the logits it keeps: a fused or compiled loss writes
    a BF16 gradient; Megatron-LM's vocabulary-parallel cross entropy turns its saved FP32 softmax into the
    gradient in place and casts it to BF16 (2 B); PyTorch's eager ``F.cross_entropy(logits.float())`` holds
    NLL's FP32 gradient and log-softmax's FP32 input gradient at once (8 B) before the BF16 cast."""
    if software.loss_compiled or software.cross_entropy in ("fused", "megatron_fp32"):
        return dtype_bytes("bf16")
    return 2 * dtype_bytes("fp32")


def unit_workspace_bytes_per_token(unit: Unit, scenario: Scenario) -> float:
    """Bytes per token of the local micro-batch that one unit's backward holds on top of the activations kept
    for it, per GPU: what it alone needs while it runs, so a rank's peak adds the largest of its units'.

    - Recompute: the backward re-creates the tensors the policy dropped (its forward re-run saves them again),
      so they are held until that unit's backward ends: the unit's bytes without recompute minus with it (an
      upper bound for policies that re-run modules one at a time).
    - The loss: the gradient it writes (:func:`_loss_grad_bytes`). A multi-token-prediction module runs its
      loss's backward before its layer's, so it holds the larger of the two, not both.
    - Context parallelism that all-gathers K and V (``all_gather``, ``pytorch``): the whole sequence's K and V
      of the layer (``cp`` times the local ones; the heads each GPU of a TP group holds, at least one), gathered
      again in the backward; ``all_gather`` also gathers their gradients whole before reduce-scattering them.
      PyTorch's ring backward (``convert_to_f32``) also holds its gradients in FP32: the query gradient's
      accumulator and three K/V-sized buffers (the accumulated gradients, their concatenation for the send,
      and the previous send still in flight). Megatron's ring passes one block at a time (two in flight), which
      is small beside it and left out."""
    p, m, sw, prec, seq = (scenario.parallel, scenario.model, scenario.software, scenario.precision,
                           scenario.training.seq_len)
    return _memo("work", unit, (p, m, sw, prec), (seq,), lambda: _unit_workspace(unit, p, m, sw, prec, seq))


def _unit_workspace(unit: Unit, p: ParallelSpec, m: ModelSpec, sw: SoftwareSpec, prec: PrecisionSpec,
                    seq: int) -> float:
    sp = p.sequence_parallel and p.tp > 1
    layer = loss = 0.0
    if unit.kind in ("layer", "mtp"):
        held = unit_activation_bytes_per_token(unit, p.recompute, prec, m, p.tp, sp, sw, seq)
        layer += unit_activation_bytes_per_token(unit, "none", prec, m, p.tp, sp, sw, seq) - held
    for op in unit.ops:
        for s in op.saves:
            if s.dtype == "loss":
                loss += s.elems * _loss_grad_bytes(sw) / saved_tp_split(op, p.tp, sp)
        if op.kind == "attention" and p.cp > 1 and p.cp_mode in ("all_gather", "pytorch"):
            kv_heads = m.n_heads if m.attention == "mla" or sw.repeat_kv else m.kv_heads
            kv_elems = max(1, kv_heads // p.tp) * (op.qk_dim + op.v_dim)
            layer += kv_elems * dtype_bytes("bf16") * p.cp * (2 if p.cp_mode == "all_gather" else 1)
            if p.cp_mode == "pytorch":
                q_elems = max(1, op.heads // p.tp) * op.qk_dim
                layer += (q_elems + 3 * kv_elems) * dtype_bytes("fp32")
    return max(layer, loss)


def stage_workspace_bytes(partition: StagePartition, scenario: Scenario) -> list[float]:
    """The largest working set (:func:`unit_workspace_bytes_per_token`) of one micro-batch's backward on each
    stage, per GPU."""
    tokens = scenario.tokens_per_gpu
    return [x * tokens for x in _per_stage(partition, lambda u: unit_workspace_bytes_per_token(u, scenario),
                                           lambda v: max(v, default=0.0))]


def unit_rerun_bytes_per_token(unit: Unit, scenario: Scenario) -> float:
    """Bytes per token that one unit's input-gradient pass re-creates and its deferred weight gradient still
    reads: the inputs of its GEMMs that the recompute policy dropped (a split backward's W multiplies them by
    the output gradients after the I is done). Zero without recompute, and for the head (never recomputed)."""
    if unit.kind not in ("layer", "mtp"):
        return 0.0
    p, m, sw, prec = scenario.parallel, scenario.model, scenario.software, scenario.precision
    return _memo("rerun", unit, (p, m, sw, prec), (), lambda: _unit_rerun(unit, p, m, sw, prec))


def _unit_rerun(unit: Unit, p: ParallelSpec, m: ModelSpec, sw: SoftwareSpec, prec: PrecisionSpec) -> float:
    spec = recompute_spec(m, p.recompute)
    sp = p.sequence_parallel and p.tp > 1
    total = 0.0
    for i, op in enumerate(unit.ops):
        if op.kind not in ("gemm", "grouped_gemm") or op.block in NEVER_RECOMPUTED:
            continue
        for s in op.saves:
            gone = 1.0 if spec[1] else dropped(unit.ops, i, s, spec)
            if gone > 0:
                total += gone * s.elems * _saved_dtype_bytes(s.dtype, prec, sw) / saved_tp_split(op, p.tp, sp)
    return total


def stage_rerun_bytes(partition: StagePartition, scenario: Scenario) -> list[float]:
    """Per stage, what one micro-batch's input-gradient pass re-creates for its deferred weight gradient
    (:func:`unit_rerun_bytes_per_token` over the stage's units), per GPU; it matters only to schedules that
    split the backward (ZB1P, DualPipe, DualPipeV), where it is held from the I to the W."""
    tokens = scenario.tokens_per_gpu
    return [x * tokens for x in _per_stage(partition, lambda u: unit_rerun_bytes_per_token(u, scenario), sum)]
