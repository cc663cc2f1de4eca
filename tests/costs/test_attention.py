"""Attention costs (sim.costs.attention): the FlashAttention efficiency curve and the unfused path's bytes."""

from __future__ import annotations

import pytest

from sim.config import GpuEfficiency, GpuSpec, PeakTflops
from sim.costs import attention


def gpu(**eff) -> GpuSpec:
    base = {"gemm_bf16_frac": 0.8, "attention_fwd_frac": 0.6, "attention_bwd_frac": 0.4, "hbm_frac": 0.5,
            "attention_seq_half": 1000.0, "attention_causal_waste": 500.0, "kernel_overhead_us": 0.0}
    return GpuSpec(name="TOY", peak_tflops=PeakTflops(bf16=1000.0, tf32=500.0, fp32=50.0), hbm_gb=80,
                   hbm_bandwidth_tb_per_s=1.0, num_sms=100, tdp_w=700,
                   efficiency=GpuEfficiency(**{**base, **eff}),
                   efficiency_sources={k: "test value" for k in {**base, **eff}})


def test_flash_efficiency_by_hand():
    g = gpu()
    # s = 1000: half the asymptote for length (1000/2000); causal also 1000/1500 for the masked tiles.
    assert attention.flash_efficiency(g, 1000, causal=False, backward=False) == pytest.approx(0.3)
    assert attention.flash_efficiency(g, 1000, causal=True, backward=False) == pytest.approx(0.3 * 2 / 3)
    assert attention.flash_efficiency(g, 1000, causal=False, backward=True) == pytest.approx(0.2)


def test_longer_sequences_are_more_efficient_and_causal_is_less():
    g = gpu()
    effs = [attention.flash_efficiency(g, s, True, False) for s in (512, 2048, 8192, 131072)]
    assert effs == sorted(effs) and effs[-1] < 0.6
    assert attention.flash_efficiency(g, 4096, True, False) < attention.flash_efficiency(g, 4096, False, False)


def test_flash_backward_counts_twice_the_forward_flops():
    g = gpu(attention_bwd_frac=0.6)  # same efficiency both ways: backward takes twice the forward
    f = attention.flash_seconds(g, "bf16", 1e12, 4096, False, False)
    b = attention.flash_seconds(g, "bf16", 1e12, 4096, False, True)
    assert b == pytest.approx(2 * f)


def test_unfused_bytes_per_score_element():
    # Forward: fused scale+mask+softmax r2 w2 = 4; dropout r2 w2 + 1-byte mask = 5 (mechanisms.md 2.3).
    assert sum(attention.unfused_score_bytes(False, dropout=True, fused_softmax=True)) == 9
    assert sum(attention.unfused_score_bytes(False, dropout=False, fused_softmax=False)) == 12  # 3 kernels
    # Backward: dropout r2 + mask + w2 = 5; softmax backward reads P and dP, writes dS = 6.
    assert sum(attention.unfused_score_bytes(True, dropout=True, fused_softmax=True)) == 11
    # With the GEMMs' own score traffic (S written, P read; dP written, P and dS read twice) the total per score
    # element is 9 + 4 + 11 + 8 = 32 B, against 33-37.5 B measured by FlashAttention's authors (FA1 Fig. 2).
    assert 9 + 4 + 11 + 8 == 32


def test_unfused_attention_is_slower_than_flash_and_grows_quadratically():
    g = gpu()
    mem = lambda b, _n: b / 0.5e12  # noqa: E731 - a plain memory-bound kernel at 0.5 TB/s
    short = attention.unfused_seconds(g, mem, 1, 1024, 16, 128, 128, False, True, True)
    long = attention.unfused_seconds(g, mem, 1, 4096, 16, 128, 128, False, True, True)
    assert long / short > 10  # 16x the scores, some fixed costs amortized
    fwd_flops = 4.0 * 4096 * 4096 * 128 * 16
    assert long > attention.flash_seconds(g, "bf16", fwd_flops, 4096, False, False)
