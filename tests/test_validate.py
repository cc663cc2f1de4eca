"""sim.validation: the metric conversions against hand-computed arithmetic, the case-file schema, variant
expansion, and how a case the simulator cannot express is reported. Never asserts the development-set errors
(those are results)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from sim.errors import SimInputError
from sim.validation import load_cases, read_case_file, run_cases, select, summarize
from sim.validation.metrics import MegatronShape, megatron_model_flops, narayanan_eq3_flops, predict
from sim.validation.runner import PLANNED_KEYS, planned_keys_used

REPO = Path(__file__).resolve().parent.parent
PUBLISHED = REPO / "workloads" / "published"

TINY = """\
family: tiny_family
title: a tiny GPT for tests
measured:
  metric: step_time_s
  unit: s
  accounting: seconds per iteration
  source: made up for a test
name: tiny
model:
  name: tiny-gpt
  n_layers: 4
  dim: 256
  n_heads: 4
  inter_dim: 1024
  ffn_activation: gelu
  vocab_size: 1024
  norm: layernorm
  position_embedding: learned
  max_seq_len: 512
cluster: a100_ib_3072
set: [cluster.num_nodes=1]
parallel: {tp: 1, pp: 1, micro_batch_size: 1}
training: {seq_len: 512, global_batch_size: 16, total_tokens: 1.0e9}
"""


def write(tmp_path: Path, text: str, name: str = "tiny.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------------------------------- conversions


def test_eq3_flops_of_the_1p7b_row_by_hand():
    # Narayanan et al. 2021 Table 1, 1.7B row: B = 512, s = 2048, l = 24, h = 2304, V = 51200.
    # 96 B s l h^2 = 96 * 512 * 2048 * 24 * 2304^2 = 2,415,919,104 * 5,308,416 = 12,824,703,626,379,264.
    # 1 + s/6h + V/16lh = 1 + 2048/13824 + 51200/884736 = 1 + 4/27 + 25/432 = 521/432.
    flops = narayanan_eq3_flops(512, 2048, 24, 2304, 51200)
    assert flops == pytest.approx(12_824_703_626_379_264 * 521 / 432, rel=1e-12)
    # At the published 137 TFLOP/s on 32 GPUs an iteration takes F / (32 x 137e12) = 3.528 s.
    assert flops / (32 * 137e12) == pytest.approx(3.528, abs=1e-3)


def test_eq3_reproduces_bloom_log_line():
    # BLOOM tr11: 104.70 s per iteration at GBS 2048 on 384 GPUs logged 149.77 TFLOPs (70 layers, h 14336,
    # s 2048, padded V 250880): F / (104.70 x 384) = 149.76 TFLOP/s.
    flops = narayanan_eq3_flops(2048, 2048, 70, 14336, 250880)
    assert flops / (104.70 * 384) / 1e12 == pytest.approx(149.77, abs=0.02)


def test_megatron_formula_mha_gelu_by_hand():
    # Megatron-Core weak scaling 1.7B row: B 192, s 4096, l 24, h 2048, 16 heads of 128, FFN 8192, V 131072.
    # Bracket: (1 + 16/16 + 4096/2048) * 1 + 8192/2048 + 131072 / (2 * 24 * 2048) = 4 + 4 + 4/3 = 28/3.
    # 12 B s l h^2 = 12 * 192 * 4096 * 24 * 2048^2 = 949,978,046,398,464.
    shape = MegatronShape(layers=24, hidden=2048, heads=16, kv_groups=16, head_dim=128, ffn_hidden=8192,
                          vocab=131072)
    flops = megatron_model_flops(192, 4096, shape)
    assert flops == pytest.approx(949_978_046_398_464 * 28 / 3, rel=1e-12)
    # The same as 72 B s l h^2 (1 + s/6h + V/12lh) for MHA with a 4h MLP: 6 x (1 + 1/3 + 2/9) = 28/3.
    assert flops == pytest.approx(72 * 192 * 4096 * 24 * 2048**2 * (1 + 4096 / (6 * 2048) + 131072 / (12 * 24 * 2048)))


def test_megatron_formula_gqa_swiglu_by_hand():
    # Llama 3 8B: 32 heads, 8 KV groups, head 128, h 4096, FFN 14336 gated, V 128256, l 32, s 8192, B 1.
    # Bracket: (1 + 8/32 + 8192/4096) + (14336/4096) * 1.5 + 128256 / (2 * 32 * 4096) = 3.25 + 5.25 + 0.489258
    shape = MegatronShape(layers=32, hidden=4096, heads=32, kv_groups=8, head_dim=128, ffn_hidden=14336,
                          vocab=128256, gated=True)
    bracket = 3.25 + 5.25 + 128256 / 262144
    assert megatron_model_flops(1, 8192, shape) == pytest.approx(12 * 8192 * 32 * 4096**2 * bracket, rel=1e-12)


def _fake_scenario(**model: int) -> SimpleNamespace:
    m = SimpleNamespace(n_layers=24, dim=2048, n_heads=16, kv_heads=16, attn_head_dim=128, inter_dim=8192,
                        moe_inter_dim=0, is_moe=False, n_activated_experts=0, vocab_size=131072,
                        ffn_activation="gelu")
    for k, v in model.items():
        setattr(m, k, v)
    return SimpleNamespace(model=m, training=SimpleNamespace(global_batch_size=192, seq_len=4096), num_gpus=48)


def test_predict_each_metric_from_a_step():
    s = _fake_scenario()
    flops = 949_978_046_398_464 * 28 / 3
    step = flops / (48 * 408.8e12)  # the step that gives the published 408.8 TFLOP/s
    assert predict("step_time_s", s, step, 1.0) == step
    assert predict("tokens_per_s_per_gpu", s, step, 1234.5) == 1234.5
    assert predict("tflops_per_gpu_model", s, step, 1.0) == pytest.approx(408.8)
    assert predict("mfu", s, step, 1.0, peak_tflops=989.0) == pytest.approx(408.8 / 989.0)
    # 180K GPU-hours per 1e12 tokens <=> 1e12 / (180e3 x 3600) = 1543.2 tokens/s/GPU.
    assert predict("gpu_hours_per_trillion_tokens", s, step, 1e12 / (180e3 * 3600)) == pytest.approx(180e3)
    eq3 = narayanan_eq3_flops(192, 4096, 24, 2048, 131072)
    assert predict("tflops_per_gpu_with_recompute", s, step, 1.0) == pytest.approx(eq3 / (step * 48) / 1e12)
    with pytest.raises(ValueError, match="peak_tflops"):
        predict("mfu", s, step, 1.0)


def test_predict_reads_the_published_case_model(tmp_path):
    """The wiring from a real scenario: the 1.7B row's Eq. 3 inputs come from its model and batch."""
    import yaml

    from sim.loading import load_scenario

    case = select(load_cases(PUBLISHED), ["ptdp_weak_a100/1.7B-32gpu"])[0]
    assert case.body is not None and case.body["model"]["dim"] == 2304
    body = {k: v for k, v in case.body.items() if k != "software"}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(body))
    scenario = load_scenario(str(job), overrides=[o for o in case.overrides if not o.startswith("software")])
    flops = narayanan_eq3_flops(512, 2048, 24, 2304, 51200)
    assert predict("tflops_per_gpu_with_recompute", scenario, 3.528, 1.0) == pytest.approx(
        flops / (3.528 * 32) / 1e12)


# ------------------------------------------------------------------------------------------- case files


def test_every_published_case_file_loads_with_unique_names():
    cases = load_cases(PUBLISHED)
    names = [c.name for c in cases]
    assert len(names) == len(set(names))
    families = {c.family for c in cases}
    assert {"ptdp_weak_a100", "bloom_176b", "ptdp_strong_a100", "mcore_h100", "torchtitan_h100",
            "deepseek_v3"} <= families
    for c in cases:
        assert c.measured.source and c.measured.accounting


def test_variants_expand_to_file_then_variant_overrides(tmp_path):
    text = TINY + """\
variants:
  - name: base
    measured: {value: 1.5}
  - name: two-nodes
    set: [cluster.num_nodes=2, training.global_batch_size=32]
    measured: {value: 2.5, source: another source}
"""
    cases = read_case_file(write(tmp_path, text))
    assert [c.name for c in cases] == ["tiny/base", "tiny/two-nodes"]
    assert cases[0].overrides == ("cluster.num_nodes=1",)
    assert cases[1].overrides == ("cluster.num_nodes=1", "cluster.num_nodes=2", "training.global_batch_size=32")
    assert cases[0].measured.value == 1.5 and cases[0].measured.source == "made up for a test"
    assert cases[1].measured.value == 2.5 and cases[1].measured.source == "another source"
    assert cases[1].measured.metric == "step_time_s"


def test_published_variant_overrides():
    cases = {c.name: c for c in load_cases(PUBLISHED)}
    c = cases["ptdp_weak_a100/39B-512gpu"]
    assert c.overrides[0] == "cluster.num_nodes=4"  # the file's, first
    for o in ("parallel.pp=2", "parallel.vpp=2", "cluster.num_nodes=64", "training.global_batch_size=1536",
              "model.dim=8192"):
        assert o in c.overrides
    assert c.measured.value == 138


def test_a_file_without_variants_is_one_case(tmp_path):
    cases = read_case_file(write(tmp_path, TINY.replace("  unit: s\n", "  unit: s\n  value: 3.0\n")))
    assert [c.name for c in cases] == ["tiny"]


@pytest.mark.parametrize(("edit", "field"), [
    (("  metric: step_time_s\n", "  metric: seconds\n"), "measured.metric"),
    (("  unit: s\n", "  unit: ms\n"), "measured.unit"),
    (("  source: made up for a test\n", ""), "measured.source"),
    (("  unit: s\n", "  unit: s\n  bogus: 1\n"), "measured.bogus"),
    (("  value: 3.0\n", "  value: -1\n"), "measured.value"),
    (("  value: 3.0\n", ""), "measured.value"),
])
def test_malformed_measured_block_names_file_and_field(tmp_path, edit, field):
    text = TINY.replace("measured:\n", "measured:\n  value: 3.0\n").replace(*edit)
    path = write(tmp_path, text)
    with pytest.raises(SimInputError) as e:
        read_case_file(path)
    assert str(path) in str(e.value) and field in str(e.value)


@pytest.mark.parametrize(("override", "field"), [
    ("parallel.tp", "variants[0].set[0]"),
    ("=3", "variants[0].set[0]"),
    ("measured.value=3", "variants[0].set[0]"),
    ("parallel.tp=[1, 2", "variants[0].set[0]"),
])
def test_bad_variant_override_names_file_and_field(tmp_path, override, field):
    text = TINY + f"variants:\n  - name: v\n    set: ['{override}']\n    measured: {{value: 1.0}}\n"
    path = write(tmp_path, text)
    with pytest.raises(SimInputError) as e:
        read_case_file(path)
    assert str(path) in str(e.value) and field in str(e.value)


def test_mfu_needs_the_sources_peak(tmp_path):
    text = TINY.replace("  metric: step_time_s\n  unit: s\n", "  metric: mfu\n  unit: fraction\n  value: 0.4\n")
    with pytest.raises(SimInputError, match="peak_tflops"):
        read_case_file(write(tmp_path, text))


def test_selection_by_family_name_and_glob():
    cases = load_cases(PUBLISHED)
    fam = select(cases, ["bloom_176b"])
    assert fam and all(c.family == "bloom_176b" for c in fam)
    assert [c.name for c in select(cases, ["ptdp_weak_a100/1.7B-32gpu"])] == ["ptdp_weak_a100/1.7B-32gpu"]
    assert all(c.name.startswith("ptdp_weak_a100/1") for c in select(cases, ["ptdp_weak_a100/1*"]))
    with pytest.raises(SimInputError, match="no case matches"):
        select(cases, ["no_such_case"])


# ------------------------------------------------------------------------------------------- running


def test_expressible_and_not_expressible_cases(tmp_path):
    text = TINY + """\
variants:
  - name: ok
    measured: {value: 1.0}
  - name: impossible
    set: [parallel.tp=3]
    measured: {value: 1.0}
  - name: context-parallel
    set: [parallel.cp=2]
    measured: {value: 1.0}
"""
    results = run_cases(read_case_file(write(tmp_path, text)), "fast")
    ok, impossible, cp = results
    assert ok.status == "ok" and ok.predicted is not None and ok.error is not None
    assert math.isfinite(ok.error) and ok.error == pytest.approx(ok.predicted / 1.0 - 1)
    assert impossible.status == "not_expressible" and impossible.predicted is None
    assert "parallel" in (impossible.reason or "") and "tp" in (impossible.reason or "")
    assert cp.status == "ok" and cp.predicted is not None  # parallel.cp was a planned key; it is real now
    assert cp.layout["cp"] == 2 and cp.layout["dp"] == ok.layout["dp"] // 2
    s = summarize(results)
    assert s["overall"]["count"] == 3 and s["overall"]["expressible"] == sum(r.status == "ok" for r in results)
    assert s["families"]["tiny_family"]["worst"]["name"] in {r.name for r in results if r.status == "ok"}


def test_no_key_of_the_published_cases_is_still_planned():
    """The keys the cases were written with (CP, FSDP, TP and EP overlap) are real: none is planned any more, and
    every published case loads."""
    assert PLANNED_KEYS == ()
    cases = {c.name: c for c in load_cases(PUBLISHED)}
    used = planned_keys_used(cases["torchtitan_llama31_8b_long/fsdp4-cp2-64k"])
    assert "parallel.cp" not in used and "parallel.fsdp_shard_group" not in used


def test_every_published_run_fits_in_its_gpus_memory(tmp_path):
    """These runs happened, so each fits its GPUs' memory: the memory model (states, activation peaks, the
    backward's working set, ZeRO-3's gathered units) must not call any of them out of memory. A memory check
    from physics, not an accuracy assertion."""
    from sim.context import peak_memory_bytes
    from sim.loading import load_scenario
    from sim.validation.runner import _JobFiles, _software

    files = _JobFiles(tmp_path)
    over = []
    for case in load_cases(PUBLISHED):
        s = load_scenario(files.job_for(case), overrides=_software(case)[1])
        peak = peak_memory_bytes(s)
        if peak > s.cluster.gpu.hbm_bytes:
            over.append(f"{case.name}: {peak / 1e9:.1f} GB of {s.cluster.gpu.hbm_bytes / 1e9:.0f}")
    assert not over
