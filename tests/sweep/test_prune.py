"""Pruning: each rule prunes the points it should with its reason; the memory pre-check equals the library's
memory model; schedules' activation peaks saturate as ``sim.sweep.memory`` assumes."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sim.context import peak_memory_bytes
from sim.pipeline import check_schedule
from sim.schedules.generators import build_schedule
from sim.sweep import parse_spec
from sim.sweep.memory import MemoryModel, schedule_peaks
from sim.sweep.prune import CANDIDATE, MEMORY, RULE, prune
from sim.sweep.rules import Rules
from sim.sweep.space import build_space
from sim.units import GB


def verdict(space, **values):
    """The pruning verdict of the point with these axis values."""
    v = prune(space)
    names = [a.name for a in space.axes]
    for i, point in enumerate(space.points()):
        if all(point[names.index(k)] == x for k, x in values.items()):
            return v, i
    raise AssertionError(f"no point {values}")


def test_known_oom_point_is_pruned_for_memory():
    # DeepSeek-V3 on its 2,048 H800: PP16 DualPipe fits (the published layout, ~70 GB), PP4 cannot hold a
    # quarter of 671B parameters' states per GPU.
    space = build_space(parse_spec({"base": "deepseek_v3.yaml", "axes": {"pp": [4, 16]}}))
    v, i = verdict(space, pp=4)
    assert v.status[i] == MEMORY and v.rule[i] == "memory"
    assert "GB per GPU of 80 GB" in v.reason[i]
    assert v.memory_bytes[i] > 80 * GB
    peak = peak_memory_bytes(space.scenario(space_point(space, i)))  # sim run's memory model agrees
    assert peak == pytest.approx(v.memory_bytes[i], rel=1e-12)
    _, j = verdict(space, pp=16)
    assert v.status[j] == CANDIDATE and v.memory_bytes[j] < 80 * GB


def space_point(space, i):
    return next(p for k, p in enumerate(space.points()) if k == i)


@pytest.mark.parametrize(("axes", "values", "rule", "words"), [
    ({"tp": [1, 16], "pp": [1], "schedule": ["1f1b"]}, {"tp": 16}, "layout", "exceeds the 8 GPUs of a node"),
    ({"tp": [1, 3]}, {"tp": 3}, "layout", "tp x pp"),
    ({"gpus": [16, 20]}, {"gpus": 20}, "hardware", "whole number of 8-GPU nodes"),
    ({"ep": [4, 3]}, {"ep": 3}, "layout", "must divide n_routed_experts"),
    ({"micro_batch_size": [1, 3]}, {"micro_batch_size": 3}, "batch", "global_batch_size"),
    ({"micro_batch_size": [1, 2]}, {"micro_batch_size": 2}, "schedule", "dualpipe needs num_microbatches >= 2 * pp"),
    ({"schedule": ["1f1b", "interleaved-1f1b"]}, {"schedule": "interleaved-1f1b"}, "schedule", "vpp >= 2"),
    # the product of the axes makes points that are no configuration (the vpp-1 point, or 1F1B, is the one)
    ({"vpp": [1, 2]}, {"vpp": 2}, "n/a", "apply only to interleaved-1f1b"),
])
def test_illegal_layouts_are_pruned_by_their_rule(axes, values, rule, words):
    space = build_space(parse_spec({"base": "tiny_moe_job.yaml", "axes": axes}))
    v, i = verdict(space, **values)
    assert v.status[i] == RULE, v.reason[i]
    assert v.rule[i] == rule
    assert words in v.reason[i]
    other = [k for k in range(space.size) if k != i]
    assert all(v.status[k] == CANDIDATE for k in other)  # the base's value of the axis stays legal


def test_rule_pruned_points_are_refused_by_the_validators_too():
    spec = parse_spec({"base": "tiny_moe_job.yaml", "axes": {"tp": [1, 2, 16], "pp": [2, 4, 8], "ep": [2, 3, 4],
                                                              "schedule": ["1f1b", "dualpipe", "interleaved-1f1b"],
                                                              "vpp": [1, 2], "micro_batch_size": [1, 3]}})
    space = build_space(spec)
    v = prune(space)
    from pydantic import ValidationError

    for i, point in enumerate(space.points()):
        if v.status[i] == RULE:
            with pytest.raises(ValidationError):
                space.scenario(point)
        elif i % 7 == 0:
            space.scenario(point)  # a candidate is a valid scenario


def test_memory_precheck_equals_the_library_model():
    spec = parse_spec({"base": "gpt3_175b_a100.yaml", "axes": {
        "gpus": [64, 1024], "tp": [2, 8], "pp": [4, 8, 16], "schedule": ["1f1b", "interleaved-1f1b", "dualpipe",
                                                                         "zb1p", "gpipe", "dualpipev"],
        "vpp": [1, 2, 3], "zero_stage": [1, 3], "recompute": ["none", "selective", "full"]}})
    space = build_space(spec)
    rules, mem = Rules(space), MemoryModel(space)
    legal = []
    for point in space.points():
        bad, lay, _ = rules.check(point)
        if bad is None:
            legal.append((point, lay))
    random.seed(1)
    for point, lay in random.sample(legal, 30):
        expected = peak_memory_bytes(space.scenario(point))  # what sim run reports
        assert mem.peak_bytes(point, lay) == pytest.approx(expected, rel=1e-12), point


@pytest.mark.parametrize("schedule", ["1f1b", "zb1p", "interleaved-1f1b", "dualpipe", "dualpipev"])
def test_activation_peaks_saturate_by_two_pp(schedule):
    """Schedules with more than 2 pp micro-batches hold what they hold at 2 pp: the memory pre-check reads
    them there."""
    for pp in (2, 4, 6, 8):
        for vpp in ((2, 3) if schedule == "interleaved-1f1b" else (1,)):
            ms = [m for m in range(2 * pp, 5 * pp + 1) if check_schedule(schedule, pp, m, vpp) is None]
            ref = schedule_peaks(schedule, pp, ms[0], vpp)
            bytes_ = np.random.default_rng(pp).uniform(1, 2, ref.counts.shape[1])
            want = np.maximum.reduceat(ref.counts @ bytes_, ref.starts)
            for m in ms[1:]:
                s = build_schedule(schedule, pp, m, vpp)
                from sim.memory import peak_activation_bytes

                half = len(bytes_) // 2  # kept bytes per stage, then what a split backward's I re-creates
                got = peak_activation_bytes(s, list(bytes_[:half]), list(bytes_[half:]))
                assert np.allclose(got, want), (schedule, pp, vpp, m)


def test_dominance_prunes_only_provably_dominated_points():
    """A point pruned as dominated is, once simulated, dominated in (days, dollars) by a simulated point: GPT-3
    at 64 GPUs and $30 per GPU-hour cannot beat 256 GPUs at $1.5 even at peak FLOP/s."""
    from sim.sweep import run_sweep
    from sim.sweep.executors import LocalExecutor
    from sim.sweep.pareto import pareto_mask

    spec = parse_spec({
        "base": "gpt3_175b_a100.yaml", "tokens": 1e9,
        "set": {"training.global_batch_size": 32, "parallel.schedule": "1f1b", "parallel.vpp": 1},
        "axes": {"gpus": [64, 256], "tp": [8], "pp": [8], "micro_batch_size": [1, 2], "recompute": ["none", "full"],
                 "set": {"cluster.usd_per_gpu_hour": [1.5, 30.0]}},
        "evaluation": {"tier": "fast", "top_k": 0}})
    pruned = run_sweep(spec, executor=LocalExecutor(1), top_k=0)
    off = spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update={"dominance": False})})
    every = run_sweep(off, executor=LocalExecutor(1), top_k=0)
    dom = pruned.frame["rule"].eq("dominated").fillna(False).astype(bool)
    assert dom.sum() > 0 and pruned.counts["rank_simulations"] < every.counts["rank_simulations"]
    f = every.frame
    assert not f.loc[dom.to_numpy(), "pareto"].any()
    kept = f[~dom.to_numpy() & (f["status"] == "ok")]
    for _, row in f[dom.to_numpy()].iterrows():
        assert ((kept["days"] <= row["days"]) & (kept["usd"] < row["usd"])).any()
    ok = pruned.frame["status"] == "ok"
    assert (pareto_mask(pruned.frame["days"].where(ok), pruned.frame["usd"].where(ok))
            == every.frame["pareto"].to_numpy()).all()  # the same front with and without pruning


def test_a_schedule_and_vpp_product_leaves_one_configuration_per_schedule():
    """1F1B x {1, 2} and interleaved x {1, 2}: 1F1B at vpp 2 repeats 1F1B and interleaving at vpp 1 is 1F1B, so
    both are no configuration (rule n/a), not an illegal one."""
    space = build_space(parse_spec({"base": "tiny_moe_job.yaml",
                                    "axes": {"schedule": ["1f1b", "interleaved-1f1b"], "vpp": [1, 2]}}))
    for values, words in [({"schedule": "1f1b", "vpp": 2}, "apply only to interleaved-1f1b"),
                          ({"schedule": "interleaved-1f1b", "vpp": 1}, "one virtual stage per rank is 1f1b")]:
        v, i = verdict(space, **values)
        assert (v.status[i], v.rule[i]) == (RULE, "n/a") and words in v.reason[i]
    v, i = verdict(space, schedule="1f1b", vpp=1)
    assert v.rule[i] != "n/a"
    v, i = verdict(space, schedule="interleaved-1f1b", vpp=2)
    assert v.rule[i] != "n/a"


def test_memory_precheck_equals_the_library_model_with_gqa_cp_zero3_and_an_fp32_loss():
    """The working-set terms (recompute, the FP32 loss's gradient, K and V gathered by CP, repeated K/V) and
    ZeRO-3's gathered units, on Llama 3 70B: the pre-check equals sim run's memory point by point."""
    spec = parse_spec({"base": "llama3_70b_h100.yaml",
                       "set": {"software.repeat_kv": True, "software.cross_entropy": "torch_fp32",
                               "software.compile": False, "parallel.cp_mode": "all_gather"},
                       "axes": {"gpus": [256], "tp": [2, 8], "pp": [1, 4], "cp": [1, 2], "zero_stage": [1, 3],
                                "micro_batch_size": [1, 2], "recompute": ["none", "selective", "full"]}})
    space = build_space(spec)
    rules, mem = Rules(space), MemoryModel(space)
    legal = [(point, lay) for point in space.points() for bad, lay, _ in [rules.check(point)] if bad is None]
    assert len(legal) > 20
    random.seed(2)
    for point, lay in random.sample(legal, 20):
        expected = peak_memory_bytes(space.scenario(point))  # what sim run reports
        assert mem.peak_bytes(point, lay) == pytest.approx(expected, rel=1e-12), point


def test_a_swept_parallel_key_leaves_the_other_parallel_axes_in_place():
    """A swept ``set`` key under ``parallel`` replaces the point's parallel mapping; the recompute axis after it
    must still land in the scenario."""
    space = build_space(parse_spec({"base": "tiny_moe_job.yaml", "axes": {
        "recompute": ["none", "full"], "set": {"parallel.grad_bucket_mb": [10, 20]}}}))
    for point in space.points():
        s = space.scenario(point)
        assert s.parallel.recompute == space.value(point, "recompute")
        assert s.parallel.grad_bucket_mb == space.value(point, "parallel.grad_bucket_mb")


def test_no_configuration_wins_over_the_rules_a_point_also_breaks():
    """TP 3 breaks a layout rule, but 1F1B at vpp 2 is no configuration at all: n/a, so a plan neither counts
    it nor lists it as illegal."""
    space = build_space(parse_spec({"base": "tiny_moe_job.yaml", "axes": {
        "tp": [1, 3], "schedule": ["1f1b"], "vpp": [1, 2]}}))
    v, i = verdict(space, tp=3, schedule="1f1b", vpp=2)
    assert (v.rule[i], v.status[i]) == ("n/a", RULE)
    _, j = verdict(space, tp=3, schedule="1f1b", vpp=1)
    assert v.rule[j] == "layout"


def test_a_vpp_without_its_partner_on_the_axis_stays_a_refused_configuration():
    """vpp 2 and 4 with 1F1B alone: there is no vpp-1 point to stand for, so the schedule rule refuses them
    (the user asked for something the schedule cannot run) instead of hiding them as n/a."""
    space = build_space(parse_spec({"base": "tiny_moe_job.yaml", "axes": {"schedule": ["1f1b"], "vpp": [2, 4]}}))
    v = prune(space)
    assert set(v.rule) == {"schedule"}
    assert all("applies only to interleaved" in r for r in v.reason)


def test_memory_precheck_follows_swept_software_and_parallel_keys():
    """A swept loss implementation (its gradient's bytes) and CP mode (its gathers) change memory beyond the
    named axes: the pre-check measures such spaces with the library, point by point."""
    spec = parse_spec({"base": "llama3_70b_h100.yaml", "set": {"software.compile": False}, "axes": {
        "gpus": [256], "tp": [8], "pp": [1], "cp": [2], "recompute": ["selective", "full"],
        "set": {"software.cross_entropy": ["fused", "torch_fp32"], "parallel.cp_mode": ["ring", "all_gather"]}}})
    space = build_space(spec)
    rules, mem = Rules(space), MemoryModel(space)
    peaks = set()
    for point in space.points():
        bad, lay, _ = rules.check(point)
        assert bad is None, bad
        expected = peak_memory_bytes(space.scenario(point))  # what sim run reports
        assert mem.peak_bytes(point, lay) == pytest.approx(expected, rel=1e-12), point
        peaks.add(round(expected))
    assert len(peaks) >= 4  # the swept keys move memory


def test_memory_precheck_uses_sim_runs_rank_balanced_split():
    """DualPipeV holds two stages per rank and sim run balances the split over each rank's pair: the pre-check
    must read that split (reading the per-stage one put DeepSeek-V3 at 60.8 GB where sim run says 55.3)."""
    from sim.step import simulate_step

    space = build_space(parse_spec({"base": "deepseek_v3.yaml", "axes": {"schedule": ["dualpipev", "dualpipe"]}}))
    rules, mem = Rules(space), MemoryModel(space)
    for point in space.points():
        bad, lay, _ = rules.check(point)
        assert bad is None
        ran = simulate_step(space.scenario(point), mode="analytic", record_trace=False).peak_memory_per_gpu_bytes
        assert mem.peak_bytes(point, lay) == pytest.approx(ran, rel=1e-12), point


@pytest.mark.parametrize("base, axes", [
    # combined 1F1B (ep_overlap) keeps one more micro-batch in flight
    ("mixtral_8x7b_h100.yaml", {"pp": [1], "ep_overlap": [False, True]}),
    ("mixtral_8x7b_h100.yaml", {"pp": [2], "schedule": ["interleaved-1f1b"], "vpp": [2],
                                "ep_overlap": [False, True]}),
    # TP without sequence parallelism splits only some saved tensors by TP
    ("llama3_70b_h100.yaml", {"tp": [1, 8], "pp": [4], "sequence_parallel": [False, True],
                              "schedule": ["1f1b", "zb1p"], "recompute": ["selective", "full"]}),
    # EPLB's redundant expert slots are model states
    ("deepseek_v3.yaml", {"ep": [32, 64], "balancing": ["none", "eplb"]}),
])
def test_memory_precheck_equals_sim_run_across_inner_and_overlap_axes(base, axes):
    from sim.step import simulate_step

    space = build_space(parse_spec({"base": base, "axes": axes}))
    rules, mem = Rules(space), MemoryModel(space)
    checked = 0
    for point in space.points():
        bad, lay, _ = rules.check(point)
        if bad is not None:
            continue
        ran = simulate_step(space.scenario(point), mode="analytic", record_trace=False).peak_memory_per_gpu_bytes
        assert mem.peak_bytes(point, lay) == pytest.approx(ran, rel=1e-12), point
        checked += 1
    assert checked >= 2
