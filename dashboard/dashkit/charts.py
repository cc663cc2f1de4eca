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
    "exposed communication": "#d62728", "bubble": "#c7c7c7", "host": "#8c6d31",
}
LABELS = {"exposed communication": "exposed communication",
          "forward": "forward", "backward": "backward", "backward_input": "backward (input)",
          "backward_weight": "backward (weights)", "overlapped": "overlapped F&B", "optimizer": "optimizer",
          "exposed_comm": "exposed communication", "bubble": "bubble", "host": "host work per step"}


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


SOURCE_COLORS = {"sim estimate": "#4c78a8", "published": "#9d9d9d"}
BAND_COLOR = "#d9d9d9"


def _sig(x: float) -> str:
    for unit, f in (("M", 1e6), ("K", 1e3)):
        if abs(x) >= f:
            return f"{x / f:.4g}{unit}"
    return f"{x:.4g}"


def gpu_hours_by_stage(df: pd.DataFrame, gpu: str) -> alt.LayerChart:
    """Per stage (or phase) the estimate's GPU-hours beside the published figure, labelled with the error."""
    d = df.assign(label=[_sig(v) + (f" ({e:+.1%})" if e is not None and e == e else "")
                         for v, e in zip(df["gpu_hours"], df["error"], strict=True)])
    sources = [s for s in SOURCE_COLORS if s in set(d["source"])]
    base = alt.Chart(d).encode(
        x=alt.X("stage:N", sort=None, title=None, axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("source:N", sort=sources),
        y=alt.Y("gpu_hours:Q", title=f"{gpu} GPU-hours"))
    bars = base.mark_bar().encode(
        color=alt.Color("source:N", title=None, scale=alt.Scale(domain=sources,
                                                                range=[SOURCE_COLORS[s] for s in sources])),
        tooltip=["stage", "source", alt.Tooltip("gpu_hours:Q", format=",.0f", title="GPU-hours"),
                 alt.Tooltip("error:Q", format="+.1%", title="error vs published")])
    text = base.mark_text(dy=-7, fontSize=11).encode(text="label:N")
    return cast(alt.LayerChart, alt.layer(bars, text).properties(height=340))


def price_line(gpu_hours: float, price: float, max_price: float) -> alt.LayerChart:
    """The run's dollars against the price per GPU-hour (a line through the origin), the chosen price marked."""
    df = pd.DataFrame({"price": [0.0, max_price], "usd": [0.0, gpu_hours * max_price]})
    here = pd.DataFrame({"price": [price], "usd": [gpu_hours * price], "label": [f"${_sig(gpu_hours * price)}"]})
    line = alt.Chart(df).mark_line(color=SOURCE_COLORS["sim estimate"]).encode(
        x=alt.X("price:Q", title="USD per GPU-hour"), y=alt.Y("usd:Q", title="USD for the whole run"))
    point = alt.Chart(here).mark_point(filled=True, size=90, color="#e45756").encode(
        x="price:Q", y="usd:Q", tooltip=[alt.Tooltip("price:Q", format="$.2f"), alt.Tooltip("usd:Q", format="$,.0f")])
    text = alt.Chart(here).mark_text(dx=8, align="left", color="#e45756").encode(x="price:Q", y="usd:Q",
                                                                                text="label:N")
    return cast(alt.LayerChart, alt.layer(line, point, text).properties(height=300))


def predicted_vs_measured(df: pd.DataFrame, families: Sequence[str], band: float = 0.10) -> alt.LayerChart:
    """Predicted against measured on log-log axes (each case in its own metric), the ``band`` shaded around
    predicted = measured; one colour and shape per family (``families`` fixes the colours across selections)."""
    import numpy as np

    values = pd.concat([df["measured"], df["predicted"]])
    lo, hi = float(values.min()) / 1.6, float(values.max()) * 1.6
    xs = np.geomspace(lo, hi, 60)
    guide = pd.DataFrame({"x": xs, "low": xs * (1 - band), "high": xs * (1 + band)})
    scale = alt.Scale(type="log", domain=[lo, hi])
    area = alt.Chart(guide).mark_area(opacity=0.6, color=BAND_COLOR).encode(
        x=alt.X("x:Q", scale=scale, title="measured (each case in its own metric)"),
        y=alt.Y("low:Q", scale=scale, title="predicted"), y2="high:Q")
    diagonal = alt.Chart(guide).mark_line(color="#777", strokeDash=[4, 3]).encode(x="x:Q", y="x:Q")
    fam = list(families)
    points = alt.Chart(df).mark_point(filled=True, size=80, opacity=0.85).encode(
        x=alt.X("measured:Q", scale=scale), y=alt.Y("predicted:Q", scale=scale),
        color=alt.Color("family:N", scale=alt.Scale(domain=fam, scheme="category10"), title="family"),
        shape=alt.Shape("family:N", scale=alt.Scale(domain=fam)),
        tooltip=["case", "metric", "unit", alt.Tooltip("measured:Q", format=",.4g"),
                 alt.Tooltip("predicted:Q", format=",.4g"), alt.Tooltip("error:Q", format="+.1%"), "layout"])
    return cast(alt.LayerChart, alt.layer(area, diagonal, points).properties(height=460).interactive())


def signed_errors(df: pd.DataFrame, families: Sequence[str], band: float = 0.10) -> alt.LayerChart:
    """Signed error (predicted / measured - 1) per case as horizontal bars, the ``band`` shaded around zero."""
    d = df.assign(error_pct=df["error"] * 100)
    fam = list(families)
    shade = alt.Chart(pd.DataFrame({"low": [-band * 100], "high": [band * 100]})).mark_rect(
        color=BAND_COLOR, opacity=0.6).encode(x="low:Q", x2="high:Q")
    bars = alt.Chart(d).mark_bar().encode(
        x=alt.X("error_pct:Q", title="error, % (predicted / measured − 1)"),
        y=alt.Y("case:N", sort=None, title=None, axis=alt.Axis(labelLimit=260, labelOverlap=False)),
        color=alt.Color("family:N", scale=alt.Scale(domain=fam, scheme="category10"), legend=None),
        tooltip=["case", "metric", alt.Tooltip("measured:Q", format=",.4g"), alt.Tooltip("predicted:Q", format=",.4g"),
                 alt.Tooltip("error:Q", format="+.1%"), "layout"])
    zero = alt.Chart(pd.DataFrame({"x": [0.0]})).mark_rule(color="#777").encode(x="x:Q")
    return cast(alt.LayerChart, alt.layer(shade, bars, zero).properties(height=20 * len(d) + 40))


# ------------------------------------------------------------------------------------------------ plans

LIMIT_COLOR = "#d62728"  # deadline and budget lines
PICK_COLOR = "#111111"  # the recommended configuration's ring


PLAN_COLUMNS = ["hardware", "gpus", "layout", "days", "usd", "gpu_hours", "verdict", "why", "pareto"]


def _plan_data(df: pd.DataFrame) -> pd.DataFrame:
    """The columns the plan charts draw or show (a smaller spec: a plan's frame has some fifty)."""
    return df[[c for c in PLAN_COLUMNS if c in df.columns]].assign(verdict=lambda d: d["verdict"].astype(str))


def _plan_tooltip() -> list[alt.Tooltip]:
    return [alt.Tooltip("hardware:N"), alt.Tooltip("gpus:Q", format=",", title="GPUs"), alt.Tooltip("layout:N"),
            alt.Tooltip("days:Q", format=",.4g"), alt.Tooltip("usd:Q", format="$,.4s", title="USD"),
            alt.Tooltip("gpu_hours:Q", format=",.4s", title="GPU-hours"), alt.Tooltip("verdict:N"),
            alt.Tooltip("why:N")]


def _limit(value: float | None, label: str, axis: str) -> list[alt.Chart]:
    """A dashed line at ``value`` across the plot (``axis`` ``y``: horizontal, ``x``: vertical), labelled."""
    if value is None:
        return []
    d = pd.DataFrame({"v": [value], "label": [label]})
    rule = alt.Chart(d).mark_rule(color=LIMIT_COLOR, strokeDash=[6, 4], strokeWidth=1.5).encode(
        **{axis: alt.X("v:Q") if axis == "x" else alt.Y("v:Q")}, tooltip=["label:N"])
    if axis == "y":
        text = alt.Chart(d).mark_text(color=LIMIT_COLOR, align="left", dx=4, dy=-7, fontSize=11).encode(
            y="v:Q", x=alt.value(2), text="label:N")
    else:
        text = alt.Chart(d).mark_text(color=LIMIT_COLOR, align="left", dx=4, fontSize=11, angle=0).encode(
            x="v:Q", y=alt.value(10), text="label:N")
    return [rule, text]


def _pick(rec: pd.DataFrame, x: str, y: str) -> list[alt.Chart]:
    if rec.empty:
        return []
    ring = alt.Chart(rec).mark_point(shape="circle", size=420, filled=False, strokeWidth=2.5, color=PICK_COLOR
                                     ).encode(x=f"{x}:Q", y=f"{y}:Q", tooltip=_plan_tooltip())
    text = alt.Chart(rec.assign(label="recommended")).mark_text(
        align="left", dx=14, dy=-12, fontWeight="bold", color=PICK_COLOR).encode(x=f"{x}:Q", y=f"{y}:Q",
                                                                               text="label:N")
    return [ring, text]


def plan_against_gpus(points: pd.DataFrame, best: pd.DataFrame, rec: pd.DataFrame, hardware: Sequence[str],
                      y: str, limit: float | None) -> alt.LayerChart:
    """Days (``y`` ``days``, the deadline drawn) or dollars (``usd``, the budget drawn) against the GPU count, one
    colour per hardware: every simulated layout as a faint dot, the best layout per count joined by a line, the
    recommended configuration ringed (log axes: counts double)."""
    points, best, rec = _plan_data(points), _plan_data(best), _plan_data(rec)
    color = alt.Color("hardware:N", title="hardware", scale=alt.Scale(domain=list(hardware), scheme="tableau10"),
                      legend=alt.Legend(orient="bottom", columns=2, labelLimit=400))
    counts = sorted({int(g) for g in points["gpus"]})
    x = alt.X("gpus:Q", title="GPUs", axis=alt.Axis(values=counts, format=","),
              scale=alt.Scale(type="log", base=2, domain=[counts[0] / 1.25, counts[-1] * 1.25], nice=False))
    yy = alt.Y(f"{y}:Q", title="days to train the tokens" if y == "days" else "dollars to train the tokens",
               scale=alt.Scale(type="log", zero=False), axis=alt.Axis(format="$,.3s" if y == "usd" else ",.3~g"))
    dots = alt.Chart(points).mark_circle(size=28, opacity=0.25).encode(x=x, y=yy, color=color,
                                                                       tooltip=_plan_tooltip())
    line = alt.Chart(best).mark_line(point=alt.OverlayMarkDef(size=70, filled=True)).encode(
        x=x, y=yy, color=color, tooltip=_plan_tooltip())
    text = ""
    if limit:
        text = f"deadline {limit:,.4g} days" if y == "days" else f"budget ${_sig(limit)}"
    layers = [dots, line, *_limit(limit, text, "y"), *_pick(rec, "gpus", y)]
    return cast(alt.LayerChart, alt.layer(*layers).properties(height=360))


def plan_front(points: pd.DataFrame, rec: pd.DataFrame, hardware: Sequence[str], deadline_days: float | None,
               budget_usd: float | None) -> alt.LayerChart:
    """Dollars against days of every simulated layout, one colour per hardware, the Pareto front (nothing both
    faster and cheaper) as a step line, the deadline and the budget as dashed lines bounding the corner where a
    configuration meets both, the recommended configuration ringed."""
    points, rec = _plan_data(points), _plan_data(rec)
    color = alt.Color("hardware:N", title="hardware", scale=alt.Scale(domain=list(hardware), scheme="tableau10"))
    x = alt.X("days:Q", title="days to train the tokens", scale=alt.Scale(type="log"),
              axis=alt.Axis(format=",.3~g"))
    y = alt.Y("usd:Q", title="dollars to train the tokens", scale=alt.Scale(type="log", zero=False),
              axis=alt.Axis(format="$,.3s"))
    dots = alt.Chart(points).mark_circle(size=40, opacity=0.45).encode(x=x, y=y, color=color,
                                                                       tooltip=_plan_tooltip())
    front = points[points["pareto"].fillna(False).astype(bool)].sort_values(["days", "usd"])
    step = alt.Chart(front).mark_line(interpolate="step-after", color="#555", strokeWidth=1.2).encode(x=x, y=y)
    layers: list[alt.Chart] = [dots, step]
    layers += _limit(deadline_days, f"deadline {deadline_days:,.4g} days" if deadline_days else "", "x")
    layers += _limit(budget_usd, f"budget ${_sig(budget_usd)}" if budget_usd else "", "y")
    layers += _pick(rec, "days", "usd")
    return cast(alt.LayerChart, alt.layer(*layers).properties(height=380).interactive())
