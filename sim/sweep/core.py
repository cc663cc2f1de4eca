"""A sweep end to end: prune every point, rank the survivors with a cheap tier, re-simulate the front-runners
in detail, and return the results as one DataFrame.

1. ``sim.sweep.prune``: rules and memory, for every point (each pruned point keeps its rule and reason).
2. The ranking tier (``analytic`` when the library has it, else ``fast``; ``evaluation.tier``) for every
   survivor, on the executor, results streamed (``sim.sweep.store``). With a usd or days objective and
   enough survivors this runs in two waves: the points with the best lower bounds first, then only the
   points those results do not provably dominate (``sim.sweep.prune``, step 3).
3. The detail tier (``detailed``) for the ``top_k`` best points by the objective that meet the deadline and
   the budget; ``ranking`` reports how their order changed.
4. ``sim.sweep.frame``: the DataFrame (every point, every axis, the figures of the best tier that evaluated
   it), the Pareto front of (days, dollars).

The DataFrame depends only on the spec: executors, batch sizes, completion order and resumption do not
change it (timings are reported apart, in ``timings``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from sim.errors import SimInputError
from sim.step import MODES
from sim.sweep.evaluate import price
from sim.sweep.executors import Executor, LocalExecutor
from sim.sweep.frame import FIGURES, build_frame, ranking_report
from sim.sweep.prune import CANDIDATE, DOMINATED, Verdicts, counts_by_rule, inner_shape, prune
from sim.sweep.space import INNER, Space, build_space
from sim.sweep.spec import SweepSpec
from sim.sweep.store import Store, fingerprint
from sim.units import SECONDS_PER_DAY, SECONDS_PER_HOUR

#: ``progress(stage, done, total)``.
Progress = Callable[[str, int, int], None]
#: Numbers a worker returns that are streamed (with status, rule, reason, the priced figures, warnings).
STREAMED = ("step_time_s", "mfu", "tokens_per_s_per_gpu", "memory_per_gpu_bytes", "memory_capacity_bytes", "oom",
            "utilization", "imbalance", "tokens_per_step")
#: Points per task at most, by tier: about a second or more of work per task.
MAX_BATCH = {"analytic": 1024, "fast": 16, "detailed": 2}


def resolve_tier(tier: str) -> tuple[str, str | None]:
    """The ranking tier to use, and a note when ``auto`` fell back to ``fast``."""
    if tier == "auto":
        if "analytic" in MODES:
            return "analytic", None
        return "fast", "ranking tier: fast (this build has no analytic tier yet)"
    if tier not in MODES:
        raise SimInputError(f"{tier!r} is not a mode of this build ({', '.join(MODES)})", field="evaluation.tier")
    return tier, None


@dataclass
class SweepResult:
    spec: SweepSpec
    space: Space
    frame: pd.DataFrame
    tier: str
    detail_tier: str | None
    ranking: dict[str, Any]
    counts: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def front(self) -> pd.DataFrame:
        return self.frame[self.frame["pareto"]].sort_values(["days", "usd"])


def _batches(items: list[tuple[int, tuple[Any, ...]]], size: int) -> Iterator[list[tuple[int, tuple[Any, ...]]]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class _Run:
    """The state of one sweep between its stages."""

    def __init__(self, space: Space, v: Verdicts, executor: Executor, store: Store, progress: Progress | None,
                 batch_size: int | None) -> None:
        self.space, self.v, self.executor, self.store = space, v, executor, store
        self.progress, self.batch_size = progress, batch_size
        self.shape = inner_shape(space)
        self.results: dict[str, dict[int, dict[str, Any]]] = {}  # tier -> sim key -> result
        self.priced: dict[str, dict[int, dict[str, float]]] = {}  # tier -> point -> priced figures
        self.warnings: set[str] = set()
        self.counts: dict[str, int] = {}

    def point(self, index: int) -> tuple[Any, ...]:
        """The axis values of point ``index``."""
        o, rest = divmod(index, self.v.inner_size)
        base = self.v.outer_points[o]
        idx = np.unravel_index(rest, self.shape)
        inner = tuple(self.space.axes[self.space.index[n]].values[idx[j]] for j, n in enumerate(INNER)
                      if n in self.space.index)
        return base[:len(base) - len(inner)] + inner

    def _record(self, tier: str, kid: int, res: dict[str, Any]) -> list[dict[str, Any]]:
        self.results.setdefault(tier, {})[kid] = res
        self.warnings.update(res.get("warnings", ()))
        rows = []
        p = self.v.num_prices
        for i in range(kid * p, kid * p + p):
            row: dict[str, Any] = {"index": i, "status": res["status"], "rule": res.get("rule") or "",
                                   "reason": res.get("reason") or ""}
            for k in STREAMED:
                x = res.get(k)
                row[k] = float("nan") if x is None else float(x)
            for k in FIGURES:
                row[k] = float("nan")
            row["warnings"] = "; ".join(res.get("warnings", ()))
            if res["status"] in ("ok", "oom"):
                cluster = self.v.clusters[i // self.v.inner_size]
                figures = price(self.space, cluster, res, self.space.price(self.point(i), cluster))
                self.priced.setdefault(tier, {})[i] = figures
                row.update(figures)
            rows.append(row)
        return rows

    def resume(self, tier: str, kind: str) -> None:
        done = self.store.done(kind)
        if done is None:
            return
        p = self.v.num_prices
        for rec in done.to_dict("records"):
            i = int(rec.pop("index"))
            kid = i // p
            res = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()
                   if k not in FIGURES}
            res["rule"], res["reason"] = res.get("rule") or None, res.get("reason") or None
            if res.get("oom") is not None:
                res["oom"] = bool(res["oom"])
            res["warnings"] = [w for w in str(res.get("warnings") or "").split("; ") if w]
            if kid not in self.results.get(tier, {}):
                self._record(tier, kid, res)

    def evaluate(self, tier: str, kind: str, kids: list[int], label: str) -> None:
        todo = [k for k in kids if k not in self.results.get(tier, {})]
        self.counts[f"{kind}_simulations"] = self.counts.get(f"{kind}_simulations", 0) + len(todo)
        if not todo:
            return
        items = [(k, self.point(k * self.v.num_prices)) for k in todo]
        workers = getattr(self.executor, "workers", 1)
        size = self.batch_size or max(1, min(MAX_BATCH.get(tier, 16), math.ceil(len(items) / (workers * 4))))
        done = 0
        for results in self.executor.map(self.space, _batches(items, size), tier):
            for kid, res in results:
                self.store.add(kind, self._record(tier, kid, res))
                done += 1
            if self.progress is not None:
                self.progress(label, done, len(items))
        self.store.flush()


def _dominance(run: _Run, tier: str, kids: list[int], spec: SweepSpec, notes: list[str]) -> list[int]:
    """Evaluate a first wave; return the kids of the rest that it does not provably dominate."""
    v, space = run.v, run.space
    p = v.num_prices
    workers = getattr(run.executor, "workers", 1)
    wave = max(4 * workers, math.ceil(0.05 * len(kids)))
    if len(kids) <= 2 * wave:
        return kids
    arr = np.array(kids)
    tokens_per_step = np.array([_tokens_per_step(run, k * p) for k in kids], dtype=float)
    steps = space.tokens / tokens_per_step
    days_lb = steps * v.lower_bound_s[arr * p] / SECONDS_PER_DAY
    gpus = np.array([v.clusters[(k * p) // v.inner_size].num_gpus for k in kids], dtype=float)
    cheapest = np.array([min(space.price(run.point(k * p + j), v.clusters[(k * p) // v.inner_size])
                             for j in range(p)) for k in kids])
    usd_lb = days_lb * SECONDS_PER_DAY / SECONDS_PER_HOUR * gpus * cheapest
    first = sorted(set(arr[np.lexsort((arr, usd_lb))[:wave]].tolist())
                   | set(arr[np.lexsort((arr, days_lb))[:wave]].tolist()))
    run.evaluate(tier, "rank", first, f"{tier} (wave 1)")
    res = run.results[tier]
    for k in first:
        r = res[k]
        if r.get("step_time_s") is not None and r["step_time_s"] < v.lower_bound_s[k * p] * (1 - 1e-9):
            notes.append("dominance pruning off: a simulated step beat its peak-FLOP/s bound")
            return [k for k in kids if k not in set(first)]
    wave1 = set(first)  # the front of the first wave only, so a resumed sweep prunes the same points
    pts = [(f["days"], f["usd"], i) for i, f in run.priced.get(tier, {}).items()
           if i // p in wave1 and res[i // p]["status"] == "ok"]
    if not pts:
        return [k for k in kids if k not in set(first)]
    pts.sort()
    f_days = np.array([x[0] for x in pts])
    f_usd = np.minimum.accumulate(np.array([x[1] for x in pts]))
    arg = [pts[0][2]]
    for j in range(1, len(pts)):
        arg.append(pts[j][2] if pts[j][1] < f_usd[j - 1] else arg[-1])
    rest, seen = [], set(first)
    for j, k in enumerate(kids):
        if k in seen:
            continue
        pos = np.searchsorted(f_days, days_lb[j], side="right") - 1
        if pos < 0 or not f_usd[pos] < usd_lb[j]:
            rest.append(k)
            continue
        q = arg[pos]
        qf = run.priced[tier][q]
        for i in range(k * p, k * p + p):
            cluster = v.clusters[i // v.inner_size]
            u = usd_lb[j] / cheapest[j] * space.price(run.point(i), cluster)
            v.status[i], v.rule[i] = DOMINATED, "dominated"
            v.reason[i] = (f"at best {days_lb[j]:.3g} days and ${u:,.0f} (every FLOP at peak rate); point {q} "
                           f"takes {qf['days']:.3g} days and ${qf['usd']:,.0f}")
    run.counts["dominance_wave1"] = len(first)
    return rest


def _tokens_per_step(run: _Run, index: int) -> float:
    s = run.space
    i = s.index.get("training.global_batch_size")
    j = s.index.get("training.seq_len")
    pt = run.point(index)
    gbs = pt[i] if i is not None else s.base["training"]["global_batch_size"]
    seq = pt[j] if j is not None else s.base["training"]["seq_len"]
    return float(gbs * seq)


def run_sweep(spec: SweepSpec, spec_dir: Path | None = None, *, executor: Executor | None = None,
              out: str | Path | None = None, resume: bool = False, progress: Progress | None = None,
              tier: str | None = None, top_k: int | None = None, batch_size: int | None = None) -> SweepResult:
    """Run ``spec`` (see the module docstring)."""
    t0 = time.perf_counter()
    ev = spec.evaluation
    rank_tier, note = resolve_tier(tier or ev.tier)
    detail_tier = ev.detail_tier if ev.detail_tier != rank_tier else None
    k = ev.top_k if top_k is None else top_k
    space = build_space(spec, spec_dir)
    notes = list(space.notes) + ([note] if note else [])
    v = prune(space, (lambda d, n: progress("pruning", d, n)) if progress else None)
    t_prune = time.perf_counter()
    key = fingerprint(spec.model_dump(mode="json"), space.base, rank_tier, detail_tier, k)
    store = Store(out, key, resume)
    own = executor is None
    ex = executor or LocalExecutor()
    run = _Run(space, v, ex, store, progress, batch_size or ev.batch_size)
    try:
        if resume:
            run.resume(rank_tier, "rank")
            if detail_tier:
                run.resume(detail_tier, "detail")
        kids = cast(list[int], sorted({i // v.num_prices for i in np.flatnonzero(v.status == CANDIDATE)}))
        if ev.dominance and spec.objective in ("usd", "days"):
            kids = _dominance(run, rank_tier, kids, spec, notes)
        elif ev.dominance:
            notes.append(f"dominance pruning off: it holds for days and dollars, not for {spec.objective}")
        run.evaluate(rank_tier, "rank", kids, rank_tier)
        t_rank = time.perf_counter()
        frame = build_frame(space, v, run.results, run.priced, rank_tier, None, spec)
        top = _top_points(frame, spec, k)
        if detail_tier and top:
            run.evaluate(detail_tier, "detail", sorted({i // v.num_prices for i in top}), detail_tier)
        frame = build_frame(space, v, run.results, run.priced, rank_tier, detail_tier, spec)
        ranking = ranking_report(frame, top, rank_tier, detail_tier, spec.objective)
        store.finish(frame)
    except BaseException:
        if own:
            ex.abort()
        raise
    finally:
        store.flush()
        if own:
            ex.close()
    t_end = time.perf_counter()
    status = frame["status"].value_counts().to_dict()
    counts = {"points": space.size, "pruned_by_rule": counts_by_rule(v),
              "evaluated": int(frame["status"].isin(["ok", "oom"]).sum()),
              "by_status": {str(a): int(b) for a, b in status.items()}, **run.counts,
              "pareto": int(frame["pareto"].sum())}
    timings = {"prune_s": t_prune - t0, "rank_s": t_rank - t_prune, "detail_s": t_end - t_rank,
               "total_s": t_end - t0}
    return SweepResult(spec, space, frame, rank_tier, detail_tier, ranking, counts, notes,
                       sorted(run.warnings), timings)


def _top_points(frame: pd.DataFrame, spec: SweepSpec, k: int) -> list[int]:
    """The ``k`` best points by the objective among those evaluated that fit and meet the constraints, one
    per simulation."""
    if k <= 0:
        return []
    ok = frame[(frame["status"] == "ok") & frame["meets_constraints"].fillna(False).astype(bool)]
    ok = ok.sort_values([spec.objective, "index"])
    out, seen = [], set()
    num_prices = int(frame.attrs.get("num_prices", 1))
    for i in ok["index"]:
        kid = int(i) // num_prices
        if kid in seen:
            continue
        seen.add(kid)
        out.append(int(i))
        if len(out) >= k:
            break
    return out
