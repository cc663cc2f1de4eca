"""The list scheduler on examples worked out by hand."""

from __future__ import annotations

import pytest

from sim.errors import SimInputError
from sim.schedules.actions import Action, Phase, parse
from sim.schedules.generators import build_schedule
from sim.schedules.listsched import Durations, simulate
from sim.schedules.validate import validate


def test_1f1b_two_ranks_by_hand():
    # F=1, B=2. rank 1: F1.0 [1,2] B1.0 [2,4] F1.1 [4,5] B1.1 [5,7]; rank 0: F0.0 [0,1] F0.1 [1,2]
    # B0.0 waits for B1.0 -> [4,6]; B0.1 waits for B1.1 -> [7,9].
    res = simulate(build_schedule("1f1b", 2, 2), Durations(f=1, b=2))
    assert res.start == ((0, 1, 4, 7), (1, 2, 4, 5))
    assert res.end == ((1, 2, 6, 9), (2, 4, 5, 7))
    assert res.makespan == 9
    assert res.busy_per_rank == (6, 6)
    assert res.idle_per_rank == (3, 3)  # includes rank 1's wait at the start and its early finish
    assert res.finish_per_rank == (9, 7)
    assert res.peak_activations_per_rank == (2, 1)
    assert res.bubble_max == 3 and res.bubble_total == 6


def test_durations_of_each_phase():
    d = Durations(f=1, b=3, w=1.25, fb=3.5)
    f, b = Action(Phase.F, 0, 0), Action(Phase.B, 1, 0)
    i = Action(Phase.I, 1, 0)
    assert [d(f), d(b), d(i), d(Action(Phase.W, 1, 0))] == [1, 3, 1.75, 1.25]
    assert d(Action.pair(f, b)) == 3.5
    assert d(Action.pair(f, i)) == 2.25  # an F&I pair saves the deferred W
    assert d.scaled(2) == Durations(2, 6, 2.5, 7)


@pytest.mark.parametrize("kwargs", [{"f": -1}, {"w": 3, "b": 2}, {"fb": -0.5}])
def test_bad_durations(kwargs):
    with pytest.raises(SimInputError, match="must be"):
        Durations(**kwargs)


def test_negative_callable_duration_is_rejected():
    with pytest.raises(SimInputError, match=">= 0"):
        simulate(build_schedule("gpipe", 2, 2), lambda a: -1.0)


def test_callable_durations_per_stage():
    # GPipe on 2 ranks, stage 1 twice as slow: rank 1 paces the pipeline.
    s = build_schedule("gpipe", 2, 2)
    res = simulate(s, lambda a: (1.0 if a.phase is Phase.F else 2.0) * (1 + a.stage))
    # rank 1: F [1,3] [3,5], B1.0 [5,9], B1.1 [9,13]; rank 0: F [0,1] [1,2], B0.0 [9,11], B0.1 [13,15]
    assert res.end == ((1, 2, 11, 15), (3, 5, 9, 13))
    assert res.idle_per_rank == (15 - 6, 15 - 12)


def test_zero_durations_run_to_completion():
    res = simulate(build_schedule("dualpipe", 4, 8), Durations(0, 0, 0, 0))
    assert res.makespan == 0 and res.idle_per_rank == (0, 0, 0, 0)


def test_activation_release_at_w_or_at_i():
    s = parse("# zb ranks=1 stages=1 microbatches=2 directions=1 folding=loop\nr0: F0.0 I0.0 F0.1 I0.1 W0.0 W0.1\n")
    assert simulate(s, release="weights").peak_activations_per_rank == (2,)
    assert simulate(s, release="input").peak_activations_per_rank == (1,)


def test_pairs_hold_both_activations_while_they_run():
    # V shape on one rank (stages 0 and 1): F1.1&B0.0 holds F1.1's new activation and B0.0's old one.
    s = parse("# v ranks=1 stages=2 microbatches=2 directions=1 folding=v\n"
              "r0: F0.0 F1.0 B1.0 F0.1 F1.1&B0.0 B1.1 B0.1\n")
    res = simulate(s, Durations(1, 2, 1, 3))
    assert res.peak_activations_per_rank == (3,)  # F0.0, F0.1 and F1.1 during the pair
    assert res.end[0] == (1, 2, 4, 5, 8, 10, 12)


def test_an_f_and_i_pair_keeps_the_activation_until_its_w():
    s = parse("# v ranks=1 stages=2 microbatches=3 directions=1 folding=v\n"
              "r0: F0.0 F1.0 B1.0 F0.1 F1.1&I0.0 F0.2 B1.1 B0.1 W0.0 F1.2 B1.2 B0.2\n")
    validate(s)
    # Counting until W: F0.0 is still held when F0.2 starts (4 live); counting until I: 3 at most.
    assert simulate(s, release="weights").peak_activations_per_rank == (4,)
    assert simulate(s, release="input").peak_activations_per_rank == (3,)
    res = simulate(s, Durations(1, 2, 0.5, 3))
    assert res.end[0][4] - res.start[0][4] == 2.5  # F&I = F&B - W


def test_compiled_form_is_cached_but_results_follow_the_durations():
    s = build_schedule("zb1p", 4, 8)
    a, b = simulate(s, Durations(1, 2, 1, 3)), simulate(s, Durations(2, 4, 2, 6))
    assert b.makespan == 2 * a.makespan
    assert simulate(s, Durations(1, 2, 1, 3)) == a


def test_a_pair_waits_for_its_backward_input():
    # rank 0 overlaps F0.1 (ready at once) with B0.0, which needs rank 1's B1.0 (done at 4).
    s = parse("# p ranks=2 stages=2 microbatches=2 directions=1 folding=loop\n"
              "r0: F0.0 F0.1&B0.0 B0.1\nr1: F1.0 B1.0 F1.1 B1.1\n")
    res = simulate(s, Durations(1, 2, 1, 3))
    assert res.start == ((0, 4, 10), (1, 2, 7, 8))
    assert res.makespan == 12
