"""The results of a sweep as one pandas DataFrame: a row per point, in point order.

Columns:

- ``index`` (the point's number in the space), the layout (``hardware``, ``gpus``, ``tp``, ``pp``, ``dp``,
  ``ep``, ``schedule``, ``vpp``, ``micro_batch_size``, ``num_microbatches``, ``zero_stage``, ``recompute``,
  ``precision``, ``usd_per_gpu_hour``; the base's value where not swept, ``dp`` and ``num_microbatches``
  derived), then any other swept axis;
- ``status`` (``ok``, ``oom``, ``pruned``, ``failed``), ``rule`` (hardware, layout, batch, schedule, memory,
  dominated) and ``reason``;
- ``memory_estimate_gb`` (the memory model, before simulating) and ``memory_capacity_gb``;
- ``tier``: which tier gave the figures that follow, the detail tier where it ran, else the ranking tier:
  ``step_time_s``, ``mfu`` (BF16 dense peak, causal attention), ``tokens_per_s_per_gpu``, ``memory_per_gpu_gb``
  (simulated; the estimate for a point pruned for memory), ``oom``, ``utilization``, and for the token budget
  ``gpu_hours``, ``days``, ``usd``, ``mwh``;
- per tier, ``step_time_<tier>_s``, ``days_<tier>``, ``usd_<tier>``, ``gpu_hours_<tier>``, ``mwh_<tier>`` and,
  for the front-runners, ``rank_<tier>``;
- ``meets_constraints`` (deadline and budget), ``pareto`` (on the (days, usd) front), ``warnings``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from sim.sweep.pareto import label_columns, layout_label, pareto_mask
from sim.sweep.prune import DOMINATED, MEMORY, Verdicts
from sim.sweep.space import AXIS_ORDER, Space
from sim.sweep.spec import SweepSpec
from sim.units import GB

LAYOUT = ("hardware", "gpus", "tp", "pp", "dp", "ep", "schedule", "vpp", "micro_batch_size", "num_microbatches",
          "zero_stage", "recompute", "precision", "usd_per_gpu_hour")
FIGURES = ("gpu_hours", "days", "usd", "mwh")


def _axis_columns(space: Space, n: int) -> dict[str, np.ndarray]:
    idx = np.arange(n)
    stride = n
    out: dict[str, np.ndarray] = {}
    for a in space.axes:
        stride //= len(a.values)
        vals = np.empty(len(a.values), dtype=object)
        vals[:] = list(a.values)
        out[a.name] = vals[(idx // stride) % len(a.values)]
    return out


def _column(values: np.ndarray) -> pd.Series:
    """Object arrays of plain numbers become numeric columns; strings stay strings."""
    s = pd.Series(values)
    if s.map(lambda x: isinstance(x, bool)).all():
        return s.astype(bool)
    try:
        return pd.to_numeric(s)
    except (ValueError, TypeError):
        return s.astype(str) if s.map(lambda x: isinstance(x, str)).all() else s.map(str)


def build_frame(space: Space, v: Verdicts, results: dict[str, dict[int, dict[str, Any]]],
                priced: dict[str, dict[int, dict[str, float]]], rank_tier: str, detail_tier: str | None,
                spec: SweepSpec) -> pd.DataFrame:
    n = space.size
    base = space.base
    axes = _axis_columns(space, n)
    cols: dict[str, Any] = {"index": np.arange(n)}
    par = base["parallel"]
    defaults: dict[str, Any] = {"tp": par["tp"], "pp": par["pp"], "ep": par["ep"], "schedule": par["schedule"],
                                "vpp": par["vpp"], "micro_batch_size": par["micro_batch_size"],
                                "zero_stage": par["zero_stage"], "recompute": par["recompute"], "precision": "base"}
    for name in LAYOUT:
        if name in axes:
            cols[name] = axes[name]
        elif name == "hardware":
            cols[name] = np.full(n, base["cluster"]["name"], dtype=object)
        elif name == "gpus":
            gpus = base["cluster"]["num_nodes"] * base["cluster"]["node"]["gpus_per_node"]
            cols[name] = np.full(n, gpus, dtype=np.int64)
        elif name in ("dp", "num_microbatches"):  # unknown (-1) where a rule refused the point before its layout
            raw = np.repeat(getattr(v, name), v.inner_size)
            cols[name] = pd.arrays.IntegerArray(np.where(raw < 0, 0, raw), raw < 0)
        elif name == "usd_per_gpu_hour":
            hw = cols["hardware"]
            prices = {h: (space.clusters[h] if h in space.clusters else base["cluster"]).get("usd_per_gpu_hour", 2.0)
                      for h in set(hw)}
            cols[name] = np.array([prices[h] for h in hw], dtype=float)
        else:
            cols[name] = np.full(n, defaults[name], dtype=object)
    for name in [*(a for a in AXIS_ORDER if a not in LAYOUT), *(a.name for a in space.axes if "." in a.name)]:
        if name in axes:
            cols[name] = axes[name]
    status = np.full(n, "pruned", dtype=object)
    rule, reason = v.rule.copy(), v.reason.copy()
    oom = np.full(n, None, dtype=object)
    oom[v.status == MEMORY] = True
    oom[v.status == DOMINATED] = False
    mem_gb = v.memory_bytes / GB
    cols.update(status=status, rule=rule, reason=reason, memory_estimate_gb=mem_gb,
                memory_capacity_gb=v.capacity_bytes / GB)
    tier = np.full(n, None, dtype=object)
    metrics = {k: np.full(n, np.nan) for k in ("step_time_s", "mfu", "tokens_per_s_per_gpu", "memory_per_gpu_gb",
                                               "utilization", *FIGURES)}
    metrics["memory_per_gpu_gb"][v.status == MEMORY] = mem_gb[v.status == MEMORY]
    warnings = np.full(n, "", dtype=object)
    per_tier: dict[str, np.ndarray] = {}
    p = v.num_prices
    for t in (rank_tier, detail_tier):
        if t is None:
            continue
        per_tier[f"step_time_{t}_s"] = st = np.full(n, np.nan)
        for f in FIGURES:
            per_tier[f"{f}_{t}"] = np.full(n, np.nan)
        for kid, res in results.get(t, {}).items():
            for i in range(kid * p, kid * p + p):
                if res["status"] in ("ok", "oom"):
                    st[i] = res["step_time_s"]
                    for f in FIGURES:
                        per_tier[f"{f}_{t}"][i] = priced[t][i][f]
                if t == detail_tier and res["status"] not in ("ok", "oom"):
                    continue  # a failed detail run leaves the ranking tier's figures
                status[i], rule[i], reason[i] = res["status"], res.get("rule"), res.get("reason")
                tier[i] = t
                warnings[i] = "; ".join(res.get("warnings") or ())
                if res["status"] in ("ok", "oom"):
                    oom[i] = bool(res["oom"])
                    metrics["step_time_s"][i] = res["step_time_s"]
                    metrics["mfu"][i] = res["mfu"] if res["mfu"] is not None else np.nan
                    metrics["tokens_per_s_per_gpu"][i] = res["tokens_per_s_per_gpu"]
                    metrics["memory_per_gpu_gb"][i] = res["memory_per_gpu_bytes"] / GB
                    metrics["utilization"][i] = res["utilization"]
                    for f in FIGURES:
                        metrics[f][i] = priced[t][i][f]
    cols["tier"] = tier
    cols.update(metrics)
    cols["oom"] = oom
    cols.update(per_tier)
    frame = pd.DataFrame({k: (_column(c) if isinstance(c, np.ndarray) and c.dtype == object
                              and k not in ("rule", "reason", "tier", "oom", "status") else c)
                          for k, c in cols.items()})
    frame["oom"] = frame["oom"].astype("boolean")
    for k in ("rule", "reason", "tier"):
        frame[k] = frame[k].astype("string")
    frame["status"] = frame["status"].astype(str)
    ok = frame["status"] == "ok"
    meets = ok.copy()
    if spec.deadline_days is not None:
        meets &= frame["days"] <= spec.deadline_days
    if spec.budget_usd is not None:
        meets &= frame["usd"] <= spec.budget_usd
    frame["meets_constraints"] = meets.astype("boolean").where(ok, pd.NA)
    frame["pareto"] = pareto_mask(frame["days"].where(ok), frame["usd"].where(ok))
    frame["warnings"] = warnings.astype(str)
    frame.attrs["num_prices"] = p
    frame.attrs["swept"] = [a.name for a in space.axes]
    return frame


def _kendall_tau(a: list[int], b: list[int]) -> float | None:
    n = len(a)
    if n < 2:
        return None
    pos = {x: i for i, x in enumerate(b)}
    s = sum(1 if pos[a[j]] > pos[a[i]] else -1 for i in range(n) for j in range(i + 1, n))
    return s / (n * (n - 1) / 2)


def ranking_report(frame: pd.DataFrame, top: list[int], rank_tier: str, detail_tier: str | None,
                   objective: str) -> dict[str, Any]:
    """How the front-runners' order by the objective changed from the ranking tier to the detail tier."""
    out: dict[str, Any] = {"objective": objective, "rank_tier": rank_tier, "detail_tier": detail_tier,
                           "k": len(top), "rows": []}
    if not top:
        return out
    sub = frame.set_index("index").loc[top]
    before = list(sub.sort_values([f"{objective}_{rank_tier}"]).index)
    for r, i in enumerate(before, 1):
        frame.loc[frame["index"] == i, f"rank_{rank_tier}"] = r
    if detail_tier is None:
        out["order"] = before
        return out
    col = f"{objective}_{detail_tier}"
    valid = sub[sub[col].notna()]
    after = list(valid.sort_values([col]).index)
    for r, i in enumerate(after, 1):
        frame.loc[frame["index"] == i, f"rank_{detail_tier}"] = r
    swept = label_columns(frame.attrs.get("swept", ()))
    for i in before:
        row = sub.loc[i]
        a, b = row[f"{objective}_{rank_tier}"], row[col]
        out["rows"].append({"index": int(i), "layout": layout_label(row.to_dict() | {"index": i}, swept),
                            f"rank_{rank_tier}": before.index(i) + 1,
                            f"rank_{detail_tier}": after.index(i) + 1 if i in after else None,
                            f"{objective}_{rank_tier}": float(a),
                            f"{objective}_{detail_tier}": None if math.isnan(b) else float(b),
                            "change": None if math.isnan(b) else float(b / a - 1.0)})
    out["best_changed"] = bool(after and before[0] != after[0])
    out["kendall_tau"] = _kendall_tau([i for i in before if i in after], after)
    changes = [abs(r["change"]) for r in out["rows"] if r["change"] is not None]
    out["max_abs_change"] = max(changes) if changes else None
    return out
