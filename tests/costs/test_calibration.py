"""Calibration that transfers by mechanism (sim.costs.calibration, sim.costs.kernels): exact at a measured shape,
smooth and bounded between, the kind's overall correction far away, across GPUs of the same silicon only."""

from __future__ import annotations

import math

import pytest
import yaml

from sim.calibrate.table import CalibrationTable, DeviceInfo, Entry, load_table
from sim.config import PrecisionSpec
from sim.costs import gemm
from sim.costs.attention import flash_seconds
from sim.costs.calibration import (
    PASS_PENALTY,
    PRIOR_COUNT,
    PRIOR_WEIGHT,
    SIGMA,
    Calibration,
    Correction,
    Resolved,
    attention_fwd_flops,
    memory_model_seconds,
    resolve_calibration,
    same_silicon,
)
from sim.costs.kernels import CostModel
from sim.errors import SimInputError
from sim.loading import load_cluster, load_scenario

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


def test_memory_model_and_attention_flops_by_hand():
    """A memory-bound kernel: 2.01 GB at 60 % of the H800's 3.35 TB/s is 1 ms, plus the 2.5 us launch. Attention
    forward model FLOPs: 2 x batch x heads x (d_qk + d_v) x s x s_k, the keys halved when causal."""
    assert H800.hbm_bandwidth_bytes_per_s == 3.35e12 and H800.efficiency.hbm_frac == 0.6
    assert H800.efficiency.kernel_overhead_us == 2.5
    assert memory_model_seconds(H800, 2.01e9) == pytest.approx(1e-3 + 2.5e-6, rel=1e-12)
    assert attention_fwd_flops(1024, 2, 64, 32, False, 3) == 2.0 * 3 * 2 * 96 * 1024 * 1024
    assert attention_fwd_flops(1024, 2, 64, 32, True, 3) == 2.0 * 3 * 2 * 96 * 1024 * 512


def test_same_silicon_falls_back_to_the_model_name_when_a_profile_does_not_say():
    a100 = load_cluster("a100_ib_3072").gpu
    bare_h100 = H100.model_copy(update={"silicon": None})
    assert same_silicon(bare_h100, H100) and same_silicon(H100, bare_h100)  # the same model name
    assert not same_silicon(bare_h100, H800)  # silicon unknown on one side: H100 is not H800 by name
    assert not same_silicon(a100.model_copy(update={"silicon": None}), H100)


def test_a_kind_without_measurements_is_left_alone():
    cal = Calibration(table(entry(4096, 4096, 4096, 2.0)), H800)
    assert cal.gemm("bf16", "fwd", 4096, 4096, 4096) == Correction(1.0, math.inf)
    assert cal.attention("bf16", False, 4096, 16, 192, 128) == Correction(1.0, math.inf)
    assert cal.memory("norm", 1e6) == Correction(1.0, math.inf)


def test_gaussian_weights_and_pass_priors_by_hand():
    """One fwd GEMM measured 2x slower (log kappa L = log 1/2) and one dgrad GEMM 2x faster (log 2), far apart.
    Prior of a pass: the mean of its own measurements tempered by PRIOR_COUNT pseudo-measurements at 0, L / 5.
    A query a factor 2 (one sigma) from the fwd measurement weighs it exp(-1/2); a factor 4, exp(-2); the
    dgrad one, 6 sigma farther, adds nothing. A pass other than the measured one is PASS_PENALTY farther."""
    lo, hi = entry(1024, 4096, 4096, 2.0, gemm_pass="fwd"), entry(1 << 22, 4096, 4096, 0.5, gemm_pass="dgrad")
    cal = Calibration(table(lo, hi), H800)
    la, lb = math.log(0.5), math.log(2.0)
    prior_fwd, prior_dgrad = la / (1 + PRIOR_COUNT), lb / (1 + PRIOR_COUNT)

    def blend(w: float, log_kappa: float, prior: float) -> float:
        return math.exp((PRIOR_WEIGHT * prior + w * log_kappa) / (PRIOR_WEIGHT + w))

    one_sigma = cal.gemm("fp8", "fwd", 2048, 4096, 4096)
    assert one_sigma.distance == pytest.approx(SIGMA)
    assert one_sigma.kappa == pytest.approx(blend(math.exp(-0.5), la, prior_fwd), rel=1e-6)
    two_sigma = cal.gemm("fp8", "fwd", 4096, 4096, 4096)
    assert two_sigma.kappa == pytest.approx(blend(math.exp(-2.0), la, prior_fwd), rel=1e-6)
    # Far from both: each pass's own prior, not the mean of all measurements.
    assert cal.gemm("fp8", "fwd", 64, 64, 64).kappa == pytest.approx(math.exp(prior_fwd), rel=1e-6)
    assert cal.gemm("fp8", "dgrad", 64, 64, 64).kappa == pytest.approx(math.exp(prior_dgrad), rel=1e-6)
    # An isolated GEMM (no pass) takes every measurement at its distance and the mean of all as prior.
    assert cal.gemm("fp8", None, 64, 64, 64).kappa == pytest.approx(math.exp((la + lb) / 6), rel=1e-6)
    # A wgrad query at the fwd shape: no wgrad measurement (prior of all), the fwd one a penalty away.
    other = cal.gemm("fp8", "wgrad", 1024, 4096, 4096)
    assert other.distance == pytest.approx(PASS_PENALTY)
    w = math.exp(-0.5 * (PASS_PENALTY / SIGMA) ** 2)
    assert other.kappa == pytest.approx(blend(w, la, (la + lb) / 6), rel=1e-6)


def test_grouped_attention_and_memory_entries_compare_with_their_own_models():
    """Each measured kernel is compared with the model of that kernel: a grouped GEMM with its per-group padded
    model, an attention backward with the backward (causal unless the shape says not), a memory kernel with the
    memory model; so an entry measured at exactly its model's time corrects by 1 (log kappa 0) at its shape."""
    rows = (1000.0,) * 4
    t_grouped = gemm.gemm_seconds(H800, "fp8", 4000, 2048, 7168, rows, "fwd")
    grouped = Entry(kind="grouped_gemm", dtype="fp8", name="experts", gemm_pass="fwd",
                    shape={"m": 4000, "n": 2048, "k": 7168, "groups": 4}, seconds=t_grouped, samples=1,
                    flops=2.0 * 4000 * 2048 * 7168, achieved_flops_per_s=2.0 * 4000 * 2048 * 7168 / t_grouped)
    points = []
    for causal, batch in ((1.0, 2.0), (0.0, 1.0)):
        fwd = attention_fwd_flops(4096, 16, 192, 128, bool(causal), batch)
        t_att = flash_seconds(H800, "bf16", fwd, 4096, bool(causal), True)
        att = Entry(kind="attention_bwd", dtype="bf16", name="fa3", shape={
            "seq": 4096, "heads": 16, "qk_dim": 192, "v_dim": 128, "causal": causal, "batch": batch},
            seconds=t_att, samples=1, flops=2 * fwd, achieved_flops_per_s=2 * fwd / t_att)
        points.append(att)
    t_mem = memory_model_seconds(H800, 3e8)
    mem = Entry(kind="memory", dtype="bf16", name="norm", shape={"bytes": 3e8}, seconds=t_mem, samples=1,
                bytes=3e8, achieved_bytes_per_s=3e8 / t_mem)
    cal = Calibration(table(grouped, *points, mem), H800)
    by_group = cal._points
    assert [p.log_kappa for p in by_group[("gemm", "fp8")]] == pytest.approx([0.0])
    assert [p.log_kappa for p in by_group[("attention", "bf16")]] == pytest.approx([0.0, 0.0], abs=1e-12)
    assert by_group[("attention", "bf16")][0].tag == "attention_bwd"
    (m,) = by_group[("memory", "any")]
    assert (m.key, m.tag) == ((math.log(3e8),), "norm") and m.log_kappa == pytest.approx(0.0, abs=1e-12)
    assert cal.attention("bf16", True, 4096, 16, 192, 128).kappa == pytest.approx(1.0)
    assert cal.memory("norm", 3e8) == Correction(pytest.approx(1.0), 0.0)


def test_a_grouped_gemm_is_found_at_its_own_measured_shape():
    """A grouped GEMM's point is keyed by one group's rows, as the cost model asks for it (m / groups), so the
    cost of exactly the measured shape is at distance 0 from its measurement and takes its correction (keyed
    by the total rows it was log(4) away: "up to 4.0x from the nearest measured shape")."""
    rows = (1000.0,) * 4
    t = gemm.gemm_seconds(H800, "fp8", 4000, 2048, 7168, rows, "fwd") * 1.25  # measured 25 % slower
    grouped = Entry(kind="grouped_gemm", dtype="fp8", name="experts", gemm_pass="fwd",
                    shape={"m": 4000, "n": 2048, "k": 7168, "groups": 4}, seconds=t, samples=1,
                    flops=2.0 * 4000 * 2048 * 7168, achieved_flops_per_s=2.0 * 4000 * 2048 * 7168 / t)
    cm = CostModel(H800, FP8, table(grouped), H800)
    c = cm.calibration.gemm("fp8", "fwd", 1000, 2048, 7168)
    assert c.distance == pytest.approx(0.0)
    assert cm.gemm_seconds(4000, 2048, 7168, "fp8", rows, "fwd") > gemm.gemm_seconds(
        H800, "fp8", 4000, 2048, 7168, rows, "fwd") * 1.15  # most of the measured 25 % applies


def test_which_table_a_scenario_uses():
    """The job's own H800 trace table on its H800s: that table, measured on the H800 profile, nothing to say. On
    H100s (the same GH100 silicon): the same table and source, with a note that bandwidth-bound costs come from
    the H100's profile. On H20s (another die): refused when the user named the table (strict), else set aside
    with a warning. No table: nothing."""
    own = load_scenario("workloads/deepseek_v3.yaml")
    r = resolve_calibration(own)
    assert r.table is not None and r.table is load_table(own.calibration)
    assert r.source == H800 and (r.warning, r.note) == (None, None)
    h100 = resolve_calibration(load_scenario("workloads/deepseek_v3.yaml", overrides=["cluster=h100_ib_1024"]))
    assert h100.table is r.table and h100.source == H800 and h100.warning is None
    assert h100.note is not None and "applied to H100-SXM-80GB (same compute silicon" in h100.note
    h20 = load_scenario("workloads/deepseek_v3.yaml", overrides=["cluster=h20_ib_1024"])
    with pytest.raises(SimInputError, match="measured on NVIDIA H800 but the scenario's GPU is H20"):
        resolve_calibration(h20)
    lenient = resolve_calibration(h20, strict=False)
    assert (lenient.table, lenient.source, lenient.note) == (None, None, None)
    assert lenient.warning == ("the job's calibration (NVIDIA H800) does not describe H20-96GB: profile "
                               "efficiencies used")
    assert resolve_calibration(load_scenario("workloads/tiny_moe_job.yaml")) == Resolved()


def test_a_cpu_table_is_pipeline_validation_only(tmp_path):
    cpu = CalibrationTable(schema_version=1, entries=(entry(4096, 4096, 4096, 1.0),), device=DeviceInfo(
        name="x86 host", kind="cpu", source="test", created="2026-01-01"))
    path = tmp_path / "cpu.yaml"
    path.write_text(yaml.safe_dump(cpu.model_dump(mode="json")))
    s = load_scenario("workloads/deepseek_v3.yaml", overrides=[f"calibration={path}"])
    with pytest.raises(SimInputError, match="CPU timings validate the calibration pipeline only"):
        resolve_calibration(s)
    r = resolve_calibration(s, allow_cpu=True)
    assert r.table is not None and r.table.device.kind == "cpu" and r.source == s.cluster.gpu
    assert r.warning is not None and r.warning.startswith("PIPELINE VALIDATION ONLY") and r.note is None
