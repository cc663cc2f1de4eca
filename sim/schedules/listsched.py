"""A list scheduler: executes a schedule with given durations and no communication (no SimPy).

``simulate(schedule, durations) -> ScheduleResult``. Each rank runs its actions in order; an action starts
when the rank is free and every data dependency (:meth:`Schedule.dependencies`) has finished, with zero
transfer latency; an overlapped pair delivers both of its outputs when it ends. This zero-latency model is our
own, used to check published bubble formulas (DeepSeek-V3 report Table 2; deepseek-ai/DualPipe README; arXiv
2401.10241).

Durations are a :class:`Durations` (F, full B, W, F&B; backward-for-input I takes ``b - w``; an F&I pair
takes ``fb - w``) or any callable ``(action) -> seconds``.

Definitions used in the result:

- ``busy`` of a rank: the sum of its actions' durations; ``idle`` (the bubble) = makespan - busy, so it
  counts the wait before the first action and after the last one.
- ``makespan``: the latest end time; every rank starts at time 0.
- An *activation* is one (stage, micro-batch) chunk's stored activations, held on its rank from the start of
  its F until the end of the backward that frees it: by default the B, or the W when the backward is split
  (``release="weights"``: a deferred W still needs the layer inputs). ``release="input"`` frees at the end
  of B or I instead. A pair acquires its F's activation at its start and frees its B's at its end, so both
  are held while it runs. Ranks run one action at a time, so the peak depends only on the order, not on
  the durations. Measured: DualPipe and DualPipeV peak at PP+1 (PP = stages) on every rank under both rules,
  as the DualPipe README's table says; ZB1P peaks at PP on every rank counting until W (ZB-H1 "does not
  exceed 1F1B's peak memory", arXiv 2401.10241) and like 1F1B (PP - r on rank r) counting until I.

The executor is dependency-driven: a rank advances until its next action waits on an unfinished
dependency, then parks on that dependency; finishing an action wakes the ranks parked on it. It costs
O(actions + dependencies) in plain Python loops.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sim.errors import SimInputError
from sim.schedules.actions import Action, Phase, Schedule
from sim.schedules.ticks import tick_grid

Release = Literal["weights", "input"]


@dataclass(frozen=True, slots=True)
class Durations:
    """Uniform chunk durations: forward, full backward, backward-for-weights, overlapped forward+backward."""

    f: float = 1.0
    b: float = 2.0
    w: float = 1.0
    fb: float = 3.0

    def __post_init__(self) -> None:
        if not all(math.isfinite(x) for x in (self.f, self.b, self.w, self.fb)):
            raise SimInputError(f"durations must be finite (got f={self.f}, b={self.b}, w={self.w}, fb={self.fb})")
        if min(self.f, self.b, self.w, self.fb) < 0:
            raise SimInputError(f"durations must be >= 0 (got f={self.f}, b={self.b}, w={self.w}, fb={self.fb})")
        if self.w > self.b:
            raise SimInputError(f"w (backward for weights) must be <= b, the full backward (got w={self.w}, "
                                f"b={self.b})")

    def scaled(self, k: float) -> Durations:
        return Durations(self.f * k, self.b * k, self.w * k, self.fb * k)

    def __call__(self, action: Action) -> float:
        p = action.phase
        if p is Phase.FB:
            assert action.bwd is not None
            return self.fb - (self.w if action.bwd.phase is Phase.I else 0.0)
        return {Phase.F: self.f, Phase.B: self.b, Phase.I: self.b - self.w, Phase.W: self.w}[p]


@dataclass(frozen=True, slots=True)
class ScheduleResult:
    """Timing of one executed schedule; per-rank tuples are indexed by rank, ``start``/``end`` by rank, slot."""

    makespan: float
    busy_per_rank: tuple[float, ...]
    idle_per_rank: tuple[float, ...]
    finish_per_rank: tuple[float, ...]
    peak_activations_per_rank: tuple[int, ...]
    start: tuple[tuple[float, ...], ...]
    end: tuple[tuple[float, ...], ...]

    @property
    def bubble_total(self) -> float:
        return sum(self.idle_per_rank)

    @property
    def bubble_max(self) -> float:
        return max(self.idle_per_rank)


# Duration classes of compiled actions: F, B, I, W, F&B, F&I.
_CLASS = {Phase.F: 0, Phase.B: 1, Phase.I: 2, Phase.W: 3}


@dataclass(frozen=True, slots=True)
class _Compiled:
    """Per rank and slot: up to two dependency keys and two produced keys (-1: none), a duration class."""

    dep_a: tuple[list[int], ...]
    dep_b: tuple[list[int], ...]
    made_a: tuple[list[int], ...]
    made_b: tuple[list[int], ...]
    cls: tuple[list[int], ...]
    peak: tuple[int, ...]
    num_keys: int


def _part(p: Action, n_st: int, m_per: int, k: int) -> tuple[int, int, int]:
    """(dependency key, produced key, class) of a plain action; keys are -1 when absent."""
    base = (p.direction * n_st + p.stage) * m_per + p.microbatch
    ph = p.phase
    if ph is Phase.F:
        return (base - m_per if p.stage else -1), base, 0
    if ph is Phase.W:
        return k + base, -1, 3
    return (base if p.stage == n_st - 1 else k + base + m_per), k + base, _CLASS[ph]


Columns = tuple[list[int], list[int], list[int], list[int], list[int]]


def _compile_rank(actions: tuple[Action, ...], n_st: int, m_per: int, k: int, frees: Phase) -> tuple[Columns, int]:
    """One rank's columns (dep_a, dep_b, made_a, made_b, cls) and its peak activations.

    Peak activations need no times: a rank runs its actions one after another, so every release of an
    earlier action precedes the next action's acquisition.
    """
    cols: Columns = ([], [], [], [], [])
    da, db, ma, mb, cl = cols
    live = peak = 0
    for a in actions:
        if a.fwd is not None and a.bwd is not None:
            d1, m1, _ = _part(a.fwd, n_st, m_per, k)
            d2, m2, c2 = _part(a.bwd, n_st, m_per, k)
            da.append(d1 if d1 != m2 else -1)
            db.append(d2 if d2 != m1 else -1)  # a pair's own forward is not a dependency
            ma.append(m1)
            mb.append(m2)
            cl.append(4 if c2 == 1 else 5)
            peak = max(peak, live + 1)
            live += 0 if a.bwd.phase is Phase.B or a.bwd.phase is frees else 1
            continue
        d1, m1, c1 = _part(a, n_st, m_per, k)
        da.append(d1)
        db.append(-1)
        ma.append(m1)
        mb.append(-1)
        cl.append(c1)
        if c1 == 0:
            live += 1
            peak = max(peak, live)
        elif a.phase is Phase.B or a.phase is frees:
            live -= 1
    return cols, peak


def _compile(s: Schedule, release: Release) -> _Compiled:
    """Integer keys for 'forward done' (d, s, m) and 'input gradient done' (K + ...) of every chunk."""
    n_st, m_per = s.num_stages, max(1, s.microbatches_per_direction)
    k = s.num_directions * n_st * m_per
    frees = Phase.W if release == "weights" else Phase.I
    ranks = [_compile_rank(actions, n_st, m_per, k, frees) for actions in s.ranks]
    col = [tuple(cols[i] for cols, _ in ranks) for i in range(5)]
    return _Compiled(col[0], col[1], col[2], col[3], col[4], tuple(p for _, p in ranks), 2 * k)


def _execute(c: _Compiled, dur: list[list[float]]) -> tuple[list[list[float]], list[int]]:
    """Start times per rank and slot (the end is start + duration), and how far each rank got."""
    n_ranks = len(c.cls)
    done = [-1.0] * c.num_keys  # end time of the action that produced each key, -1 while unfinished
    parked: dict[int, list[int]] = {}
    ptr = [0] * n_ranks
    free = [0.0] * n_ranks
    starts: list[list[float]] = [[0.0] * len(c.cls[r]) for r in range(n_ranks)]
    ready = list(range(n_ranks - 1, -1, -1))
    while ready:
        r = ready.pop()
        dep_a, dep_b, made_a, made_b, d_r, s_r = c.dep_a[r], c.dep_b[r], c.made_a[r], c.made_b[r], dur[r], starts[r]
        i, t, n = ptr[r], free[r], len(d_r)
        while i < n:
            key = dep_a[i]
            if key >= 0:
                e = done[key]
                if e < 0.0:
                    parked.setdefault(key, []).append(r)
                    break
                if e > t:
                    t = e
            key = dep_b[i]
            if key >= 0:
                e = done[key]
                if e < 0.0:
                    parked.setdefault(key, []).append(r)
                    break
                if e > t:
                    t = e
            s_r[i] = t
            t += d_r[i]
            for key in (made_a[i], made_b[i]):
                if key >= 0:
                    done[key] = t
                    if parked and key in parked:
                        ready.extend(parked.pop(key))
            i += 1
        ptr[r], free[r] = i, t
    return starts, ptr


def _compiled(schedule: Schedule, release: Release) -> _Compiled:
    """The compiled form, cached on the (immutable) schedule."""
    cache = schedule._cache
    hit = cache.get(release)
    if not isinstance(hit, _Compiled):
        hit = cache[release] = _compile(schedule, release)
    return hit


def _durations(comp: _Compiled, schedule: Schedule,
               durations: Durations | Callable[[Action], float]) -> list[list[float]]:
    if isinstance(durations, Durations):
        d = durations
        table = (d.f, d.b, d.b - d.w, d.w, d.fb, d.fb - d.w)
        return [[table[c] for c in row] for row in comp.cls]
    dur = [[float(durations(a)) for a in actions] for actions in schedule.ranks]
    if any(x < 0 for row in dur for x in row):
        raise SimInputError("durations must be >= 0")
    return dur


def simulate(schedule: Schedule, durations: Durations | Callable[[Action], float] = Durations(),
             release: Release = "weights") -> ScheduleResult:
    """Execute ``schedule`` with ``durations`` and zero communication latency.

    Raises :class:`ScheduleError` (with a rank-by-time grid) if it deadlocks.
    """
    comp = _compiled(schedule, release)
    dur = _durations(comp, schedule, durations)
    starts, progress = _execute(comp, dur)
    if any(p < len(a) for p, a in zip(progress, schedule.ranks, strict=True)):
        raise deadlock_error(schedule)
    ends = [[s + d for s, d in zip(sr, dr, strict=True)] for sr, dr in zip(starts, dur, strict=True)]
    busy = tuple(sum(dr) for dr in dur)
    finish = tuple(e[-1] if e else 0.0 for e in ends)
    makespan = max(finish, default=0.0)
    return ScheduleResult(makespan, busy, tuple(makespan - b for b in busy), finish, comp.peak,
                          tuple(tuple(s) for s in starts), tuple(tuple(e) for e in ends))


class ScheduleError(SimInputError):
    """An invalid schedule; the message ends with a rank-by-time grid."""


def schedule_error(schedule: Schedule, problems: list[str], starts: list[list[float]] | None = None,
           progress: list[int] | None = None) -> ScheduleError:
    shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
    grid = tick_grid(schedule, starts, progress)
    return ScheduleError(f"schedule {schedule.name!r} is invalid:\n  " + "\n  ".join(shown) + "\n" + grid)


def unit_run(schedule: Schedule) -> tuple[list[list[float]], list[int]]:
    """Start ticks per rank and slot of a unit-duration dry run, and how far each rank got."""
    return _execute(_compiled(schedule, "weights"), [[1.0] * len(a) for a in schedule.ranks])


def deadlock_error(schedule: Schedule) -> ScheduleError:
    """The error for a run that stops early, with a unit-time grid up to where each rank got stuck."""
    starts, progress = unit_run(schedule)
    stuck = [f"rank {r} waits forever at slot {p}: {schedule.ranks[r][p]}"
             for r, p in enumerate(progress) if p < len(schedule.ranks[r])]
    return schedule_error(schedule, ["deadlock: " + "; ".join(stuck[:4]) + (" ..." if len(stuck) > 4 else "")],
                  starts, progress)
