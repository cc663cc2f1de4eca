"""The tiny MoE's FLOPs and parameters computed by hand, term by term, against the library."""

from __future__ import annotations

import pytest

from sim.loading import load_model
from sim.model import counts


def test_tiny_moe_flops_by_hand():
    m, _ = load_model("tiny_moe")
    h, s = 4, 16  # heads and the sequence length used below (dim is 64)
    qk, v = 8 + 8, 8  # MLA: nope + rope, value head dim
    # MLA projections per token (weights n x k): q_a 32x64, q_b (4*16)x32, kv_a (16+8)x64, kv_b (4*(8+8))x16,
    # o (64)x(4*8).
    attn_w = 32 * 64 + (h * qk) * 32 + (16 + 8) * 64 + (h * (8 + 8)) * 16 + 64 * (h * v)
    # Attention core, causal: 2 * heads * (qk + v) * S/2 forward, twice that backward.
    core_fwd = 2 * h * (qk + v) * s / 2
    dense_ffn_w = (2 * 128) * 64 + 64 * 128  # SwiGLU gate+up and down, inter 128
    moe_w = 8 * 64 + 2 * ((2 * 32) * 64 + 64 * 32) + 1 * ((2 * 32) * 64 + 64 * 32)  # router, top-2, shared
    head_w = 256 * 64
    layers = 4 * attn_w + 1 * dense_ffn_w + 3 * moe_w
    expected = 3 * 2 * (layers + head_w) + 4 * (core_fwd + 2 * core_fwd)
    assert counts.train_flops_per_token(m, s, causal=True) == pytest.approx(expected, rel=1e-12)
    # MTP: eh_proj d x 2d, one MoE layer (the last layer's kind) and the shared head.
    mtp = 3 * 2 * (64 * 128 + attn_w + moe_w + head_w) + 3 * core_fwd
    assert counts.train_flops_per_token_mtp(m, s, causal=True) == pytest.approx(mtp, rel=1e-12)


def test_tiny_moe_params_by_hand():
    m, _ = load_model("tiny_moe")
    attn = (32 * 64 + 32 + 64 * 32 + 24 * 64 + 16 + 64 * 16 + 64 * 32) + 64  # projections, 2 latent norms, norm
    dense = 64 + (2 * 128 * 64 + 64 * 128)  # ffn norm, gate+up (SwiGLU: two matrices), down
    expert = 64 * 64 + 64 * 32
    moe = 64 + (8 * 64 + 8) + 8 * expert + expert  # norm, router (+ sigmoid bias), 8 routed, 1 shared
    total = 256 * 64 + 4 * attn + dense + 3 * moe + 64 + 256 * 64  # embed, layers, final norm, head
    assert counts.params_total(m) == total
