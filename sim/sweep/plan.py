"""``sim plan``: the cheapest configurations that train a workload on a token budget within a deadline and a
budget, and why the others lost.

A plan is a sweep (``sim.sweep.core``) over a spec made here: the workload as the base, the token budget, the
deadline and budget as constraints, the objective dollars, hardware and GPU counts as given, and a layout grid
around the workload's own layout (``default_axes``; ``--axis key=v1,v2`` replaces or adds an axis, with the
keys of a spec's ``axes``). ``recommend`` reads the results: the best points that meet both constraints, then,
for the rest, the reason each group lost: ``illegal`` (a layout or schedule rule), ``oom`` (memory), ``slower``
(misses the deadline), ``over_budget``, ``dominated`` (provably slower and dearer than an evaluated point) and
``costlier`` (meets both, costs more), each with its count and its closest example. Points that are no
configuration (a schedule without virtual stages at a swept vpp > 1, interleaved 1F1B at vpp 1: the grid pairs
every schedule with vpp 1 and 2) are left out of the count of configurations and of the reasons.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pandas as pd
import yaml

from sim.errors import SimInputError
from sim.loading import load_scenario
from sim.sweep.pareto import label_columns, layout_label
from sim.sweep.rules import NOT_A_CONFIGURATION
from sim.sweep.spec import SweepSpec, parse_spec

_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12, "P": 1e15}


def parse_amount(text: str, field: str) -> float:
    """``14.8T``, ``469B``, ``1e9`` -> a number."""
    m = re.fullmatch(r"\s*([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMBGTP]?)\s*", text, re.IGNORECASE)
    if not m:
        raise SimInputError(f"expected a number with an optional K, M, B, T or P suffix (got {text!r})", field=field)
    value = float(m.group(1)) * _SUFFIX[m.group(2).upper()]
    if not value > 0 or value == float("inf"):
        raise SimInputError(f"must be a positive amount (got {text!r})", field=field)
    return value


def parse_list(text: str, field: str) -> list[Any]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise SimInputError("expected a comma-separated list", field=field)
    return [yaml.safe_load(x) for x in items]


def parse_counts(text: str, field: str) -> list[int]:
    """``1024,2048`` -> whole numbers from 1 (GPU counts)."""
    items = parse_list(text, field)
    bad = [x for x in items if isinstance(x, bool) or not isinstance(x, int) or x < 1]
    if bad:
        raise SimInputError(f"expected whole numbers from 1, comma-separated (got {bad[0]!r})", field=field)
    return items


def default_axes(workload: str) -> dict[str, list[Any]]:
    """A layout grid around the workload's own: TP 1-8, half/same/double PP and EP, the workload's schedule
    with 1F1B, ZB1P and interleaved 1F1B (2 virtual stages), micro-batches of 1 and 2, its recompute policy
    and full recompute."""
    s = load_scenario(workload)
    p = s.parallel
    gpn = s.cluster.node.gpus_per_node
    axes: dict[str, list[Any]] = {
        "tp": [t for t in (1, 2, 4, 8) if t <= gpn],
        "pp": sorted({x for x in (p.pp // 2, p.pp, 2 * p.pp) if x >= 1}),
        "schedule": list(dict.fromkeys([p.schedule, "1f1b", "zb1p", "interleaved-1f1b"])),
        "vpp": [1, 2],
        "micro_batch_size": sorted({1, 2, p.micro_batch_size}),
        "recompute": list(dict.fromkeys([p.recompute, "full"])),
    }
    if s.model.is_moe:
        e = s.model.n_routed_experts
        axes["ep"] = sorted({x for x in (p.ep // 2, p.ep, 2 * p.ep) if x >= 1 and e % x == 0})
    return axes


def plan_spec(workload: str, tokens: float, *, deadline_days: float | None = None, budget_usd: float | None = None,
              gpus: list[int] | None = None, hardware: list[str] | None = None,
              axes: dict[str, list[Any]] | None = None, tier: str = "auto", top_k: int = 10) -> SweepSpec:
    """The sweep a plan runs (module docstring)."""
    grid: dict[str, Any] = default_axes(workload)
    if hardware:
        grid["hardware"] = hardware
    if gpus:
        grid["gpus"] = gpus
    for k, v in (axes or {}).items():
        if k == "set" or "." in k:
            grid.setdefault("set", {})[k.removeprefix("set.")] = v
        else:
            grid[k] = v
    data = {"name": f"plan-{workload}", "base": workload, "tokens": tokens, "objective": "usd",
            "deadline_days": deadline_days, "budget_usd": budget_usd, "axes": grid,
            "evaluation": {"tier": tier, "top_k": top_k}}
    return parse_spec({k: v for k, v in data.items() if v is not None})


def _is(frame: pd.DataFrame, column: str, value: str) -> pd.Series:
    """``frame[column] == value`` with missing values False (a mask that indexes)."""
    return frame[column].eq(value).fillna(False).astype(bool)


def money(x: float) -> str:
    """Dollars as a planner reads them: $5.189M, $12.35B, $45,200 (a minus sign first)."""
    if not math.isfinite(x):
        return f"${x}"
    sign = "-" if x < 0 else ""
    for unit, f in (("T", 1e12), ("B", 1e9), ("M", 1e6)):
        if abs(x) >= f:
            return f"{sign}${abs(x) / f:.4g}{unit}"
    return f"{sign}${abs(x):,.0f}"


def _pick(df: pd.DataFrame, cols: list[str], why: str | Callable[[Any], str], n: int = 1) -> list[dict[str, Any]]:
    """The first ``n`` rows of ``df`` as examples; ``why`` a format string over the row, or a function of it."""
    out = []
    for _, row in df.head(n).iterrows():
        text = why(row) if callable(why) else why.format(**row)
        out.append({"index": int(row["index"]), "layout": layout_label(row, cols), "why": text})
    return out


def recommend(frame: pd.DataFrame, spec: SweepSpec, top: int = 3) -> dict[str, Any]:
    """The best ``top`` points that meet the constraints, and why the others lost (module docstring)."""
    cols = label_columns(frame.attrs.get("swept", ()))
    ok = frame[frame["status"] == "ok"]
    meets = ok[ok["meets_constraints"].fillna(False).astype(bool)].sort_values([spec.objective, "days", "index"])
    keys = ["index", "hardware", "gpus", "tp", "pp", "dp", "ep", "schedule", "vpp", "micro_batch_size",
            "recompute", "zero_stage", "tier", "step_time_s", "mfu", "memory_per_gpu_gb", "gpu_hours", "days",
            "usd", "mwh"]
    recs = []
    for _, row in meets.head(top).iterrows():
        recs.append({**{k: (row[k].item() if hasattr(row[k], "item") else row[k]) for k in keys if k in row},
                     "layout": layout_label(row, cols)})
    lost: dict[str, Any] = {}
    best = meets.iloc[0] if len(meets) else None
    illegal = frame[frame["rule"].isin(["hardware", "layout", "batch", "schedule"]).fillna(False).astype(bool)]
    if len(illegal):
        by = illegal["rule"].fillna("layout").value_counts().to_dict()
        distinct = illegal.drop_duplicates("reason")
        first = distinct.drop_duplicates("rule")  # one reason of each rule before a second of any
        lost["illegal"] = {"count": len(illegal), "by_rule": {str(k): int(v) for k, v in by.items()},
                           "examples": _pick(pd.concat([first, distinct.drop(first.index)]), cols, "{reason}", 3)}
    oom = frame[_is(frame, "rule", "memory") | (frame["status"] == "oom")].sort_values("memory_per_gpu_gb")
    if len(oom):
        lost["oom"] = {"count": len(oom), "examples": _pick(
            oom, cols, "needs {memory_per_gpu_gb:.1f} GB per GPU of {memory_capacity_gb:.0f} GB")}
    if spec.deadline_days is not None:
        slow = ok[ok["days"] > spec.deadline_days].sort_values(["usd", "index"])
        if len(slow):
            deadline = spec.deadline_days
            lost["slower"] = {"count": len(slow), "examples": _pick(
                slow, cols, lambda r: f"{money(r['usd'])} but {r['days']:.4g} days > the {deadline:g}-day deadline")}
    if spec.budget_usd is not None:
        dear = ok[(ok["usd"] > spec.budget_usd)
                  & (ok["days"] <= (spec.deadline_days or float("inf")))].sort_values(["days", "index"])
        if len(dear):
            budget = spec.budget_usd
            lost["over_budget"] = {"count": len(dear), "examples": _pick(
                dear, cols, lambda r: f"{r['days']:.4g} days but {money(r['usd'])} > the {money(budget)} budget")}
    dom = frame[_is(frame, "rule", "dominated")]
    if len(dom):
        lost["dominated"] = {"count": len(dom), "examples": _pick(dom, cols, "{reason}")}
    if best is not None and len(meets) > top:
        rest = meets.iloc[top:]
        lost["costlier"] = {"count": len(rest), "examples": [
            {"index": int(r["index"]), "layout": layout_label(r, cols),
             "why": f"meets both, {money(r['usd'])}: +{money(r['usd'] - best['usd'])} "
                    f"(+{r['usd'] / best['usd'] - 1:.1%}) over the cheapest, {r['days']:.1f} days"}
            for _, r in rest.head(3).iterrows()]}
    out: dict[str, Any] = {"recommendations": recs, "runners_up": lost,
                           "configurations": len(frame) - int(_is(frame, "rule", NOT_A_CONFIGURATION).sum())}
    if not recs:
        out["binding"] = _binding(ok, spec)
    return out


def _binding(ok: pd.DataFrame, spec: SweepSpec) -> str:
    """Why nothing qualifies: the constraint no point meets."""
    if not len(ok):
        return "no point is legal and fits in memory: widen the axes (more GPUs, TP, PP, recompute)"
    fastest, cheapest = ok["days"].min(), ok["usd"].min()
    parts = []
    if spec.deadline_days is not None and fastest > spec.deadline_days:
        parts.append(f"the fastest point takes {fastest:.4g} days > the {spec.deadline_days:g}-day deadline")
    if spec.budget_usd is not None and cheapest > spec.budget_usd:
        parts.append(f"the cheapest costs {money(cheapest)} > the {money(spec.budget_usd)} budget")
    return "; ".join(parts) or "no single point meets both the deadline and the budget"
