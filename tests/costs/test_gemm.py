"""The GEMM shape model (sim.costs.gemm) against hand-computed values on a made-up GPU whose numbers make the
arithmetic easy: 100 SMs, 128 x 128 tiles, peak 1000 TFLOP/s BF16, 1 TB/s HBM."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.config import GpuEfficiency, GpuSpec, PeakTflops
from sim.costs import gemm

US = 1e-6


def gpu(**eff) -> GpuSpec:
    base = {"gemm_bf16_frac": 0.8, "attention_fwd_frac": 0.5, "attention_bwd_frac": 0.4, "hbm_frac": 0.5,
            "gemm_hbm_frac": 0.5, "kernel_overhead_us": 0.0}
    return GpuSpec(name="TOY", peak_tflops=PeakTflops(bf16=1000.0, tf32=500.0, fp32=50.0), hbm_gb=80,
                   hbm_bandwidth_tb_per_s=1.0, num_sms=100, tdp_w=700,
                   efficiency=GpuEfficiency(**{**base, **eff}),
                   efficiency_sources={k: "test value" for k in {**base, **eff}})


def test_wave_efficiency_by_hand():
    g = gpu()
    # 1280 x 1280 output: 10 x 10 = 100 tiles of 128 x 128 = exactly one wave on 100 SMs: no loss.
    assert gemm.wave_efficiency(g, (1280.0,), 1280) == pytest.approx(1.0)
    # 1408 x 1280: 11 x 10 = 110 tiles -> 2 waves -> 110/200 useful SM-slots; half tiles (64 rows): 22 x 10 = 220
    # tiles -> 3 waves -> 220/300. The library picks the better: 0.7333.
    assert gemm.wave_efficiency(g, (1408.0,), 1280) == pytest.approx(220 / 300)
    # 100 rows: padded to 128 (78 % useful); one 128-row tile per column gives 10 tiles on 100 SMs, two 64-row
    # tiles give 20: the half-height tiles win, 100/128 * 20/100.
    assert gemm.wave_efficiency(g, (100.0,), 1280) == pytest.approx(100 / 128 * 20 / 100)


def test_compute_bound_gemm_by_hand():
    g = gpu()
    # 1280^3: FLOPs 2 * 1280^3 = 4.194e9 at 1000e12 * 0.8 (one full wave, no K fill) = 5.243 us; memory
    # 3 * 1280^2 * 2 B = 9.83 MB at 0.5 TB/s = 19.66 us: memory-bound, so the time is the memory term.
    t = gemm.gemm_seconds(g, "bf16", 1280, 1280, 1280)
    assert t == pytest.approx(3 * 1280**2 * 2 / 0.5e12)
    # A deep K makes it compute-bound: 1280 x 1280 x 128000: 4.194e11 FLOPs / 8e14 = 524.3 us.
    t = gemm.gemm_seconds(g, "bf16", 1280, 1280, 128000)
    mem = (1280 * 128000 * 2 + 1280 * 128000 * 2 + 1280 * 1280 * 2) / 0.5e12
    assert t == pytest.approx(max(2 * 1280**2 * 128000 / 8e14, mem))


def test_exposed_fraction_and_k_fill_and_overhead_add_up():
    g = gpu(gemm_exposed_frac=0.5, gemm_k_fill=1280.0, kernel_overhead_us=3.0)
    m = n = k = 1280
    math_s = 2 * m * n * k / (1000e12 * 0.8 * 0.5)  # K fill halves eta at k = k_fill
    mem_s = 3 * 1280**2 * 2 / 0.5e12
    assert gemm.gemm_seconds(g, "bf16", m, n, k) == pytest.approx(max(math_s, mem_s) + 0.5 * min(math_s, mem_s)
                                                                + 3 * US)


def test_grouped_gemm_pads_each_group():
    g = gpu()
    # Four groups of 100 rows each pad to 128 (two 64-row tiles): 4 x 2 x 10 = 80 tiles in one wave of 100 SMs.
    assert gemm.wave_efficiency(g, (100.0,) * 4, 1280) == pytest.approx(400 / 512 * 80 / 100)
    # Eight groups of 50 rows pad each to 64: 8 x 10 = 80 tiles, 400 of 512 rows useful: 0.625 as well; sixteen
    # groups of 25 rows pad each to 64 (160 tiles, 2 waves): 400/1024 * 160/200.
    assert gemm.wave_efficiency(g, (25.0,) * 16, 1280) == pytest.approx(400 / 1024 * 160 / 200)


@given(st.integers(1, 20000), st.integers(1, 20000), st.integers(1, 20000), st.floats(1.01, 4.0))
def test_more_work_never_takes_less_time(m, n, k, f):
    g = gpu(gemm_k_fill=256.0, gemm_exposed_frac=0.2, kernel_overhead_us=2.0)
    t = gemm.gemm_seconds(g, "bf16", m, n, k)
    assert t > 0
    assert gemm.gemm_seconds(g, "bf16", m, n, int(k * f) + 1) >= t * (1 - 1e-9)


def fp8_gpu(**eff) -> GpuSpec:
    """The toy GPU with FP8 tensor cores at twice the BF16 peak, a lower cap and a longer K fill for FP8."""
    g = gpu(gemm_fp8_frac=0.7, gemm_k_fill=128.0, gemm_k_fill_fp8=384.0, **eff)
    return g.model_copy(update={"peak_tflops": PeakTflops(bf16=1000.0, fp8=2000.0, tf32=500.0, fp32=50.0)})


def test_fp8_math_takes_its_own_cap_and_k_fill_by_hand():
    # 12800 x 128 output: 100 tiles of 128 x 128, one full wave (the 64-row tiles, 200 in two waves, tie): q = 1.
    g = fp8_gpu()
    m, n, k = 12800, 128, 1152
    assert gemm.wave_efficiency(g, (m,), n) == 1.0
    # FP8: 2 m n k at 2000 TFLOP/s x 0.7 x k / (k + 384) = 0.7 x 0.75; BF16: 1000 x 0.8 x k / (k + 128) = 0.8 x 0.9.
    flops = 2.0 * m * n * k
    assert gemm.gemm_math_seconds(g, "fp8", m, n, k) == pytest.approx(flops / (2000e12 * 0.7 * 0.75))
    assert gemm.gemm_math_seconds(g, "bf16", m, n, k) == pytest.approx(flops / (1000e12 * 0.8 * 0.9))
    # Without an FP8 fill of its own, FP8 takes the common one.
    same_fill = g.model_copy(update={"efficiency": g.efficiency.model_copy(update={"gemm_k_fill_fp8": None})})
    assert gemm.gemm_math_seconds(same_fill, "fp8", m, n, k) == pytest.approx(flops / (2000e12 * 0.7 * 0.9))
    assert gemm.gemm_efficiency_cap(g, "fp8") == 0.7 and gemm.gemm_efficiency_cap(g, "bf16") == 0.8
    with pytest.raises(ValueError, match="TOY has no FP8"):
        gemm.gemm_efficiency_cap(gpu(), "fp8")


def test_gemm_bytes_by_hand():
    # Operands read once (FP8 1 B, BF16 2 B; a grouped GEMM reads one n x k weight per group), output BF16.
    assert gemm.gemm_bytes("bf16", 10, 20, 30) == (10 * 30 + 20 * 30) * 2 + 10 * 20 * 2
    assert gemm.gemm_bytes("fp8", 10, 20, 30) == (10 * 30 + 20 * 30) * 1 + 10 * 20 * 2
    assert gemm.gemm_bytes("fp8", 10, 20, 30, groups=4) == (10 * 30 + 4 * 20 * 30) * 1 + 10 * 20 * 2


def test_a_memory_bound_grouped_gemm_reads_every_experts_weight():
    """Four experts of 8 rows each over a 4096 x 4096 FP8 weight: the weights dominate, 4 x 16.8 MB at 0.5 TB/s
    (the math, 2 x 32 x 4096^2 FLOPs, is far shorter); exposed fraction 0.5 of the math adds on top."""
    g = fp8_gpu(gemm_exposed_frac=0.5)
    rows = (8.0,) * 4
    mem = gemm.gemm_bytes("fp8", 32, 4096, 4096, 4) / 0.5e12
    math_s = gemm.gemm_math_seconds(g, "fp8", 32, 4096, 4096, rows)
    assert math_s < mem and mem == pytest.approx((32 * 4096 + 4 * 4096 * 4096 + 32 * 4096 * 2) / 0.5e12)
    assert gemm.gemm_seconds(g, "fp8", 32, 4096, 4096, rows) == pytest.approx(mem + 0.5 * math_s)
    # The per-group padding reaches the math: 4 groups of 8 rows pad to 4 tiles per column, one of 32 rows to 1.
    assert math_s > gemm.gemm_math_seconds(g, "fp8", 32, 4096, 4096)


def test_degenerate_shapes_cost_nothing_and_tiny_ones_a_tile():
    g = gpu()
    for shape in ((0, 128, 128), (128, 0, 128), (128, 128, 0)):
        assert gemm.gemm_seconds(g, "bf16", *shape) == 0.0
    # One 64 x 128 tile of a 64 x 128 output on 100 SMs: 1/100 of the SM-time is used (the rest idle).
    assert gemm.wave_efficiency(g, (64.0,), 128) == pytest.approx(1 / 100)
    # Half a row still occupies a tile (of the half-height 64 rows): 0.5 / 64 of it useful, 1 of 100 SMs.
    assert gemm.wave_efficiency(g, (0.5,), 128) == pytest.approx(0.5 / 64 / 100)
    assert gemm.wave_efficiency(g, (0.0,), 128) == 1.0  # no tiles: nothing wasted
