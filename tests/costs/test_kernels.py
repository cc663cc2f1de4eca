"""The cost model's kernel calls (sim.costs.kernels.CostModel) against the shape models they wrap, term by term:
which GEMM each training pass runs, the FP8 cast bytes, the memory-bound kernels, calibration and provenance."""

from __future__ import annotations

import math

import pytest

from sim.calibrate.table import CalibrationTable, DeviceInfo, Entry
from sim.config import PrecisionSpec
from sim.costs import gemm, kernels
from sim.costs.attention import flash_seconds, unfused_seconds
from sim.costs.calibration import Calibration, attention_fwd_flops, memory_model_seconds
from sim.costs.kernels import CostModel, stack_gpu
from sim.loading import load_cluster, load_scenario

# H800: in-training factors differ per pass (fwd 0.863, dgrad 0.896, wgrad 0.638), so a GEMM costed as the
# wrong pass (or as an isolated GEMM) shows; it has FP8 tensor cores.
H800 = load_cluster("deepseek_h800_2048").gpu
FP8 = PrecisionSpec(fprop="fp8", dgrad="fp8", wgrad="fp8")
BF16 = PrecisionSpec()
M, N, K = 3000, 5120, 1536  # distinct sizes: swapping two of them changes the GEMM and the cast bytes


def table(*entries: Entry) -> CalibrationTable:
    return CalibrationTable(schema_version=1, entries=entries, device=DeviceInfo(
        name="NVIDIA H800", kind="trace", num_sms=132, source="test", created="2026-01-01"))


def memory_entry(name: str, bytes_: float, slower: float) -> Entry:
    """A memory-bound kernel ``name`` measured ``slower`` times the model's time on the H800."""
    seconds = memory_model_seconds(H800, bytes_) * slower
    return Entry(kind="memory", dtype="bf16", name=name, shape={"bytes": bytes_}, seconds=seconds, samples=1,
                 bytes=bytes_, achieved_bytes_per_s=bytes_ / seconds)


def gemm_entry(m: float, n: float, k: float, slower: float, gemm_pass: str) -> Entry:
    seconds = gemm.gemm_seconds(H800, "fp8", m, n, k, None, gemm_pass) * slower
    flops = 2.0 * m * n * k
    return Entry(kind="gemm", dtype="fp8", name="g", gemm_pass=gemm_pass, shape={"m": m, "n": n, "k": k},
                 seconds=seconds, samples=1, flops=flops, achieved_flops_per_s=flops / seconds)


def best(m, n, k, pass_, rows=None):
    """An FP8 GEMM is never slower than the BF16 one of the same shape (the stack can run it in BF16)."""
    return min(gemm.gemm_seconds(H800, "fp8", m, n, k, rows, pass_), gemm.gemm_seconds(H800, "bf16", m, n, k, rows,
                                                                                        pass_))


def cast(bytes_: float) -> float:
    return memory_model_seconds(H800, bytes_)


def test_bf16_passes_are_the_shape_model_of_the_right_gemm():
    """fwd: [m, k] x [k, n]; dgrad: [m, n] x [n, k] (m x k x n); wgrad: [n, m] x [m, k] (n x k x m, contracting
    over the rows); no casts in BF16."""
    c = CostModel(H800, BF16)
    assert c.gemm_pass_seconds("fwd", M, N, K, "linear") == gemm.gemm_seconds(H800, "bf16", M, N, K, None, "fwd")
    assert c.gemm_pass_seconds("dgrad", M, N, K, "linear") == gemm.gemm_seconds(H800, "bf16", M, K, N, None, "dgrad")
    assert c.gemm_pass_seconds("wgrad", M, N, K, "linear") == gemm.gemm_seconds(H800, "bf16", N, K, M, None, "wgrad")


def test_fp8_passes_add_their_cast_kernels_by_hand():
    """DeepSeek-V3 3.3: before an FP8 GEMM its BF16 input is read (2 B) and written as FP8 (1 B), 3 B per element:
    fwd quantizes the activations (m x k), dgrad the output gradient (m x n); wgrad quantizes the output gradient
    (m x n, 3 B) and transposes the cached FP8 input (m x k: read 1 B, write 1 B)."""
    c = CostModel(H800, FP8)
    assert c.gemm_pass_seconds("fwd", M, N, K, "linear") == pytest.approx(best(M, N, K, "fwd") + cast(3 * M * K))
    assert c.gemm_pass_seconds("dgrad", M, N, K, "linear") == pytest.approx(best(M, K, N, "dgrad") + cast(3 * M * N))
    assert c.gemm_pass_seconds("wgrad", M, N, K, "linear") == pytest.approx(
        best(N, K, M, "wgrad") + cast(2 * M * K + 3 * M * N))


def test_tensorwise_fp8_casts_the_weight_every_forward_and_relays_operands_out_by_hand():
    """torchao Float8Linear (dynamic tensorwise scaling, compiled): activations cast as in the tilewise recipe
    (3 B per element, their maxima reduced in the producers' kernels); the weight reduced (read 2 B) and cast
    (3 B) in every forward, 5 B per weight element; dgrad re-lays the cached FP8 weight out column-major (read 1,
    write 1: 2 B per weight element); wgrad re-lays the cached FP8 output gradient and input out (2 B each)
    instead of casting. With FP8 weight gathers the forward casts no weight (the gathered weight is FP8)."""
    c = CostModel(H800, PrecisionSpec(fprop="fp8", dgrad="fp8", wgrad="fp8", fp8_scaling="tensorwise"))
    assert c.gemm_pass_seconds("fwd", M, N, K, "linear") == pytest.approx(
        best(M, N, K, "fwd") + cast(3 * M * K + 5 * N * K))
    assert c.gemm_pass_seconds("dgrad", M, N, K, "linear") == pytest.approx(
        best(M, K, N, "dgrad") + cast(3 * M * N + 2 * N * K))
    assert c.gemm_pass_seconds("wgrad", M, N, K, "linear") == pytest.approx(
        best(N, K, M, "wgrad") + cast(2 * M * K + 2 * M * N))
    gathered = CostModel(H800, PrecisionSpec(fprop="fp8", dgrad="fp8", wgrad="fp8", fp8_scaling="tensorwise",
                                             fp8_weight_gather=True))
    assert gathered.gemm_pass_seconds("fwd", M, N, K, "linear") == pytest.approx(
        best(M, N, K, "fwd") + cast(3 * M * K))
    assert gathered.gemm_pass_seconds("dgrad", M, N, K, "linear") == c.gemm_pass_seconds("dgrad", M, N, K, "linear")
    # A grouped GEMM casts one weight per expert.
    rows = (700.0, 1300.0)
    assert kernels.fp8_cast_bytes("fwd", 2000, N, K, "tensorwise", len(rows)) == 3 * 2000 * K + 5 * 2 * N * K


def test_only_linear_layers_follow_the_fp8_recipe():
    """Other GEMM classes (router, attention projections kept in BF16 by the recipe) run in BF16, uncast."""
    c = CostModel(H800, FP8)
    assert c.gemm_dtype("fwd", "linear") == "fp8" and c.gemm_dtype("wgrad", "router") == "bf16"
    assert c.gemm_pass_seconds("fwd", M, N, K, "router") == gemm.gemm_seconds(H800, "bf16", M, N, K, None, "fwd")
    mixed = CostModel(H800, PrecisionSpec(fprop="fp8", dgrad="bf16", wgrad="fp8"))
    assert [mixed.gemm_dtype(p, "linear") for p in ("fwd", "dgrad", "wgrad")] == ["fp8", "bf16", "fp8"]


def test_grouped_passes_pad_each_group_and_wgrad_is_one_gemm_per_expert():
    """A grouped GEMM pads each expert's rows to the tile (forward and dgrad: one grouped kernel over all rows);
    the weight gradient is one n x k GEMM per expert contracting over that expert's rows, none for an expert
    that got no rows; a single group is an ordinary GEMM."""
    rows = (700.0, 0.0, 1300.0)
    c = CostModel(H800, BF16)
    assert c.gemm_pass_seconds("fwd", 2000, N, K, "linear", rows) == gemm.gemm_seconds(
        H800, "bf16", 2000, N, K, rows, "fwd")
    assert c.gemm_pass_seconds("dgrad", 2000, N, K, "linear", rows) == gemm.gemm_seconds(
        H800, "bf16", 2000, K, N, rows, "dgrad")
    per_expert = (gemm.gemm_seconds(H800, "bf16", N, K, 700, None, "wgrad")
                  + gemm.gemm_seconds(H800, "bf16", N, K, 1300, None, "wgrad"))
    assert c.gemm_pass_seconds("wgrad", 2000, N, K, "linear", rows) == pytest.approx(per_expert)
    one = c.gemm_pass_seconds("wgrad", 2000, N, K, "linear", (2000.0,))
    assert one == gemm.gemm_seconds(H800, "bf16", N, K, 2000, None, "wgrad")
    # Fewer than one row rounds to a GEMM of one row (the kernel still runs).
    assert c.gemm_pass_seconds("wgrad", 0.4, N, K, "linear") == gemm.gemm_seconds(H800, "bf16", N, K, 1, None, "wgrad")
    # Grouped FP8: the per-group padding reaches the FP8 GEMM and its BF16 bound alike.
    f = CostModel(H800, FP8)
    assert f.gemm_pass_seconds("fwd", 2000, N, K, "linear", rows) == pytest.approx(
        best(2000, N, K, "fwd", rows) + cast(3 * 2000 * K))


def test_empty_work_costs_nothing_and_one_row_costs_a_kernel():
    c = CostModel(H800, BF16)
    assert c.gemm_seconds(0, N, K, "bf16") == 0.0
    assert c.gemm_seconds(1, N, K, "bf16") == gemm.gemm_seconds(H800, "bf16", 1, N, K) > 0
    assert c.memory_seconds(0) == 0.0
    assert c.memory_seconds(1) == memory_model_seconds(H800, 1) > 0
    for pass_ in ("fwd", "dgrad"):
        assert c.unfused_attention_seconds(pass_, 0, 512, 4, 64, 64, False, True) == 0.0
    assert c.unfused_attention_seconds("wgrad", 1024, 512, 4, 64, 64, False, True) == 0.0
    assert c.attention_seconds("wgrad", 1024, 512, 4, 64, 64) == 0.0


def test_the_memo_tells_shapes_apart():
    """Different queries through one cost model get their own answers (the memo keys on the whole query)."""
    c = CostModel(H800, BF16)
    a, b = c.gemm_seconds(512, N, K, "bf16"), c.gemm_seconds(4096, N, K, "bf16")
    assert (a, b) == (gemm.gemm_seconds(H800, "bf16", 512, N, K), gemm.gemm_seconds(H800, "bf16", 4096, N, K))
    assert c.memory_seconds(1e6) != c.memory_seconds(1e8)
    assert c.memory_seconds(1e8, "norm") == c.memory_seconds(1e8, "swiglu")  # uncalibrated: the name is no matter
    fwd = c.unfused_attention_seconds("fwd", 1024, 512, 4, 64, 64, True, False)
    bwd = c.unfused_attention_seconds("dgrad", 1024, 512, 4, 64, 64, True, False)
    assert c.unfused_attention_seconds("fwd", 1024, 512, 4, 64, 64, False, True) < fwd < bwd


def test_unfused_attention_is_the_unfused_path_for_the_micro_batch():
    """``tokens / seq_len`` sequences; backward and the dropout and fused-softmax flags reach the path."""
    c = CostModel(H800, BF16)
    for backward, dropout, fused in ((False, True, False), (True, True, False), (True, False, True)):
        expected = unfused_seconds(H800, c.memory_seconds, 2, 512, 4, 64, 48, backward, dropout, fused)
        got = c.unfused_attention_seconds("dgrad" if backward else "fwd", 1024, 512, 4, 64, 48, dropout, fused)
        assert got == pytest.approx(expected)


def test_memory_kernels_take_their_own_names_correction():
    """A table that measured ``norm`` 2x slower than the model: a norm of that size is corrected by the
    calibration's ``norm`` correction (time divided by kappa < 1: slower), another kernel name by a weaker one
    (a pass penalty away), and the provenance of memory-bound kernels records the reach (0 here: measured)."""
    b = 64e6
    t = table(memory_entry("norm", b, 2.0))
    c = CostModel(H800, BF16, t, H800)
    cal = Calibration(t, H800)
    norm = c.memory_seconds(b, "norm")
    assert norm == pytest.approx(memory_model_seconds(H800, b) / cal.memory("norm", b).kappa)
    assert norm > 1.5 * memory_model_seconds(H800, b)
    assert c.provenance == {"memory-bound kernels": 0.0}
    assert c.notes == []  # measured at that size: nothing to say
    other = c.memory_seconds(b, "swiglu")
    assert memory_model_seconds(H800, b) < other < norm
    assert other == pytest.approx(memory_model_seconds(H800, b) / cal.memory("swiglu", b).kappa)
    assert c.memory_seconds(b) == pytest.approx(memory_model_seconds(H800, b) / cal.memory("elementwise", b).kappa)
    assert c.provenance == {"memory-bound kernels": 1.0}  # other names: one pass penalty from the measurement


def test_provenance_keeps_the_farthest_reach_of_each_kind():
    """An exact shape (distance 0) after a far one does not lower the recorded reach; a measured shape alone
    records 0, which the notes do not mention."""
    t = table(gemm_entry(4096, 4096, 4096, 2.0, "fwd"))
    c = CostModel(H800, FP8, t, H800)
    c.gemm_seconds(4096, 4096, 4096, "fp8", pass_="fwd")
    assert c.provenance["gemm fp8 fwd"] == pytest.approx(0.0, abs=1e-12)
    assert not any("gemm fp8 fwd" in n for n in c.notes)
    c.gemm_seconds(4 * 4096, 4096, 4096, "fp8", pass_="fwd")
    c.gemm_seconds(4096, 4096, 4096, "fp8", pass_="fwd")
    assert c.provenance["gemm fp8 fwd"] == pytest.approx(math.log(4))
    c.gemm_seconds(4096, 4096, 4096, "fp8")  # an isolated GEMM: its own kind, without a pass
    assert "gemm fp8" in c.provenance


def test_calibrated_gemms_use_their_pass_and_per_group_rows():
    """The correction is looked up at the pass the GEMM runs in (a measured fwd GEMM corrects a dgrad one only a
    pass penalty away) and, for a grouped GEMM, at the rows of one group (the shape each group's tiles see)."""
    t = table(gemm_entry(1024, 4096, 4096, 0.7, "fwd"))  # measured faster: FP8 stays below the BF16 bound
    cal = Calibration(t, H800)
    c = CostModel(H800, FP8, t, H800)
    fwd = c.gemm_seconds(1024, 4096, 4096, "fp8", None, "fwd")
    modelled = gemm.gemm_seconds(H800, "fp8", 1024, 4096, 4096, None, "fwd")
    assert fwd == pytest.approx(modelled / cal.gemm("fp8", "fwd", 1024, 4096, 4096).kappa)
    dgrad = c.gemm_seconds(1024, 4096, 4096, "fp8", None, "dgrad")
    assert dgrad == pytest.approx(gemm.gemm_seconds(H800, "fp8", 1024, 4096, 4096, None, "dgrad")
                                  / cal.gemm("fp8", "dgrad", 1024, 4096, 4096).kappa)
    rows = (1024.0,) * 4
    grouped = c.gemm_seconds(4096, 4096, 4096, "fp8", rows, "fwd")
    assert grouped == pytest.approx(gemm.gemm_seconds(H800, "fp8", 4096, 4096, 4096, rows, "fwd")
                                    / cal.gemm("fp8", "fwd", 1024, 4096, 4096).kappa)
    # FP8 never slower than BF16: the BF16 bound (uncalibrated here) is taken at the same pass and groups.
    bf16_bound = CostModel(H800, BF16).gemm_seconds(4096, 4096, 4096, "bf16", rows, "fwd")
    assert grouped <= bf16_bound


def test_the_default_flash_kernel_is_the_profiles_default_curve():
    c = CostModel(H800, BF16)
    choice = c.flash_kernel()
    assert choice.default and choice.note is None and choice.curve == H800.efficiency.attention_curve
    assert c.flash_kernel() is choice and c.notes == []


def test_each_kernel_shape_is_costed_once(monkeypatch):
    """The memo (module docstring): a repeated query is answered without running the shape model again, per
    kind of kernel; a different shape is a miss."""
    calls: list[str] = []

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(kernels.gemm, "gemm_seconds", counting("gemm", gemm.gemm_seconds))
    monkeypatch.setattr(kernels, "memory_model_seconds", counting("memory", memory_model_seconds))
    monkeypatch.setattr(kernels, "flash_seconds", counting("flash", kernels.flash_seconds))
    monkeypatch.setattr(kernels, "unfused_seconds", counting("unfused", kernels.unfused_seconds))
    c = CostModel(H800, BF16)
    for _ in range(2):
        c.gemm_seconds(512, N, K, "bf16", None, "fwd")
        c.memory_seconds(1e6, "norm")
        c.attention_seconds("fwd", 1024, 512, 4, 64, 64)
    assert calls == ["gemm", "memory", "flash"]
    c.unfused_attention_seconds("fwd", 1024, 512, 4, 64, 64, False, True)
    n = len(calls)
    c.unfused_attention_seconds("fwd", 1024, 512, 4, 64, 64, False, True)
    assert calls.count("unfused") == 1 and len(calls) == n
    c.gemm_seconds(513, N, K, "bf16", None, "fwd")
    c.memory_seconds(1e6, "swiglu")
    assert calls[n:] == ["gemm", "memory"]


def test_shared_memos_keep_the_most_recently_used(monkeypatch):
    """cost_model shares one memo per (GPU, precision, table, source) and keeps the SHARED_MAX most recently
    used: the oldest untouched one is dropped first."""
    kernels.clear_shared()
    monkeypatch.setattr(kernels, "SHARED_MAX", 3)
    recipes = [PrecisionSpec(grads=g, master_weights=m) for g in ("bf16", "fp32") for m in ("fp32", "bf16")]
    first = [kernels.cost_model(H800, p)._cache for p in recipes[:3]]
    assert len(kernels._SHARED) == 3  # exactly the maximum: nothing dropped yet
    assert kernels.cost_model(H800, recipes[0])._cache is first[0]  # touched: now the most recent
    kernels.cost_model(H800, recipes[3])
    assert kernels.cost_model(H800, recipes[0])._cache is first[0]
    assert kernels.cost_model(H800, recipes[1])._cache is not first[1]  # the oldest untouched was dropped
    other_source = kernels.cost_model(H800, recipes[0], None, load_cluster("h100_ib_1024").gpu)
    assert other_source._cache is not first[0] and other_source.source is not None
    kernels.clear_shared()


def attention_entry(backward: bool, slower: float) -> Entry:
    """FlashAttention measured ``slower`` times the H800's default (FA3) curve, 4K causal, 16 heads of 192 + 128."""
    fwd = attention_fwd_flops(4096, 16, 192, 128, True)
    seconds = flash_seconds(H800, "bf16", fwd, 4096, True, backward) * slower
    flops = 2 * fwd if backward else fwd
    return Entry(kind="attention_bwd" if backward else "attention_fwd", dtype="bf16", name="fa3", shape={
        "seq": 4096, "heads": 16, "qk_dim": 192, "v_dim": 128}, seconds=seconds, samples=1, flops=flops,
        achieved_flops_per_s=flops / seconds)


def test_attention_is_causal_flash_by_default_and_costs_its_model_flops():
    """A micro-batch of two 4K sequences, 16 heads: forward model FLOPs 2 x 2 x 16 x 320 x 4096 x 2048 (causal),
    at the default curve's efficiency; backward twice the FLOPs at the backward efficiency. No tokens: nothing."""
    c = CostModel(H800, BF16)
    fwd = 2.0 * 2 * 16 * 320 * 4096 * 2048
    assert attention_fwd_flops(4096, 16, 192, 128, True, 2) == fwd
    assert c.attention_seconds("fwd", 8192, 4096, 16, 192, 128) == flash_seconds(H800, "bf16", fwd, 4096, True, False)
    assert c.attention_seconds("dgrad", 8192, 4096, 16, 192, 128) == flash_seconds(H800, "bf16", fwd, 4096, True,
                                                                                   True)
    full = c.attention_seconds("fwd", 8192, 4096, 16, 192, 128, causal=False)
    assert full == flash_seconds(H800, "bf16", 2 * fwd, 4096, False, False)
    assert c.attention_seconds("fwd", 0, 4096, 16, 192, 128) == 0.0
    assert c.attention_seconds("fwd", 1, 4096, 16, 192, 128) > 0
    fa2 = c.attention_seconds("fwd", 8192, 4096, 16, 192, 128, kernel="fa2")
    # FA2's rate at the query/key head dim (192: between its 128 and 256 factors); FA3's curve has no factors
    assert fa2 == flash_seconds(H800, "bf16", fwd, 4096, True, False, H800.efficiency.attention_kernels["fa2"], 192)
    assert fa2 > flash_seconds(H800, "bf16", fwd, 4096, True, False, H800.efficiency.attention_kernels["fa2"], 128)
    assert (c.attention_seconds("fwd", 8192, 4096, 16, 192, 128)
            == flash_seconds(H800, "bf16", fwd, 4096, True, False, head_dim=128))


def test_calibrated_attention_corrects_the_default_curve_by_pass():
    """A table with FA3 measured 2x slower forward and 1.5x slower backward: each pass takes its own correction
    and records its own reach; another kernel's curve (fa2) takes none, with a note."""
    t = table(attention_entry(False, 2.0), attention_entry(True, 1.5))
    cal = Calibration(t, H800)
    c = CostModel(H800, BF16, t, H800)
    fwd = attention_fwd_flops(4096, 16, 192, 128, True, 2)
    for pass_, backward in (("fwd", False), ("dgrad", True)):
        want = flash_seconds(H800, "bf16", fwd, 4096, True, backward) / cal.attention(
            "bf16", backward, 4096, 16, 192, 128).kappa
        assert c.attention_seconds(pass_, 8192, 4096, 16, 192, 128) == pytest.approx(want)
    assert cal.attention("bf16", False, 4096, 16, 192, 128).kappa < cal.attention("bf16", True, 4096, 16, 192,
                                                                                    128).kappa < 1
    assert c.provenance == {"attention fwd": 0.0, "attention bwd": 0.0}
    assert c.attention_seconds("fwd", 8192, 4096, 16, 192, 128, kernel="fa2") == flash_seconds(
        H800, "bf16", fwd, 4096, True, False, H800.efficiency.attention_kernels["fa2"], 192)
    assert any("not applied to fa2" in n for n in c.notes)


def test_stack_gpu_is_the_profile_unless_the_stack_sets_a_launch_time():
    base = load_scenario("workloads/tiny_moe_job.yaml")
    assert stack_gpu(base) is base.cluster.gpu
    s = load_scenario("workloads/tiny_moe_job.yaml", overrides=["software.kernel_launch_us=25"])
    gpu = stack_gpu(s)
    assert gpu.efficiency.kernel_overhead_us == 25
    # nothing else of the GPU changes
    assert gpu.model_copy(update={"efficiency": s.cluster.gpu.efficiency}) == s.cluster.gpu
