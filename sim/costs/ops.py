"""Seconds of one model op (``sim.model.ops.Op``) in one pass, on one GPU of the layout.

Translates an op and the tokens of a micro-batch on one GPU into cost-model calls (``sim.costs``), split as
:mod:`sim.model.parallelism` says (Megatron-LM): column-parallel projections split ``n``, row-parallel ones
``k``; replicated GEMMs (MLA down projections, router) run whole, on 1/TP of the tokens under sequence
parallelism; routed experts run over the rows each local expert receives (each TP rank dispatches its own
share of the tokens); attention heads are split by TP (FlashAttention or the unfused path, by
``software.attention``; the flash kernel's curve by ``software.flash_kernel``), and its queries are the GPU's
1/CP of each sequence against all of the sequence's keys (zig-zag balanced causal work, Megatron-LM context
parallelism); memory-bound kernels move their width x tokens,
the width split by TP inside the TP region and the tokens by TP outside it under sequence parallelism
(Korthikanti et al. 2022). Recompute (``ParallelSpec.recompute``) re-runs an op's forward inside the
backward-for-input pass.

Memory-bound kernels follow the software stack (``software.fused_kernels``, ``software.compile`` over the ops
its ``compile_scope`` covers, dropout probabilities): :func:`elementwise_kernels` lists, per op and pass, the
kernels that run and the HBM bytes each moves per element of the op's width (BF16 values, 1-byte dropout
masks), as Megatron-LM does: it
fuses bias + GeLU (4 B per element instead of 8) and bias + dropout + residual add (7 B instead of 15); eager
RMSNorm is three kernels (about 10 B) where a fused norm is one (4 B); SwiGLU reads gate and up and writes
their product (3 B per input element fused, 5 eager). Eager code that upcasts (``software.eager_fp32``,
Meta's Llama reference code as torchtitan runs it) moves FP32 copies instead: RMSNorm ``(x.float() * rsqrt(
mean(x.float()^2) + eps)).type_as(x) * w`` is six kernels and 36 B per element forward, its autograd
backward eight and 56 B; rotary embeddings through ``view_as_complex(x.float())`` are a cast, a complex
multiply and a cast back, 20 B per element each way, where fused RoPE reads and writes BF16 (4 B, 6 B
backward). Each kernel also pays its launch (``kernel_overhead_us``, or ``software.kernel_launch_us``).
"""

from __future__ import annotations

from typing import Literal

from sim.config import ModelSpec, Scenario, SoftwareSpec
from sim.costs.kernels import CostModel
from sim.model.ops import Op
from sim.model.parallelism import (
    ACTIVATIONS,
    REPLICATED,
    ROUTED_EXPERTS,
    ROW_PARALLEL,
    inside_tp,
    recompute_fraction,
    recompute_spec,
    recomputed,
)

Part = Literal["fwd", "input", "weight"]


def elementwise_kernels(op: Op, pass_: str, sw: SoftwareSpec, model: ModelSpec) -> tuple[tuple[str, float], ...]:
    """(kernel name, bytes per element of ``op.width``) of the memory-bound kernels ``op`` runs in ``pass_``
    (``fwd`` or ``dgrad``; none in ``wgrad``)."""
    fused = sw.fused_kernels or sw.compiles(op.block, op.name)
    fwd = pass_ == "fwd"
    if op.kind == "norm":
        eager_rms = model.norm == "rmsnorm" and not fused
        if eager_rms and sw.eager_fp32:
            if fwd:  # upcast (r2 w4), square (r4 w4), mean (r4), scale (r4 w4), downcast (r4 w2), weight (r2 w2)
                return (("norm_cast", 6.0), ("norm_pow", 8.0), ("norm_mean", 4.0), ("norm_scale", 8.0),
                        ("norm_cast", 6.0), ("norm_weight", 4.0))
            # weight: g*w (r2 w2) and sum(g*n) (r2 r2); upcast g (r2 w4); scale: g*r (r4 w4) and sum(g*x) (r4 r4);
            # square: 2x*g_mean (r4 w4); the two gradients of x added (r4 r4 w4); downcast (r4 w2)
            return (("norm_weight", 4.0), ("norm_wgrad", 4.0), ("norm_cast", 6.0), ("norm_scale", 8.0),
                    ("norm_rgrad", 8.0), ("norm_pow", 8.0), ("norm_add", 12.0), ("norm_cast", 6.0))
        if fwd:
            return (("norm", 2.0), ("norm", 4.0), ("norm", 4.0)) if eager_rms else (("norm", 4.0),)
        return (("norm", 6.0), ("norm", 6.0)) if eager_rms else (("norm", 6.0),)
    if op.kind == "residual":
        drop = sw.hidden_dropout > 0
        if not fwd:
            return (("dropout", 5.0),) if drop else ()
        if fused:  # read the block output and the residual, write the sum (and the mask)
            return (("residual_add", 7.0 if drop else 6.0),)
        return (*((("bias_add", 4.0),) if model.bias else ()), *((("dropout", 5.0),) if drop else ()),
                ("residual_add", 6.0))
    if op.name == "cross_entropy":  # per logit element (software.cross_entropy)
        kind = "fused" if sw.compiles(op.block, op.name) else sw.cross_entropy
        if kind == "fused":  # read the BF16 logits; the backward writes their BF16 gradient
            return (("cross_entropy", 2.0),) if fwd else (("cross_entropy", 4.0),)
        if kind == "megatron_fp32":
            if fwd:  # upcast (r2 w4), max (r4), subtract (r4 w4), exp (r4 w4), sum (r4), normalize (r4 w4)
                return (("ce_cast", 6.0), ("ce_max", 4.0), ("ce_sub", 8.0), ("ce_exp", 8.0), ("ce_sum", 4.0),
                        ("ce_softmax", 8.0))
            return (("ce_grad", 8.0), ("ce_cast", 6.0))  # softmax minus one-hot times the loss gradient; to BF16
        if fwd:  # torch_fp32: upcast (r2 w4), log-softmax (r4 w4, its row reductions in cache)
            return (("ce_cast", 6.0), ("log_softmax", 8.0))
        return (("log_softmax", 12.0), ("ce_cast", 6.0))  # its backward (r4 r4 w4); to BF16
    if op.name == "rope" and sw.eager_fp32 and not fused:  # upcast (r2 w4), complex multiply (r4 w4), downcast
        return (("rope_cast", 6.0), ("rope", 8.0), ("rope_cast", 6.0))  # (r4 w2); the backward the same by conj(f)
    if op.name in ACTIVATIONS:
        if model.ffn_activation == "swiglu":  # width = gate + up
            if fwd:
                return (("swiglu", 3.0),) if fused else (("swiglu", 2.0), ("swiglu", 3.0))
            return (("swiglu", 5.0),) if fused else (("swiglu", 5.0), ("swiglu", 3.0))
        if fwd:
            return (("gelu", 4.0),) if fused or not model.bias else (("bias_add", 4.0), ("gelu", 4.0))
        return (("gelu", 6.0),)
    return ((op.name, 4.0 if fwd else 6.0),)


class OpCoster:
    """Seconds of each op for one scenario; ``rows_per_expert`` comes from the expert load of the layer."""

    def __init__(self, scenario: Scenario, costs: CostModel) -> None:
        self.s = scenario
        self.costs = costs
        self.tp = scenario.parallel.tp
        self.sp = scenario.parallel.sequence_parallel and self.tp > 1
        self.seq_len = scenario.training.seq_len
        self.recompute = recompute_spec(scenario.model, scenario.parallel.recompute)

    def is_recomputed(self, op: Op) -> bool:
        return recomputed(self.recompute, op)

    def recompute_fraction(self, op: Op) -> float:
        return recompute_fraction(self.recompute, op)

    def seconds(self, op: Op, part: Part, tokens: float, rows_per_expert: tuple[float, ...] = ()) -> float:
        """``fwd``: the forward; ``input``: input gradient plus recompute; ``weight``: weight gradient.
        ``tokens``: the micro-batch's tokens on this GPU (its 1/CP of each sequence, before TP)."""
        if part == "fwd":
            return self._pass(op, "fwd", tokens, rows_per_expert)
        if part == "input":
            t = self._pass(op, "dgrad", tokens, rows_per_expert)
            again = self.recompute_fraction(op)
            if again > 0:  # a part of a fused GEMM op: that part of its forward time
                t += again * self._pass(op, "fwd", tokens, rows_per_expert)
            return t
        return self._pass(op, "wgrad", tokens, rows_per_expert)

    def offdiagonal_share(self, op: Op, pass_: Literal["fwd", "dgrad"]) -> float:
        """For the attention core ``op`` under context parallelism: the time of a ring step after the diagonal
        one (a whole, unmasked block) as a share of the diagonal step's (a causal block of the same work):
        :meth:`~sim.costs.kernels.CostModel.noncausal_share` of the stack's flash kernel; 1 on the unfused
        path, which computes every score and masks in the softmax either way."""
        if self.s.software.attention == "unfused":
            return 1.0
        return self.costs.noncausal_share(pass_, self.seq_len, self.s.software.flash_kernel)

    def _pass(self, op: Op, pass_: Literal["fwd", "dgrad", "wgrad"], tokens: float,
              rows_per_expert: tuple[float, ...]) -> float:
        c = self.costs
        if op.kind in ("gemm", "grouped_gemm"):
            return self._gemm(op, pass_, tokens, rows_per_expert)
        if op.kind == "attention":
            sw = self.s.software
            if sw.attention == "unfused":
                return c.unfused_attention_seconds(pass_, tokens, self.seq_len, op.heads // self.tp, op.qk_dim,
                                                   op.v_dim, sw.attention_dropout > 0,
                                                   sw.fused_kernels or sw.compiles(op.block, op.name))
            return c.attention_seconds(pass_, tokens, self.seq_len, op.heads // self.tp, op.qk_dim, op.v_dim,
                                       kernel=sw.flash_kernel)
        split = self.tp if (inside_tp(op) or self.sp) else 1
        width_tokens = tokens * op.width / split
        if op.kind == "embedding":
            # Forward: gather rows (read + write BF16). Weight gradient: scatter-add into FP32 gradients.
            return {"fwd": c.memory_seconds(4.0 * width_tokens, "embedding"), "dgrad": 0.0,
                    "wgrad": c.memory_seconds(6.0 * width_tokens, "embedding")}[pass_]
        if pass_ == "wgrad":
            return 0.0
        return sum(c.memory_seconds(per * width_tokens, name)
                   for name, per in elementwise_kernels(op, pass_, self.s.software, self.s.model))

    def _gemm(self, op: Op, pass_: Literal["fwd", "dgrad", "wgrad"], tokens: float,
              rows_per_expert: tuple[float, ...]) -> float:
        n, k, rows = op.n, op.k, tokens * op.rows_per_token
        if op.name in ROUTED_EXPERTS:
            rows /= self.tp  # expert TP 1: each TP rank's share of the tokens
        elif op.name in REPLICATED:
            rows /= self.tp if self.sp else 1
        elif op.kind == "gemm":
            if op.name in ROW_PARALLEL:
                k //= self.tp
            else:
                n //= self.tp
        if op.kind == "grouped_gemm":
            groups = rows_per_expert or (rows,)
            return self.costs.gemm_pass_seconds(pass_, sum(groups), n, k, op.precision_class, groups)
        return self.costs.gemm_pass_seconds(pass_, rows, n, k, op.precision_class)
