"""`sim.estimate`: DeepSeek-V3's Table 1 from its job file, the ramp integral, overheads, energy by hand, prices,
and the layout search.

Golden figures: DeepSeek-V3 tech report (arXiv 2412.19437) Table 1, H800 GPU-hours: pre-training 2,664K,
context extension 119K, post-training 5K, total 2,788K; $5.576M at $2 per GPU-hour.
Tolerances are the ones the estimate was asked to meet: 10 % (pre-training, total, dollars), 15 % (context
extension). Misses are ``xfail(strict=True)`` with the measured figure, so they flip when the physics improves.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.config import ClusterSpec, EnergySpec, OverheadSpec, Scenario
from sim.estimate import estimate_run
from sim.estimate.accounting import Seconds, cost
from sim.estimate.energy import energy_kwh, facility_power_w
from sim.estimate.ramp import integrate, ramp_batches, ramp_steps
from sim.loading import load_scenario
from sim.units import SECONDS_PER_HOUR

TABLE1 = {"pre-training": 2664e3, "context extension": 119e3, "post-training": 5e3}
TABLE1_TOTAL, TABLE1_USD = 2788e3, 5.576e6


@pytest.fixture(scope="module")
def deepseek() -> Any:
    return estimate_run(load_scenario(None))


def tiny(run: dict[str, Any] | None = None, **training: Any) -> Scenario:
    """The tiny MoE test job (16 H100, DualPipe PP4 x DP4, 32 x 256-token sequences) with a run section."""
    data = load_scenario("workloads/tiny_moe_job.yaml").model_dump()
    data["training"].update(training)
    data["run"] = run
    return Scenario.model_validate(data)


def one_phase(**phase: Any) -> dict[str, Any]:
    return {"phases": [{"name": "main", **phase}]}


# ------------------------------------------------------------------ DeepSeek-V3, Table 1


def stage(est: Any, name: str) -> dict[str, Any]:
    return next(s for s in est.comparison["stages"] if s["name"] == name)


def test_deepseek_pretraining_within_10pct_of_table1(deepseek):
    s = stage(deepseek, "pre-training")
    assert s["measured_gpu_hours"] == TABLE1["pre-training"]
    assert abs(s["gpu_hours"] / TABLE1["pre-training"] - 1) <= 0.10, s


def test_deepseek_context_extension_within_15pct_of_table1(deepseek):
    s = stage(deepseek, "context extension")
    assert abs(s["gpu_hours"] / TABLE1["context extension"] - 1) <= 0.15, s


def test_deepseek_total_and_dollars_within_10pct_of_table1(deepseek):
    m = deepseek.comparison
    assert m["total"]["measured_gpu_hours"] == TABLE1_TOTAL
    assert abs(m["total"]["gpu_hours"] / TABLE1_TOTAL - 1) <= 0.10
    assert m["usd"]["usd_per_gpu_hour"] == 2.0
    assert abs(m["usd"]["usd"] / TABLE1_USD - 1) <= 0.10


def test_deepseek_phases_as_published(deepseek):
    by = {p.work.spec.name: p for p in deepseek.phases}
    # tech report 4.3: 1000 steps each at 32K x 1920 and 128K x 480, 62.9B tokens each (derived: steps x batch x
    # sequence)
    for name in ("context-32k", "context-128k"):
        assert by[name].steps == 1000
        assert by[name].work.tokens == pytest.approx(62.915e9, rel=1e-4)
    # 14.8T tokens; about 235K steps at the full batch (derived: 14.8T / 62.9M tokens per step), more with the
    # ramp's smaller steps
    assert by["pre-training"].work.tokens == 14.8e12
    assert 235e3 < by["pre-training"].steps < 250e3
    assert by["post-training"].cost.gpu_hours == 5e3  # given, as published


def test_deepseek_illegal_layouts_are_replaced_with_reasons(deepseek):
    by = {p.work.spec.name: p for p in deepseek.phases}
    ramp_start = by["pre-training"].work.points[0]
    assert ramp_start.global_batch_size == 3072
    assert "dualpipe needs num_microbatches >= 2 * pp" in ramp_start.reason
    assert by["pre-training"].work.main.reason is None  # 120 micro-batches: the job's DualPipe layout
    assert "even number of micro-batches" in by["context-32k"].work.main.reason
    assert "must divide into dp x micro_batch_size" in by["context-128k"].work.main.reason
    hbm = 80e9
    for p in deepseek.phases:
        for q in p.work.points:
            assert q.peak_memory_bytes <= hbm
            if q.reason:
                assert "chose" in q.reason and q.layout["schedule"] in q.reason


# ------------------------------------------------------------------ the ramp


def test_ramp_integral_by_hand():
    # step time 2 + B/1000 s, B linear in tokens from 1000 to 3000 over X = 4e9 tokens of 1000-token sequences:
    # integral (2 + B/1000) / (S B) dx with dx = X/(B1-B0) dB = (X/(S (B1-B0))) (2 ln 3 + 2)
    x, s = 4e9, 1000
    batches = [1000.0, 2000.0, 3000.0]
    times = [2 + b / 1000 for b in batches]
    k = x / (s * 2000)
    assert integrate(batches, times, x, s, "linear_tokens") == pytest.approx(k * (2 * math.log(3) + 2))
    assert ramp_steps(1000, 3000, x, s, "linear_tokens") == pytest.approx(k * math.log(3))
    # linear in steps: N = 2X / (S (B0 + B1)) = 2000 steps whose mean batch is 2000 and mean time 4 s
    assert ramp_steps(1000, 3000, x, s, "linear_steps") == pytest.approx(2000)
    assert integrate(batches, times, x, s, "linear_steps") == pytest.approx(2000 * 4)


@settings(max_examples=30)
@given(st.lists(st.floats(0.1, 100.0), min_size=2, max_size=6), st.sampled_from(["linear_tokens", "linear_steps"]),
       st.floats(1.01, 8.0))
def test_ramp_integral_matches_quadrature(times, shape, ratio):
    b0, x, s = 1000.0, 1e9, 1000
    b1 = b0 * ratio
    batches = [b0 + (b1 - b0) * i / (len(times) - 1) for i in range(len(times))]
    # midpoint rule over steps: walk the ramp in small token increments
    n, steps, total = 20000, 0.0, 0.0
    for i in range(n):
        if shape == "linear_tokens":
            b = b0 + (b1 - b0) * (i + 0.5) / n
            dn = x / n / (s * b)
        else:
            big_n = 2 * x / (s * (b0 + b1))
            b = b0 + (b1 - b0) * (i + 0.5) / n
            dn = big_n / n
        steps += dn
        total += dn * float(np.interp(b, batches, times))
    assert integrate(batches, [1.0] * len(times), x, s, shape) == pytest.approx(steps, rel=1e-6)
    assert integrate(batches, times, x, s, shape) == pytest.approx(total, rel=1e-4)


def test_ramp_batches_keep_the_ends_and_round_inside():
    assert ramp_batches(3072, 15360, 4, 256) == [3072, 7168, 11264, 15360]
    assert ramp_batches(100, 100, 5, 8) == [100]
    assert ramp_batches(8, 40, 3, 8) == [8, 24, 40]
    assert ramp_batches(8, 40, 3, 10) == [8, 20, 40]


def test_ramp_with_a_constant_batch_equals_a_single_phase():
    flat = estimate_run(tiny(one_phase(tokens=1e9, batch_ramp={"start_global_batch_size": 32,
                                                                "ramp_tokens": 4e8, "points": 4})))
    single = estimate_run(tiny(one_phase(tokens=1e9)))
    a, b = flat.phases[0], single.phases[0]
    assert a.steps == pytest.approx(b.steps, rel=1e-12)
    for k in ("gpu_hours", "days", "usd", "kwh"):
        assert getattr(a.cost, k) == pytest.approx(getattr(b.cost, k), rel=1e-12)


def test_ramp_costs_more_per_token_when_small_batches_run_slower():
    ramped = estimate_run(tiny(one_phase(tokens=1e9, batch_ramp={"start_global_batch_size": 16,
                                                                  "ramp_tokens": 1e9, "points": 2})))
    full = estimate_run(tiny(one_phase(tokens=1e9)))
    p = ramped.phases[0]
    assert p.steps > full.phases[0].steps  # smaller batches take more steps for the same tokens
    assert [q.global_batch_size for q in p.work.points] == [16, 32]


# ------------------------------------------------------------------ prices and overheads


def numbers(est: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    d = est.to_dict()
    for k in drop:
        d.pop(k)
    return d


def strip_usd(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: strip_usd(v) for k, v in x.items() if "usd" not in k}
    if isinstance(x, list):
        return [strip_usd(v) for v in x]
    return x


def test_doubling_the_price_doubles_dollars_and_nothing_else():
    s = tiny(one_phase(tokens=1e9))
    a, b = estimate_run(s, price=1.5), estimate_run(s, price=3.0)
    assert b.total["usd"] == pytest.approx(2 * a.total["usd"])
    assert b.phases[0].cost.usd == pytest.approx(2 * a.phases[0].cost.usd)
    assert b.sensitivities["gpus_plus_10pct"]["delta_usd"] == pytest.approx(
        2 * a.sensitivities["gpus_plus_10pct"]["delta_usd"])
    assert strip_usd(a.to_dict()) == strip_usd(b.to_dict())


def test_zero_overhead_defaults_change_nothing():
    zero = {"checkpoint_interval_s": 0.0, "checkpoint_write_s": 0.0, "mtbf_node_hours": None, "restart_s": 0.0}
    a = estimate_run(tiny(one_phase(tokens=1e9)))
    b = estimate_run(tiny({**one_phase(tokens=1e9), "overheads": zero}))
    assert a.to_dict() == b.to_dict()
    p = a.phases[0]
    step = p.work.main.step_time_s
    assert p.cost.gpu_hours == pytest.approx(p.steps * step * 16 / SECONDS_PER_HOUR, rel=1e-12)
    assert p.cost.failures == p.cost.checkpoint_s == p.cost.failure_s == 0


def test_failures_add_gpu_hours_in_proportion_by_hand():
    tau, c, r, mtbf = 3600.0, 60.0, 600.0, 1000.0
    base = estimate_run(tiny(one_phase(tokens=1e11)))
    est = estimate_run(tiny({**one_phase(tokens=1e11), "overheads": {
        "checkpoint_interval_s": tau, "checkpoint_write_s": c, "mtbf_node_hours": mtbf, "restart_s": r}}))
    t = base.phases[0].seconds.compute_s  # training seconds, the same in both
    w0 = t * (1 + c / tau)  # checkpoint stalls
    failures = 2 * w0 / (mtbf * 3600)  # two nodes, each failing at 1/MTBF
    wall = w0 + failures * (r + tau / 2)  # restart plus half an interval of lost work per failure
    p = est.phases[0]
    assert p.cost.failures == pytest.approx(failures)
    assert p.cost.gpu_hours == pytest.approx(wall * 16 / 3600)
    # in proportion: half the MTBF, twice the failure overhead
    half = estimate_run(tiny({**one_phase(tokens=1e11), "overheads": {
        "checkpoint_interval_s": tau, "checkpoint_write_s": c, "mtbf_node_hours": mtbf / 2, "restart_s": r}}))
    ckpt_only = w0 * 16 / 3600
    assert half.phases[0].cost.gpu_hours - ckpt_only == pytest.approx(2 * (p.cost.gpu_hours - ckpt_only))


# ------------------------------------------------------------------ energy


def hand_cluster(idle_w: float | None = 100.0) -> ClusterSpec:
    c = load_scenario("workloads/tiny_moe_job.yaml").cluster.model_dump()
    c["gpu"].update(tdp_w=700.0, idle_w=idle_w)
    c["node"].update(node_overhead_w=1000.0)
    c.update(num_nodes=2, network_w_per_gpu=50.0, pue=1.25)
    return ClusterSpec.model_validate(c)


def test_energy_of_a_hand_built_case():
    cl = hand_cluster()
    # 16 GPUs at 100 + (700 - 100) x 0.5 = 400 W, 2 nodes x 1000 W, 16 x 50 W network, x PUE 1.25
    assert facility_power_w(cl, 2, 0.5) == pytest.approx((16 * 400 + 2 * 1000 + 16 * 50) * 1.25)  # 11.5 kW
    assert energy_kwh(cl, 2, 3600.0, 0.5) == pytest.approx(11.5)
    # idle for another half hour: (16 x 100 + 2000 + 800) x 1.25 = 5.5 kW
    assert energy_kwh(cl, 2, 3600.0, 0.5, 1800.0) == pytest.approx(11.5 + 2.75)
    c = cost(Seconds(3600.0, 0.5), cl, 2, OverheadSpec(), EnergySpec(grid_kg_co2_per_kwh=0.5), 2.0)
    assert (c.kwh, c.co2_kg, c.gpu_hours, c.usd) == pytest.approx((11.5, 5.75, 16.0, 32.0))
    # no idle figure: GPUs at TDP throughout
    assert facility_power_w(hand_cluster(None), 2, 0.0) == pytest.approx((16 * 700 + 2000 + 800) * 1.25)


def test_estimate_energy_follows_the_simulated_utilisation():
    est = estimate_run(tiny({**one_phase(tokens=1e9), "energy": {"grid_kg_co2_per_kwh": 0.4}}))
    p = est.phases[0]
    cl = tiny().cluster
    u = p.work.main.busy_s / p.work.main.step_time_s
    assert 0 < u < 1 and p.seconds.utilization == pytest.approx(u)
    gpu_w = cl.gpu.idle_w + (cl.gpu.tdp_w - cl.gpu.idle_w) * u
    watts = (16 * (gpu_w + cl.network_w_per_gpu) + 2 * cl.node.node_overhead_w) * cl.pue
    assert p.cost.kwh == pytest.approx(watts * p.cost.wall_s / 3.6e6)
    assert p.cost.co2_kg == pytest.approx(0.4 * p.cost.kwh)


# ------------------------------------------------------------------ layouts and phases


def test_an_illegal_layout_in_a_phase_gets_a_legal_one_with_a_reason():
    # 16 sequences over DP4 are 4 micro-batches: DualPipe over 4 ranks needs at least 8
    est = estimate_run(tiny({"phases": [{"name": "small", "global_batch_size": 16, "steps": 10}]}))
    q = est.phases[0].work.main
    assert "dualpipe needs num_microbatches >= 2 * pp = 8 (got 4)" in q.reason
    assert not (q.layout["schedule"] == "dualpipe" and q.layout["num_microbatches"] < 8)
    data = tiny().model_dump()
    data["training"]["global_batch_size"] = 16
    data["parallel"].update({k: q.layout[k] for k in ("schedule", "tp", "pp", "micro_batch_size", "recompute")},
                            dp=None)
    data["parallel"]["vpp"] = q.layout.get("vpp", 1)
    Scenario.model_validate(data)  # legal


def test_phase_overrides_set_its_layout_and_given_phases_are_not_simulated():
    est = estimate_run(tiny({"phases": [
        {"name": "a", "steps": 5, "overrides": {"parallel.schedule": "1f1b"}},
        {"name": "b", "gpu_hours": 7.0},
    ]}))
    a, b = est.phases
    assert a.work.main.layout["schedule"] == "1f1b" and a.work.main.reason is None
    assert b.steps is None and b.cost.gpu_hours == pytest.approx(7.0) and not b.work.points
    assert est.simulations == 1
    assert b.seconds.utilization == pytest.approx(a.seconds.utilization)  # default: the simulated phases'


def test_a_job_without_run_is_one_pretraining_phase():
    est = estimate_run(tiny(None))
    assert [p.work.spec.name for p in est.phases] == ["pre-training"]
    assert est.phases[0].work.tokens == 1e9


def test_sensitivities_move_the_right_way(deepseek):
    s = deepseek.sensitivities
    more = s["gpus_plus_10pct"]
    assert more["gpus"] > deepseek.num_gpus and more["delta_days"] < 0
    assert more["delta_gpu_hours"] > 0  # a fixed batch over more GPUs: more bubble per token
    late = s["deadline_plus_1_day"]
    assert late["gpus"] < deepseek.num_gpus and late["days"] <= late["deadline_days"]
    assert s["price_plus_10pct"]["delta_usd"] == pytest.approx(0.2 * deepseek.total["gpu_hours"])
