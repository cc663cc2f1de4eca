"""`sim model`: JSON keys and figures on the default job, every workload file works, bad input exits 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sim.cli import main

REPO = Path(__file__).resolve().parent.parent
WORKLOADS = sorted(p for p in (REPO / "workloads").rglob("*.yaml") if "published" not in p.parts)


def test_model_json_on_default_job(runner):
    r = runner.invoke(main, ["model", str(REPO / "workloads/deepseek_v3.yaml"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    for key in ("params_total", "params_active", "train_flops_per_token_causal",
                "train_flops_per_token_noncausal", "kv_cache_bytes_per_token", "memory_per_gpu_bytes"):
        assert key in out
    assert out["params_total"] == pytest.approx(671e9, rel=0.005)
    assert out["train_flops_per_token_causal"] == pytest.approx(250e9, rel=0.005)
    assert out["kv_cache_bytes_per_token"] == 70_272
    # The default layout fits in an 80 GB H800 (DeepSeek trained it); memory is per GPU of the worst rank.
    assert 20e9 < out["memory_per_gpu_bytes"] < 80e9
    assert out["layout"]["num_microbatches"] == 120 and sum(out["layout"]["stage_layers"]) == 62


@pytest.mark.parametrize("path", WORKLOADS, ids=lambda p: p.name)
def test_model_works_on_every_workload(runner, path):
    r = runner.invoke(main, ["model", str(path), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["params_total"] > 0


def test_unknown_workload_exits_2(runner):
    r = runner.invoke(main, ["model", "no_such_model"])
    assert r.exit_code == 2 and "WORKLOAD" in r.output


def test_bad_yaml_key_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    text = (REPO / "workloads/models/tiny_moe.yaml").read_text().replace("n_heads: 4", "n_head: 4")
    bad.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "sim.cli", "model", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "n_head: unknown key" in proc.stderr and "Traceback" not in proc.stderr
