"""The Plan page's frames, from a plan's points (pure pandas; :mod:`dashkit.bridge_run` runs the plan).

Every point of a plan gets a verdict and a reason, in this order of precedence:

- ``illegal`` (a hardware, layout, batch or schedule rule), ``oom`` (the memory model or the simulation says it
  does not fit), ``dominated`` (provably slower and dearer than a simulated point), ``failed`` (the simulator
  refused it);
- of the simulated points that fit: ``slower`` (misses the deadline), ``over budget`` (meets the deadline, costs
  more than the budget), ``recommended`` (the cheapest that meets both; the point ``sim plan`` recommends) and
  ``costlier`` (meets both, costs more).

These are ``sim.sweep.plan.recommend``'s classes, so the counts agree with ``sim plan``'s "why the others lost"
(except ``costlier``, which here also counts ``sim plan``'s second and third recommendations).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sim.sweep.rules import NOT_A_CONFIGURATION

#: Verdicts, best first (the summary's order).
VERDICTS = ("recommended", "costlier", "slower", "over budget", "oom", "dominated", "illegal", "failed")
ILLEGAL_RULES = ("hardware", "layout", "batch", "schedule")
#: The page's caps: configurations in the space (the product of the axes; pruning them is cheap) and step
#: simulations (the points that survive pruning, one analytic simulation each).
MAX_POINTS = 10_000
MAX_SIMULATIONS = 1_000
#: GPU counts offered: whole 8-GPU nodes, doubling.
GPU_COUNTS = tuple(8 * 2**i for i in range(12))  # 8 .. 16,384


def sig(x: float) -> str:
    """Four significant figures with a K or M suffix (as ``sim estimate`` prints): 5.232M, 50.21K, 12.34."""
    for unit, f in (("M", 1e6), ("K", 1e3)):
        if abs(x) >= f:
            return f"{x / f:.4g}{unit}"
    return f"{x:.4g}"


def money(x: float, signed: bool = False) -> str:
    return ("-" if x < 0 else "+" if signed else "") + "$" + sig(abs(x))


def days(d: float) -> str:
    return f"{d:,.1f}" if d >= 10 else f"{d:.3g}"


def tokens_text(n: float, digits: int = 6) -> str:
    """1.48e13 -> 14.8T with up to ``digits`` significant digits (6: what the tokens field starts from, which
    ``sim plan --tokens`` reads back; 4: as ``sim estimate`` prints)."""
    for unit, f in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= f:
            return f"{n / f:.{digits}g}{unit}"
    return f"{n:.{digits}g}"


def gpu_choices(num_gpus: int) -> list[int]:
    """The GPU counts offered: :data:`GPU_COUNTS` and the job's own count."""
    return sorted({*GPU_COUNTS, int(num_gpus)})


def default_gpus(num_gpus: int, per_node: int) -> list[int]:
    """Half, the same and twice the job's GPU count (whole nodes, at least one)."""
    return sorted({n for n in (num_gpus // 2, num_gpus, 2 * num_gpus) if n >= per_node and n % per_node == 0}
                  or {num_gpus})


def vpp_values(schedules: list[str], base_vpp: int) -> list[int]:
    """Virtual stages to pair with the schedules: 1 for the plain ones, the job's (at least 2) for interleaved
    1F1B (the pairs that do not match are no configuration: rule ``n/a``, pruned in no time and left out)."""
    out = set()
    if any(s != "interleaved-1f1b" for s in schedules):
        out.add(1)
    if "interleaved-1f1b" in schedules:
        out.add(max(2, base_vpp))
    return sorted(out)


def _mask(s: pd.Series) -> pd.Series:
    return s.fillna(False).astype(bool)


def meets(frame: pd.DataFrame, deadline_days: float | None, budget_usd: float | None) -> pd.Series:
    """Whether each simulated point that fits meets the deadline and the budget (NA for the others), as
    ``sim.sweep.frame`` computes ``meets_constraints`` from a spec's."""
    ok = frame["status"] == "ok"
    m = ok.copy()
    if deadline_days is not None:
        m &= frame["days"] <= deadline_days
    if budget_usd is not None:
        m &= frame["usd"] <= budget_usd
    return m.astype("boolean").where(ok, pd.NA)


def classify(frame: pd.DataFrame, deadline_days: float | None, budget_usd: float | None,
             recommended: int | None) -> pd.DataFrame:
    """``frame`` (a plan's points) with ``meets_constraints``, ``verdict`` and ``why`` (module docstring);
    ``recommended`` is the index of the recommended point. Points that are no configuration (rule ``n/a``:
    a schedule paired with a vpp it does not take) are left out."""
    df = frame[frame["rule"].fillna("").ne(NOT_A_CONFIGURATION)].reset_index(drop=True)  # not layouts: see above
    n = len(df)
    ok = (df["status"] == "ok").to_numpy()
    day = df["days"].to_numpy(dtype=float)
    usd = df["usd"].to_numpy(dtype=float)
    slow = ok & (day > deadline_days) if deadline_days is not None else np.zeros(n, bool)
    dear = ok & (usd > budget_usd) if budget_usd is not None else np.zeros(n, bool)
    df["meets_constraints"] = meets(df, deadline_days, budget_usd)
    rule = df["rule"].fillna("").astype(str).to_numpy()
    status = df["status"].astype(str).to_numpy()
    reason = df["reason"].fillna("").astype(str).to_numpy()
    mem = df["memory_per_gpu_gb"].to_numpy(dtype=float)
    cap = df["memory_capacity_gb"].to_numpy(dtype=float)
    best_usd = float(df.loc[df["index"] == recommended, "usd"].iloc[0]) if recommended is not None else math.nan
    verdict, why = [], []
    for i in range(n):
        if rule[i] in ILLEGAL_RULES:
            v, w = "illegal", reason[i]
        elif rule[i] == "memory" or status[i] == "oom":
            v, w = "oom", f"needs {mem[i]:.1f} GB per GPU of {cap[i]:.0f} GB"
        elif rule[i] == "dominated":
            v, w = "dominated", reason[i]
        elif not ok[i]:
            v, w = "failed", reason[i] or status[i]
        elif slow[i]:
            v, w = "slower", f"{days(day[i])} days > the {deadline_days:g}-day deadline"
            if dear[i]:
                w += f"; {money(usd[i])} > the {money(budget_usd)} budget"
        elif dear[i]:
            v, w = "over budget", f"{money(usd[i])} > the {money(budget_usd)} budget"
        elif df["index"].iat[i] == recommended:
            v, w = "recommended", "the cheapest" + _meeting(deadline_days, budget_usd)
        else:
            extra = usd[i] - best_usd
            v, w = "costlier", (f"{money(extra)} (+{usd[i] / best_usd - 1:.1%}) more than the recommendation"
                                if best_usd > 0 else f"{money(extra)} more than the recommendation")
        verdict.append(v)
        why.append(w)
    df["verdict"] = pd.Categorical(verdict, categories=VERDICTS)
    df["why"] = why
    return df


def _meeting(deadline_days: float | None, budget_usd: float | None) -> str:
    parts = ([f"the {deadline_days:g}-day deadline"] if deadline_days is not None else []) + \
            ([f"the {money(budget_usd)} budget"] if budget_usd is not None else [])
    return " that meets " + " and ".join(parts) if parts else " configuration"


def best_per_count(points: pd.DataFrame) -> pd.DataFrame:
    """Per hardware and GPU count, the cheapest simulated point that fits (at one GPU count and price dollars
    follow days, so it is also the fastest); where none fits, the point that says why (the smallest OOM, else a
    dominated, failed or illegal one). Sorted by dollars (the plan's objective), then days."""
    rows = []
    for _, g in points.groupby(["hardware", "gpus"], sort=False):
        ok = g[g["status"] == "ok"]
        if len(ok):
            rows.append(ok.sort_values(["usd", "days", "index"]).iloc[0])
            continue
        for verdict, key in (("oom", "memory_per_gpu_gb"), ("dominated", "index"), ("failed", "index"),
                             ("illegal", "index")):
            sub = g[g["verdict"] == verdict]
            if len(sub):
                rows.append(sub.sort_values(key).iloc[0])
                break
    if not rows:
        return points.iloc[:0]
    best = pd.DataFrame(rows)
    return best.sort_values(["usd", "days", "index"], na_position="last").reset_index(drop=True)


#: Per verdict, the example the summary shows: the closest to winning.
_CLOSEST = {"costlier": ["usd", "index"], "slower": ["usd", "index"], "over budget": ["days", "index"],
            "oom": ["memory_per_gpu_gb", "index"], "dominated": ["index"], "illegal": ["index"],
            "failed": ["index"]}


def lost_summary(points: pd.DataFrame) -> pd.DataFrame:
    """One row per verdict other than recommended: how many points, illegal ones by rule, the closest example
    and why it lost."""
    rows = []
    for verdict in VERDICTS[1:]:
        sub = points[points["verdict"] == verdict]
        if not len(sub):
            continue
        ex = sub.sort_values(_CLOSEST[verdict]).iloc[0]
        by = ""
        if verdict == "illegal":
            by = ", ".join(f"{k} {v:,}" for k, v in sub["rule"].value_counts().items())
        rows.append({"verdict": verdict, "configurations": len(sub), "rules": by,
                     "closest": f"{ex['gpus']:,} × {ex['hardware']}: {ex['layout']}", "why": ex["why"]})
    return pd.DataFrame(rows, columns=["verdict", "configurations", "rules", "closest", "why"])


#: The tables' columns, in order: where, days and dollars, the verdict and why, then the other figures.
TABLE = ["hardware", "gpus", "layout", "days", "usd", "verdict", "why", "gpu_hours", "step_time_s", "mfu",
         "memory_per_gpu_gb", "mwh", "gpu"]


def table(df: pd.DataFrame) -> pd.DataFrame:
    """The rows the page shows: :data:`TABLE`'s columns that the frame has."""
    return df[[c for c in TABLE if c in df.columns]].reset_index(drop=True)


def cheapest(points: pd.DataFrame, n: int = 50) -> pd.DataFrame:
    """The ``n`` cheapest simulated points that fit, whatever their verdict (sorted by dollars, then days)."""
    ok = points[points["status"] == "ok"]
    return ok.sort_values(["usd", "days", "index"]).head(n)


def csv(points: pd.DataFrame) -> bytes:
    """Every point of the plan as CSV (the download)."""
    return points.to_csv(index=False).encode()
