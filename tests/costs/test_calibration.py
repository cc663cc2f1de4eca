"""Calibration that transfers by mechanism (sim.costs.calibration, sim.costs.kernels): exact at a measured shape,
smooth and bounded between, the kind's overall correction far away, across GPUs of the same silicon only."""

from __future__ import annotations

import math

import pytest

from sim.calibrate.table import CalibrationTable, DeviceInfo, Entry
from sim.config import PrecisionSpec
from sim.costs import gemm
from sim.costs.calibration import PRIOR_COUNT, Calibration, same_silicon
from sim.costs.kernels import CostModel
from sim.loading import load_cluster

H800 = load_cluster("deepseek_h800_2048").gpu
H100 = load_cluster("h100_ib_1024").gpu
H20 = load_cluster("h20_ib_1024").gpu
FP8 = PrecisionSpec(fprop="fp8", dgrad="fp8", wgrad="fp8")


def entry(m: float, n: float, k: float, slower: float, dtype: str = "fp8", gemm_pass: str = "fwd") -> Entry:
    """A GEMM of a training trace, measured ``slower`` times the model's in-training time on the H800."""
    seconds = gemm.gemm_seconds(H800, dtype, m, n, k, None, gemm_pass) * slower
    flops = 2.0 * m * n * k
    return Entry(kind="gemm", dtype=dtype, name="g", gemm_pass=gemm_pass, shape={"m": m, "n": n, "k": k},
                 seconds=seconds, samples=1, flops=flops, achieved_flops_per_s=flops / seconds)


def table(*entries: Entry, kind: str = "trace") -> CalibrationTable:
    return CalibrationTable(schema_version=1, entries=entries, device=DeviceInfo(
        name="NVIDIA H800", kind=kind, num_sms=132, source="test", created="2026-01-01"))


def test_a_trace_is_compared_with_gemms_in_training_a_harness_with_isolated_ones():
    """The same measured seconds: a trace's GEMM ran inside training (the model there is slower by the pass's
    in-training factor, so the correction is that much nearer 1); a harness timed it isolated."""
    m = n = k = 4096
    isolated = gemm.gemm_seconds(H800, "fp8", m, n, k)
    e = Entry(kind="gemm", dtype="fp8", name="g", gemm_pass="wgrad", shape={"m": m, "n": n, "k": k},
              seconds=isolated, samples=1, flops=2.0 * m * n * k, achieved_flops_per_s=2.0 * m * n * k / isolated)
    harness = Calibration(table(e, kind="cuda"), H800).gemm("fp8", "wgrad", m, n, k).kappa
    trace = Calibration(table(e), H800).gemm("fp8", "wgrad", m, n, k).kappa
    assert harness == pytest.approx(1.0)
    factor = H800.efficiency.gemm_training_wgrad
    launch = H800.efficiency.kernel_overhead_us * 1e-6
    want = ((isolated - launch) / factor + launch) / isolated  # in-training model / measured, at distance 0
    prior = math.log(want) / (1 + PRIOR_COUNT)
    assert math.log(trace) == pytest.approx((math.log(want) + 0.1 * prior) / 1.1)


def test_exact_at_a_measured_shape_and_prior_far_away():
    cal = Calibration(table(entry(4096, 4096, 4096, 2.0)), H800)
    at = cal.gemm("fp8", "fwd", 4096, 4096, 4096)
    assert at.distance == 0
    # One measurement at kappa 1/2, weight 1 against the prior's 0.1 at log kappa = log(1/2) / (1 + PRIOR_COUNT):
    prior = math.log(0.5) / (1 + PRIOR_COUNT)
    assert math.log(at.kappa) == pytest.approx((math.log(0.5) + 0.1 * prior) / 1.1)
    far = cal.gemm("fp8", "fwd", 64, 64, 64)
    assert far.kappa == pytest.approx(math.exp(prior), rel=1e-3)  # every measurement more than 6 sigma away
    assert far.distance > 5


def test_between_two_measurements_the_correction_lies_between_them():
    cal = Calibration(table(entry(2048, 4096, 4096, 1.25), entry(8192, 4096, 4096, 2.0)), H800)
    lo, hi = 1 / 2.0, 1 / 1.25
    for m in (2048, 3000, 4096, 6000, 8192):
        assert lo <= cal.gemm("fp8", "fwd", m, 4096, 4096).kappa <= hi


def test_other_passes_borrow_with_a_penalty():
    cal = Calibration(table(entry(4096, 4096, 4096, 2.0, gemm_pass="wgrad")), H800)
    same = cal.gemm("fp8", "wgrad", 4096, 4096, 4096).kappa
    other = cal.gemm("fp8", "fwd", 4096, 4096, 4096).kappa
    assert same < other < 1.0


def test_fp8_is_never_slower_than_bf16():
    # FP8 measured 10x slower than its model: the cost model falls back to the BF16 time of that shape.
    costs = CostModel(H800, FP8, table(entry(4096, 4096, 4096, 10.0)), H800)
    assert costs.gemm_seconds(4096, 4096, 4096, "fp8") == pytest.approx(costs.gemm_seconds(4096, 4096, 4096, "bf16"))


def test_a_table_transfers_to_the_same_silicon_with_that_gpus_bandwidth():
    assert same_silicon(H800, H100) and not same_silicon(H800, H20)
    t = table(entry(4096, 4096, 4096, 2.0))
    on_h800 = CostModel(H800, FP8, t, H800).gemm_seconds(4096, 4096, 4096, "fp8")
    on_h100 = CostModel(H100, FP8, t, H800).gemm_seconds(4096, 4096, 4096, "fp8")
    assert on_h100 == pytest.approx(on_h800)  # same die, same HBM bandwidth: the same time
    h200 = load_cluster("h200_ib_1024").gpu  # more HBM bandwidth: a memory-bound GEMM runs faster
    skinny = CostModel(h200, FP8, t, H800).gemm_seconds(64, 7168, 7168, "fp8")
    assert skinny < CostModel(H800, FP8, t, H800).gemm_seconds(64, 7168, 7168, "fp8")


def test_notes_say_how_far_calibration_reached():
    costs = CostModel(H800, FP8, table(entry(4096, 4096, 4096, 2.0)), H800)
    costs.gemm_seconds(4096, 4096, 4096, "fp8", pass_="fwd")
    costs.gemm_seconds(16384, 4096, 4096, "fp8", pass_="fwd")
    costs.gemm_seconds(4096, 4096, 4096, "bf16", pass_="fwd")
    notes = costs.notes
    assert any("gemm fp8 fwd: calibrated, up to 4.0x" in n for n in notes)
    assert any("gemm bf16 fwd: not in the calibration table" in n for n in notes)


def test_a_shared_memo_replays_each_cost_models_own_notes():
    """Two cost models of the same content share one memo; the second, answered from it, still reports the
    calibration reach of the shapes it asked for, and an error while computing leaves nothing half-recorded."""
    from sim.costs.kernels import clear_shared, cost_model

    clear_shared()
    t = table(entry(4096, 4096, 4096, 2.0))
    first, second = cost_model(H800, FP8, t, H800), cost_model(H800, FP8, t, H800)
    assert first._cache is second._cache
    a = first.gemm_seconds(512, 4096, 4096, "fp8", pass_="fwd")
    assert second.gemm_seconds(512, 4096, 4096, "fp8", pass_="fwd") == a
    assert second.provenance == first.provenance and second.provenance
    no_fp8 = H800.model_copy(update={"peak_tflops": H800.peak_tflops.model_copy(update={"fp8": None})})
    broken = cost_model(no_fp8, FP8)
    with pytest.raises(ValueError):
        broken.gemm_seconds(512, 4096, 4096, "fp8", pass_="fwd")
    assert not broken._effects and not broken._cache
