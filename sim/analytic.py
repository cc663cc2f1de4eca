"""The analytic tier: one step's time and breakdown without an event loop.

Same model as the engine's fast mode: every action takes the isolated duration of its work
(:func:`sim.engine.isolated_run` via :class:`sim.assemble.Assembler`, memoized by content; an action with
data-parallel tasks of its own, which fast mode runs task by task, is timed with the reductions it starts beside
it, which then start when they ran there, and waits for the buckets queued on its stream before it), an action
starts when
its rank is free and its inputs have arrived, a stage-boundary transfer takes the network's point-to-point time
and leaves when its action ends, sharing its link sides as the engine does: at its weighted share while other
work is in flight on them (earlier sends of the rank, the buckets of the rank's and the receiver's data-parallel
collectives: an overlapped parameter gather from the start, gradient reductions from the backward that fills
them or from its end), and each rank ends with its tail: waiting for those reductions, the optimizer and an
exposed parameter gather (a reduction left for the end starting after the rank's last send, as in the
engine). What it leaves out (:func:`sim.analytic_eval.evaluate`): collectives that start while a send is in
flight, a send slowing the collectives beside it, transfers of different ranks sharing one receiving side,
and an action's own communication and compute slowed by the background collectives beside it (its links and
SMs shared; fast mode runs such actions task by task). Measured against detailed mode: within 2 % on the
shipped workloads and the default job under every schedule (the dense examples exact); in a randomized check
of 600 configurations, those off by more than 3 % are where ZeRO-2's per-micro-batch reductions or gradient
buckets run beside context-parallel, tensor-parallel or expert exchanges (up to 16 % fast).

How the pipeline is combined (:mod:`sim.analytic_eval`), per schedule, under balanced routing (every
micro-batch of a stage has the same chunks): the schedule's max-plus recurrence is evaluated exactly at two
small micro-batch counts (``2 pp`` and ``6 pp``, see :func:`_fit`) and every per-rank quantity (end of the last
action, end of each stage's last reduction, busy sums, activation peak) is extended linearly to the scenario's
count: once the pipeline is full these periodic schedules add the same time per micro-batch (on average over a
short cycle). A third count (``10 pp``, at least 34) checks the line; where the quantities bend (a backlog of
data-parallel reductions that sets the pace only from some count on), and below ``2 pp`` micro-batches, the
schedule itself is evaluated.

Skewed routing (chunks differ per micro-batch) evaluates the full schedule with each action's own duration.

Caches, all explicit and keyed by everything their value depends on (:func:`clear_caches` empties them):
:data:`TABLES` holds what does not depend on the micro-batch count (durations, transfers, tail seconds,
memory per rank) per scenario minus its batch-size fields, together with the per-rank linear fits, so a sweep
over batch sizes or data-parallel degrees of one layout costs a few dictionary look-ups and sums per config.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from sim.analytic_eval import Evaluation, Table, build_table, evaluate
from sim.assemble import routing_is_skewed, scenario_key
from sim.config import Scenario, evolve
from sim.metrics import CATEGORIES, StepResult, result_of
from sim.pipeline import check_schedule
from sim.schedules.generators import build_schedule

__all__ = ["TABLES", "analytic_step", "clear_caches"]

#: Fields that change only how many micro-batches a step runs (or nothing a step computes).
BATCH_FIELDS: dict[str, Any] = {"name": True, "notes": True, "parallel": {"num_microbatches"},
                                "training": {"global_batch_size", "total_tokens", "batch_ramp", "phases"}}

Fit = tuple[list[float], list[float], int]  # intercepts, slopes (per micro-batch), smallest count it holds for


class TableCache:
    """:class:`~sim.analytic_eval.Table` per scenario key, least recently used first out."""

    def __init__(self, maxsize: int = 128) -> None:
        self.maxsize = maxsize
        self._d: OrderedDict[tuple, Table] = OrderedDict()

    def get(self, key: tuple | None, build: Callable[[], Table]) -> Table:
        hit = self._d.get(key) if key is not None else None
        if hit is None:
            hit = build()
            if key is not None:
                self._d[key] = hit
                if len(self._d) > self.maxsize:
                    self._d.popitem(last=False)
        else:
            assert key is not None  # a hit has a key
            self._d.move_to_end(key)
        return hit

    def clear(self) -> None:
        self._d.clear()

    def __len__(self) -> int:
        return len(self._d)


TABLES = TableCache()


def clear_caches() -> None:
    """Empty the analytic tier's tables (and the linear fits they carry)."""
    TABLES.clear()


def _table(scenario: Scenario, allow_cpu: bool, strict: bool) -> Table:
    """The scenario's table, from :data:`TABLES` or built. Under balanced routing it is built from the scenario
    at the fit's smallest micro-batch count (nothing in a table depends on the count; this skips generating
    the full schedule); skewed routing draws each micro-batch's loads, so its table is the scenario's own."""
    skewed = routing_is_skewed(scenario)
    base = scenario_key(scenario, None if skewed else BATCH_FIELDS)
    key = None if base is None else (*base, allow_cpu, strict)

    def build() -> Table:
        sample = scenario
        if not skewed:
            p = scenario.parallel
            m0 = _valid(p.schedule, p.pp, 2 * p.pp, p.vpp)
            sample = evolve(scenario, {"parallel.num_microbatches": None, "training.batch_ramp": None,
                                       "training.global_batch_size": m0 * scenario.dp * p.micro_batch_size})
        return build_table(sample, allow_cpu, strict)

    return TABLES.get(key, build)


def _valid(name: str, pp: int, n: int, vpp: int) -> int:
    """The smallest micro-batch count >= ``n`` the schedule accepts."""
    while check_schedule(name, pp, n, vpp) is not None:
        n += 1
    return n


def _step_of(name: str, pp: int) -> int:
    return pp if name == "interleaved-1f1b" else 2 if name == "dualpipe" else 1


def _flat(ev: Evaluation) -> list[float]:
    return [x for row in ev.per_rank for x in row]


#: Width of the fit's window, in micro-batches per pipeline rank.
FIT_WINDOW = 4
#: The window is at least this many ranks' worth (a one-rank pipeline is cheap to evaluate over 16 counts).
MIN_STAGES = 4
#: How far (relative to each quantity) the third count may sit off the line before the fit is not used.
FIT_TOLERANCE = 1e-3
#: The smallest count a fit that failed its check holds for: none (every count is evaluated directly).
INFINITE_COUNT = 2**62


def _fit(table: Table) -> Fit:
    """Per-rank quantities as ``a + b * n``: the secant through exact evaluations at ``m0`` (the smallest
    count >= 2 pp the schedule accepts: the pipeline is full) and ``m1 = m0 + w``, checked at ``m1 + w``
    (``w = FIT_WINDOW * max(pp, MIN_STAGES)``; off the line by more than ``FIT_TOLERANCE``: it holds for no
    count). Exact when
    the schedule adds the same time per micro-batch from ``m0`` on; where the added time cycles over a few
    micro-batches (transfers queueing behind each other in a repeating pattern), the secant follows the mean
    and misses by less than one cycle's ripple (measured: 4e-4 of a quantity at most on the default scenario
    under every schedule, ``tests/test_analytic.py``). Depends on the table alone, never on the count asked
    for, so results do not depend on call order."""
    name, pp, vpp = table.schedule, table.pp, table.vpp
    m0 = _valid(name, pp, 2 * pp, vpp)
    window = FIT_WINDOW * max(pp, MIN_STAGES)
    m1 = _valid(name, pp, m0 + window, vpp)
    m2 = _valid(name, pp, m1 + window, vpp)
    e0, e1, e2 = (_flat(evaluate(table, build_schedule(name, pp, m, vpp, table.combined_1f1b)))
                  for m in (m0, m1, m2))
    slopes = [(b - a) / (m1 - m0) for a, b in zip(e0, e1, strict=True)]
    intercepts = [b - s * m1 for b, s in zip(e1, slopes, strict=True)]
    # A third count checks the line: where the data-parallel stream, not the pipeline, sets a rank's pace from
    # some count on (a backlog of reductions that only starts to grow there), the quantities bend, and a line
    # through two counts before the bend misses by tens of per cent further out. Then nothing is extended.
    if any(abs(a + s * m2 - x) > FIT_TOLERANCE * max(abs(x), 1e-9)
           for a, s, x in zip(intercepts, slopes, e2, strict=True)):
        return intercepts, slopes, INFINITE_COUNT
    return intercepts, slopes, m0


def _per_rank(table: Table, n: int) -> list[list[float]]:
    """Per rank: the row of :class:`~sim.analytic_eval.Evaluation` at ``n`` micro-batches."""
    name, pp, vpp = table.schedule, table.pp, table.vpp
    if not table.skewed:
        if table.fit is None:
            table.fit = _fit(table)
        if n >= table.fit[2]:
            a, b, _ = table.fit
            flat = [x + s * n for x, s in zip(a, b, strict=True)]
            width = len(flat) // pp
            return [flat[r * width:(r + 1) * width] for r in range(pp)]
    hit = table.evaluated.get(n)
    if hit is None:
        hit = table.evaluated[n] = evaluate(table, build_schedule(name, pp, n, vpp, table.combined_1f1b)).per_rank
    return hit


def _tail(table: Table, r: int, finish: float, sent: float, syncs: list[float]) -> tuple[float, float]:
    """When rank ``r``'s step ends, and how long it waits for gradient synchronization after its last action
    (``syncs``: when each of its stages' synchronization ends, when reductions run beside the actions: with
    ``overlap_grad_reduce``, after every micro-batch or after each stage's last backward; ``sent``: when its
    last send arrived, after which a reduction left for the end starts, as in the engine)."""
    end_bg = table.prologue_s[r]  # the overlapped parameter gather runs on the stream from the start
    if table.overlap_grad_reduce or table.reduce_every or table.after_stage:
        end_bg = max(end_bg, *syncs)
    else:  # started after the rank's last send, one after the other
        t = max(end_bg, finish, sent)
        for stage in table.stages[r]:
            t += table.grad_sync_s[stage]
        end_bg = t
    waited = max(finish, end_bg)
    return waited + table.tied_sync_s[r] + table.optimizer_s[r] + table.exposed_gather_s[r], waited - finish


def analytic_step(scenario: Scenario, *, allow_cpu_calibration: bool = False,
                  strict_calibration: bool = True) -> StepResult:
    """One step of ``scenario`` by the analytic tier (see the module docstring); no trace."""
    t0 = time.perf_counter()
    table = _table(scenario, allow_cpu_calibration, strict_calibration)
    n = scenario.num_microbatches
    rows = _per_rank(table, n)
    ends, waits = [], []
    for r, row in enumerate(rows):
        end, wait = _tail(table, r, row[0], row[Evaluation.SENT],
                          row[Evaluation.SYNCS:Evaluation.SYNCS + len(table.stages[r])])
        ends.append(end)
        waits.append(wait)
    step = max(ends)
    per_rank = []
    for r, row in enumerate(rows):
        dur, bf, bi, bw, ov = row[1:Evaluation.PEAK]
        b = dict.fromkeys(CATEGORIES, 0.0)
        b["forward"], b["backward_input"], b["backward_weight"], b["overlapped"] = bf, bi, bw, ov
        b["exposed_comm"] = (dur - bf - bi - bw - ov) + waits[r] + table.exposed_gather_s[r] + table.tied_sync_s[r]
        b["optimizer"] = table.optimizer_s[r]
        b["bubble"] = max(0.0, step - sum(v for k, v in b.items() if k != "bubble"))
        per_rank.append(b)
    return _result(scenario, table, step, per_rank, [row[0] for row in rows],
                   [row[Evaluation.PEAK] for row in rows], time.perf_counter() - t0)


def _result(s: Scenario, table: Table, step: float, per_rank: list[dict[str, float]], finish: list[float],
            peaks: list[float], wall_s: float) -> StepResult:
    rows = [{"rank": r, "weights_bytes": w, "gradients_bytes": g, "optimizer_bytes": o,
             "activations_bytes": peaks[r], "total_bytes": w + g + o + peaks[r]}
            for r, (w, g, o) in enumerate(table.model_states)]
    return result_of(s, mode="analytic", step=step, per_rank=per_rank, finish=finish, memory_rows=rows,
                     imbalance=table.imbalance, num_events=0, wall_s=wall_s, notes=list(table.notes),
                     warnings=list(table.warnings), trace=None)
