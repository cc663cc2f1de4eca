"""Attention and feed-forward layers of the reference network, built from a :class:`~sim.config.ModelSpec`.

Module names equal the op names of :mod:`sim.model.ops` (``q_a_proj``, ``kv_b_proj``, ``o_proj``,
``qkv_proj``, ``up``/``down`` of an FFN) so that FLOPs counted per module map onto the analytic op list.
Activations are kept 2-D ``[tokens, features]`` through every linear layer (one ``mm`` per GEMM); the attention
core, a child module named ``core``, sees ``[batch, heads, seq, head_dim]``.

MLA follows DeepSeek-V3 ``inference/model.py`` (commit 9b4e978, the "naive" attention path used for training):
low-rank query (``q_a_proj`` -> RMSNorm -> ``q_b_proj``) and key/value (``kv_a_proj`` -> RMSNorm ->
``kv_b_proj``) projections, decoupled RoPE on a ``qk_rope_head_dim`` slice of each query head and on one key
slice shared by all heads, softmax scale ``qk_head_dim ** -0.5`` (YaRN's long-context ``mscale`` omitted).
RoPE rotates interleaved pairs, as DeepSeek's complex-number formulation does.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sim.config import ModelSpec

AttnImpl = Literal["sdpa", "math"]


class Norm(nn.Module):
    """RMSNorm (eps 1e-6, DeepSeek-V3) or LayerNorm (eps 1e-5, GPT-style)."""

    def __init__(self, width: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width)) if kind == "layernorm" else None

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "layernorm":
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, 1e-5)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


def rope_tables(seq: int, dim: int, theta: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos and sin ``[seq, dim / 2]`` for rotary embeddings (RoFormer; DeepSeek ``precompute_freqs_cis``)."""
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    ang = torch.outer(torch.arange(seq, dtype=torch.float32), inv)
    return ang.cos(), ang.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs of the last dim of ``x [batch, seq, heads, dim]``."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[None, :, None, :].to(x.dtype), sin[None, :, None, :].to(x.dtype)
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)


class AttentionCore(nn.Module):
    """Causal softmax(Q K^T * scale) V. ``math`` spells out the two matmuls (FlopCounterMode counts them as
    ``bmm``, backward as four); ``sdpa`` calls ``F.scaled_dot_product_attention``."""

    def __init__(self, scale: float, impl: AttnImpl) -> None:
        super().__init__()
        self.scale, self.impl = scale, impl

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.impl == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        s = q.shape[-2]
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        mask = torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1)
        probs = scores.masked_fill(mask, float("-inf")).softmax(dim=-1)
        return torch.matmul(probs, v)


def linear(n_in: int, n_out: int, bias: bool) -> nn.Linear:
    layer = nn.Linear(n_in, n_out, bias=bias)
    nn.init.normal_(layer.weight, std=0.02)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class MLA(nn.Module):
    """Multi-head latent attention (DeepSeek-V2/V3)."""

    def __init__(self, m: ModelSpec, impl: AttnImpl) -> None:
        super().__init__()
        self.h, self.nope, self.rope, self.vd = m.n_heads, m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim
        self.kv_rank = m.kv_lora_rank
        qk = self.nope + self.rope
        if m.q_lora_rank:
            self.q_a_proj = linear(m.dim, m.q_lora_rank, m.bias)
            self.q_a_norm = Norm(m.q_lora_rank, "rmsnorm")
            self.q_b_proj = linear(m.q_lora_rank, self.h * qk, m.bias)
        else:
            self.q_proj = linear(m.dim, self.h * qk, m.bias)
        self.kv_a_proj = linear(m.dim, self.kv_rank + self.rope, m.bias)
        self.kv_a_norm = Norm(self.kv_rank, "rmsnorm")
        self.kv_b_proj = linear(self.kv_rank, self.h * (self.nope + self.vd), m.bias)
        self.core = AttentionCore(qk ** -0.5, impl)
        self.o_proj = linear(self.h * self.vd, m.dim, m.bias)

    def forward(self, x: Tensor, batch: int, rope: tuple[Tensor, Tensor]) -> Tensor:
        t = x.shape[0]
        s, h = t // batch, self.h
        q = self.q_b_proj(self.q_a_norm(self.q_a_proj(x))) if hasattr(self, "q_a_proj") else self.q_proj(x)
        q = q.view(batch, s, h, self.nope + self.rope)
        q_nope, q_pe = q.split([self.nope, self.rope], dim=-1)
        kv, k_pe = self.kv_a_proj(x).split([self.kv_rank, self.rope], dim=-1)
        k_pe = apply_rope(k_pe.reshape(batch, s, 1, self.rope), *rope)
        kv = self.kv_b_proj(self.kv_a_norm(kv)).view(batch, s, h, self.nope + self.vd)
        k_nope, v = kv.split([self.nope, self.vd], dim=-1)
        q = torch.cat([q_nope, apply_rope(q_pe, *rope)], dim=-1)
        k = torch.cat([k_nope, k_pe.expand(-1, -1, h, -1)], dim=-1)
        out = self.core(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o_proj(out.transpose(1, 2).reshape(t, h * self.vd))


class GQA(nn.Module):
    """Multi-head (MHA) or grouped-query (GQA) attention with one fused ``qkv_proj``."""

    def __init__(self, m: ModelSpec, impl: AttnImpl) -> None:
        super().__init__()
        self.h, self.kv, self.hd = m.n_heads, m.kv_heads, m.attn_head_dim
        self.use_rope = m.position_embedding == "rope"
        self.qkv_proj = linear(m.dim, (self.h + 2 * self.kv) * self.hd, m.bias)
        self.core = AttentionCore(self.hd ** -0.5, impl)
        self.o_proj = linear(self.h * self.hd, m.dim, m.bias)

    def forward(self, x: Tensor, batch: int, rope: tuple[Tensor, Tensor]) -> Tensor:
        t = x.shape[0]
        s = t // batch
        q, k, v = self.qkv_proj(x).view(batch, s, self.h + 2 * self.kv, self.hd).split(
            [self.h, self.kv, self.kv], dim=2)
        if self.use_rope:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        rep = self.h // self.kv
        k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        out = self.core(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o_proj(out.transpose(1, 2).reshape(t, self.h * self.hd))


class FFN(nn.Module):
    """SwiGLU (``up`` holds gate and up, 2 x inter) or GELU feed-forward; also one expert or the shared experts."""

    def __init__(self, dim: int, inter: int, activation: str, bias: bool = False) -> None:
        super().__init__()
        self.swiglu = activation == "swiglu"
        self.up = linear(dim, 2 * inter if self.swiglu else inter, bias)
        self.down = linear(inter, dim, bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.up(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h)
        return self.down(h)
