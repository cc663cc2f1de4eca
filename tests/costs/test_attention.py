"""Attention costs (sim.costs.attention): the FlashAttention efficiency curve, the kernel curves a software stack
picks, and the unfused path's bytes."""

from __future__ import annotations

import math

import pytest

from sim.calibrate.table import CalibrationTable, DeviceInfo, Entry
from sim.config import AttentionCurve, GpuEfficiency, GpuSpec, PeakTflops, PrecisionSpec
from sim.costs import attention, gemm
from sim.costs.calibration import attention_fwd_flops
from sim.costs.kernels import CostModel
from sim.costs.ops import OpCoster
from sim.errors import SimInputError
from sim.loading import load_cluster, load_scenario
from sim.model.ops import attention_ops
from sim.whatif import calibration_report

H100 = load_cluster("h100_ib_1024").gpu
H800 = load_cluster("deepseek_h800_2048").gpu
A100 = load_cluster("a100_ib_3072").gpu
B200 = load_cluster("b200_ib_1024").gpu
BF16 = PrecisionSpec()


#: A kernel curve with four distinct parameters, so that swapping any two changes a hand-derived value.
FA2_TOY = AttentionCurve(fwd_frac=0.4, bwd_frac=0.25, seq_half=1000.0, causal_waste=3000.0)


def gpu(arch: str | None = None, **eff) -> GpuSpec:
    base = {"gemm_bf16_frac": 0.8, "attention_fwd_frac": 0.6, "attention_bwd_frac": 0.4, "hbm_frac": 0.5,
            "attention_seq_half": 1000.0, "attention_causal_waste": 500.0, "kernel_overhead_us": 0.0}
    sources = {k: "test value" for k in {**base, **eff}}
    sources.update({f"attention_kernels.{k}": "test value" for k in eff.get("attention_kernels", {})})
    return GpuSpec(name="TOY", arch=arch, peak_tflops=PeakTflops(bf16=1000.0, tf32=500.0, fp32=50.0), hbm_gb=80,
                   hbm_bandwidth_tb_per_s=1.0, num_sms=100, tdp_w=700,
                   efficiency=GpuEfficiency(**{**base, **eff}), efficiency_sources=sources)


def test_flash_efficiency_by_hand():
    c = gpu().efficiency.attention_curve
    # s = 1000: half the asymptote for length (1000/2000); causal also 1000/1500 for the masked tiles.
    assert attention.flash_efficiency(c, 1000, causal=False, backward=False) == pytest.approx(0.3)
    assert attention.flash_efficiency(c, 1000, causal=True, backward=False) == pytest.approx(0.3 * 2 / 3)
    assert attention.flash_efficiency(c, 1000, causal=False, backward=True) == pytest.approx(0.2)


def test_head_dim_factor_by_hand():
    """1 at the curve's head dim (128); the given factors at their head dims; linear in log2(head dim) between
    (90.5 = 2^6.5 lies halfway from 64 to 128, 181 = 2^7.5 halfway from 128 to 256); flat beyond."""
    f = {64: 0.8, 256: 0.9}
    assert attention.head_dim_factor(f, 128) == 1.0
    assert attention.head_dim_factor(f, 64) == pytest.approx(0.8)
    assert attention.head_dim_factor(f, 2 ** 6.5) == pytest.approx(0.9)
    assert attention.head_dim_factor(f, 2 ** 7.5) == pytest.approx(0.95)
    assert attention.head_dim_factor(f, 32) == pytest.approx(0.8) and attention.head_dim_factor(f, 512) == 0.9
    assert attention.head_dim_factor({}, 64) == 1.0  # no factors: the same rate at every head dim


def test_the_head_dim_factors_scale_each_pass_and_cancel_in_the_causal_share():
    c = FA2_TOY.model_copy(update={"head_dim_fwd": {64: 0.8}, "head_dim_bwd": {64: 0.5}})
    for causal in (False, True):
        assert (attention.flash_efficiency(c, 4096, causal, False, 64)
                == pytest.approx(0.8 * attention.flash_efficiency(c, 4096, causal, False)))
        assert (attention.flash_efficiency(c, 4096, causal, True, 64)
                == pytest.approx(0.5 * attention.flash_efficiency(c, 4096, causal, True)))
    share = [attention.flash_efficiency(c, 4096, True, False, d) / attention.flash_efficiency(c, 4096, False, False, d)
             for d in (64, 128)]
    assert share[0] == pytest.approx(share[1])


def test_h100_kernels_by_head_dim():
    """What-if direction, from the FA3 paper's figures: FA2 and cuDNN both run fastest at head dim 128 (FA2
    about 10 % slower at 64 and 256; cuDNN about a third slower at 64 forward); FA3 has no measurements at
    other head dims, so its rate does not move."""
    fwd = attention_fwd_flops(8192, 16, 128, 128, causal=False)
    for kernel, slower_at_64 in (("fa2", 0.85), ("cudnn", 0.6)):
        curve = H100.efficiency.attention_kernels[kernel]
        at = {d: attention.flash_efficiency(curve, 8192, False, False, d) for d in (64, 128, 256)}
        assert at[64] < at[128] and at[256] < at[128]
        assert slower_at_64 < at[64] / at[128] < 0.95
    assert (attention.flash_seconds(H100, "bf16", fwd, 8192, False, False, head_dim=64)
            == attention.flash_seconds(H100, "bf16", fwd, 8192, False, False, head_dim=128))


def test_head_dim_factors_are_validated():
    for bad, says in (("{4096: 0.9}", "head dim 4096 is outside 8-1024"), ("{64: 3.0}", "allowed 0.05-2.0"),
                      ("{128: 0.5}", "head dim 128 is the curve's own")):
        with pytest.raises(SimInputError, match=r"attention_kernels.fa2.head_dim_fwd"):
            load_scenario(overrides=[f"cluster.gpu.efficiency.attention_kernels.fa2.head_dim_fwd={bad}"])
        with pytest.raises(SimInputError, match=says):
            load_scenario(overrides=[f"cluster.gpu.efficiency.attention_head_dim_bwd={bad}"])


def test_longer_sequences_are_more_efficient_and_causal_is_less():
    c = gpu().efficiency.attention_curve
    effs = [attention.flash_efficiency(c, s, True, False) for s in (512, 2048, 8192, 131072)]
    assert effs == sorted(effs) and effs[-1] < 0.6
    assert attention.flash_efficiency(c, 4096, True, False) < attention.flash_efficiency(c, 4096, False, False)


def test_a_kernel_curve_by_hand():
    g = gpu(arch="sm90", attention_kernel="fa3", attention_kernels={"fa2": FA2_TOY})
    choice = attention.flash_curve(g, "fa2")
    assert choice.curve == FA2_TOY and not choice.default and choice.note is None
    # s = 1000: 0.4 x 1000/2000 = 0.2 forward; causal also x 1000/4000 = 0.05.
    assert attention.flash_efficiency(choice.curve, 1000, causal=False, backward=False) == pytest.approx(0.2)
    assert attention.flash_efficiency(choice.curve, 1000, causal=True, backward=False) == pytest.approx(0.05)
    # s = 3000, backward: 0.25 x 3000/4000 = 0.1875; causal also x 3000/6000.
    assert attention.flash_efficiency(choice.curve, 3000, causal=False, backward=True) == pytest.approx(0.1875)
    assert attention.flash_efficiency(choice.curve, 3000, causal=True, backward=True) == pytest.approx(0.09375)
    # The seconds: 1e12 model FLOPs forward at 1000 TFLOP/s x 0.05 = 0.02 s; backward 2e12 at 1000 x 0.09375.
    assert attention.flash_seconds(g, "bf16", 1e12, 1000, True, False, choice.curve) == pytest.approx(0.02)
    assert attention.flash_seconds(g, "bf16", 1e12, 3000, True, True, choice.curve) == pytest.approx(2 / 93.75)
    # The default kernel, named or not, takes the attention_* fields (0.6 x 1/2 x 2/3 at s = 1000 causal).
    for kernel in ("default", "fa3"):
        c = attention.flash_curve(g, kernel)
        assert c.default and c.note is None
        assert attention.flash_efficiency(c.curve, 1000, True, False) == pytest.approx(0.2)


def test_h100_fa2_curve_by_hand():
    """The H100 profile's FA2 curve (fwd 0.387, bwd 0.268, seq_half 117, seq_half_bwd 280, causal_waste 248,
    causal_frac 0.921): at 8K causal forward 0.387 x 8192/8309 x 0.921 x 8192/8440 = 0.3411, 337 TFLOP/s against
    the 333 the FA3 paper measured; non-causal forward 0.387 x 8192/8309 = 0.3815 (370 measured: 0.374);
    non-causal backward 0.268 x 8192/8472 = 0.2591 (model FLOPs; the paper's 318 TFLOP/s at 2.5 x is 0.2572)."""
    c = attention.flash_curve(H100, "fa2").curve
    eta = attention.flash_efficiency(c, 8192, causal=True, backward=False)
    assert eta == pytest.approx(0.387 * (8192 / 8309) * 0.921 * (8192 / 8440), rel=1e-9)
    assert eta == pytest.approx(0.3411, abs=5e-4)
    full = attention.flash_efficiency(c, 8192, causal=False, backward=False)
    assert full == pytest.approx(0.387 * 8192 / 8309, rel=1e-9)
    bwd = attention.flash_efficiency(c, 8192, causal=False, backward=True)
    assert bwd == pytest.approx(0.268 * 8192 / 8472, rel=1e-9)


def test_causal_kernels_keep_the_measured_share_of_the_non_causal_rate_at_long_sequences():
    """The FA3 paper's Hopper figures put the causal/non-causal forward ratio at head dim 128 at 0.90 / 0.905
    (FA2, 8K / 16K), 0.88 / 0.906 (cuDNN) and 0.93 / 0.95 (FA3): the profile's curves reproduce each within
    2.5 points, where a curve whose causal loss vanishes with the sequence (causal_frac 1) gives 0.98 at 16K."""
    measured = {"fa2": (370 / 333, 370 / 335), "cudnn": (600 / 529, 595 / 539), "fa3": (646 / 602, 648 / 616)}
    for kernel, (r8, r16) in measured.items():
        c = attention.flash_curve(H100, kernel).curve
        for seq, inverse in ((8192, r8), (16384, r16)):
            ratio = (attention.flash_efficiency(c, seq, causal=True, backward=False)
                     / attention.flash_efficiency(c, seq, causal=False, backward=False))
            assert ratio == pytest.approx(1 / inverse, abs=0.025), (kernel, seq)
        vanishing = c.model_copy(update={"causal_frac": 1.0})
        assert attention.flash_efficiency(vanishing, 16384, True, False) / attention.flash_efficiency(
            vanishing, 16384, False, False) > 0.97


def test_fa2_on_hopper_is_slower_than_the_default_at_8k_causal():
    """FlashAttention-2 uses neither Hopper's wgmma nor TMA and does not overlap softmax with the GEMMs, so on
    H100 it reaches about 35 % of the BF16 peak where FA3 (the default) reaches 60-65 %: FA3 Figs. 5-6 show
    FA2 1.5-2x slower at every length. cuDNN's fused attention lies between the two."""
    costs = CostModel(H100, BF16)
    tokens, seq = 8192.0, 8192
    for pass_ in ("fwd", "dgrad"):
        default = costs.attention_seconds(pass_, tokens, seq, 64, 128, 128, True)
        fa2 = costs.attention_seconds(pass_, tokens, seq, 64, 128, 128, True, kernel="fa2")
        cudnn = costs.attention_seconds(pass_, tokens, seq, 64, 128, 128, True, kernel="cudnn")
        assert 1.5 < fa2 / default < 2.0
        assert default < cudnn < fa2
    assert costs.notes == []  # every kernel has a curve on H100


def test_a_kernel_without_a_curve_falls_back_to_the_default_with_a_note():
    costs = CostModel(A100, BF16)
    args = ("fwd", 4096.0, 4096, 32, 128, 128, True)
    default = costs.attention_seconds(*args)
    assert costs.attention_seconds(*args, kernel="fa2") == default  # A100's default curve is FA2's
    assert costs.notes == []
    assert costs.attention_seconds(*args, kernel="cudnn") == default
    assert costs.notes == ["attention: A100-SXM-80GB's profile has no cudnn curve (software.flash_kernel); its "
                           "default curve (fitted to fa2) used"]
    costs.attention_seconds("dgrad", 4096.0, 4096, 32, 128, 128, True, kernel="cudnn")
    assert len(costs.notes) == 1  # once per kernel
    blackwell = CostModel(B200, BF16)
    blackwell.attention_seconds(*args, kernel="fa2")
    assert "assumed, of no named kernel" in blackwell.notes[0]


@pytest.mark.parametrize("gpu_", [A100, B200], ids=["sm80", "sm100"])
def test_fa3_off_hopper_is_refused_naming_the_field(gpu_):
    with pytest.raises(SimInputError) as err:
        CostModel(gpu_, BF16).attention_seconds("fwd", 4096.0, 4096, 32, 128, 128, True, kernel="fa3")
    assert err.value.field == "software.flash_kernel"
    assert "allowed there: default, fa2, cudnn" in str(err.value)


def test_fa3_off_hopper_is_refused_when_the_job_loads():
    with pytest.raises(SimInputError) as err:
        load_scenario("gpt3_175b_a100.yaml", overrides=["software.attention=flash", "software.flash_kernel=fa3"])
    assert err.value.field == "software.flash_kernel"
    assert str(err.value).startswith("software.flash_kernel: fa3 runs only on sm90")
    # Unfused attention runs no flash kernel: the field is moot there.
    load_scenario("gpt3_175b_a100.yaml", overrides=["software.attention=unfused", "software.flash_kernel=fa3"])


def _attention_entry(gpu_: GpuSpec, backward: bool, slower: float) -> Entry:
    shape = {"seq": 4096.0, "heads": 128.0, "qk_dim": 192.0, "v_dim": 128.0, "batch": 1.0, "causal": 1.0}
    fwd = attention_fwd_flops(4096, 128, 192, 128, True)
    seconds = attention.flash_seconds(gpu_, "bf16", fwd, 4096, True, backward) * slower
    flops = fwd * (2 if backward else 1)
    return Entry(kind="attention_bwd" if backward else "attention_fwd", dtype="bf16", name="flash",
                 shape=shape, seconds=seconds, samples=1, flops=flops, achieved_flops_per_s=flops / seconds)


def test_calibration_corrects_the_default_curve_only():
    """A table's attention was measured with the default kernel (DeepSeek's trace: FA3-class); its ratio says
    nothing about FA2, whose curve is used as fitted, with a note."""
    table = CalibrationTable(schema_version=1, entries=(_attention_entry(H800, False, 2.0),),
                             device=DeviceInfo(name="NVIDIA H800", kind="trace", num_sms=132, source="test",
                                               created="2026-01-01"))
    costs = CostModel(H800, BF16, table, H800)
    plain = CostModel(H800, BF16)
    args = ("fwd", 4096.0, 4096, 128, 192, 128, True)
    corrected = costs.attention_seconds(*args)
    assert corrected / plain.attention_seconds(*args) == pytest.approx(2.0, rel=0.1)  # the measured 2x
    assert costs.attention_seconds(*args, kernel="fa2") == plain.attention_seconds(*args, kernel="fa2")
    assert any("not applied to fa2" in n for n in costs.notes)
    assert math.isfinite(corrected)


def test_the_calibration_report_drops_attention_off_the_default_curve():
    on_default = calibration_report(load_scenario())
    on_fa2 = calibration_report(load_scenario(overrides=["software.flash_kernel=fa2"]))
    assert on_default is not None and on_fa2 is not None
    assert {"attention_fwd bf16", "attention_bwd bf16"} <= set(on_default["corrects"])
    assert set(on_fa2["corrects"]) == set(on_default["corrects"]) - {"attention_fwd bf16", "attention_bwd bf16"}


def test_the_calibration_report_names_an_overridden_head_dim_factor():
    """A head-dim factor of the default curve scales calibrated attention (DeepSeek's MLA runs head dim 192):
    the report lists the override, under its dotted key, as correcting attention."""
    key = "cluster.gpu.efficiency.attention_head_dim_fwd"
    report = calibration_report(load_scenario(overrides=[f"{key}={{256: 0.5}}"]), base=load_scenario())
    assert report is not None
    change = report["overridden"]["efficiency.attention_head_dim_fwd.256"]
    assert change["key"] == f"{key}.256" and change["to"] == 0.5 and "attention_fwd bf16" in change["corrects"]


def test_the_software_stack_kernel_reaches_the_op_coster():
    base = load_scenario("llama3_70b_h100.yaml")
    op = next(o for o in attention_ops(base.model) if o.kind == "attention")
    seconds = {}
    for kernel in ("default", "fa2"):
        s = load_scenario("llama3_70b_h100.yaml", overrides=[f"software.flash_kernel={kernel}"])
        seconds[kernel] = OpCoster(s, CostModel(s.cluster.gpu, s.precision)).seconds(op, "fwd", 8192.0)
    assert seconds["fa2"] > 1.5 * seconds["default"]


def test_flash_backward_counts_twice_the_forward_flops():
    g = gpu(attention_bwd_frac=0.6)  # same efficiency both ways: backward takes twice the forward
    f = attention.flash_seconds(g, "bf16", 1e12, 4096, False, False)
    b = attention.flash_seconds(g, "bf16", 1e12, 4096, False, True)
    assert b == pytest.approx(2 * f)


def test_unfused_bytes_per_score_element():
    # Forward: fused scale+mask+softmax r2 w2 = 4; dropout r2 w2 + 1-byte mask = 5 (derived from the kernels of
    # Megatron-Core megatron/core/fusions/fused_softmax.py and dot_product_attention.py, BF16 2 B, mask 1 B).
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


def test_unfused_kernels_per_score_element_by_hand():
    """Each kernel over the scores (BF16 2 B, mask 1 B). Forward unfused softmax: scale r2 w2, mask r2 w2, softmax
    r2 w2; dropout r2 w2 + mask. Backward: dropout backward r2 + mask + w2, then the softmax backward r2 r2 w2
    fused, or r2 r2 w2 and the scale's r2 w2 unfused."""
    assert attention.unfused_score_bytes(False, dropout=True, fused_softmax=False) == (4.0, 4.0, 4.0, 5.0)
    assert attention.unfused_score_bytes(True, dropout=False, fused_softmax=False) == (6.0, 4.0)
    assert attention.unfused_score_bytes(True, dropout=False, fused_softmax=True) == (6.0,)


def test_fused_causal_softmax_reads_only_the_triangle():
    """Megatron-LM's scaled_upper_triang_masked_softmax (as vendored by ColossalAI, "from NVIDIA Megatron"): the
    forward loads row i's first i + 1 scores and stores the whole row (zeros above the diagonal), so over s x s
    scores it reads half and writes all: 1 + 2 = 3 B. The backward loads dP and P over the triangle and stores
    dS whole: 1 + 1 + 2 = 4 B. The unfused softmax (three torch kernels) reads everything whatever the mask."""
    assert attention.unfused_score_bytes(False, dropout=False, fused_softmax=True, causal=True) == (3.0,)
    assert attention.unfused_score_bytes(True, dropout=False, fused_softmax=True, causal=True) == (4.0,)
    assert attention.unfused_score_bytes(True, dropout=True, fused_softmax=True, causal=True) == (5.0, 4.0)
    assert attention.unfused_score_bytes(False, dropout=False, fused_softmax=False, causal=True) == (4.0, 4.0, 4.0)


def test_unfused_path_by_hand():
    """2 sequences x 3 heads = 6 batched GEMMs of s x s scores. Forward: S = Q K^T ([s, d_qk] x [d_qk, s]) and
    O = P V ([s, s] x [s, d_v]); backward dV = P^T dO, dP = dO V^T ([s, d_v] x [d_v, s]), dQ = dS K and
    dK = dS^T Q (two [s, s] x [s, d_qk]); each GEMM batched as 6 groups of s rows. The memory-bound kernels move
    their bytes per score element x 6 s^2, each costed by ``memory_seconds`` under the name ``softmax``."""
    g = gpu()
    s, dq, dv = 256, 64, 32
    seen = []

    def mem(b, name):
        seen.append(name)
        return b / 1e12

    def bmm(m, n, k):
        return gemm.gemm_seconds(g, "bf16", 6 * m, n, k, (m,) * 6)

    scores = 6.0 * s * s
    fwd = attention.unfused_seconds(g, mem, 2, s, 3, dq, dv, False, True, False)
    assert fwd == pytest.approx(bmm(s, s, dq) + bmm(s, dv, s) + (4 + 4 + 4 + 5) * scores / 1e12)
    bwd = attention.unfused_seconds(g, mem, 2, s, 3, dq, dv, True, False, True, causal=False)
    assert bwd == pytest.approx(bmm(s, dv, s) + bmm(s, s, dv) + 2 * bmm(s, dq, s) + 6 * scores / 1e12)
    # Causal (the default): the fused softmax backward reads dP and P over the triangle only, 2 + 2 B.
    causal = attention.unfused_seconds(g, mem, 2, s, 3, dq, dv, True, False, True)
    assert causal == pytest.approx(bmm(s, dv, s) + bmm(s, s, dv) + 2 * bmm(s, dq, s) + 4 * scores / 1e12)
    assert set(seen) == {"softmax"}
    # Less than one sequence's heads still runs one batched GEMM.
    assert attention.unfused_seconds(g, mem, 0.1, s, 3, dq, dv, False, False, True, False) == pytest.approx(
        gemm.gemm_seconds(g, "bf16", s, s, dq, (s,)) + gemm.gemm_seconds(g, "bf16", s, dv, s, (s,))
        + 4 * s * s / 1e12)


def test_flash_seconds_add_the_launch_and_fallbacks_keep_the_default_flag():
    g = gpu(kernel_overhead_us=5.0)
    base = attention.flash_seconds(gpu(), "bf16", 1e12, 4096, False, False)
    assert attention.flash_seconds(g, "bf16", 1e12, 4096, False, False) == pytest.approx(base + 5e-6)
    assert attention.flash_curve(g) == attention.flash_curve(g, "default")
    assert attention.flash_curve(g).default is True and attention.flash_curve(g).note is None
    own = attention.flash_curve(gpu("sm90", attention_kernels={"fa2": FA2_TOY}), "fa2")
    assert own.curve == FA2_TOY and own.default is False
    # No curve of its own: the default curve, still the one calibration tables describe, with a note.
    fallback = attention.flash_curve(gpu("sm90"), "cudnn")
    assert fallback.curve == gpu("sm90").efficiency.attention_curve and fallback.default is True
    assert "no cudnn curve" in (fallback.note or "") and "assumed, of no named kernel" in (fallback.note or "")
