"""Invariants of every schedule over random valid layouts and durations (hypothesis).

Checked here independently of the validator: completeness is counted directly, placement comes from
``sim.pipeline.all_stages_of``, and dependencies are checked on the simulated start and end times.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.pipeline import all_stages_of
from sim.schedules.actions import Action, Phase, parse, to_text
from sim.schedules.generators import build_schedule
from sim.schedules.listsched import Durations, simulate
from sim.schedules.validate import validate
from tests.schedules.strategies import durations, layouts

EXAMPLES = settings(max_examples=100, deadline=None)


@EXAMPLES
@given(layouts())
def test_every_chunk_has_one_forward_and_one_backward(layout):
    s = build_schedule(*layout)
    counts = Counter((p.phase, p.direction, p.stage, p.microbatch) for acts in s.ranks for a in acts
                     for p in a.parts())
    assert sum(counts.values()) == sum(len(a.parts()) for acts in s.ranks for a in acts)
    for d in range(s.num_directions):
        for stage in range(s.num_stages):
            for m in range(s.microbatches_per_direction):
                f, b, i, w = (counts[(ph, d, stage, m)] for ph in (Phase.F, Phase.B, Phase.I, Phase.W))
                assert f == 1
                assert (b, i, w) in ((1, 0, 0), (0, 1, 1))
    assert s.num_microbatches == layout[2]
    validate(s)


@EXAMPLES
@given(layouts())
def test_every_action_runs_on_the_rank_that_holds_its_stage(layout):
    name, pp, _, vpp = layout
    s = build_schedule(*layout)
    owned = all_stages_of(name, pp, vpp)
    for r, acts in enumerate(s.ranks):
        for a in acts:
            for p in a.parts():
                assert s.rank_of(p.stage, p.direction) == r
                # pipeline.stages_of lists a DualPipe rank's chunks as [direction 0 stage, direction 1 stage]
                assert p.stage == owned[r][p.direction] if name == "dualpipe" else p.stage in owned[r]


@EXAMPLES
@given(layouts(), durations())
def test_dependencies_finish_before_their_consumers_start(layout, d):
    s = build_schedule(*layout)
    res = simulate(s, d)
    end: dict[Action, float] = {}
    for r, acts in enumerate(s.ranks):
        for a, e in zip(acts, res.end[r], strict=True):
            for p in a.parts():
                end[p] = e
    for r, acts in enumerate(s.ranks):
        for i, a in enumerate(acts):
            for dep in s.dependencies(a):
                assert end[dep] <= res.start[r][i] + 1e-9, (a, dep)
            if i:  # one action at a time per rank
                assert res.end[r][i - 1] <= res.start[r][i] + 1e-9


@EXAMPLES
@given(layouts(), durations())
def test_no_deadlock_and_idle_is_makespan_minus_busy(layout, d):
    s = build_schedule(*layout)
    res = simulate(s, d)  # raises ScheduleError on deadlock
    assert len(res.start) == s.num_ranks and all(len(x) == len(a) for x, a in zip(res.start, s.ranks,
                                                                                   strict=True))
    for r in range(s.num_ranks):
        assert res.busy_per_rank[r] == pytest.approx(sum(d(a) for a in s.ranks[r]))
        assert res.idle_per_rank[r] == pytest.approx(res.makespan - res.busy_per_rank[r])
        assert res.idle_per_rank[r] >= -1e-9
        assert res.finish_per_rank[r] <= res.makespan
    assert max(res.peak_activations_per_rank) >= 1


@EXAMPLES
@given(layouts(), durations())
def test_deterministic(layout, d):
    a, b = build_schedule(*layout), build_schedule(*layout)
    assert a == b and to_text(a) == to_text(b)
    assert simulate(a, d) == simulate(b, d)


@EXAMPLES
@given(layouts(), durations(), st.sampled_from([0.5, 2.0, 3.0, 10.0]))
def test_scaling_every_duration_by_k_scales_the_makespan_by_k(layout, d, k):
    s = build_schedule(*layout)
    base, scaled = simulate(s, d), simulate(s, d.scaled(k))
    assert scaled.makespan == pytest.approx(k * base.makespan, rel=1e-9, abs=1e-9)
    assert scaled.idle_per_rank == pytest.approx([k * x for x in base.idle_per_rank], rel=1e-9, abs=1e-9)
    assert scaled.peak_activations_per_rank == base.peak_activations_per_rank


@EXAMPLES
@given(layouts())
def test_text_form_round_trips(layout):
    s = build_schedule(*layout)
    assert parse(to_text(s)) == s


@EXAMPLES
@given(layouts(), durations())
def test_callable_durations_match_the_dataclass(layout, d):
    s = build_schedule(*layout)
    assert simulate(s, lambda a: d(a)) == simulate(s, d)


@settings(max_examples=30, deadline=None)
@given(layouts(), durations())
def test_activations_never_exceed_the_chunks_a_rank_holds(layout, d):
    s = build_schedule(*layout)
    res = simulate(s, d)
    for r, acts in enumerate(s.ranks):
        forwards = sum(p.phase is Phase.F for a in acts for p in a.parts())
        assert 1 <= res.peak_activations_per_rank[r] <= forwards


def test_default_durations_are_deepseeks_exact_case():
    assert Durations() == Durations(f=1.0, b=2.0, w=1.0, fb=3.0)
