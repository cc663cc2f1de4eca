"""Importing DeepSeek's H800 training trace (deepseek-ai/profile-data train.json, 4496024).

Reference figures, measured from train.json independently of the importer (FlashAttention forward 1199 / 1234 /
1280 us min/median/max, backward main kernel 3583 / 3835 / 3863 us; MoE grouped gate+up forward 1739-2126 us; the
4-layer F&B pair spans 129.0 ms with the compute stream idle 10.3 ms of 128.5 ms; per-layer compute of attn(F)
4311, 4263, 4438, 4467 us). Tests that read the trace run when ``SIM_DEEPSEEK_TRACE`` names a local copy of
train.json (about 50 MB, not shipped) and skip otherwise; the committed table is checked always.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from sim.calibrate.chrome_trace import parse_trace
from sim.calibrate.table import load_table
from sim.cli import main
from sim.errors import SimInputError
from sim.loading import load_model
from tests.conftest import REPO

_TRACE_ENV = os.environ.get("SIM_DEEPSEEK_TRACE", "")
TRACE = Path(_TRACE_ENV) if _TRACE_ENV else None
COMMITTED = REPO / "hardware_profiles" / "calibrated" / "h800_deepseek_trace.yaml"
needs_trace = pytest.mark.skipif(
    TRACE is None or not TRACE.is_file(),
    reason="set SIM_DEEPSEEK_TRACE to a local copy of deepseek-ai/profile-data train.json to run it"
           + (f" ({TRACE} is absent)" if TRACE is not None else ""))


@pytest.fixture(scope="module")
def imported():  # type: ignore[no-untyped-def]
    from sim.calibrate.trace_import import import_trace_file

    return import_trace_file(TRACE, load_model("deepseek_v3_671b")[0])


@needs_trace
def test_flash_attention_durations_recovered(imported) -> None:  # type: ignore[no-untyped-def]
    fwd = next(e for e in imported.table.entries if e.kind == "attention_fwd")
    assert fwd.samples == 4
    assert fwd.seconds == pytest.approx(1.234e-3, rel=0.01)  # "about 1.23 ms"
    assert 1.199e-3 <= fwd.spread_s[0] <= fwd.spread_s[1] <= 1.280e-3
    bwd = [s for s in imported.samples if s.kind == "attention_bwd"]
    assert len(bwd) == 4
    assert statistics.median(s.parts[0] for s in bwd) == pytest.approx(3835, rel=0.02)
    assert min(s.parts[0] for s in bwd) == 3583
    assert max(s.parts[0] for s in bwd) == 3863


@needs_trace
def test_moe_gemm_durations_and_rates(imported) -> None:  # type: ignore[no-untyped-def]
    up = [s for s in imported.samples if s.name == "experts_up" and s.gemm_pass == "fwd"]
    assert len(up) == 4
    assert min(s.seconds for s in up) == pytest.approx(1739e-6)
    assert max(s.seconds for s in up) == pytest.approx(2126e-6)
    for s in up:
        assert s.kind == "grouped_gemm" and s.shape["groups"] == 4 and s.sms_used == 112
        raw_tflops = s.work / s.seconds / 1e12
        assert 1000 < raw_tflops < 1100  # 1018-1069 TFLOP/s on 112 SMs (derived: 2 m n k / kernel time)
    o_proj = next(e for e in imported.table.entries if e.name == "o_proj" and e.gemm_pass == "fwd")
    assert o_proj.sm_scaled and o_proj.rate == pytest.approx(o_proj.work / o_proj.seconds * 132 / 112, rel=1e-5)


@needs_trace
def test_region_summary_matches_the_published_reading(imported) -> None:  # type: ignore[no-untyped-def]
    t = imported.totals
    assert t["span_us"] == pytest.approx(129.0e3, abs=60)
    assert t["compute_span_us"] - t["compute_busy_us"] == pytest.approx(10.3e3, abs=60)
    assert t["compute_busy_us"] / t["compute_span_us"] == pytest.approx(0.92, abs=0.005)
    attn_f = [r.compute_busy_us for r in imported.regions if r.region == "attn(F)"]
    assert attn_f == [4311, 4263, 4438, 4467]
    assert len(imported.regions) == 40
    assert imported.regions_csv().splitlines()[0].startswith("region,layer,kernels")


@needs_trace
def test_committed_table_matches_a_fresh_import(imported, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert load_table(COMMITTED) == imported.table
    for suffix, text in (("_regions.csv", imported.regions_csv()), ("_kernels.csv", imported.kernels_csv())):
        assert (COMMITTED.parent / f"{COMMITTED.stem}{suffix}").read_text() == text


@needs_trace
def test_cli_imports_the_trace_without_torch(tmp_path: Path) -> None:
    out = tmp_path / "h800.yaml"
    code = ("import sys; sys.modules['torch'] = None\n"
            "from sim.cli import main\n"
            f"main(['calibrate', '--from-trace', {str(TRACE)!r}, '--out', {str(out)!r}, '--json'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["device_kind"] == "trace"
    assert load_table(out) == load_table(COMMITTED)


def test_committed_table_is_usable_for_the_h800() -> None:
    table = load_table(COMMITTED)
    assert table.is_gpu and table.device.num_sms == 132 and table.device.sms_used == 112
    assert table.check_usable_for("H800-SXM-80GB") is None
    look = table.rate("attention_fwd", "bf16", m=4096, heads=128, qk_dim=192, v_dim=128)
    assert look is not None and look.at_measured_point
    grouped = table.rate("grouped_gemm", "fp8", m=32768, n=4096, k=7168, groups=4)
    assert grouped is not None and grouped.exact and not grouped.at_measured_point


def test_trace_without_gpu_kernels_is_rejected() -> None:
    with pytest.raises(SimInputError, match="no GPU kernels"):
        parse_trace({"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 1}]})


def test_foreign_trace_is_rejected_with_a_reason(tmp_path: Path, runner) -> None:  # type: ignore[no-untyped-def]
    events = [{"ph": "X", "cat": "kernel", "name": "ampere_sgemm_128x64_nn", "ts": 0, "dur": 5, "pid": 0, "tid": 7,
               "args": {"stream": 7, "grid": [8, 1, 1], "correlation": 1}}]
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"traceEvents": events}))
    res = runner.invoke(main, ["calibrate", "--from-trace", str(path), "--out", str(tmp_path / "o.yaml")])
    assert res.exit_code == 2
    assert "not the DeepSeek-V3 DualPipe training profile" in res.output
    assert not (tmp_path / "o.yaml").exists()
    path.write_text("{not json")
    res = runner.invoke(main, ["calibrate", "--from-trace", str(path), "--out", str(tmp_path / "o.yaml")])
    assert res.exit_code == 2 and "not JSON" in res.output
