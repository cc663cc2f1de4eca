"""The validator rejects broken schedules with a message and a rank-by-time grid."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sim.errors import SimInputError
from sim.schedules.actions import Action, Phase, Schedule, parse
from sim.schedules.generators import build_schedule
from sim.schedules.listsched import simulate
from sim.schedules.validate import ScheduleError, validate

ONE_F_ONE_B = """# 1f1b ranks=2 stages=2 microbatches=2 directions=1 folding=loop
r0: F0.0 F0.1 B0.0 B0.1
r1: F1.0 B1.0 F1.1 B1.1
"""


def _edit(text: str, rank: int, body: str) -> Schedule:
    lines = text.strip().splitlines()
    lines[rank + 1] = f"r{rank}: {body}"
    return parse("\n".join(lines))


def _fails(s: Schedule, *fragments: str) -> str:
    with pytest.raises(ScheduleError) as err:
        validate(s)
    msg = str(err.value)
    for fragment in fragments:
        assert fragment in msg, msg
    assert "\nr0 " in msg and "\nr1 " in msg  # the grid has one row per rank
    return msg


def test_the_reference_schedule_is_valid():
    validate(parse(ONE_F_ONE_B))


def test_schedule_error_exits_like_bad_input():
    assert issubclass(ScheduleError, SimInputError)


def test_missing_backward():
    _fails(_edit(ONE_F_ONE_B, 0, "F0.0 F0.1 B0.0"), "stage 0 micro-batch 1 has 0 B, 0 I, 0 W")


def test_duplicated_forward():
    _fails(_edit(ONE_F_ONE_B, 0, "F0.0 F0.1 F0.1 B0.0 B0.1"), "stage 0 micro-batch 1 has 2 forwards")


def test_action_on_the_wrong_rank():
    _fails(_edit(ONE_F_ONE_B, 0, "F0.0 F0.1 B0.0 B0.1 F1.0"), "rank 0 slot 4: F1.0 belongs on rank 1")


def test_index_out_of_range():
    _fails(_edit(ONE_F_ONE_B, 0, "F0.0 F0.1 B0.0 B0.1 F0.2"), "outside 2 stages x 2 micro-batches")


def test_split_backward_needs_both_i_and_w():
    _fails(_edit(ONE_F_ONE_B, 1, "F1.0 I1.0 F1.1 B1.1"), "stage 1 micro-batch 0 has 0 B, 1 I, 0 W")


def test_same_rank_dependency_out_of_order_is_a_deadlock_with_a_marked_grid():
    msg = _fails(_edit(ONE_F_ONE_B, 1, "B1.0 F1.0 F1.1 B1.1"), "deadlock", "rank 1 waits forever at slot 0",
                 "!B1.0")
    assert "rank 0 waits forever at slot 2: B0.0" in msg


def test_weight_pass_before_its_input_pass_deadlocks():
    _fails(_edit(ONE_F_ONE_B, 1, "F1.0 W1.0 I1.0 F1.1 B1.1"), "deadlock", "!W1.0")


def test_cross_rank_cycle_deadlocks():
    # rank 0 wants B0.0 (needs rank 1's B1.0) before sending F0.1; rank 1 wants F1.1 (needs F0.1) first.
    s = parse(ONE_F_ONE_B.replace("r0: F0.0 F0.1 B0.0 B0.1", "r0: F0.0 B0.0 F0.1 B0.1")
              .replace("r1: F1.0 B1.0 F1.1 B1.1", "r1: F1.0 F1.1 B1.0 B1.1"))
    msg = _fails(s, "deadlock", "rank 0 waits forever at slot 1: B0.0", "rank 1 waits forever at slot 1: F1.1")
    with pytest.raises(ScheduleError, match="deadlock"):
        simulate(s)  # the list scheduler reports the same, with the grid
    assert "(+2)" in msg  # actions left after the stuck one


def test_pair_cannot_overlap_a_backward_with_its_own_forward():
    s = _edit(ONE_F_ONE_B, 1, "F1.0&B1.0 F1.1 B1.1")
    _fails(s, "overlaps a backward with the forward it needs")


def test_wrong_number_of_rank_lists():
    s = build_schedule("1f1b", 2, 2)
    bad = replace(s, ranks=s.ranks[:1])
    with pytest.raises(ScheduleError, match="1 action lists for 2 ranks"):
        validate(bad)


def test_long_grids_show_the_last_ticks():
    s = build_schedule("1f1b", 2, 40)
    ranks = list(s.ranks)
    ranks[1] = (*ranks[1][:-2], ranks[1][-1], ranks[1][-2])  # B1.39 before F1.39
    msg = _fails(replace(s, ranks=tuple(ranks)), "deadlock", "not shown")
    assert max(len(line) for line in msg.splitlines()) < 400


def test_dualpipe_schedules_validate_and_a_swapped_pair_does_not():
    s = build_schedule("dualpipe", 4, 8)
    validate(s)
    r0 = list(s.ranks[0])
    i = next(k for k, a in enumerate(r0) if a.phase is Phase.FB)
    fwd, bwd = r0[i].fwd, r0[i].bwd
    assert fwd is not None and bwd is not None
    m = (fwd.microbatch + 1) % s.microbatches_per_direction
    r0[i] = Action.pair(Action(Phase.F, fwd.stage, m, fwd.direction), bwd)
    _fails(replace(s, ranks=(tuple(r0), *s.ranks[1:])), "forwards; needs exactly one")
