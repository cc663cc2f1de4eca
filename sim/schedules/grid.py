"""Rank-by-time grids of a schedule, as text.

- :func:`tick_grid`: one column per time step of a unit-duration dry run, each cell an action in the compact
  text form (``F3.1``, ``f0.2&B1.5``); ``.`` is idle, ``!`` marks the action a rank is stuck on.
  Validation errors use it.
- :func:`chart`: one character per time quantum of a real run: the phase letter where an action starts,
  ``-`` while it continues, ``.`` when the rank is idle at the middle of the quantum; ``X`` is an
  overlapped F&B pair; lower case marks DualPipe's direction 1. ``sim schedule`` prints it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sim.schedules.actions import Action, Phase, Schedule, action_text
from sim.schedules.listsched import ScheduleResult


def tick_grid(schedule: Schedule, starts: Sequence[Sequence[float]] | None = None,
              progress: Sequence[int] | None = None, max_cols: int = 48) -> str:
    """Rank rows, tick columns; ``starts`` are integer ticks (``None``: one column per slot)."""
    rows: list[dict[int, str]] = []
    last = 0
    for r, actions in enumerate(schedule.ranks):
        done = len(actions) if progress is None else progress[r]
        cells = {int(starts[r][i]) if starts else i: action_text(actions[i]) for i in range(done)}
        tick = max(cells, default=-1) + 1
        if done < len(actions):
            cells[tick] = "!" + action_text(actions[done])
            if done + 1 < len(actions):
                cells[tick + 1] = f"(+{len(actions) - done - 1})"
        rows.append(cells)
        last = max(last, max(cells, default=0) + 1)
    first = max(0, last - max_cols)
    width = max((len(c) for row in rows for c in row.values()), default=1)
    label = len(f"r{schedule.num_ranks - 1}")
    head = " " * (label + 1) + " ".join(f"{t:<{width}}" for t in range(first, last))
    lines = [f"(ticks 0..{first - 1} not shown)"] if first else []
    lines.append(head.rstrip())
    for r, cells in enumerate(rows):
        body = " ".join(f"{cells.get(t, '.'):<{width}}" for t in range(first, last))
        lines.append(f"{f'r{r}':<{label}} {body}".rstrip())
    return "\n".join(lines)


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
