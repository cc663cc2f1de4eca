"""Megatron-Core's combined 1F1B (``parallel.ep_overlap``): every steady backward paired with the next forward."""

from __future__ import annotations

import pytest

from sim.errors import SimInputError
from sim.schedules.actions import Phase
from sim.schedules.generators import build_schedule
from sim.schedules.validate import validate


@pytest.mark.parametrize(("name", "pp", "n", "vpp"), [
    ("1f1b", 1, 4, 1), ("1f1b", 4, 8, 1), ("interleaved-1f1b", 4, 8, 2), ("interleaved-1f1b", 4, 4, 2),
    ("interleaved-1f1b", 8, 16, 3), ("interleaved-1f1b", 16, 128, 2),
])
def test_combined_schedules_are_complete_and_deadlock_free(name, pp, n, vpp):
    plain = build_schedule(name, pp, n, vpp)
    combined = build_schedule(name, pp, n, vpp, True)
    validate(combined)
    for a, b in zip(plain.ranks, combined.ranks, strict=True):
        unpaired = [p for x in b for p in ((x.bwd, x.fwd) if x.phase is Phase.FB else (x,))]
        assert list(a) == unpaired  # the same order, each backward merged with the forward after it
        pairs = [x for x in b if x.phase is Phase.FB]
        # Every backward followed by a forward is paired with it: one forward fewer runs alone than backwards.
        assert len(pairs) == sum(1 for i in range(len(a) - 1) if a[i].phase is Phase.B and a[i + 1].phase is Phase.F)


def test_combined_1f1b_pairs_backward_n_minus_1_with_forward_n():
    s = build_schedule("1f1b", 1, 4, 1, True)
    assert [str(a) for a in s.ranks[0]] == ["F0.0", "F0.1&B0.0", "F0.2&B0.1", "F0.3&B0.2", "B0.3"]


def test_combined_applies_to_1f1b_schedules_only():
    with pytest.raises(SimInputError, match="combined 1F1B applies to 1f1b and interleaved-1f1b"):
        build_schedule("dualpipe", 4, 8, 1, True)
