"""The generators against hand-written orders and the structure of their sources, and their preconditions."""

from __future__ import annotations

import pytest

from sim.errors import SimInputError
from sim.pipeline import check_layer_split
from sim.schedules.actions import Phase, to_text
from sim.schedules.generators import build_schedule


def _rank(name: str, pp: int, n: int, r: int, vpp: int = 1) -> str:
    return to_text(build_schedule(name, pp, n, vpp)).splitlines()[r + 1].split(": ", 1)[1]


def test_gpipe_runs_all_forwards_then_all_backwards():
    assert _rank("gpipe", 3, 3, 1) == "F1.0 F1.1 F1.2 B1.0 B1.1 B1.2"


def test_1f1b_warm_up_steady_cool_down():
    assert _rank("1f1b", 4, 6, 0) == "F0.0 F0.1 F0.2 F0.3 B0.0 F0.4 B0.1 F0.5 B0.2 B0.3 B0.4 B0.5"
    assert _rank("1f1b", 4, 6, 3) == "F3.0 B3.0 F3.1 B3.1 F3.2 B3.2 F3.3 B3.3 F3.4 B3.4 F3.5 B3.5"
    assert _rank("1f1b", 4, 2, 0) == "F0.0 F0.1 B0.0 B0.1"  # fewer micro-batches than warm-up slots


def test_zb1p_rank_r_delays_its_weight_passes_by_r_microbatches():
    assert _rank("zb1p", 4, 6, 0) == ("F0.0 F0.1 F0.2 F0.3 I0.0 W0.0 F0.4 I0.1 W0.1 F0.5 I0.2 W0.2 "
                                      "I0.3 W0.3 I0.4 W0.4 I0.5 W0.5")
    assert _rank("zb1p", 4, 6, 1) == ("F1.0 F1.1 F1.2 I1.0 F1.3 I1.1 W1.0 F1.4 I1.2 W1.1 F1.5 I1.3 W1.2 "
                                      "I1.4 W1.3 I1.5 W1.4 W1.5")
    assert _rank("zb1p", 4, 6, 3) == ("F3.0 I3.0 F3.1 I3.1 F3.2 I3.2 F3.3 I3.3 W3.0 F3.4 I3.4 W3.1 "
                                      "F3.5 I3.5 W3.2 W3.3 W3.4 W3.5")


def test_interleaved_follows_megatrons_chunk_order():
    # Megatron-LM forward_backward_pipelining_with_interleaving, pp=2, vpp=2, 4 micro-batches; stage = chunk*pp + r.
    assert _rank("interleaved-1f1b", 2, 4, 0, vpp=2) == ("F0.0 F0.1 F2.0 F2.1 F0.2 B2.0 F0.3 B2.1 F2.2 B0.0 "
                                                         "F2.3 B0.1 B2.2 B2.3 B0.2 B0.3")
    assert _rank("interleaved-1f1b", 2, 4, 1, vpp=2) == ("F1.0 F1.1 F3.0 B3.0 F3.1 B3.1 F1.2 B1.0 F1.3 B1.1 "
                                                         "F3.2 B3.2 F3.3 B3.3 B1.2 B1.3")


def test_interleaved_with_as_many_microbatches_as_ranks_runs_all_forwards_first():
    # Megatron-LM: "Run all forward passes and then all backward passes if number of microbatches is just
    # the number of pipeline stages."
    assert _rank("interleaved-1f1b", 2, 2, 1, vpp=2) == "F1.0 F1.1 F3.0 F3.1 B3.0 B3.1 B1.0 B1.1"


def test_dualpipe_opening_of_rank_0_follows_the_8_steps():
    # P=8, N=20 (the README example): H=4, h=0 -> 6 x F0, then F0 F1, then 3 x (I1 W F1), then the pairs.
    ops = _rank("dualpipe", 8, 20, 0).split()
    assert ops[:8] == ["F0.0", "F0.1", "F0.2", "F0.3", "F0.4", "F0.5", "F0.6", "f7.0"]
    assert ops[8:17] == ["i7.0", "w7.0", "f7.1", "i7.1", "w7.1", "f7.2", "i7.2", "w7.2", "f7.3"]
    assert ops[17:19] == ["F0.7&b7.3", "f7.4&B0.0"]
    assert ops[-1].startswith(("W", "w"))
    # The last rank mirrors it: its phase 0 is direction 1 at stage 0.
    assert _rank("dualpipe", 8, 20, 7).split()[:8] == ["f0.0", "f0.1", "f0.2", "f0.3", "f0.4", "f0.5", "f0.6",
                                                       "F7.0"]


def test_dualpipe_middle_ranks_do_not_overlap_their_first_f0_b1():
    ops = _rank("dualpipe", 8, 20, 3).split()  # h = H-1: step 1 and 3 are empty, step 2 has 4 x (F0, F1)
    assert ops[:8] == ["F3.0", "f4.0", "F3.1", "f4.1", "F3.2", "f4.2", "F3.3", "f4.3"]
    assert ops[8:11] == ["F3.4", "b4.0", "f4.4&B3.0"]


def _counts(name: str, pp: int, n: int, r: int) -> dict[str, int]:
    acts = build_schedule(name, pp, n).ranks[r]
    parts = [p for a in acts for p in a.parts()]
    return {"F": sum(p.phase is Phase.F for p in parts),
            "BI": sum(p.phase in (Phase.B, Phase.I) for p in parts),
            "W": sum(p.phase is Phase.W for p in parts), "pairs": sum(a.phase is Phase.FB for a in acts)}


@pytest.mark.parametrize(("pp", "n"), [(2, 4), (4, 8), (8, 20), (8, 30), (16, 40)])
def test_dualpipe_counts_per_rank_match_the_source(pp, n):
    half = pp // 2
    for r in range(pp):
        h = min(r, pp - 1 - r)
        middle = h == half - 1
        c = _counts("dualpipe", pp, n, r)
        assert c["F"] == c["BI"] == n
        assert c["W"] == pp - h - 1
        assert c["pairs"] == 2 * (n // 2 - pp + h + 1) + (half - h - 1) - middle


@pytest.mark.parametrize(("pp", "n"), [(1, 2), (2, 5), (4, 8), (4, 10), (8, 16)])
def test_dualpipev_counts_per_rank_match_the_source(pp, n):
    for r in range(pp):
        c = _counts("dualpipev", pp, n, r)
        assert c["F"] == c["BI"] == 2 * n  # two stages per rank, every micro-batch through both
        assert c["W"] == 2 * pp - r - 1
        assert c["pairs"] == 2 * (n - 2 * pp + r + 1) + (pp - r - 1) - (r == pp - 1)


@pytest.mark.parametrize(("args", "message"), [
    (("dualpipe", 3, 12), "even number of pipeline ranks"),
    (("dualpipe", 4, 9), "even number of micro-batches"),
    (("dualpipe", 4, 6), "num_microbatches >= 2 \\* pp = 8"),
    (("dualpipev", 4, 7), "num_microbatches >= 2 \\* pp = 8"),
    (("interleaved-1f1b", 4, 8, 1), "vpp >= 2"),
    (("interleaved-1f1b", 4, 6, 2), "divisible by pp"),
    (("1f1b", 4, 8, 2), "applies only to interleaved"),
    (("zigzag", 4, 8), "unknown"),
    (("1f1b", 0, 8), "pp must be >= 1"),
    (("gpipe", 2, 0), "num_microbatches must be >= 1"),
])
def test_bad_input_names_the_precondition(args, message):
    with pytest.raises(SimInputError, match=message):
        build_schedule(*args)


def test_layer_split_preconditions():
    assert "divisible by pp x vpp = 4 x 2 = 8" in check_layer_split("interleaved-1f1b", 4, 30, 2)
    assert check_layer_split("interleaved-1f1b", 4, 32, 2) is None
    assert "more than the 7 layers" in check_layer_split("dualpipev", 4, 7)
    assert check_layer_split("dualpipe", 16, 62) is None  # DeepSeek-V3: 61 + 1 MTP layers over 16 stages


@pytest.mark.parametrize("name", ["gpipe", "1f1b", "zb1p", "dualpipe", "dualpipev"])
def test_stage_counts_and_parameter_copies(name):
    s = build_schedule(name, 4, 8)
    assert s.num_stages == (8 if name == "dualpipev" else 4)
    assert s.num_directions == (2 if name == "dualpipe" else 1)
    chunks_per_rank = {len({(p.direction, p.stage) for a in acts for p in a.parts()}) for acts in s.ranks}
    assert chunks_per_rank == ({2} if name.startswith("dualpipe") else {1})
