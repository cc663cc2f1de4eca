"""Seconds of one model op (``sim.model.ops.Op``) in one pass, on one GPU of the layout.

Translates an op and the tokens of a micro-batch into cost-model calls (``sim.costs``): GEMM shapes after
tensor parallelism (column-parallel projections split ``n``, row-parallel ones split ``k``, Megatron-LM),
expert GEMMs over the rows each local expert receives, attention heads per TP rank (FlashAttention or the
unfused path, by ``software.attention``), and memory-bound kernels by the bytes each moves. Recompute
(``ParallelSpec.recompute``) re-runs an op's forward inside the backward-for-input pass.

Memory-bound kernels follow the software stack (``software.fused_kernels``, ``software.compile``, dropout
probabilities): :func:`elementwise_kernels` lists, per op and pass, the kernels that run and the HBM bytes each
moves per element of the op's width (BF16 values, 1-byte dropout masks), after mechanisms.md 2.3: Megatron-LM
fuses bias + GeLU (4 B per element instead of 8) and bias + dropout + residual add (7 B instead of 15); eager
RMSNorm is three kernels (about 10 B) where a fused norm is one (4 B); SwiGLU reads gate and up and writes
their product (3 B per input element fused, 5 eager). Each kernel also pays its launch
(``kernel_overhead_us``, or ``software.kernel_launch_us``).
"""

from __future__ import annotations

from typing import Literal

from sim.config import ModelSpec, Scenario, SoftwareSpec
from sim.costs.kernels import CostModel
from sim.model.ops import Op

Part = Literal["fwd", "input", "weight"]

ROW_PARALLEL = frozenset({"o_proj", "ffn_down", "shared_down", "experts_down"})
REPLICATED = frozenset({"q_a_proj", "kv_a_proj", "router", "mtp_eh_proj"})
UP_PROJECTIONS = frozenset({"q_b_proj", "kv_b_proj", "qkv_proj", "q_proj", "rope"})
ACTIVATIONS = frozenset({"ffn_act", "experts_act", "shared_act"})


def recomputed(policy: str, op: Op) -> bool:
    """Whether ``policy`` re-runs ``op``'s forward during the backward pass; consistent with the tensors
    ``sim.model.memory`` drops for it."""
    if policy == "full":
        return True
    if policy == "selective":
        return op.name in ACTIVATIONS
    if policy == "norm_and_up_proj":
        return op.kind == "norm" or op.name in UP_PROJECTIONS or op.name in ACTIVATIONS
    return False


def elementwise_kernels(op: Op, pass_: str, sw: SoftwareSpec, model: ModelSpec) -> tuple[tuple[str, float], ...]:
    """(kernel name, bytes per element of ``op.width``) of the memory-bound kernels ``op`` runs in ``pass_``
    (``fwd`` or ``dgrad``; none in ``wgrad``)."""
    fused = sw.fused_kernels or sw.compile
    fwd = pass_ == "fwd"
    if op.kind == "norm":
        eager_rms = model.norm == "rmsnorm" and not fused
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
        self.policy = scenario.parallel.recompute

    def seconds(self, op: Op, part: Part, tokens: float, rows_per_expert: tuple[float, ...] = ()) -> float:
        """``fwd``: the forward; ``input``: input gradient plus recompute; ``weight``: weight gradient."""
        if part == "fwd":
            return self._pass(op, "fwd", tokens, rows_per_expert)
        if part == "input":
            t = self._pass(op, "dgrad", tokens, rows_per_expert)
            if recomputed(self.policy, op):
                t += self._pass(op, "fwd", tokens, rows_per_expert)
            return t
        return self._pass(op, "wgrad", tokens, rows_per_expert)

    def _pass(self, op: Op, pass_: Literal["fwd", "dgrad", "wgrad"], tokens: float,
              rows_per_expert: tuple[float, ...]) -> float:
        c = self.costs
        if op.kind in ("gemm", "grouped_gemm"):
            return self._gemm(op, pass_, tokens, rows_per_expert)
        if op.kind == "attention":
            sw = self.s.software
            if sw.attention == "unfused":
                return c.unfused_attention_seconds(pass_, tokens, self.seq_len, op.heads // self.tp, op.qk_dim,
                                                   op.v_dim, sw.attention_dropout > 0, sw.fused_kernels or sw.compile)
            return c.attention_seconds(pass_, tokens, self.seq_len, op.heads // self.tp, op.qk_dim, op.v_dim)
        width_tokens = tokens * op.width / (self.tp if self.sp else 1)
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
        n, k = op.n, op.k
        if op.name not in REPLICATED and op.kind == "gemm":
            if op.name in ROW_PARALLEL:
                k //= self.tp
            else:
                n //= self.tp
        if op.kind == "grouped_gemm":
            groups = rows_per_expert or (tokens * op.rows_per_token,)
            return self.costs.gemm_pass_seconds(pass_, sum(groups), n, k, op.precision_class, groups)
        return self.costs.gemm_pass_seconds(pass_, tokens * op.rows_per_token, n, k, op.precision_class)
