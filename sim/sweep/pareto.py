"""The Pareto front of (days, dollars) and its plot.

A point is on the front when no other point is at least as fast and as cheap and strictly better in one of the
two (points with equal days and dollars are all on it). One sort and one pass: O(n log n). The plot uses
matplotlib's Figure API (never pyplot state), log-log: every evaluated point in grey, the front as a step line
with each of its points labelled by its layout (cheapest lowest).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Layout columns shown in a label, in this order, when the point has them.
_LABEL = (("hardware", "{}"), ("gpus", "x{}"), ("tp", " TP{}"), ("pp", " PP{}"), ("dp", " DP{}"),
          ("ep", " EP{}"), ("cp", " CP{}"), ("schedule", " {}"), ("vpp", " v{}"), ("micro_batch_size", " mbs{}"),
          ("zero_stage", " Z{}"), ("recompute", " rc:{}"), ("precision", " {}"), ("balancing", " {}"),
          ("usd_per_gpu_hour", " ${}/h"))


def pareto_mask(days: Sequence[float], usd: Sequence[float]) -> np.ndarray:
    """True where the point is not dominated in (days, usd); NaN points are never on the front."""
    d = np.asarray(days, dtype=float)
    u = np.asarray(usd, dtype=float)
    out = np.zeros(len(d), dtype=bool)
    ok = np.flatnonzero(np.isfinite(d) & np.isfinite(u))
    order = ok[np.lexsort((u[ok], d[ok]))]
    best_before_group = np.inf
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and d[order[j]] == d[order[i]] and u[order[j]] == u[order[i]]:
            j += 1
        on = best_before_group > u[order[i]]
        out[order[i:j]] = on
        best_before_group = min(best_before_group, u[order[i]])
        i = j
    return out


def label_columns(swept: Sequence[str]) -> list[str]:
    """The columns a label shows: the swept axes and, always, the parallel layout."""
    return [c for c, _ in _LABEL if c in swept or c in ("tp", "pp", "dp", "schedule")]


def layout_label(row: Any, columns: Sequence[str] | None = None) -> str:
    """A short layout label: ``h800x2048 TP1 PP16 DP128 EP64 dualpipe mbs1 rc:norm_and_up_proj``."""
    cols = columns if columns is not None else [c for c, _ in _LABEL]
    parts = []
    for name, fmt in _LABEL:
        if name not in cols or name not in row or pd.isna(row[name]):
            continue
        if name == "vpp" and (row.get("schedule") != "interleaved-1f1b"):
            continue
        parts.append(fmt.format(row[name]))
    return "".join(parts).strip()


def write_front_plot(path: str | Path, frame: pd.DataFrame, title: str, label_columns: Sequence[str]) -> None:
    """Days against dollars of every evaluated point, the front highlighted and labelled."""
    from matplotlib.figure import Figure

    ok = frame[frame["status"] == "ok"]
    front = ok[ok["pareto"]].sort_values(["days", "usd"])
    fig = Figure(figsize=(11, 7), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(ok["days"], ok["usd"], s=8, color="0.75", label=f"evaluated ({len(ok)})", zorder=1)
    ax.step(front["days"], front["usd"], where="post", color="C3", lw=1.2, zorder=2)
    ax.scatter(front["days"], front["usd"], s=28, color="C3", label=f"Pareto front ({len(front)})", zorder=3)
    groups = list(front.groupby(["days", "usd"], sort=True))
    for k, ((d, u), g) in enumerate(groups[:20]):
        more = f" (+{len(g) - 1} equal)" if len(g) > 1 else ""
        ax.annotate(layout_label(g.iloc[0], label_columns) + more, (d, u), fontsize=7, color="C3",
                    xytext=(14, 12 + 12 * (len(groups[:20]) - 1 - k)), textcoords="offset points",
                    arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "C3"})
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("days for the token budget")
    ax.set_ylabel("dollars for the token budget")
    from matplotlib.ticker import EngFormatter, FuncFormatter

    plain, eng = FuncFormatter(lambda x, _: f"{x:g}"), EngFormatter(unit="$")
    for axis, f in ((ax.xaxis, plain), (ax.yaxis, eng)):
        axis.set_major_formatter(f)
        axis.set_minor_formatter(f)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
