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


def _walk(schedule, stage_bytes, rerun_bytes):
    """The definition: each forward adds its stage's bytes when it starts, each B or W frees them when it ends;
    a split backward's I adds its stage's re-created bytes when it starts, its W frees them when it ends."""
    peaks = []
    for actions in schedule.ranks:
        held = peak = 0.0
        for a in actions:
            held += sum(stage_bytes[p.stage] for p in a.parts() if p.phase is Phase.F)
            held += sum(rerun_bytes[p.stage] for p in a.parts() if p.phase is Phase.I)
            peak = max(peak, held)
            held -= sum(stage_bytes[p.stage] for p in a.parts() if p.phase in (Phase.B, Phase.W))
            held -= sum(rerun_bytes[p.stage] for p in a.parts() if p.phase is Phase.W)
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
    n = num_stages(name, pp, vpp)
    stage_bytes = data.draw(st.lists(st.floats(0, 1e9), min_size=n, max_size=n))
    rerun_bytes = data.draw(st.lists(st.floats(0, 1e9), min_size=n, max_size=n))
    got = peak_activation_bytes(sched, stage_bytes, rerun_bytes)
    want = _walk(sched, stage_bytes, rerun_bytes)
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


def _llama70b_zero3(*extra):
    from sim.loading import load_scenario

    return load_scenario("workloads/llama3_70b_h100.yaml", overrides=[
        "parallel.pp=1", "parallel.tp=1", "parallel.zero_stage=3", "precision.fprop=fp8", "cluster.num_nodes=64",
        "precision.fp8_scaling=tensorwise", *extra])


# Llama 3 70B per layer: linear weights (64 + 2 x 8) x 128 x 8,192 (q, k, v) + 8,192^2 (o) + 3 x 28,672 x 8,192
# (gate, up, down), and two RMSNorm weights of 8,192; the embedding 128,256 x 8,192.
LINEAR = 10240 * 8192 + 8192 * 8192 + 3 * 28672 * 8192
NORMS = 2 * 8192
EMBED = 128256 * 8192


def test_fsdp_holds_its_largest_units_gathered_and_fp8_gathers_hold_linear_weights_in_one_byte():
    from sim.memory import Zero3Gathers
    from sim.model.stages import model_units

    bf16, fp8 = _llama70b_zero3(), _llama70b_zero3("precision.fp8_weight_gather=true")
    units = model_units(bf16.model)
    layer = next(u for u in units if u.kind == "layer")
    ahead = bf16.parallel.fsdp_prefetch + 1
    layers = [layer] * 8
    assert Zero3Gathers.of(layers, bf16).working == pytest.approx(ahead * 2 * (LINEAR + NORMS))
    assert Zero3Gathers.of([layer], bf16).working == pytest.approx(2 * (LINEAR + NORMS))  # no more than there is
    only_layers = Zero3Gathers.of(layers, fp8)
    assert only_layers.working == pytest.approx(ahead * (LINEAR + 2 * NORMS))
    assert only_layers.fp8_params == 8 * LINEAR
    embed = next(u for u in units if u.kind == "embed")  # gathered in BF16 either way, and the larger unit
    assert Zero3Gathers.of([*layers, embed], fp8).working == pytest.approx(ahead * 2 * EMBED)


def test_deepspeed_holds_its_live_parameters_or_its_largest_module():
    """stage3_max_live_parameters 1e9 (BF16: 2 GB) over a layer whose largest module, gate + up (2 x 28,672 x
    8,192 = 470M parameters), is smaller; at 1e8 the module wins; never more than the units hold."""
    from sim.memory import Zero3Gathers
    from sim.model.stages import model_units

    layer = next(u for u in model_units(_llama70b_zero3().model) if u.kind == "layer")
    two = [layer, layer]
    assert Zero3Gathers.of(two, _llama70b_zero3("software.zero3_max_live_params=1e9")).working == 1e9 * 2
    assert Zero3Gathers.of(two, _llama70b_zero3("software.zero3_max_live_params=1e8")).working == 2 * 28672 * 8192 * 2
    assert Zero3Gathers.of([layer], _llama70b_zero3("software.zero3_max_live_params=1e12")).working == pytest.approx(
        2 * (LINEAR + NORMS))


def test_zero3_weights_are_the_shard_plus_what_is_gathered():
    from sim.memory import Zero3Gathers, model_state_bytes

    s = _llama70b_zero3()
    params = 70e9
    w, _, _ = model_state_bytes(params, 0.0, s, Zero3Gathers(working=3e9))
    assert w == pytest.approx(params / s.fsdp_shard_size * 2 + 3e9)
    # under a pipeline without resharding every weight stays gathered; FP8 gathers hold the linear ones in 1 B
    pp = _llama70b_zero3("parallel.pp=2", "parallel.fsdp_reshard_after_forward=false")
    full, _, _ = model_state_bytes(params, 0.0, pp, Zero3Gathers())
    assert full == pytest.approx(params * 2)
    fp8, _, _ = model_state_bytes(params, 0.0, pp, Zero3Gathers(fp8_params=60e9))
    assert fp8 == pytest.approx(params * 2 - 60e9)
