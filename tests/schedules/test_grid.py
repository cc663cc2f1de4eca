"""Text grids: the unit-time grid of validation errors and the character chart of ``sim schedule``."""

from __future__ import annotations

from sim.schedules.generators import build_schedule
from sim.schedules.grid import chart, tick_grid
from sim.schedules.listsched import Durations, simulate


def test_chart_of_1f1b_by_hand():
    s = build_schedule("1f1b", 2, 2)
    text, quantum = chart(s, simulate(s, Durations(f=1, b=2)))
    assert quantum == 1
    assert text.splitlines() == ["r0 FF..B-.B-", "r1 .FB-FB-.."]


def test_chart_marks_direction_1_and_pairs():
    s = build_schedule("dualpipe", 2, 4)
    text, _ = chart(s, simulate(s, Durations(1, 2, 1, 3)))
    assert "X--" in text or "x--" in text
    assert any(c.islower() for c in text.replace("r0", "").replace("r1", ""))


def test_chart_scales_long_runs():
    s = build_schedule("1f1b", 4, 200)
    text, quantum = chart(s, simulate(s), max_width=100)
    assert quantum > 1 and max(len(line) for line in text.splitlines()) <= 100 + 4


def test_tick_grid_without_times_lists_slots():
    s = build_schedule("gpipe", 2, 1)
    assert tick_grid(s).splitlines() == ["   0    1", "r0 F0.0 B0.0", "r1 F1.0 B1.0"]
