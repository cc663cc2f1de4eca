"""Hypothesis strategies: valid (schedule, ranks, micro-batches, vpp) layouts and chunk durations."""

from __future__ import annotations

from hypothesis import strategies as st

from sim.pipeline import SCHEDULE_NAMES, check_schedule
from sim.schedules.listsched import Durations

Layout = tuple[str, int, int, int]


@st.composite
def layouts(draw: st.DrawFn, names: tuple[str, ...] = SCHEDULE_NAMES, max_pp: int = 8) -> Layout:
    """A valid (name, pp, num_microbatches, vpp) for one of ``names``."""
    name = draw(st.sampled_from(names))
    vpp = 1
    if name == "dualpipe":
        pp = 2 * draw(st.integers(1, max_pp // 2))
        n = 2 * pp + 2 * draw(st.integers(0, 8))
    elif name == "dualpipev":
        pp = draw(st.integers(1, max_pp))
        n = 2 * pp + draw(st.integers(0, 12))
    elif name == "interleaved-1f1b":
        pp = draw(st.integers(1, max_pp))
        vpp = draw(st.integers(2, 4))
        n = pp * draw(st.integers(1, 4))
    else:
        pp = draw(st.integers(1, max_pp))
        n = draw(st.integers(1, 3 * pp + 4))
    assert check_schedule(name, pp, n, vpp) is None
    return name, pp, n, vpp


_time = st.floats(0.0, 5.0, allow_nan=False, allow_infinity=False)


@st.composite
def durations(draw: st.DrawFn) -> Durations:
    """Any non-negative F, B, W <= B and F&B."""
    f, b = draw(_time), draw(_time)
    w = draw(st.floats(0.0, b)) if b > 0 else 0.0
    return Durations(f, b, w, draw(_time))


@st.composite
def realistic_durations(draw: st.DrawFn) -> Durations:
    """A realistic region (our own choice for checking the DualPipe bubble formula): F=1, B in [1.5, 2.5],
    W <= min(F, B/2), F&B in [max(F, B), F+B]."""
    b = draw(st.floats(1.5, 2.5))
    return Durations(1.0, b, draw(st.floats(0.0, min(1.0, b / 2))), draw(st.floats(b, 1.0 + b)))
