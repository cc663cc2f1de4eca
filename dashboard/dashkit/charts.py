"""Altair charts (Vega-Lite: zoom, pan and hover in the browser), one function per kind of figure.

Every chart of the dashboard comes from here so colours and encodings stay the same across pages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import altair as alt
import pandas as pd

CATEGORY_COLORS = {
    "forward": "#4c78a8", "backward": "#e45756", "backward_input": "#f58518", "backward_weight": "#eeca3b",
    "overlapped": "#7b4ea3", "optimizer": "#54a24b", "exposed_comm": "#d62728",
    "exposed communication": "#d62728", "bubble": "#c7c7c7",
}
LABELS = {"exposed communication": "exposed communication",
          "forward": "forward", "backward": "backward", "backward_input": "backward (input)",
          "backward_weight": "backward (weights)", "overlapped": "overlapped F&B", "optimizer": "optimizer",
          "exposed_comm": "exposed communication", "bubble": "bubble"}


def _color(categories: Sequence[str], columns: int = 1) -> alt.Color:
    """Colour by category, shown under its readable label (``what``), in a fixed order and palette."""
    dom = list(dict.fromkeys(c for c in CATEGORY_COLORS if c in set(categories)))
    labels = list(dict.fromkeys(LABELS.get(c, c) for c in dom))
    colors = [CATEGORY_COLORS[next(c for c in dom if LABELS.get(c, c) == lab)] for lab in labels]
    return alt.Color("what:N", title=None, scale=alt.Scale(domain=labels, range=colors),
                     legend=alt.Legend(columns=columns))


def breakdown(breakdown_s: dict[str, float]) -> alt.Chart:
    """The step's seconds by category as one horizontal stacked bar."""
    total = sum(breakdown_s.values()) or 1.0
    df = pd.DataFrame([{"category": k, "what": LABELS.get(k, k), "seconds": v, "share": v / total}
                       for k, v in breakdown_s.items() if v > 0])
    order = {c: i for i, c in enumerate(CATEGORY_COLORS)}
    df["order"] = df["category"].map(order)
    return alt.Chart(df).mark_bar().encode(
        x=alt.X("seconds:Q", stack="zero", title="seconds per step (mean over pipeline ranks)"),
        color=_color(df["category"].tolist(), columns=2),
        order=alt.Order("order:Q"),
        tooltip=[alt.Tooltip("what:N", title="part"), alt.Tooltip("seconds:Q", format=".3f"),
                 alt.Tooltip("share:Q", format=".1%")],
    ).properties(height=110)


def gantt(df: pd.DataFrame, title: str = "", height: int | None = None, zoom: bool = True) -> alt.Chart:
    """Bars per rank over time: ``rank, start, end, label, category`` (actions, bubbles, exposed stretches)."""
    ranks = df["rank"].nunique() if len(df) else 1
    d = df.assign(duration_ms=(df["end"] - df["start"]) * 1e3, what=df["category"].map(lambda c: LABELS.get(c, c)))
    chart = alt.Chart(d).mark_bar(clip=True).encode(
        x=alt.X("start:Q", title="seconds into the step"), x2="end:Q",
        y=alt.Y("rank:O", title="pipeline rank"), color=_color(d["category"].unique().tolist()),
        tooltip=[alt.Tooltip("label:N", title="phase"), alt.Tooltip("what:N", title="part"), alt.Tooltip("rank:O"),
                 alt.Tooltip("start:Q", format=".4f"), alt.Tooltip("duration_ms:Q", format=".2f", title="ms")],
    ).properties(height=height or 80 + 18 * ranks, title=title)
    return chart.interactive(bind_y=False) if zoom else chart


def task_lanes(tasks: pd.DataFrame) -> alt.Chart:
    """One rank's tasks on its streams (compute, comm, dp), coloured by phase."""
    d = tasks.assign(ms=(tasks["end"] - tasks["start"]) * 1e3)
    return alt.Chart(d).mark_bar(clip=True).encode(
        x=alt.X("start:Q", title="seconds into the step"), x2="end:Q", y=alt.Y("stream:N", title=None),
        color=alt.Color("name:N", title="phase", legend=alt.Legend(columns=2)),
        tooltip=[alt.Tooltip("name:N", title="phase"), "action", "stream", alt.Tooltip("ms:Q", format=".3f")],
    ).properties(height=200).interactive(bind_y=False)


def lines(df: pd.DataFrame, x: str, y: str, series: str, x_title: str, y_title: str, log_x: bool = False
          ) -> alt.Chart:
    scale = alt.Scale(type="log") if log_x else alt.Undefined
    return alt.Chart(df).mark_line().encode(
        x=alt.X(f"{x}:Q", title=x_title, scale=scale), y=alt.Y(f"{y}:Q", title=y_title),
        color=alt.Color(f"{series}:N", title=None),
        tooltip=[series, alt.Tooltip(x, format=",.4g"), alt.Tooltip(y, format=".3f")],
    ).interactive(bind_y=False)


def stacked(df: pd.DataFrame, x: str, y: str, part: str, x_title: str, y_title: str) -> alt.Chart:
    colors = {"exposed": CATEGORY_COLORS["exposed_comm"], "hidden": "#9ecae9"}
    dom = [p for p in colors if p in set(df[part])] or sorted(set(df[part]))
    return alt.Chart(df).mark_bar().encode(
        x=alt.X(f"{x}:O", title=x_title), y=alt.Y(f"{y}:Q", title=y_title, stack="zero"),
        color=alt.Color(f"{part}:N", title=None,
                        scale=alt.Scale(domain=dom, range=[colors.get(p, "#888") for p in dom])),
        tooltip=[x, part, alt.Tooltip(f"{y}:Q", format=".3f")])


def heatmap(df: pd.DataFrame) -> alt.Chart:
    """Relative load per step and expert (log colour scale around 1 = the mean)."""
    return alt.Chart(df).mark_rect().encode(
        x=alt.X("step:O", title="training step", axis=alt.Axis(labelOverlap=True)),
        y=alt.Y("expert:O", title="expert (sorted by load at step 0)", axis=None),
        color=alt.Color("relative_load:Q", title="load / mean",
                        scale=alt.Scale(type="log", scheme="redblue", reverse=True, domainMid=1.0)),
        tooltip=["step", "expert_id", alt.Tooltip("relative_load:Q", format=".2f")],
    ).properties(height=360)


def bars(df: pd.DataFrame, x: str, y: str, x_title: str, y_title: str, color: str | None = None) -> alt.Chart:
    enc = {"x": alt.X(f"{x}:N", title=x_title, sort=None), "y": alt.Y(f"{y}:Q", title=y_title),
           "tooltip": list(df.columns)}
    if color:
        enc["color"] = alt.Color(f"{color}:N", title=None, legend=None)
    return alt.Chart(df).mark_bar().encode(**enc)


def calibration(measured: pd.DataFrame, curves: pd.DataFrame, y: str, y_title: str) -> alt.LayerChart:
    """Measured points over modelled curves (one per family, coloured by op), on a log size axis."""
    pts = alt.Chart(measured).mark_point(filled=True, size=70).encode(
        x=alt.X("size:Q", scale=alt.Scale(type="log"), title="size (rows, sequence length or bytes)"),
        y=alt.Y(f"{y}:Q", title=y_title),
        color=alt.Color("op:N", title="op, pass, dtype", scale=alt.Scale(scheme="category20")),
        tooltip=["family", alt.Tooltip("size:Q", format=",.0f"), alt.Tooltip(f"{y}:Q", format=".3f"), "note"])
    if curves.empty:
        return cast(alt.LayerChart, alt.layer(pts).properties(height=380).interactive())
    line = alt.Chart(curves).mark_line(strokeDash=[4, 3], opacity=0.7).encode(
        x="size:Q", y=f"{y}:Q", color="op:N", detail="family:N",
        tooltip=["family", alt.Tooltip(f"{y}:Q", format=".3f")])
    return cast(alt.LayerChart, alt.layer(line, pts).properties(height=380).interactive())
