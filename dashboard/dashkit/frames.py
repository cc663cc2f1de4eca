"""Plain pandas frames from a simulated step's events: what the charts draw.

Pure data shaping over the fields of ``sim.timeline`` events (read by attribute, never by calling ``sim``):
actions, the bubbles between them, the communication a rank's compute waits for inside them, task rows, and
link utilisation binned over the step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

STREAMS = {0: "compute", 1: "comm", 2: "dp"}
SIDES = {0: "IB (NIC) send", 1: "IB (NIC) receive", 2: "NVLink send", 3: "NVLink receive"}
ACTION_COLUMNS = ["rank", "start", "end", "label", "category", "busy"]


def actions(events: Iterable[Any]) -> pd.DataFrame:
    """Schedule actions and tail pieces: rank, start, end, label, category, compute-busy seconds."""
    rows = [(a.rank, a.start, a.end, a.label, a.category, a.busy_forward + a.busy_input + a.busy_weight)
            for a in events]
    df = pd.DataFrame(rows, columns=ACTION_COLUMNS)
    df["busy_frac"] = (df["busy"] / (df["end"] - df["start"]).where(df["end"] > df["start"])).fillna(0.0)
    return df


def bubbles(acts: pd.DataFrame, step_s: float, min_s: float = 1e-9) -> pd.DataFrame:
    """Gaps between a rank's actions (and before the first, after the last until the step ends)."""
    rows = []
    for rank, grp in acts.sort_values("start").groupby("rank"):
        cur = 0.0
        for s, e in zip(grp["start"], grp["end"], strict=True):
            if s > cur + min_s:
                rows.append((rank, cur, s))
            cur = max(cur, e)
        if step_s > cur + min_s:
            rows.append((rank, cur, step_s))
    df = pd.DataFrame(rows, columns=["rank", "start", "end"])
    df["label"], df["category"] = "bubble", "bubble"
    return df


def tasks(events: Iterable[Any]) -> pd.DataFrame:
    """Every task: rank, stream, name (the phase), start, end, the action it belongs to."""
    rows = [(t.rank, STREAMS.get(int(t.stream), str(t.stream)), t.name, t.start, t.end, t.action) for t in events]
    return pd.DataFrame(rows, columns=["rank", "stream", "name", "start", "end", "action"])


def _union(iv: np.ndarray) -> np.ndarray:
    """Sorted, merged intervals."""
    if len(iv) == 0:
        return iv.reshape(0, 2)
    iv = iv[np.argsort(iv[:, 0], kind="stable")]
    out = [list(iv[0])]
    for s, e in iv[1:]:
        if s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return np.asarray(out)


def exposed(acts: pd.DataFrame, task_rows: pd.DataFrame, min_s: float = 1e-7) -> pd.DataFrame:
    """Inside each action, the stretches where the rank's compute stream is idle: exposed communication."""
    rows = []
    compute = task_rows[task_rows["stream"] == "compute"]
    for rank, grp in acts.groupby("rank"):
        mine = compute[compute["rank"] == rank]
        u = _union(mine[["start", "end"]].to_numpy(dtype=float))
        starts = u[:, 0] if len(u) else np.empty(0)
        for a_s, a_e, label in zip(grp["start"], grp["end"], grp["label"], strict=True):
            i = max(int(np.searchsorted(starts, a_s, side="right")) - 1, 0)
            cur = a_s
            while i < len(u) and u[i, 0] < a_e:
                if u[i, 1] > cur:
                    if u[i, 0] > cur + min_s:
                        rows.append((rank, cur, min(u[i, 0], a_e), label))
                    cur = max(cur, u[i, 1])
                i += 1
            if a_e > cur + min_s:
                rows.append((rank, cur, a_e, label))
    df = pd.DataFrame(rows, columns=["rank", "start", "end", "label"])
    df["category"] = "exposed communication"
    return df


def _covered(starts: np.ndarray, ends: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Busy seconds before each time in ``t``: sum of max(t - s, 0) - max(t - e, 0) over the intervals."""
    s, e = np.sort(starts), np.sort(ends)
    cs, ce = np.concatenate(([0.0], np.cumsum(s))), np.concatenate(([0.0], np.cumsum(e)))
    ns, ne = np.searchsorted(s, t), np.searchsorted(e, t)
    return (ns * t - cs[ns]) - (ne * t - ce[ne])


def link_series(intervals: Mapping[tuple[Any, Any], Sequence[tuple[float, float]]], step_s: float, num_ranks: int,
                bins: int = 160) -> pd.DataFrame:
    """Utilisation of each link side over the step, averaged over the pipeline's ranks, in ``bins`` bins."""
    edges = np.linspace(0.0, step_s, bins + 1)
    rows: list[tuple[float, str, float]] = []
    for side, label in SIDES.items():
        ivs = [iv for (rank, sd), lst in intervals.items() if int(sd) == side for iv in lst]
        if ivs:
            arr = np.asarray(ivs, dtype=float)
            per_bin = np.diff(_covered(arr[:, 0], arr[:, 1], edges)) / (np.diff(edges) * max(num_ranks, 1))
        else:
            per_bin = np.zeros(bins)
        rows.extend(zip(edges[:-1], [label] * bins, np.clip(per_bin, 0.0, 1.0), strict=True))
    return pd.DataFrame(rows, columns=["time_s", "link", "utilisation"])


def link_busy(busy: Mapping[tuple[Any, Any], float], step_s: float) -> pd.DataFrame:
    """Per rank and link side, the fraction of the step it carried data."""
    rows = [(rank, SIDES.get(int(side), str(side)), secs / step_s if step_s > 0 else 0.0)
            for (rank, side), secs in busy.items()]
    return pd.DataFrame(rows, columns=["rank", "link", "busy_frac"]).sort_values(["link", "rank"])


def imbalance(mean: np.ndarray, worst: np.ndarray) -> pd.DataFrame:
    steps = np.arange(len(mean))
    return pd.DataFrame({"step": steps, "mean over layers": mean, "worst layer": worst})


def heatmap(loads: np.ndarray, max_steps: int = 60) -> pd.DataFrame:
    """Relative load (1 = the mean) per step and expert, experts ordered by their load at step 0, thinned to
    at most ``max_steps`` steps."""
    rel = loads / loads.mean(axis=-1, keepdims=True)
    order = np.argsort(-rel[0], kind="stable")
    take = np.unique(np.linspace(0, len(rel) - 1, min(max_steps, len(rel))).round().astype(int))
    sub = rel[take][:, order]
    step, expert = np.meshgrid(take, np.arange(sub.shape[1]), indexing="ij")
    return pd.DataFrame({"step": step.ravel(), "expert": expert.ravel(), "expert_id": order[expert.ravel()],
                         "relative_load": sub.ravel()})


def family_label(kind: str, dtype: str, name: str, gemm_pass: str | None, shape: Mapping[str, float]) -> str:
    """A short name for an entry's family: kind, dtype, op and the shape that stays fixed along the curve."""
    fixed = {k: v for k, v in shape.items() if k not in ("m", "seq", "bytes")}
    dims = "x".join(f"{v:g}" for v in fixed.values())
    op = f"{name} {gemm_pass}" if gemm_pass else name
    return f"{kind} {dtype} {op}" + (f" [{dims}]" if dims else "")


def comm_summary(view: Any) -> dict[str, Any]:
    """Per rank, communication seconds (comm and data-parallel streams) split into exposed (the compute
    stream waits for it, from the breakdown) and hidden (the rest); needs a detailed view."""
    if view.tasks is None:
        raise ValueError("comm_summary needs a detailed view (tasks)")
    t = view.tasks[view.tasks["stream"] != "compute"]
    per_rank = pd.DataFrame(view.per_rank).rename_axis("rank")
    comm = (t["end"] - t["start"]).groupby(t["rank"]).sum().reindex(per_rank.index, fill_value=0.0)
    exposed = per_rank["exposed_comm"]
    hidden = (comm - exposed).clip(lower=0.0)
    rows = [{"rank": r, "part": part, "seconds": float(v)} for part, ser in (("hidden", hidden), ("exposed", exposed))
            for r, v in ser.items()]
    total = float(comm.mean())
    return {"comm_s": total, "hidden_frac": float(hidden.mean()) / total if total > 0 else 0.0,
            "per_rank": pd.DataFrame(rows)}


def table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows)
