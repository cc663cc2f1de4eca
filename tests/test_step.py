"""One simulated step end to end: consistency of modes, breakdown, memory, trace and plot outputs."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from sim.loading import load_scenario
from sim.metrics import CATEGORIES
from sim.model.activations import stage_activation_bytes
from sim.model.stages import partition
from sim.perfetto import chrome_trace
from sim.step import simulate_step

TINY = "workloads/tiny_moe_job.yaml"


def test_fast_and_detailed_agree_on_default(default_detailed, default_fast):
    assert default_fast.step_time_s == pytest.approx(default_detailed.step_time_s, rel=0.03)


@pytest.mark.parametrize("schedule", ["1f1b", "zb1p", "dualpipe", "dualpipev", "gpipe"])
def test_fast_and_detailed_agree_on_tiny(schedule):
    pp = ["parallel.pp=2"] if schedule == "dualpipev" else []  # 2 x PP stages must fit the 5 layers
    s = load_scenario(TINY, overrides=[f"parallel.schedule={schedule}", *pp])
    fast = simulate_step(s, mode="fast").step_time_s
    detailed = simulate_step(s, mode="detailed").step_time_s
    assert fast == pytest.approx(detailed, rel=0.03)


def test_breakdown_sums_to_step_time_on_every_rank(default_detailed):
    r = default_detailed
    assert set(r.breakdown_s) == set(CATEGORIES)
    for b in r.breakdown_per_rank_s:
        assert sum(b.values()) == pytest.approx(r.step_time_s, rel=1e-9)
        assert min(b.values()) >= 0.0


def test_throughput_identities(default_detailed):
    r = default_detailed
    s = load_scenario()
    assert r.tokens_per_step == 15360 * 4096
    assert r.tokens_per_s_per_gpu == pytest.approx(r.tokens_per_step / r.step_time_s / 2048)
    assert r.gpu_hours_per_trillion_tokens == pytest.approx(1e12 / r.tokens_per_s_per_gpu / 3600)
    assert r.mfu["bf16_causal"] == pytest.approx(2 * r.mfu["fp8_causal"], rel=1e-4)  # FP8 peak = 2 x BF16
    assert r.mfu["bf16_noncausal"] > r.mfu["bf16_causal"]
    assert s.num_gpus == 2048


def test_memory_verdict_is_a_result_not_a_crash():
    s = load_scenario(TINY, overrides=["cluster.gpu.hbm_gb=0.001"])
    r = simulate_step(s, mode="fast")
    assert r.oom and r.peak_memory_per_gpu_bytes > r.memory_capacity_bytes


def test_dualpipe_peak_activations_bounded(default_detailed):
    # DualPipe holds at most PP + 1 chunks of activations (DeepSeek-V3 Table 2); our per-rank peak counts
    # chunks of the rank's two stages, each at most PP + 1 together.
    s = load_scenario()
    acts = stage_activation_bytes(partition(s.model, 16, seq_len=4096), s)
    for row in default_detailed.memory_per_rank:
        assert row["activations_bytes"] <= (16 + 1) * max(acts) + 1


def test_chrome_trace_lanes_never_overlap(default_detailed):
    doc = chrome_trace(default_detailed.trace, 16)
    json.dumps(doc)
    lanes: dict = {}
    for ev in doc["traceEvents"]:
        if ev["ph"] == "X":
            assert ev["dur"] >= 0 and ev["ts"] >= 0
            lanes.setdefault((ev["pid"], ev["tid"]), []).append((ev["ts"], ev["ts"] + ev["dur"]))
    assert {tid for _pid, tid in lanes} >= {0, 1, 2}
    for (_pid, tid), spans in lanes.items():
        if tid == 4:
            continue  # sends over different links may overlap
        spans.sort()
        for (_a, end), (start, _b) in itertools.pairwise(spans):
            assert start >= end - 1e-6
    assert any(ev.get("name") == "idle" for ev in doc["traceEvents"])  # bubbles are visible


JOBS = sorted(p.name for p in (Path(__file__).resolve().parent.parent / "workloads").glob("*.yaml"))


@pytest.mark.parametrize("job", JOBS)
def test_every_job_file_simulates(job):
    """Every job in workloads/ (dense, MoE, GQA/MHA/MLA, A100/H100/H800, TP/PP/EP, each schedule family)
    runs to a finite step with a consistent breakdown."""
    r = simulate_step(load_scenario(job), mode="fast")
    assert 0 < r.step_time_s < 1e4
    assert sum(r.breakdown_s.values()) == pytest.approx(r.step_time_s, rel=1e-9)
    assert 0 < r.mfu["bf16_causal"] < 1


@pytest.mark.parametrize("mode", ["fast", "detailed", "analytic"])
def test_host_work_per_step_adds_once_on_every_tier(mode):
    """software.step_overhead_s is host work every GPU waits for after the simulated step: the step grows by
    exactly that, every rank's breakdown shows it as ``host`` and still sums to the step, and no GPU is busier."""
    s = load_scenario(TINY)
    base = simulate_step(s, mode=mode)
    r = simulate_step(load_scenario(TINY, overrides=["software.step_overhead_s=2.5"]), mode=mode)
    assert r.step_time_s == pytest.approx(base.step_time_s + 2.5, rel=1e-12)
    assert r.tokens_per_s_per_gpu == pytest.approx(r.tokens_per_step / r.step_time_s / s.num_gpus, rel=1e-12)
    assert base.breakdown_s["host"] == 0.0 and r.breakdown_s["host"] == pytest.approx(2.5)
    for b in r.breakdown_per_rank_s:
        assert b["host"] == pytest.approx(2.5)
        assert sum(b.values()) == pytest.approx(r.step_time_s, rel=1e-9)
    assert r.busy_per_rank_s == pytest.approx(base.busy_per_rank_s)
