"""Activation peaks (sim.memory): the frontier of in-flight counts gives the same peak as walking the schedule."""

from __future__ import annotations

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
