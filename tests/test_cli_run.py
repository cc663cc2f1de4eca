"""`sim run`: JSON keys, outputs written, bad input exits 2 with the field named."""

from __future__ import annotations

import json

from sim.cli import main

KEYS = ("step_time_s", "tokens_per_s_per_gpu", "gpu_hours_per_trillion_tokens", "mfu", "breakdown_s",
        "peak_memory_per_gpu_bytes", "oom")


def test_run_json_default_keys(runner):
    r = runner.invoke(main, ["run", "--mode", "fast", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    for k in KEYS:
        assert k in out
    assert set(out["mfu"]) == {"bf16_causal", "bf16_noncausal", "fp8_causal"}
    assert set(out["breakdown_s"]) == {"forward", "backward_input", "backward_weight", "overlapped", "bubble",
                                       "exposed_comm", "optimizer", "host"}


def test_run_writes_trace_and_gantt(runner, tmp_path):
    t, g = tmp_path / "t.json", tmp_path / "g.png"
    r = runner.invoke(main, ["run", "workloads/tiny_moe_job.yaml", "--trace", str(t), "--gantt", str(g)])
    assert r.exit_code == 0, r.output
    assert json.loads(t.read_text())["traceEvents"]
    assert g.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_layout_exits_2_naming_the_field(runner, tmp_path):
    t = tmp_path / "t.json"
    r = runner.invoke(main, ["run", "--set", "parallel.pp=7", "--trace", str(t)])
    assert r.exit_code == 2
    assert "parallel" in r.output and "pp" in r.output
    assert not t.exists()


def test_bad_output_folder_writes_nothing(runner, tmp_path):
    r = runner.invoke(main, ["run", "workloads/tiny_moe_job.yaml", "--gantt", str(tmp_path / "no" / "g.png")])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_other_silicon_sets_the_jobs_calibration_aside(runner):
    """The H800 table describes GH100 silicon; an H20 (a cut-down GH100 with 78 SMs) is other silicon."""
    r = runner.invoke(main, ["run", "--hardware", "h20_ib_1024", "--set", "parallel.ep=32", "--mode", "fast",
                             "--json"])
    assert r.exit_code == 0, r.output
    assert any("does not describe H20" in w for w in json.loads(r.stdout)["warnings"])


def test_same_silicon_applies_the_jobs_calibration_with_a_note(runner):
    """H800 and H100 SXM share the GH100 die with 132 SMs: the H800 table applies to the H100."""
    r = runner.invoke(main, ["run", "--hardware", "h100_ib_1024", "--set", "parallel.ep=32", "--mode", "fast",
                             "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert not out["warnings"]
    assert any("applied to H100" in n for n in out["notes"])


def test_named_calibration_of_other_silicon_is_refused(runner, repo):
    table = str(repo / "hardware_profiles/calibrated/h800_deepseek_trace.yaml")
    r = runner.invoke(main, ["run", "--hardware", "h20_ib_1024", "--set", "parallel.ep=32", "--calibration", table])
    assert r.exit_code == 2 and "measured on NVIDIA H800" in r.output


def test_a_published_case_or_a_bare_model_is_not_a_job(runner):
    """`sim run` on a published case file points at `sim validate`; on a model file, asks for a job file."""
    case = runner.invoke(main, ["run", "workloads/published/torchtitan_llama31_8b_long.yaml"])
    assert case.exit_code == 2
    assert "WORKLOAD" in case.output and "sim validate torchtitan_llama31_8b_long" in case.output
    model = runner.invoke(main, ["run", "workloads/models/gpt3_175b.yaml"])
    assert model.exit_code == 2 and "model architecture only" in model.output
