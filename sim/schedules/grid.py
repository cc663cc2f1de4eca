"""Rank-by-time grids of a schedule, as text.

- :func:`~sim.schedules.ticks.tick_grid` (re-exported): one column per tick of a unit-duration dry run.
- :func:`chart`: one character per time quantum of a real run: the phase letter where an action starts,
  ``-`` while it continues, ``.`` when the rank is idle at the middle of the quantum; ``X`` is an
  overlapped F&B pair; lower case marks DualPipe's direction 1. ``sim schedule`` prints it.
"""

from __future__ import annotations

import math

from sim.schedules.actions import Action, Phase, Schedule
from sim.schedules.listsched import ScheduleResult
from sim.schedules.ticks import tick_grid

__all__ = ["chart", "tick_grid"]


def _letter(action: Action) -> str:
    letter = "X" if action.phase is Phase.FB else action.phase.value
    return letter if action.direction == 0 else letter.lower()


def _row(actions: tuple[Action, ...], starts: tuple[float, ...], ends: tuple[float, ...], cols: int,
         quantum: float) -> str:
    """``-`` where the middle of a column is busy, ``.`` where idle; then each action's letter where it starts."""
    row, i = [], 0
    for c in range(cols):
        t = (c + 0.5) * quantum
        while i < len(actions) and ends[i] <= t:
            i += 1
        row.append("." if i == len(actions) or starts[i] > t else "-")
    for a, s, e in zip(actions, starts, ends, strict=True):
        if e > s:
            row[min(cols - 1, int(s / quantum + 1e-9))] = _letter(a)
    return "".join(row)


def chart(schedule: Schedule, result: ScheduleResult, max_width: int = 160) -> tuple[str, float]:
    """The run as characters and the time per character; long runs are scaled to ``max_width`` columns.

    When a character spans several actions (scaled runs) it shows the last one starting in it.
    """
    durations = [e - s for se, ee in zip(result.start, result.end, strict=True)
                 for s, e in zip(se, ee, strict=True) if e > s]
    if not durations or result.makespan <= 0:
        return "\n".join(f"r{r}" for r in range(schedule.num_ranks)), 0.0
    quantum = max(min(durations), result.makespan / max_width)
    cols = math.ceil(result.makespan / quantum - 1e-9)
    label = len(f"r{schedule.num_ranks - 1}")
    return "\n".join(f"{f'r{r}':<{label}} {_row(acts, result.start[r], result.end[r], cols, quantum)}"
                     for r, acts in enumerate(schedule.ranks)), quantum
