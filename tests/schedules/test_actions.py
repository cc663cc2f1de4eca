"""Actions, schedules, placement, dependencies and the compact text form."""

from __future__ import annotations

import pytest

from sim.schedules.actions import Action, Phase, Schedule, action_text, parse, parse_action, to_text


def F(s: int, m: int, d: int = 0) -> Action:
    return Action(Phase.F, s, m, d)


def B(s: int, m: int, d: int = 0) -> Action:
    return Action(Phase.B, s, m, d)


def test_text_of_plain_and_paired_actions():
    assert action_text(F(3, 1)) == "F3.1"
    assert action_text(B(3, 1)) == "B3.1"
    assert action_text(Action(Phase.W, 0, 7, 1)) == "w0.7"
    pair = Action.pair(F(0, 2, 1), Action(Phase.I, 1, 5))
    assert action_text(pair) == "f0.2&I1.5"
    assert str(pair) == "f0.2&I1.5" and repr(pair) == "Action<f0.2&I1.5>"
    for a in (F(3, 1), B(12, 40, 1), pair):
        assert parse_action(action_text(a)) == a


@pytest.mark.parametrize("bad", ["X1.2", "F1", "F-1.2", "F1.2&", "", "FB1.2"])
def test_parse_action_rejects_garbage(bad):
    with pytest.raises(ValueError, match="action"):
        parse_action(bad)


def test_pair_carries_its_forward_indices_and_checks_its_parts():
    pair = Action.pair(F(2, 4, 1), B(5, 0))
    assert (pair.phase, pair.stage, pair.microbatch, pair.direction) == (Phase.FB, 2, 4, 1)
    assert pair.parts() == (F(2, 4, 1), B(5, 0))
    with pytest.raises(ValueError, match="pairs an F"):
        Action.pair(B(0, 0), F(0, 0))
    with pytest.raises(ValueError, match="fwd part"):
        Action(Phase.FB, 9, 9, 0, F(0, 0), B(0, 0))
    with pytest.raises(ValueError, match="only FB"):
        Action(Phase.F, 0, 0, 0, F(0, 0), None)
    with pytest.raises(ValueError, match=">= 0"):
        F(-1, 0)


def test_phase_given_as_string_is_coerced():
    assert Action("W", 1, 2) == Action(Phase.W, 1, 2)  # type: ignore[arg-type]


def test_actions_are_frozen_and_hashable():
    a = F(1, 2)
    with pytest.raises(AttributeError):
        a.stage = 3  # type: ignore[misc]
    assert len({a, F(1, 2), B(1, 2)}) == 2


def _sched(folding: str, ranks: int, stages: int, directions: int = 1) -> Schedule:
    return Schedule("x", ranks, stages, 2 * directions, directions, tuple(() for _ in range(ranks)),
                    folding)  # type: ignore[arg-type]


def test_rank_of_each_folding():
    loop = _sched("loop", 4, 8)
    assert [loop.rank_of(s) for s in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]
    v = _sched("v", 4, 8)
    assert [v.rank_of(s) for s in range(8)] == [0, 1, 2, 3, 3, 2, 1, 0]
    mirror = _sched("mirror", 4, 4, 2)
    assert [mirror.rank_of(s, 0) for s in range(4)] == [0, 1, 2, 3]
    assert [mirror.rank_of(s, 1) for s in range(4)] == [3, 2, 1, 0]


def test_folding_and_directions_must_agree():
    with pytest.raises(ValueError, match="folding"):
        _sched("zigzag", 2, 2)
    with pytest.raises(ValueError, match="directions"):
        _sched("loop", 2, 2, 2)


def test_dependencies_follow_the_data():
    s = Schedule("x", 3, 3, 1, 1, ((F(0, 0), B(0, 0)), (F(1, 0), Action(Phase.I, 1, 0), Action(Phase.W, 1, 0)),
                                   (F(2, 0), B(2, 0))))
    assert s.dependencies(F(0, 0)) == ()
    assert s.dependencies(F(2, 0)) == (F(1, 0),)
    assert s.dependencies(B(2, 0)) == (F(2, 0),)  # the loss at the last stage
    assert s.dependencies(Action(Phase.I, 1, 0)) == (B(2, 0),)
    assert s.dependencies(B(0, 0)) == (Action(Phase.I, 1, 0),)  # stage 1 split its backward
    assert s.dependencies(Action(Phase.W, 1, 0)) == (Action(Phase.I, 1, 0),)
    assert s.backward_kind(1, 0) is Phase.I and s.backward_kind(0, 0) is Phase.B
    pair = Action.pair(F(1, 1), B(2, 0))
    assert s.dependencies(pair) == (F(0, 1), F(2, 0))


def test_schedule_text_round_trip_and_header():
    s = Schedule("dualpipe", 2, 2, 2, 2, ((F(0, 0), Action.pair(F(1, 0, 1), B(1, 0, 1))), (F(1, 0, 1),)),
                 "mirror")
    text = to_text(s)
    assert text.splitlines()[0] == "# dualpipe ranks=2 stages=2 microbatches=2 directions=2 folding=mirror"
    assert text.splitlines()[1] == "r0: F0.0 f1.0&b1.0"
    assert parse(text) == s


def test_parse_rejects_bad_text():
    with pytest.raises(ValueError, match="must start"):
        parse("r0: F0.0")
    with pytest.raises(ValueError, match="expected 'r1"):
        parse("# x ranks=2 stages=2 microbatches=1 directions=1\nr0: F0.0\nr5: F1.0\n")
