"""Activation peaks (sim.memory): the frontier of in-flight counts gives the same peak as walking the schedule."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.memory import peak_activation_bytes
from sim.pipeline import check_schedule, num_stages
from sim.schedules.actions import Phase
from sim.schedules.generators import build_schedule

NAMES = ("gpipe", "1f1b", "zb1p", "dualpipe", "dualpipev", "interleaved-1f1b")


def _walk(schedule, stage_bytes):
    """The definition: each forward adds its stage's bytes when it starts, each B or W frees them when it ends."""
    peaks = []
    for actions in schedule.ranks:
        held = peak = 0.0
        for a in actions:
            held += sum(stage_bytes[p.stage] for p in a.parts() if p.phase is Phase.F)
            peak = max(peak, held)
            held -= sum(stage_bytes[p.stage] for p in a.parts() if p.phase in (Phase.B, Phase.W))
        peaks.append(peak)
    return peaks


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(NAMES), pp=st.sampled_from([2, 4]), m=st.integers(1, 24), vpp=st.sampled_from([2, 3]),
       data=st.data())
def test_peaks_equal_the_walk_for_any_nonnegative_stage_bytes(name, pp, m, vpp, data):
    vpp = vpp if name == "interleaved-1f1b" else 1
    if check_schedule(name, pp, m, vpp) is not None:
        return
    sched = build_schedule(name, pp, m, vpp)
    stage_bytes = data.draw(st.lists(st.floats(0, 1e9), min_size=num_stages(name, pp, vpp),
                                     max_size=num_stages(name, pp, vpp)))
    got = peak_activation_bytes(sched, stage_bytes)
    want = _walk(sched, stage_bytes)
    assert all(abs(g - w) <= 1e-9 * max(1.0, w) for g, w in zip(got, want, strict=True)), (got, want)


def test_a_ranks_activations_add_the_largest_backward_working_set_of_its_stages():
    """Llama 3 70B on PP 2 with full recompute and an FP32 loss: the last rank also holds the logits gradient
    (4 B x 128,256 / TP per token of the micro-batch), the first only one layer's re-created tensors."""
    from sim.loading import load_scenario
    from sim.memory import memory_per_rank
    from sim.model.activations import stage_activation_bytes, stage_workspace_bytes
    from sim.model.stages import partition

    s = load_scenario("workloads/llama3_70b_h100.yaml", overrides=[
        "parallel.pp=2", "parallel.recompute=full", "software.cross_entropy=torch_fp32", "software.compile=false"])
    p = s.parallel
    lay = partition(s.model, 2, p.stage_layers, p.stage_split, s.training.seq_len)
    schedule = build_schedule(p.schedule, 2, s.num_microbatches, p.vpp)
    kept = peak_activation_bytes(schedule, stage_activation_bytes(lay, s))
    work = stage_workspace_bytes(lay, s)
    assert work[1] >= 4 * 128256 / p.tp * s.tokens_per_gpu > work[0] > 0
    assert [m.activations for m in memory_per_rank(s, lay, schedule)] == [kept[0] + work[0], kept[1] + work[1]]


def test_fp8_weight_gathers_hold_one_byte_per_gathered_parameter():
    """ZeRO-3 without a pipeline: the shard in BF16 plus the gathered units in BF16, or in FP8 when the stack
    all-gathers FP8 weights (torchao): the gathered part halves, the shard stays."""
    from sim.loading import load_scenario
    from sim.memory import model_state_bytes

    base = ["parallel.pp=1", "parallel.tp=1", "parallel.zero_stage=3", "precision.fprop=fp8", "cluster.num_nodes=64",
            "precision.fp8_scaling=tensorwise"]
    bf16 = load_scenario("workloads/llama3_70b_h100.yaml", overrides=base)
    fp8 = load_scenario("workloads/llama3_70b_h100.yaml", overrides=[*base, "precision.fp8_weight_gather=true"])
    params, unit = 70e9, 0.8e9
    w16, _, _ = model_state_bytes(params, 0.0, bf16, unit)
    w8, _, _ = model_state_bytes(params, 0.0, fp8, unit)
    shard = params / bf16.fsdp_shard_size * 2
    gathered = unit * (bf16.parallel.fsdp_prefetch + 1)
    assert w16 == pytest.approx(shard + 2 * gathered)
    assert w8 == pytest.approx(shard + gathered)
