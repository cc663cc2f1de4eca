"""`sim validate`: one JSON object on stdout, finite errors for expressible cases, reasons for the others,
exit 2 naming the file and field of a malformed case file, a plot. Never asserts the errors' values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sim.cli import main

CASE = """\
family: cli_family
title: a tiny GPT for CLI tests
measured:
  metric: tflops_per_gpu_with_recompute
  unit: TFLOP/s/GPU
  accounting: Eq. 3
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
parallel: {tp: 1, pp: 1, micro_batch_size: 1, recompute: full}
training: {seq_len: 512, global_batch_size: 16, total_tokens: 1.0e9}
variants:
  - name: ok
    measured: {value: 50}
  - name: impossible-layout
    set: [parallel.tp=3]
    measured: {value: 50}
"""

SUMMARY_KEYS = {"count", "expressible", "mean_abs_error", "max_abs_error", "worst"}


def _check_cases(out: dict) -> None:
    for c in out["cases"]:
        for k in ("name", "family", "metric", "predicted", "measured", "error", "layout"):
            assert k in c
        if c["predicted"] is None:
            assert c["reason"], c["name"]
            assert c["error"] is None
        else:
            assert math.isfinite(c["error"])
            assert c["error"] == c["predicted"] / c["measured"] - 1


def test_json_on_a_published_subset(runner):
    r = runner.invoke(main, ["validate", "--json", "ptdp_weak_a100/1.7B-32gpu", "mcore_h100_weak/1.7B-48gpu",
                             "bloom_176b/gbs16-mbs2"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)  # exactly one JSON object on stdout
    assert [c["name"] for c in out["cases"]] == ["ptdp_weak_a100/1.7B-32gpu", "mcore_h100_weak/1.7B-48gpu",
                                                 "bloom_176b/gbs16-mbs2"]
    _check_cases(out)
    assert set(out["summary"]["overall"]) >= SUMMARY_KEYS
    assert set(out["summary"]["families"]) == {"ptdp_weak_a100", "mcore_h100", "bloom_176b"}
    assert out["summary"]["overall"]["count"] == 3


def test_not_expressible_case_has_a_reason_and_is_counted(runner, tmp_path):
    case = tmp_path / "cli_case.yaml"
    case.write_text(CASE)
    plot = tmp_path / "v.png"
    r = runner.invoke(main, ["validate", str(case), "--json", "--plot", str(plot)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    _check_cases(out)
    by = {c["name"]: c for c in out["cases"]}
    bad = by["cli_case/impossible-layout"]
    assert bad["predicted"] is None and "parallel" in bad["reason"]
    fam = out["summary"]["families"]["cli_family"]
    assert fam["count"] == 2 and fam["expressible"] == sum(c["predicted"] is not None for c in out["cases"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_human_table(runner, tmp_path):
    case = tmp_path / "cli_case.yaml"
    case.write_text(CASE)
    r = runner.invoke(main, ["validate", str(case)])
    assert r.exit_code == 0, r.output
    assert "cli_case/ok" in r.stdout and "not expressible" in r.stdout and "overall" in r.stdout


def _malformed(runner, tmp_path: Path, text: str) -> tuple[int, str, Path]:
    case = tmp_path / "broken.yaml"
    case.write_text(text)
    r = runner.invoke(main, ["validate", "--dir", str(tmp_path), "--json"])
    return r.exit_code, r.output, case


def test_unknown_metric_exits_2_naming_file_and_field(runner, tmp_path):
    code, output, _ = _malformed(runner, tmp_path, CASE.replace("tflops_per_gpu_with_recompute", "speed"))
    assert code == 2
    assert "broken.yaml" in output and "measured.metric" in output and "step_time_s" in output


def test_bad_measured_block_exits_2(runner, tmp_path):
    code, output, _ = _malformed(runner, tmp_path, CASE.replace("    measured: {value: 50}\n",
                                                                "    measured: {value: fifty}\n", 1))
    assert code == 2 and "broken.yaml" in output and "variants[0].measured.value" in output


def test_bad_variant_override_exits_2(runner, tmp_path):
    code, output, _ = _malformed(runner, tmp_path, CASE.replace("set: [parallel.tp=3]", "set: [parallel.tp]"))
    assert code == 2 and "broken.yaml" in output and "variants[1].set[0]" in output


def test_unknown_case_name_exits_2(runner):
    r = runner.invoke(main, ["validate", "no_such_family"])
    assert r.exit_code == 2 and "no case matches" in r.output


def test_set_overrides_every_case_and_says_so(runner, tmp_path):
    """A what-if over the set: a GPU with more HBM bandwidth runs the tiny (memory-heavy) case faster, so its
    achieved TFLOP/s rises; the JSON and the table name the override."""
    case = tmp_path / "cli_case.yaml"
    case.write_text(CASE)
    base = json.loads(runner.invoke(main, ["validate", str(case), "--json"]).stdout)
    faster = ["--set", "cluster.gpu.hbm_bandwidth_tb_per_s=4.0"]
    r = runner.invoke(main, ["validate", str(case), "--json", *faster])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["overrides"] == ["cluster.gpu.hbm_bandwidth_tb_per_s=4.0"] and base["overrides"] == []
    before = {c["name"]: c for c in base["cases"]}
    after = {c["name"]: c for c in out["cases"]}
    assert after["cli_case/ok"]["predicted"] > before["cli_case/ok"]["predicted"]
    table = runner.invoke(main, ["validate", str(case), *faster]).stdout
    assert table.startswith("what-if: every case with --set cluster.gpu.hbm_bandwidth_tb_per_s=4.0")
    assert "not the cases as published" in table


def test_bad_set_exits_2_naming_the_field(runner, tmp_path):
    case = tmp_path / "cli_case.yaml"
    case.write_text(CASE)
    for bad, says in (("cluster.gpu.hbm_bandwidth", "hbm_bandwidth"), ("cluster.gpu.hbm_bandwith_tb_per_s=4",
                      "unknown key"), ("cluster.gpu.efficiency.hbm_frac=3", "less than or equal to 1")):
        r = runner.invoke(main, ["validate", str(case), "--json", "--set", bad])
        assert r.exit_code == 2, (bad, r.output)
        assert "--set" in r.output and says in r.output and r.stdout.strip() == "", bad


def test_set_wins_over_the_cases_own_override(runner, tmp_path):
    """The impossible-layout variant sets TP 3 (4 heads); --set parallel.tp=1 comes after it, so it runs."""
    case = tmp_path / "cli_case.yaml"
    case.write_text(CASE)
    r = runner.invoke(main, ["validate", str(case), "--json", "--set", "parallel.tp=1"])
    assert r.exit_code == 0, r.output
    by = {c["name"]: c for c in json.loads(r.stdout)["cases"]}
    assert by["cli_case/impossible-layout"]["predicted"] is not None
    assert by["cli_case/impossible-layout"]["layout"] == by["cli_case/ok"]["layout"]


def test_set_that_suits_some_cases_runs_and_reports_the_others(runner):
    """A 4,096-token sequence exceeds the 1.7B GPT's 2,048-token limit in the first case but not the second: the
    run goes on (it is no typo), the first case is not expressible with the reason, the second runs."""
    r = runner.invoke(main, ["validate", "--json", "ptdp_weak_a100/1.7B-32gpu", "mcore_h100_weak/1.7B-48gpu",
                             "--set", "training.seq_len=4096"])
    assert r.exit_code == 0, r.output
    first, second = json.loads(r.stdout)["cases"]
    assert first["predicted"] is None and "max_seq_len" in first["reason"]
    assert second["predicted"] is not None


def test_explain_says_where_each_step_goes(runner):
    """--explain: the case's breakdown and its busiest rank's largest tasks, largest first; the compute tasks it
    lists fit in the step (one stream runs one task at a time); without it, the breakdown only."""
    name = "ptdp_weak_a100/1.7B-32gpu"
    r = runner.invoke(main, ["validate", "--json", "--explain", name])
    assert r.exit_code == 0, r.output
    (case,) = json.loads(r.stdout)["cases"]
    tasks = case["top_tasks"]
    assert tasks and len({t["rank"] for t in tasks}) == 1
    assert [t["seconds"] for t in tasks] == sorted((t["seconds"] for t in tasks), reverse=True)
    compute = sum(t["seconds"] for t in tasks if t["stream"] == "compute")
    assert 0 < compute <= case["step_time_s"] * (1 + 1e-9)
    assert sum(case["breakdown_s"].values()) == pytest.approx(case["step_time_s"], rel=1e-6)
    plain = json.loads(runner.invoke(main, ["validate", "--json", name]).stdout)["cases"][0]
    assert plain["top_tasks"] == [] and plain["breakdown_s"]
    text = runner.invoke(main, ["validate", "--explain", name]).stdout
    assert f"{name}: step" in text and "busiest rank" in text and "attn_b" in text
