"""A schedule as a rank-by-tick grid of actions, as text (the picture validation errors carry).

One column per time step of a unit-duration dry run, each cell an action in the compact text form (``F3.1``,
``f0.2&B1.5``); ``.`` is idle, ``!`` marks the action a rank is stuck on.
"""

from __future__ import annotations

from collections.abc import Sequence

from sim.schedules.actions import Schedule, action_text


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
