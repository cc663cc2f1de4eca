"""FLOP cross-check: ``torch.utils.flop_counter.FlopCounterMode`` over one forward and backward of the reference
network against the simulator's analytic FLOPs (:mod:`sim.model.counts`) for the same ``ModelSpec``.

The forward is compared per op (layer unit and op name): ``2 rows n k`` per GEMM, ``2 heads (d_qk + d_v) S_k``
per query for the attention core; the backward per class: the GEMMs' input and weight gradients (``2 x`` their
forward) and the attention core's backward (``2 x`` its forward); and the grand total. All exactly: FLOP counts
are integers. Conventions that make them comparable:

- The attention core runs as explicit matmuls (``impl="math"``): FlopCounterMode has no formula for the CPU
  flash kernel (``_scaled_dot_product_flash_attention_for_cpu``), and it counts a causal mask as the full
  ``S x S`` product. The analytic side is therefore taken non-causal (``S`` keys per query). With the math
  implementation the backward is four matmuls, exactly the analytic 2 x forward; FlopCounterMode's SDPA
  formulas instead count five (they recompute ``Q K^T``: 2.5 x forward, hardware FLOPs of FlashAttention).
- Norms, RoPE, activations, softmax, the router's top-k and the loss are not matmuls: neither side counts them.
- MTP is included on both sides (``train_flops_per_token`` + ``train_flops_per_token_mtp``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from sim.calibrate.reference.model import ReferenceModel
from sim.config import ModelSpec
from sim.model.counts import op_flops
from sim.model.stages import model_units

#: Module names that are not the op's own name.
_ALIASES = {"router": "router", "core": "attention", "head": "head"}


@dataclass(frozen=True, slots=True)
class FlopCheck:
    """Counted and analytic FLOPs of one training step: the forward per op, the backward per class (GEMMs,
    attention core), and the totals. FlopCounterMode attributes forward FLOPs to modules reliably but not
    backward ones (its module tracker can credit one backward matmul to two modules), so the backward is
    compared by class: ``mm``/``addmm`` (GEMMs) and ``bmm`` (the attention core, the only batched matmul)."""

    tokens: int
    seq_len: int
    forward: dict[tuple[str, str], float]  # (unit, op) -> counted forward FLOPs
    analytic_forward: dict[tuple[str, str], float]
    backward: dict[str, float]  # "gemm" / "attention" -> counted backward FLOPs
    analytic_backward: dict[str, float]
    counted_total: float
    analytic_total: float

    def mismatches(self) -> list[str]:
        """Every disagreement, exact comparison (FLOP counts are integers)."""
        out = []
        for key in sorted(set(self.forward) | set(self.analytic_forward)):
            c, a = self.forward.get(key, 0.0), self.analytic_forward.get(key, 0.0)
            if c != a:
                out.append(f"forward {key[0]}.{key[1]}: counted {c:.6g}, analytic {a:.6g}")
        for cls in ("gemm", "attention"):
            c, a = self.backward.get(cls, 0.0), self.analytic_backward.get(cls, 0.0)
            if c != a:
                out.append(f"backward {cls}: counted {c:.6g}, analytic {a:.6g}")
        if self.counted_total != self.analytic_total:
            out.append(f"total: counted {self.counted_total:.6g}, analytic {self.analytic_total:.6g}")
        return out


def analytic_flops(m: ModelSpec, seq_len: int, tokens: int) -> tuple[dict[tuple[str, str], float],
                                                                     dict[str, float]]:
    """Forward FLOPs per ``(unit, op)`` and backward FLOPs per class for ``tokens`` tokens (attention
    non-causal), from :func:`sim.model.counts.op_flops`."""
    fwd: dict[tuple[str, str], float] = {}
    bwd = {"gemm": 0.0, "attention": 0.0}
    for unit in model_units(m):
        for op in unit.ops:
            f = op_flops(op, seq_len, causal=False)
            if f.fwd:
                fwd[(unit.name, op.name)] = fwd.get((unit.name, op.name), 0.0) + f.fwd * tokens
                bwd["attention" if op.kind == "attention" else "gemm"] += (f.dgrad + f.wgrad) * tokens
    return fwd, bwd


def flop_crosscheck(m: ModelSpec, batch: int = 1, seq_len: int = 32, seed: int = 0) -> FlopCheck:
    """Count one training step's FLOPs of the reference network and set them beside the analytic ones."""
    torch.manual_seed(seed)
    model = ReferenceModel(m, impl="math")
    tokens = torch.randint(0, m.vocab_size, (batch, seq_len + 1 + m.n_mtp_layers))
    fwd_counter, bwd_counter = FlopCounterMode(display=False), FlopCounterMode(display=False)
    with fwd_counter:
        loss = model(tokens)
    with bwd_counter:
        loss.backward()
    forward: dict[tuple[str, str], float] = {}
    for fqn, per_op in fwd_counter.get_flop_counts().items():
        key = _op_key(fqn)
        if key is not None:
            forward[key] = forward.get(key, 0.0) + float(sum(per_op.values()))
    backward = {"gemm": 0.0, "attention": 0.0}
    for op, flops in bwd_counter.get_flop_counts().get("Global", {}).items():
        backward["attention" if "bmm" in str(op) else "gemm"] += float(flops)
    a_fwd, a_bwd = analytic_flops(m, seq_len, batch * seq_len)
    counted = float(fwd_counter.get_total_flops() + bwd_counter.get_total_flops())
    return FlopCheck(batch * seq_len, seq_len, forward, a_fwd, backward, a_bwd, counted,
                     sum(a_fwd.values()) + sum(a_bwd.values()))


_PATTERNS = (
    (re.compile(r"^ReferenceModel\.layers\.(\d+)\.attn\.(\w+)$"), "layer{0}", "{1}"),
    (re.compile(r"^ReferenceModel\.layers\.(\d+)\.mlp\.router$"), "layer{0}", "router"),
    (re.compile(r"^ReferenceModel\.layers\.(\d+)\.mlp\.(up|down)$"), "layer{0}", "ffn_{1}"),
    (re.compile(r"^ReferenceModel\.layers\.(\d+)\.mlp\.experts\.\d+\.(up|down)$"), "layer{0}", "experts_{1}"),
    (re.compile(r"^ReferenceModel\.layers\.(\d+)\.mlp\.shared\.(up|down)$"), "layer{0}", "shared_{1}"),
    (re.compile(r"^ReferenceModel\.head$"), "head", "head"),
    (re.compile(r"^ReferenceModel\.mtp\.(\d+)\.eh_proj$"), "mtp{0}", "mtp_eh_proj"),
    (re.compile(r"^ReferenceModel\.mtp\.(\d+)\.head$"), "mtp{0}", "head"),
    (re.compile(r"^ReferenceModel\.mtp\.(\d+)\.block\.attn\.(\w+)$"), "mtp{0}", "{1}"),
    (re.compile(r"^ReferenceModel\.mtp\.(\d+)\.block\.mlp\.router$"), "mtp{0}", "router"),
    (re.compile(r"^ReferenceModel\.mtp\.(\d+)\.block\.mlp\.(up|down)$"), "mtp{0}", "ffn_{1}"),
    (re.compile(r"^ReferenceModel\.mtp\.(\d+)\.block\.mlp\.experts\.\d+\.(up|down)$"), "mtp{0}", "experts_{1}"),
    (re.compile(r"^ReferenceModel\.mtp\.(\d+)\.block\.mlp\.shared\.(up|down)$"), "mtp{0}", "shared_{1}"),
)


def _op_key(fqn: str) -> tuple[str, str] | None:
    """The analytic ``(unit, op)`` a leaf module's FLOPs belong to; None for containers and the root."""
    for pattern, unit, op in _PATTERNS:
        hit = pattern.match(fqn)
        if hit:
            name = op.format(*hit.groups())
            if name.endswith("_norm") or name in ("attn", "mlp"):
                return None
            return unit.format(*hit.groups()), _ALIASES.get(name, name)
    return None
