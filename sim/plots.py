"""Matplotlib figures of a simulated step (Figure API only, never pyplot's global state).

The Gantt chart has one band per pipeline rank: the upper row shows the compute stream coloured by the kind
of action each task belongs to, the lower, thinner rows the communication and data-parallel streams. White
space in the upper row is time the GPU computes nothing: bubbles between actions and communication it waits
for inside them. Without recorded tasks (fast mode) each action is drawn whole, in its category's colour.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import Patch

from sim.timeline import Category, Stream, Trace

COLORS = {
    Category.FORWARD: "#4C72B0", Category.BACKWARD: "#DD8452", Category.BACKWARD_INPUT: "#DD8452",
    Category.BACKWARD_WEIGHT: "#8C8C8C", Category.OVERLAPPED: "#55A868", Category.OPTIMIZER: "#8172B3",
    Category.EXPOSED_COMM: "#C44E52",
}
COMM_COLOR = "#C44E52"
DP_COLOR = "#937860"


#: Categories of schedule actions (the rest are the step's tail).
SCHEDULE_CATEGORIES = (Category.FORWARD, Category.BACKWARD, Category.BACKWARD_INPUT, Category.BACKWARD_WEIGHT,
                       Category.OVERLAPPED)


def gantt_figure(trace: Trace, num_ranks: int, title: str = "") -> Figure:
    category = {(a.rank, a.label): a.category for a in trace.actions}
    compute: dict[tuple[int, str], list[tuple[float, float]]] = {}
    comm: dict[int, list[tuple[float, float]]] = {}
    dp: dict[int, list[tuple[float, float]]] = {}
    end_time = 0.0
    for t in trace.tasks:
        end_time = max(end_time, t.end)
        if t.stream == Stream.COMPUTE:
            cat = category.get((t.rank, t.action), Category.FORWARD)
            compute.setdefault((t.rank, cat), []).append((t.start, t.end - t.start))
        elif t.stream == Stream.COMM:
            comm.setdefault(t.rank, []).append((t.start, t.end - t.start))
        else:
            dp.setdefault(t.rank, []).append((t.start, t.end - t.start))
    drawn = {(t.rank, t.action) for t in trace.tasks if t.stream == Stream.COMPUTE}
    for a in trace.actions:  # fast mode runs a schedule action as one event, without tasks: draw it whole
        if a.category in SCHEDULE_CATEGORIES and (a.rank, a.label) not in drawn:
            end_time = max(end_time, a.end)
            compute.setdefault((a.rank, a.category), []).append((a.start, a.end - a.start))
    fig = Figure(figsize=(14, 0.45 * num_ranks + 1.6), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    for (r, cat), bars in compute.items():
        ax.broken_barh(bars, (r + 0.05, 0.6), facecolors=COLORS.get(cat, "#999999"), linewidth=0)
    for r, bars in comm.items():
        ax.broken_barh(bars, (r + 0.68, 0.14), facecolors=COMM_COLOR, linewidth=0)
    for r, bars in dp.items():
        ax.broken_barh(bars, (r + 0.84, 0.12), facecolors=DP_COLOR, linewidth=0)
    ax.set_ylim(num_ranks, 0)
    ax.set_xlim(0, end_time * 1.01 if end_time else 1)
    ax.set_yticks([r + 0.5 for r in range(num_ranks)], [f"rank {r}" for r in range(num_ranks)], fontsize=7)
    ax.set_xlabel("time (s)")
    ax.set_title(title or "simulated step: compute (upper rows), communication (lower rows); white = idle")
    handles = [Patch(color=COLORS[c], label=c.replace("_", " ")) for c in
               (Category.FORWARD, Category.BACKWARD, Category.BACKWARD_WEIGHT, Category.OVERLAPPED,
                Category.OPTIMIZER)]
    handles += [Patch(color=COMM_COLOR, label="EP/TP comm"), Patch(color=DP_COLOR, label="DP comm")]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=len(handles), fontsize=8,
              frameon=False)
    fig.tight_layout()
    return fig


def write_gantt(path: str | Path, trace: Trace, num_ranks: int, title: str = "") -> None:
    gantt_figure(trace, num_ranks, title).savefig(Path(path), format="png")
