"""Gantt chart of an executed schedule, built with matplotlib's Figure API (no pyplot state).

One row per rank (rank 0 on top), one bar per action coloured by phase, hatched for DualPipe's direction 1;
idle intervals (the bubble) are drawn as light red bars so they stand out. Micro-batch ids label the bars
when there is room.
"""

from __future__ import annotations

from collections import defaultdict

from matplotlib.figure import Figure
from matplotlib.patches import Patch

from sim.schedules.actions import Phase, Schedule
from sim.schedules.listsched import ScheduleResult

COLOURS = {Phase.F: "#4c72b0", Phase.B: "#55a868", Phase.I: "#8fd19e", Phase.W: "#8172b2", Phase.FB: "#dd8452"}
NAMES = {Phase.F: "F forward", Phase.B: "B backward", Phase.I: "I backward (input)",
         Phase.W: "W backward (weights)", Phase.FB: "F&B overlapped pair"}
IDLE = "#f4b6b6"
_MAX_LABELS = 600


def _idle_spans(starts: tuple[float, ...], ends: tuple[float, ...], makespan: float) -> list[tuple[float, float]]:
    spans, t = [], 0.0
    for s, e in zip(starts, ends, strict=True):
        if s > t + 1e-12:
            spans.append((t, s - t))
        t = max(t, e)
    if makespan > t + 1e-12:
        spans.append((t, makespan - t))
    return spans


def gantt(schedule: Schedule, result: ScheduleResult, title: str | None = None) -> Figure:
    """A Figure with the schedule's Gantt chart; save it with ``fig.savefig(path)``."""
    n = schedule.num_ranks
    fig = Figure(figsize=(min(24.0, 6.0 + result.makespan / 8), 1.2 + 0.35 * n), layout="constrained")
    ax = fig.add_subplot()
    label = schedule.num_actions <= _MAX_LABELS
    used: set[Phase] = set()
    for r, actions in enumerate(schedule.ranks):
        y = n - 1 - r
        bars: dict[tuple[Phase, int], list[tuple[float, float]]] = defaultdict(list)
        for a, s, e in zip(actions, result.start[r], result.end[r], strict=True):
            bars[(a.phase, a.direction)].append((s, e - s))
            if label and e > s:
                ax.text((s + e) / 2, y, str(a.microbatch), ha="center", va="center", fontsize=6)
        for (phase, direction), spans in bars.items():
            used.add(phase)
            ax.broken_barh(spans, (y - 0.4, 0.8), facecolors=COLOURS[phase], edgecolor="white",
                           linewidth=0.3, hatch="//" if direction else None)
        ax.broken_barh(_idle_spans(result.start[r], result.end[r], result.makespan), (y - 0.4, 0.8),
                       facecolors=IDLE, edgecolor="none")
    ax.set_yticks(range(n), [f"rank {n - 1 - y}" for y in range(n)])
    ax.set_xlim(0, result.makespan or 1.0)
    ax.set_xlabel("time")
    ax.set_title(title or f"{schedule.name}: {schedule.num_ranks} ranks, {schedule.num_microbatches} "
                          f"micro-batches; bubble max {result.bubble_max:.3g}, makespan {result.makespan:.3g}")
    handles = [Patch(facecolor=COLOURS[p], label=NAMES[p]) for p in Phase if p in used]
    handles.append(Patch(facecolor=IDLE, label="idle (bubble)"))
    if schedule.num_directions == 2:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="direction 1"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.6 / n), ncol=len(handles),
              fontsize=8, frameon=False)
    return fig
