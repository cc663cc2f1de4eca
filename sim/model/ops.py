"""The operators of each layer: GEMM shapes, parameters, FLOPs per token and the tensors saved for backward.

Everything is per token of the micro-batch entering the layer. A GEMM with weight ``[n, k]`` applied to
``rows_per_token`` rows per token costs ``2 * rows * n * k`` FLOPs in each of the three passes (forward,
input-gradient, weight-gradient). Routed experts have ``rows_per_token = top-k``: each token is multiplied by
k experts' weights. The attention core (``Q K^T`` and ``P V``) costs ``2 * heads * (d_qk + d_v) * S_k`` forward
FLOPs per query token, where ``S_k`` is the keys a query sees (``S`` non-causal, ``S / 2`` causal, the
FlashAttention convention); its model backward is twice the forward (four GEMMs), with no weight gradient.

Blocks name where an op sits in DeepSeek's chunk decomposition (tech report 3.2.1): ``attn`` is everything
before the MoE dispatch (norms, attention, output projection, router), ``mlp`` the experts or the dense FFN.
Precision class ``linear`` follows ``PrecisionSpec`` (FP8-eligible); ``high`` stays in BF16 (embedding,
head, gating, per the tech report 3.3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sim.config import ModelSpec

OpKind = Literal["gemm", "grouped_gemm", "attention", "norm", "elementwise", "embedding", "residual"]
Block = Literal["embed", "attn", "mlp", "head", "mtp"]
# Recompute tags: which policy drops a saved tensor (and recomputes its producer in backward).
SaveTag = Literal["residual", "norm_out", "up_proj_out", "attn_out", "act_out", "dropout_mask", "other"]


@dataclass(frozen=True, slots=True)
class Saved:
    """A tensor kept from forward to backward: ``elems`` per token, stored as ``dtype`` (``"gemm_in"`` means
    the dtype the forward GEMM reads: FP8 under an FP8 forward, else BF16)."""

    name: str
    elems: float
    dtype: str
    tag: SaveTag


@dataclass(frozen=True, slots=True)
class Op:
    name: str
    kind: OpKind
    block: Block
    n: int = 0
    k: int = 0
    rows_per_token: float = 1.0
    params: int = 0
    active_params: float = 0.0
    heads: int = 0
    qk_dim: int = 0
    v_dim: int = 0
    width: int = 0
    precision_class: Literal["linear", "high"] = "linear"
    groups: int = 1
    saves: tuple[Saved, ...] = field(default=())

    def gemm_flops_per_token(self) -> float:
        """Forward (= input-gradient = weight-gradient) FLOPs per token of a GEMM op."""
        if self.kind in ("gemm", "grouped_gemm"):
            return 2.0 * self.rows_per_token * self.n * self.k
        return 0.0

    def attention_fwd_flops_per_token(self, keys_per_query: float) -> float:
        return 2.0 * self.heads * (self.qk_dim + self.v_dim) * keys_per_query if self.kind == "attention" else 0.0


def _gemm(name: str, block: Block, n: int, k: int, bias: bool, *, rows: float = 1.0, copies: int = 1,
          active_copies: float = 1.0, cls: Literal["linear", "high"] = "linear",
          saves: tuple[Saved, ...] = ()) -> Op:
    per_copy = n * k + (n if bias else 0)
    kind: OpKind = "grouped_gemm" if copies > 1 or rows != 1.0 else "gemm"
    return Op(name, kind, block, n=n, k=k, rows_per_token=rows, params=per_copy * copies,
              active_params=per_copy * active_copies, precision_class=cls, groups=copies, saves=saves)


def _residual(name: str, block: Block, width: int) -> Op:
    """The end of a block: (bias,) dropout and the residual add; its dropout mask is kept for the backward
    (1 byte per element; a software stack without hidden dropout keeps none)."""
    return Op(name, "residual", block, width=width, saves=(Saved(f"{name}.mask", width, "dropout_mask",
                                                                 "dropout_mask"),))


def _norm(name: str, block: Block, width: int, model: ModelSpec, tag: SaveTag = "residual") -> Op:
    params = width * (2 if model.norm == "layernorm" else 1)
    return Op(name, "norm", block, width=width, params=params, active_params=params,
              saves=(Saved(f"{name}.in", width, "bf16", tag),))


def attention_ops(m: ModelSpec, block: Block = "attn") -> list[Op]:
    """Input norm, Q/K/V projections, attention core, output projection."""
    h, d, b = m.n_heads, m.dim, m.bias
    ops = [_norm("attn_norm", block, d, m)]
    if m.attention == "mla":
        qk, v = m.qk_head_dim, m.v_head_dim
        if m.q_lora_rank:
            ops += [_gemm("q_a_proj", block, m.q_lora_rank, d, b, saves=(Saved("x_norm", d, "gemm_in", "norm_out"),)),
                    _norm("q_a_norm", block, m.q_lora_rank, m, tag="other"),
                    _gemm("q_b_proj", block, h * qk, m.q_lora_rank, b,
                          saves=(Saved("q_latent_norm", m.q_lora_rank, "gemm_in", "norm_out"),))]
        else:
            ops.append(_gemm("q_proj", block, h * qk, d, b, saves=(Saved("x_norm", d, "gemm_in", "norm_out"),)))
        # kv_a_proj reads the same normed input the query projection saved: nothing more to keep.
        ops += [_gemm("kv_a_proj", block, m.kv_lora_rank + m.qk_rope_head_dim, d, b),
                _norm("kv_a_norm", block, m.kv_lora_rank, m, tag="other"),
                _gemm("kv_b_proj", block, h * (m.qk_nope_head_dim + v), m.kv_lora_rank, b,
                      saves=(Saved("kv_latent_norm", m.kv_lora_rank, "gemm_in", "norm_out"),)),
                Op("rope", "elementwise", block, width=h * m.qk_rope_head_dim + m.qk_rope_head_dim)]
    else:
        qk = v = m.attn_head_dim
        ops += [_gemm("qkv_proj", block, (h + 2 * m.kv_heads) * qk, d, b,
                      saves=(Saved("x_norm", d, "gemm_in", "norm_out"),))]
        if m.position_embedding == "rope":
            ops.append(Op("rope", "elementwise", block, width=(h + m.kv_heads) * qk))
    kv_heads = m.kv_heads if m.attention != "mla" else h
    core_saves = (Saved("q", h * qk, "bf16", "up_proj_out"),
                  Saved("k", kv_heads * qk, "bf16", "up_proj_out"),
                  Saved("v", kv_heads * v, "bf16", "up_proj_out"),
                  Saved("softmax_lse", h, "fp32", "other"))
    ops.append(Op("attention", "attention", block, heads=h, qk_dim=qk, v_dim=v, precision_class="high",
                  saves=core_saves))
    ops.append(_gemm("o_proj", block, d, h * v, b, saves=(Saved("attn_out", h * v, "o_proj_in", "attn_out"),)))
    ops.append(_residual("attn_residual", block, d))
    return ops


def ffn_ops(m: ModelSpec, block: Block = "mlp") -> list[Op]:
    """A dense FFN: norm, up (and gate) projection, activation, down projection."""
    d, f, b = m.dim, m.inter_dim, m.bias
    up_n = 2 * f if m.ffn_activation == "swiglu" else f
    return [_norm("ffn_norm", block, d, m),
            _gemm("ffn_up", block, up_n, d, b, saves=(Saved("ffn_in", d, "gemm_in", "norm_out"),)),
            Op("ffn_act", "elementwise", block, width=up_n, saves=(Saved("act_in", up_n, "bf16", "other"),)),
            _gemm("ffn_down", block, d, f, b, saves=(Saved("down_in", f, "gemm_in", "act_out"),)),
            _residual("mlp_residual", block, d)]


def moe_ops(m: ModelSpec, pre: Block = "attn", post: Block = "mlp") -> list[Op]:
    """Norm and router (before dispatch), then routed experts and shared experts (after dispatch).

    Routed expert rows are top-k per token. The SwiGLU input is kept in the GEMM input dtype (FP8 under an
    FP8 recipe, as DeepSeek caches it, tech report 3.3.3); its output, the down projection's input, is kept
    unless the recompute policy re-runs the activation (tag ``act_out``).
    """
    d, f, e, k = m.dim, m.moe_inter_dim, m.n_routed_experts, m.n_activated_experts
    s = m.n_shared_experts
    ops = [_norm("ffn_norm", pre, d, m),
           Op("router", "gemm", pre, n=e, k=d, params=e * d + (e if m.score_func == "sigmoid" else 0),
              active_params=e * d, precision_class="high", saves=(Saved("router_in", d, "bf16", "norm_out"),)),
           Op("router_topk", "elementwise", pre, width=e, precision_class="high"),
           # Token permutation into expert-contiguous rows before the grouped GEMM, and the weighted
           # un-permutation after it (DeepSeek's trace: expand_to_fused and reduce_fused kernels).
           Op("moe_permute", "elementwise", post, width=k * d),
           _gemm("experts_up", post, 2 * f, d, False, rows=k, copies=e, active_copies=k,
                 saves=(Saved("expert_in", k * d, "gemm_in", "other"),)),
           Op("experts_act", "elementwise", post, width=int(2 * f * k),
              saves=(Saved("expert_act_in", 2 * f * k, "gemm_in", "other"),)),
           _gemm("experts_down", post, d, f, False, rows=k, copies=e, active_copies=k,
                 saves=(Saved("experts_down_in", k * f, "gemm_in", "act_out"),)),
           # The gate-weight gradient is (W_down^T dY) . h, from the down projection's input gradient and its
           # input h: expert outputs need not be kept.
           Op("moe_unpermute", "elementwise", post, width=k * d)]
    if s:
        ops += [_gemm("shared_up", post, 2 * f * s, d, False),
                Op("shared_act", "elementwise", post, width=2 * f * s,
                   saves=(Saved("shared_act_in", 2 * f * s, "gemm_in", "other"),)),
                _gemm("shared_down", post, d, f * s, False,
                      saves=(Saved("shared_down_in", f * s, "gemm_in", "act_out"),))]
    ops.append(_residual("mlp_residual", post, d))
    return ops


def layer_ops(m: ModelSpec, layer: int) -> list[Op]:
    """Ops of transformer layer ``layer`` (0-based); MoE layers follow the dense ones."""
    return attention_ops(m) + (moe_ops(m) if m.is_moe_layer(layer) else ffn_ops(m))


def embedding_ops(m: ModelSpec) -> list[Op]:
    ops = [Op("embed", "embedding", "embed", width=m.dim, params=m.vocab_size * m.dim,
              active_params=m.vocab_size * m.dim, precision_class="high")]
    if m.position_embedding == "learned":
        ops.append(Op("pos_embed", "embedding", "embed", width=m.dim, params=m.max_seq_len * m.dim,
                      active_params=m.max_seq_len * m.dim, precision_class="high"))
    return ops


def head_ops(m: ModelSpec, block: Block = "head", shared: bool = False) -> list[Op]:
    """Final norm and the output projection (kept in BF16). ``shared``: weights owned elsewhere (MTP)."""
    head = _gemm("head", block, m.vocab_size, m.dim, False, cls="high",
                 saves=(Saved("head_in", m.dim, "bf16", "norm_out"),))
    if shared or m.tie_word_embeddings:
        head = Op(head.name, head.kind, head.block, n=head.n, k=head.k, precision_class="high",
                  saves=head.saves)
    # The loss keeps its logits' softmax for the backward: FP32 in Megatron-LM's vocabulary-parallel cross
    # entropy (Korthikanti et al. 2022 section 4.3 count FP32 logits, 4 s b v / t bytes) and torchtitan's
    # .float() loss, BF16 in a fused loss (software.cross_entropy).
    return [_norm("final_norm", block, m.dim, m), head,
            Op("cross_entropy", "elementwise", block, width=m.vocab_size,
               saves=(Saved("logits", m.vocab_size, "loss", "other"),))]


def mtp_ops(m: ModelSpec) -> list[Op]:
    """One multi-token-prediction module (tech report 2.2): two norms, a 2d x d projection, one transformer
    layer of the last layer's kind, and the shared output head (FLOPs, no parameters)."""
    last = m.n_layers - 1
    pre = [_norm("mtp_enorm", "mtp", m.dim, m), _norm("mtp_hnorm", "mtp", m.dim, m),
           _gemm("mtp_eh_proj", "mtp", m.dim, 2 * m.dim, False,
                 saves=(Saved("mtp_eh_in", 2 * m.dim, "gemm_in", "norm_out"),))]
    return pre + layer_ops(m, last) + head_ops(m, block="head", shared=True)
