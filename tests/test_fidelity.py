"""The default DeepSeek-V3 scenario against published and measured figures, and the mechanisms behind them.

Sources: DeepSeek-V3 tech report (arXiv 2412.19437) section 1 and Table 1: 180K H800 GPU-hours per trillion
tokens on 2,048 H800 (about 19.9 s per 62.9M-token step); DeepSeek's profiler trace (deepseek-ai/profile-data
train.json; per-region figures committed in
``hardware_profiles/calibrated/h800_deepseek_trace_regions.csv``): one overlapped F&B chunk pair of 4 MoE layers
(4,096 tokens per GPU, EP64, balanced routing) spans 129.0 ms; its compute streams (7 and 23) are busy
96.3 % of it (stream 7 alone 91.6 %), its communication stream 88.8 %.
"""

from __future__ import annotations

import pytest

from sim.assemble import rank_plans
from sim.engine import isolated_run
from sim.loading import load_scenario
from sim.program.pairs import merge_pair
from sim.step import build_context, simulate_step
from sim.timeline import Category, Stream


def test_gpu_hours_per_trillion_tokens_within_10_percent(default_detailed):
    assert default_detailed.gpu_hours_per_trillion_tokens == pytest.approx(180e3, rel=0.10)
    assert default_detailed.step_time_s == pytest.approx(19.9, rel=0.10)


def _middle_pair():
    ctx = build_context(load_scenario())
    # A middle rank's steady pair: forward of stage 5 (4 MoE layers) with the backward of stage 10.
    f, b = ctx.program.chunk(5, "F", 0), ctx.program.chunk(10, "B", 1)
    assert sum(t.name == "dispatch" for t in f.tasks) == 4
    work = merge_pair(f, b)
    makespan, busy = isolated_run(work, 132, 20, static_sms=True)  # DeepEP reserves 20 SMs all step
    return work, makespan, busy


def test_overlapped_pair_matches_the_trace():
    work, makespan, busy = _middle_pair()
    assert makespan == pytest.approx(0.129, rel=0.15)
    # One compute stream here stands for the trace's two (7 and 23, busy 96.3 % together).
    assert sum(busy) / makespan == pytest.approx(0.963, abs=0.04)
    # The trace's communication kernels (88.8 % of the pair) include spinning while they wait for peers, so they
    # bound the modelled all-to-all from above; the model's in-situ wait is fitted to two of the four layers and
    # misses the other two by 19 % (sim.calibrate.fit_alltoall): it must stay within 30 % below that bound.
    comm = work.seconds_on(Stream.COMM) / makespan
    assert 0.7 * 0.888 <= comm <= 0.888
    assert work.seconds_on(Stream.COMPUTE) > 0


def test_dualpipe_hides_most_of_the_all_to_all(default_fast):
    """Running each pair's chunks one after the other gives back what the pair hid: per pair, the two chunks
    alone minus the pair together (the all-to-all one chunk's compute covers for the other's). The step grows
    by that times the pairs on the busiest rank, less what pipeline slack absorbs (at most 40 %); and the pair
    hides more than half of a chunk pair's all-to-all."""
    base = default_fast.step_time_s
    serial = simulate_step(load_scenario(overrides=["parallel.overlap_pairs=false"]), mode="fast").step_time_s
    ctx = build_context(load_scenario())
    f, b = ctx.program.chunk(5, "F", 0), ctx.program.chunk(10, "B", 1)
    alone = sum(isolated_run(c.work, 132, 20, static_sms=True)[0] for c in (f, b))
    together = isolated_run(merge_pair(f, b), 132, 20, static_sms=True)[0]
    hidden = alone - together
    assert hidden > 0.5 * (f.work.seconds_on(Stream.COMM) + b.work.seconds_on(Stream.COMM))
    pairs = max(sum(a.category == Category.OVERLAPPED for a in plan.actions)
                for plan in rank_plans(ctx.inputs, fast=False))
    assert 0.6 * pairs * hidden <= serial - base <= 1.0 * pairs * hidden
