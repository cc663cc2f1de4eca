"""Published bubble and activation figures as oracles, with uniform chunk durations.

Sources: DeepSeek-V3 technical report (arXiv 2412.19437) Table 2 and the deepseek-ai/DualPipe README (its table
is "based on the same number of PP stages"), where PP counts pipeline *stages*; ZB-H1 from
"Zero Bubble Pipeline Parallelism" (arXiv 2401.10241); interleaved 1F1B from Narayanan et al. 2021.

Measured with this list scheduler (see ``sim/schedules/formulas.py``):
- ZB1P's (PP-1)(F+B-2W) is exact when W <= F and W <= B-W; otherwise the bubble is larger.
- DualPipe's (PP/2-1)(F&B+B-3W) is exact when F&B = F+B, W = B-F and W <= F. Over a realistic region
  (F=1, B in [1.5, 2.5], W in [0, min(F, B/2)], F&B in [max(F, B), F+B]) the simulated bubble minus the
  formula lies in [-F, (PP/2-1) max(0, W-(B-F))]: measured -1.0 F to +0.25 F x (PP/2-1) over 1,500 random
  draws and a hill-climb with PP up to 64 (an earlier simulation of our own, 400 draws with PP up to 16: -1.0
  to +0.18 per PP/2-1).
"""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sim.schedules.formulas import published_bubble
from sim.schedules.generators import build_schedule
from sim.schedules.listsched import Durations, simulate
from tests.schedules.strategies import durations, layouts, realistic_durations

EXAMPLES = settings(max_examples=60, deadline=None)
EXACT = Durations(f=1, b=2, w=1, fb=3)


def _idle(name: str, pp: int, n: int, d: Durations, vpp: int = 1) -> tuple[float, ...]:
    return simulate(build_schedule(name, pp, n, vpp), d).idle_per_rank


@EXAMPLES
@given(layouts(("gpipe", "1f1b", "interleaved-1f1b")), durations())
def test_gpipe_1f1b_and_interleaved_idle_is_pp_minus_1_times_f_plus_b_on_every_rank(layout, d):
    name, pp, n, vpp = layout
    assert _idle(name, pp, n, d, vpp) == pytest.approx([(pp - 1) * (d.f + d.b)] * pp, abs=1e-9)


def test_1f1b_done_when_figure():
    assert max(_idle("1f1b", 8, 32, Durations(f=1, b=2))) == 21


@st.composite
def _w_fits(draw: st.DrawFn) -> Durations:
    f = draw(st.floats(0.0, 5.0))
    w = draw(st.floats(0.0, f))
    b = draw(st.floats(2 * w, 2 * w + 5.0))  # W <= B - W
    return Durations(f, b, w, draw(st.floats(0.0, 5.0)))


@EXAMPLES
@given(layouts(("zb1p",)), _w_fits())
def test_zb1p_idle_is_the_zero_bubble_formula_when_w_fits(layout, d):
    _, pp, n, _ = layout
    assume(n >= pp)  # with fewer micro-batches than stages the W passes cannot fill the cool-down
    assert _idle("zb1p", pp, n, d) == pytest.approx([(pp - 1) * (d.f + d.b - 2 * d.w)] * pp, abs=1e-9)


@EXAMPLES
@given(layouts(("zb1p",)), durations())
def test_zb1p_idle_is_never_below_the_formula(layout, d):
    _, pp, n, _ = layout
    assume(n >= pp)
    assert max(_idle("zb1p", pp, n, d)) >= (pp - 1) * (d.f + d.b - 2 * d.w) - 1e-9


@pytest.mark.parametrize("pp", [2, 4, 8, 16])
def test_zb1p_table_figure(pp):
    assert _idle("zb1p", pp, 4 * pp, EXACT) == pytest.approx([(pp - 1) * (1 + 2 - 2)] * pp)


@pytest.mark.parametrize(("name", "ranks", "stages", "expected"), [
    ("dualpipe", 4, 4, 2), ("dualpipe", 8, 8, 6), ("dualpipe", 16, 16, 14),
    ("dualpipev", 2, 4, 2), ("dualpipev", 4, 8, 6), ("dualpipev", 8, 16, 14),
])
def test_dualpipe_reference_figures(name, ranks, stages, expected):
    # Our own zero-latency simulation of DualPipe's op lists: F=1, B=2, W=1, F&B=3 gives idle 2 / 6 / 14 for
    # P = 4 / 8 / 16, as the README formula does; DualPipeV with P ranks = 2P stages.
    assert published_bubble(name, ranks, EXACT) == expected
    for n in (2 * ranks, 2 * ranks + 2, 40):
        assert _idle(name, ranks, n, EXACT) == pytest.approx([expected] * ranks)


@st.composite
def _exact_durations(draw: st.DrawFn) -> Durations:
    f = draw(st.floats(0.1, 5.0))
    w = draw(st.floats(0.0, f))
    return Durations(f, f + w, w, 2 * f + w)  # B = F + W, F&B = F + B


@EXAMPLES
@given(layouts(("dualpipe", "dualpipev"), max_pp=12), _exact_durations())
def test_dualpipe_formula_is_exact_when_fb_is_f_plus_b_and_w_is_b_minus_f(layout, d):
    name, pp, n, _ = layout
    stages = pp if name == "dualpipe" else 2 * pp
    expected = (stages // 2 - 1) * (d.fb + d.b - 3 * d.w)
    assert _idle(name, pp, n, d) == pytest.approx([expected] * pp, abs=1e-9)


@EXAMPLES
@given(layouts(("dualpipe", "dualpipev"), max_pp=16), realistic_durations())
def test_dualpipe_formula_within_the_measured_tolerance(layout, d):
    name, pp, n, _ = layout
    half = (pp if name == "dualpipe" else 2 * pp) // 2 - 1
    deviation = max(_idle(name, pp, n, d)) - half * (d.fb + d.b - 3 * d.w)
    assert -d.f - 1e-9 <= deviation <= half * max(0.0, d.w - (d.b - d.f)) + 1e-9


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["dualpipe", "dualpipev"]), st.integers(1, 5), realistic_durations(),
       st.integers(1, 10))
def test_dualpipe_bubble_does_not_grow_with_microbatches(name, k, d, extra):
    pp = 2 * k
    base = _idle(name, pp, 2 * pp, d)
    assert _idle(name, pp, 2 * pp + 2 * extra, d) == pytest.approx(base, abs=1e-9)


@pytest.mark.parametrize("pp", [2, 4, 8, 16])
def test_1f1b_peak_activations_is_pp_on_the_first_rank(pp):
    peaks = simulate(build_schedule("1f1b", pp, 3 * pp), EXACT).peak_activations_per_rank
    assert peaks[0] == pp
    assert list(peaks) == [pp - r for r in range(pp)]


@pytest.mark.parametrize("pp", [2, 4, 8, 16])
def test_zb1p_keeps_1f1bs_peak_activations(pp):
    # ZB-H1 delays W "without exceeding the peak memory of 1F1B": PP on every rank, counting until W ends.
    assert simulate(build_schedule("zb1p", pp, 3 * pp), EXACT).peak_activations_per_rank == (pp,) * pp


@pytest.mark.parametrize(("name", "ranks", "stages"), [("dualpipe", 8, 8), ("dualpipe", 16, 16),
                                                     ("dualpipev", 4, 8), ("dualpipev", 8, 16)])
def test_dualpipe_peak_activations_is_pp_plus_1_on_every_rank(name, ranks, stages):
    res = simulate(build_schedule(name, ranks, 2 * ranks + 10), EXACT)
    assert res.peak_activations_per_rank == (stages + 1,) * ranks


@EXAMPLES
@given(layouts(("dualpipe", "dualpipev"), max_pp=16), durations())
def test_dualpipe_peak_activations_at_most_pp_plus_1(layout, d):
    name, pp, n, _ = layout
    stages = pp if name == "dualpipe" else 2 * pp
    for release in ("weights", "input"):
        assert max(simulate(build_schedule(name, pp, n), d, release).peak_activations_per_rank) <= stages + 1


@EXAMPLES
@given(st.integers(1, 8), durations(), st.integers(0, 6))
def test_dualpipev_on_p_ranks_idles_like_dualpipe_on_2p_ranks(pp, d, extra):
    # DualPipe README: DualPipeV with P ranks (2P stages) has the same bubble as DualPipe with 2P ranks.
    v = max(_idle("dualpipev", pp, 2 * pp + extra, d))
    assert v == pytest.approx(max(_idle("dualpipe", 2 * pp, 4 * pp + 2 * extra, d)), abs=1e-9)
