"""Schedule validator: ``validate(schedule) -> None`` or :class:`ScheduleError` with a rank-by-time grid.

Checks, in order:

1. shape: one action tuple per rank; indices within the schedule's stages, micro-batches and directions;
2. placement: every action (both halves of a pair) on the rank that owns its stage (:meth:`Schedule.rank_of`);
3. completeness: every (direction, stage, micro-batch) has exactly one F and either exactly one B, or exactly
   one I and one W; a pair never overlaps a backward with the forward it depends on;
4. dependencies in order and no deadlock: a dry run of the list scheduler with unit durations must run every
   action (a same-rank dependency placed after its consumer, or a cross-rank cycle, stops it).

The grid (:func:`sim.schedules.ticks.tick_grid`) shows what ran at each unit time step and, with ``!``, the
action each rank is stuck on.
"""

from __future__ import annotations

from sim.schedules.actions import Phase, Schedule
from sim.schedules.listsched import ScheduleError, deadlock_error, schedule_error, unit_run

__all__ = ["ScheduleError", "deadlock_error", "validate"]


def _chunk(d: int, stage: int, m: int) -> str:
    return f"stage {stage} micro-batch {m}" + (" of direction 1" if d else "")


def _shape_problems(s: Schedule) -> list[str]:
    if len(s.ranks) != s.num_ranks:
        return [f"{len(s.ranks)} action lists for {s.num_ranks} ranks"]
    if s.num_microbatches % s.num_directions:
        return [f"{s.num_microbatches} micro-batches do not split over {s.num_directions} directions"]
    m = s.microbatches_per_direction
    out = []
    for r, actions in enumerate(s.ranks):
        for i, a in enumerate(actions):
            for p in a.parts():
                if p.stage >= s.num_stages or p.microbatch >= m or p.direction >= s.num_directions:
                    out.append(f"rank {r} slot {i}: {a} is outside {s.num_stages} stages x {m} micro-batches "
                               f"x {s.num_directions} directions")
                elif s.rank_of(p.stage, p.direction) != r:
                    out.append(f"rank {r} slot {i}: {a} belongs on rank {s.rank_of(p.stage, p.direction)}")
    return out


def _completeness_problems(s: Schedule) -> list[str]:
    n_st, m_per = s.num_stages, s.microbatches_per_direction
    counts = {ph: [0] * (s.num_directions * n_st * m_per) for ph in (Phase.F, Phase.B, Phase.I, Phase.W)}
    out = []
    for r, actions in enumerate(s.ranks):
        for i, a in enumerate(actions):
            for p in a.parts():
                counts[p.phase][(p.direction * n_st + p.stage) * m_per + p.microbatch] += 1
            b = a.bwd
            if b is not None and b.stage == n_st - 1 and (b.stage, b.microbatch, b.direction) == (
                    a.stage, a.microbatch, a.direction):
                out.append(f"rank {r} slot {i}: {a} overlaps a backward with the forward it needs")
    for key, (f, b, i, w) in enumerate(zip(*counts.values(), strict=True)):
        if f == 1 and (b, i, w) in ((1, 0, 0), (0, 1, 1)):
            continue
        dst, m = divmod(key, m_per)
        name = _chunk(*divmod(dst, n_st), m)
        if f != 1:
            out.append(f"{name} has {f} forwards; needs exactly one")
        if (b, i, w) not in ((1, 0, 0), (0, 1, 1)):
            out.append(f"{name} has {b} B, {i} I, {w} W; needs one B, or one I and one W")
    return out


def validate(schedule: Schedule) -> None:
    """Raise :class:`ScheduleError` unless ``schedule`` is complete, well placed, ordered and deadlock-free."""
    problems = _shape_problems(schedule)
    if problems:
        raise schedule_error(schedule, problems)
    problems = _completeness_problems(schedule)
    starts, progress = unit_run(schedule)
    if problems:
        raise schedule_error(schedule, problems, starts, progress)
    if any(p < len(a) for p, a in zip(progress, schedule.ranks, strict=True)):
        raise deadlock_error(schedule)
