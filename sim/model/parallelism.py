"""How tensor and sequence parallelism split each op and saved tensor, and which ops a recompute policy re-runs.

Tensor parallelism (Megatron-LM, Shoeybi et al. 2019; Narayanan et al. 2021 section 2.3):

- column-parallel GEMMs (Q/K/V and up projections, the vocabulary-parallel head) split their output width and
  read the whole input; row-parallel GEMMs (``o_proj``, ``ffn_down``, ``shared_down``) split their input
  width; MLA's down projections, the router and the MTP projection are replicated on every TP rank;
- routed experts use expert tensor parallelism 1: each TP rank dispatches and computes its own share of the
  tokens (Megatron-Core's sequence-parallel MoE), so their tensors are split by TP as well;
- the attention core, activation functions, RoPE, the token permutation and the vocabulary-parallel cross
  entropy run inside the TP region on TP-split widths; norms, dropout, residual adds, the embedding lookup and
  the router's top-k run outside it, on the full width on every TP rank unless sequence parallelism splits
  their tokens (Korthikanti et al. 2022, section 4.2.2).

Saved tensors follow the same split (Korthikanti et al. 2022, section 4.1): a tensor read by an op inside the
TP region is split by TP; one read by a norm, a column-parallel or a replicated GEMM is replicated unless
sequence parallelism is on.

Recompute policies (``parallel.recompute``) name the ops re-run in the backward pass:

- ``selective``: the attention core, Korthikanti et al. 2022 section 5 (``QK^T``, softmax, its dropout,
  attention over V); the linear layers' outputs stay saved;
- ``activations``: activation functions only (SwiGLU/GeLU);
- ``norm_and_up_proj``: DeepSeek-V3's recipe (tech report 3.2.3): norms, MLA up-projections and the SwiGLU
  output;
- ``alternate_matmuls``: torchtitan's op-level selective checkpointing (``selective_ac_option: op``,
  torchtitan ``parallelize_llama.py``): the outputs of matmuls and of the attention kernel are saved, every
  other op (norms, RoPE, activation functions) is re-run, and so is every second matmul of a layer in
  execution order (``wk``, ``wo``, ``w3`` of a Llama layer). A fused op holding several matmuls (``qkv_proj``:
  ``wq, wk, wv``; a gated ``ffn_up``: ``w1, w3``) is re-run in the fraction of its width those matmuls
  have;
- ``full``: the whole layer from its input;
- a list of op names and module names (Megatron-LM ``--recompute-modules``: ``core_attn``, ``layernorm``,
  ``mla_up_proj``, ``moe_act``, ``mlp``, ``moe``; and ``norms``, ``up_proj``, ``activations``,
  ``shared_experts``).

A tensor saved for the backward is dropped when the op that produced it is re-run (its producer is the op
before its reader in the layer's op list; the attention kernel's own statistics are its own), in the fraction
of the producer that is re-run, so memory (:mod:`sim.model.activations`) and compute (:mod:`sim.costs.ops`)
follow one rule.
"""

from __future__ import annotations

from functools import cache

from sim.config import ModelSpec
from sim.config.parallel import RECOMPUTE_MODULES
from sim.errors import SimInputError
from sim.model.ops import Op, Saved
from sim.model.stages import model_units

ROW_PARALLEL = frozenset({"o_proj", "ffn_down", "shared_down"})
REPLICATED = frozenset({"q_a_proj", "kv_a_proj", "router", "mtp_eh_proj"})
ROUTED_EXPERTS = frozenset({"moe_permute", "experts_up", "experts_act", "experts_down", "moe_unpermute"})
SHARED_EXPERTS = frozenset({"shared_up", "shared_act", "shared_down"})
UP_PROJECTIONS = frozenset({"q_b_proj", "kv_b_proj", "qkv_proj", "q_proj", "rope"})
ACTIVATIONS = frozenset({"ffn_act", "experts_act", "shared_act"})
DENSE_MLP = frozenset({"ffn_up", "ffn_act", "ffn_down"})
#: The attention core: one ``attention`` op per layer (:mod:`sim.model.ops`); an unfused implementation's
#: scores, softmax, dropout and context kernels are costed inside it (``software.attention``).
ATTENTION_CORE = frozenset({"attention"})
#: Memory-bound kernels inside the TP region (TP-split width); the others run on the full width.
INSIDE_TP = ACTIVATIONS | ATTENTION_CORE | ROUTED_EXPERTS | {"rope", "cross_entropy"}


def is_core(op: Op) -> bool:
    return op.kind == "attention" or op.name in ATTENTION_CORE


def inside_tp(op: Op) -> bool:
    """Whether a memory-bound op works on a TP-split width (else on the full width, split only by SP)."""
    return is_core(op) or op.name in INSIDE_TP


def reads_split_input(op: Op) -> bool:
    """Whether ``op`` reads a TP-split tensor (so what it saves for backward is split by TP): ops inside the TP
    region (the attention core, activation functions, routed experts, the vocabulary-parallel cross entropy)
    and row-parallel GEMMs."""
    return inside_tp(op) or op.name in ROW_PARALLEL


def saved_tp_split(op: Op, tp: int, sp: bool) -> int:
    """The factor by which a tensor that ``op`` saves is split across a TP group of ``tp``."""
    if tp <= 1:
        return 1
    return tp if reads_split_input(op) or sp else 1


# ---------------------------------------------------------------------------------------------- recompute


def _module_ops(module: str) -> frozenset[str] | None:
    """Op names (or ``"*norm"`` for every norm, ``"*core"`` for the attention core) of a module name."""
    return {
        "core_attn": frozenset({"*core"}), "layernorm": frozenset({"*norm"}), "norms": frozenset({"*norm"}),
        "mla_up_proj": UP_PROJECTIONS, "up_proj": UP_PROJECTIONS, "moe_act": frozenset({"experts_act", "shared_act"}),
        "activations": ACTIVATIONS, "mlp": DENSE_MLP, "moe": ROUTED_EXPERTS | SHARED_EXPERTS,
        "shared_experts": SHARED_EXPERTS,
    }.get(module)


_POLICY_MODULES: dict[str, tuple[str, ...]] = {
    "none": (), "selective": ("core_attn",), "activations": ("activations",),
    "norm_and_up_proj": ("norms", "up_proj", "activations"), "alternate_matmuls": ("norms", "activations", "rope"),
}

#: (op names and ``*norm``/``*core`` markers re-run, whether the whole layer is re-run, (op name, fraction of
#: the op re-run) for ops re-run in part)
RecomputeSpec = tuple[frozenset[str], bool, tuple[tuple[str, float], ...]]


def matmul_widths(op: Op, m: ModelSpec) -> tuple[int, ...]:
    """Output widths of the matmuls a GEMM op stands for, in execution order (a fused QKV projection is
    ``wq, wk, wv``; a gated up projection ``w1, w3``); one matmul otherwise."""
    if op.name == "qkv_proj":
        q, kv = m.n_heads * m.qk_head_dim, m.kv_heads * m.qk_head_dim
        v = m.kv_heads * m.value_head_dim
        return (q, kv, v) if q + kv + v == op.n else (op.n,)
    if op.name in ("ffn_up", "shared_up") and m.ffn_activation == "swiglu" and op.n % 2 == 0:
        return (op.n // 2, op.n // 2)
    return (op.n,)


def _alternate_fractions(m: ModelSpec) -> tuple[tuple[str, float], ...]:
    """Per GEMM op of the model's layers: the fraction of its width that is every second matmul of its layer."""
    out: dict[str, float] = {}
    for unit in model_units(m):
        if unit.kind != "layer":
            continue
        count = 0
        for op in unit.ops:
            if op.kind not in ("gemm", "grouped_gemm"):
                continue
            widths = matmul_widths(op, m)
            again = 0
            for w in widths:
                count += 1
                again += w if count % 2 == 0 else 0
            out.setdefault(op.name, again / sum(widths))
    return tuple(sorted((k, v) for k, v in out.items() if v > 0))


#: Blocks no recompute policy re-runs: every stack checkpoints its transformer layers (Megatron-LM's
#: ``--recompute-granularity full`` and ``selective`` wrap TransformerLayer / core attention; torchtitan's AC
#: wraps each TransformerBlock; Megatron-DeepSpeed's ``--checkpoint-activations`` the ParallelTransformerLayer
#: modules), so the embedding, the final norm, the output projection and the loss run once and keep their
#: tensors (Narayanan et al. 2021, Eq. 3: the logit layer is counted 3x, the layers 4x).
NEVER_RECOMPUTED: frozenset[str] = frozenset({"embed", "head"})


@cache
def _model_op_names(m: ModelSpec) -> frozenset[str]:
    return frozenset(op.name for u in model_units(m) for op in u.ops)


@cache
def _never_recomputed_names(m: ModelSpec) -> frozenset[str]:
    """Ops of the embedding and the output head (``NEVER_RECOMPUTED``): no policy may name them."""
    return frozenset(op.name for u in model_units(m) for op in u.ops if op.block in NEVER_RECOMPUTED)


@cache
def recompute_spec(m: ModelSpec, policy: str | tuple[str, ...]) -> RecomputeSpec:
    """(op names and ``*norm``/``*core`` markers re-run in backward, whether the whole layer is re-run, ops
    re-run in part with their fractions).

    Raises :class:`SimInputError` naming ``parallel.recompute`` for a name that is neither a module nor an op
    of the model."""
    if policy == "full":
        return frozenset(), True, ()
    names = _POLICY_MODULES[policy] if isinstance(policy, str) else policy
    if "full" in names:
        return frozenset(), True, ()
    partial = _alternate_fractions(m) if policy == "alternate_matmuls" else ()
    out: set[str] = set()
    known = _model_op_names(m)
    for name in names:
        ops = _module_ops(name)
        if ops is not None:
            out |= ops
        elif name in _never_recomputed_names(m):
            raise SimInputError(f"{name!r} is part of the embedding or the output head, which stacks run once "
                                "and never recompute (they checkpoint transformer layers); name ops of the "
                                f"layers: {', '.join(sorted(known - _never_recomputed_names(m)))}",
                                field="parallel.recompute")
        elif name in known:
            out.add(name)
        elif isinstance(policy, str):
            continue  # a named policy's op this model does not have (RoPE under learned positions)
        else:
            raise SimInputError(f"{name!r} is neither an op of {m.name} nor a module; modules: "
                                f"{', '.join(RECOMPUTE_MODULES)}; ops: {', '.join(sorted(known))}",
                                field="parallel.recompute")
    return frozenset(out), False, partial




def recompute_fraction(spec: RecomputeSpec, op: Op) -> float:
    """The fraction of ``op``'s forward the policy ``spec`` (from :func:`recompute_spec`) re-runs in the
    backward: 1 or 0, or a part of a fused GEMM op."""
    names, full, partial = spec
    if op.block in NEVER_RECOMPUTED:
        return 0.0
    if full or op.name in names or (op.kind == "norm" and "*norm" in names) or (is_core(op) and "*core" in names):
        return 1.0
    for name, frac in partial:
        if name == op.name:
            return frac
    return 0.0


def recomputed(spec: RecomputeSpec, op: Op) -> bool:
    """Whether the policy ``spec`` re-runs ``op``'s forward (all of it) in the backward."""
    return recompute_fraction(spec, op) == 1.0


def dropped(unit_ops: tuple[Op, ...], i: int, saved: Saved, spec: RecomputeSpec) -> float:
    """The fraction of tensor ``saved`` of op ``unit_ops[i]`` dropped (recomputed) under ``spec`` (not
    ``full``): that of its producer, the op before its reader, except the residual stream (a layer's input,
    never dropped short of full recompute), the attention kernel's own statistics (produced by the attention
    itself) and the attention's Q, K and V (produced by the last projection GEMM before it)."""
    if saved.tag == "residual":
        return 0.0
    op = unit_ops[i]
    if saved.tag == "other" and is_core(op):
        return recompute_fraction(spec, op)
    if saved.tag == "up_proj_out":  # Q, K, V come from the projection GEMM (RoPE rotates them in place)
        gemm = next((o for o in reversed(unit_ops[:i]) if o.kind in ("gemm", "grouped_gemm")), None)
        return recompute_fraction(spec, gemm) if gemm is not None else 0.0
    return recompute_fraction(spec, unit_ops[i - 1]) if i > 0 else 0.0


def recompute_fwd_flops_per_token(unit_ops: tuple[Op, ...], spec: RecomputeSpec, keys_per_query: float) -> float:
    """Forward FLOPs per token a policy re-runs in one unit's backward (the hardware FLOPs recompute adds; GEMMs
    ``2 n k`` per row, the attention core ``2 heads (d_qk + d_v)`` per key, memory-bound ops none)."""
    return sum((op.gemm_flops_per_token() + op.attention_fwd_flops_per_token(keys_per_query))
               * recompute_fraction(spec, op) for op in unit_ops)
