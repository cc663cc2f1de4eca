"""Engine invariants over random schedules and random task durations (hypothesis), and its exact agreement
with the list scheduler when there is no communication.

A synthetic program gives every action a few compute and communication tasks with seeded random durations,
so the engine is exercised independently of the cost model.
"""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.engine import (
    PlannedAction,
    RankPlan,
    Send,
    SimulationError,
    TailItem,
    isolated_run,
    isolated_run_beside,
    run_pipeline,
)
from sim.program.chunks import Chunk
from sim.program.pairs import merge_pair
from sim.program.tasks import NIC, NVLINK, Task, Work
from sim.schedules.actions import Action
from sim.schedules.actions import Phase as P
from sim.schedules.generators import build_schedule
from sim.schedules.listsched import simulate
from sim.timeline import Stream

SCHEDULES = ["gpipe", "1f1b", "interleaved-1f1b", "zb1p", "dualpipe", "dualpipev"]


def chunk_for(kind: str, seed: int, scale: float, comm_scale: float) -> Chunk:
    """A two-layer chunk: compute tasks and all-to-all-like communication with random durations."""
    rng = random.Random(seed)
    tasks: list[Task] = []
    groups = []
    last: int | None = None
    for _layer in range(2):
        start = len(tasks)
        for i in range(2):
            c = scale * rng.uniform(0.5, 2.0)
            m = scale * comm_scale * rng.uniform(0.1, 1.5)
            part = "F" if kind == "F" else "I"
            tasks.append(Task(f"c{i}", part, Stream.COMPUTE, c, () if last is None else (last,)))
            last = len(tasks) - 1
            tasks.append(Task(f"m{i}", part, Stream.COMM, m, (last,), links=NIC, holds_sms=True))
            last = len(tasks) - 1
        if kind in ("B", "W"):
            tasks.append(Task("w", "W", Stream.COMPUTE, scale * rng.uniform(0.2, 1.0),
                              (last,) if kind == "B" else ()))
        groups.append(tuple(range(start, len(tasks))))
    if kind == "W":
        tasks = [Task(t.name, t.part, t.stream, t.seconds) for t in tasks if t.part == "W"]
        groups = [(0,), (1,)]
    ts = tuple(tasks)
    return Chunk(kind, ts, tuple(groups), Work.of(ts))  # type: ignore[arg-type]


def plans_for(schedule, seed: int, scale: float = 1.0, comm_scale: float = 1.0, send_s: float = 0.3,
              tail: bool = False) -> list[RankPlan]:
    cache: dict = {}

    def chunk(a: Action) -> Chunk:
        key = (a.phase, a.stage, a.microbatch, a.direction)
        if key not in cache:
            cache[key] = chunk_for(a.phase.value, hash((seed, key)) & 0xFFFF, scale, comm_scale)
        return cache[key]

    def work(a: Action) -> Work:
        return merge_pair(chunk(a.fwd), chunk(a.bwd)) if a.phase is P.FB else chunk(a).work

    last = schedule.num_stages - 1

    def inputs(a):
        keys = []
        for p in a.parts():
            if p.phase is P.F and p.stage > 0:
                keys.append(("F", p.direction, p.stage - 1, p.microbatch))
            elif p.phase in (P.B, P.I) and p.stage < last:
                keys.append(("B", p.direction, p.stage + 1, p.microbatch))
        return tuple(k for k in keys if not any(k == ("F" if q.phase is P.F else "B", q.direction, q.stage,
                                                      q.microbatch) for q in a.parts()))

    def outputs(a):
        out = []
        for p in a.parts():
            if p.phase is P.F and p.stage < last:
                out.append(Send(("F", p.direction, p.stage, p.microbatch), schedule.rank_of(p.stage + 1, p.direction),
                                send_s * scale * comm_scale, NIC))
            elif p.phase in (P.B, P.I) and p.stage > 0:
                out.append(Send(("B", p.direction, p.stage, p.microbatch), schedule.rank_of(p.stage - 1, p.direction),
                                send_s * scale * comm_scale, NIC))
        return tuple(out)

    opt = Work.of((Task("optimizer", "tail", Stream.COMPUTE, scale),))
    grad = Work.of((Task("grad", "tail", Stream.DP, 0.5 * scale * comm_scale, links=NIC, holds_sms=True),))
    return [RankPlan(tuple(PlannedAction(work(a), str(a), "overlapped" if a.phase is P.FB else "forward",
                                         inputs(a), outputs(a)) for a in actions),
                     end_triggers=(grad,) if tail else (), tail=(TailItem(opt, "optimizer", "optimizer"),) if tail
                     else ())
            for actions in schedule.ranks]


def run(name, pp, n, seed, scale=1.0, comm_scale=1.0, comm_sms=0, tail=False):
    vpp = 2 if name == "interleaved-1f1b" else 1
    sched = build_schedule(name, pp, n, vpp)
    res = run_pipeline(plans_for(sched, seed, scale, comm_scale, tail=tail), num_sms=132, comm_sms=comm_sms)
    return sched, res.makespan_s, res.trace


def layouts():
    @st.composite
    def draw(draw):
        name = draw(st.sampled_from(SCHEDULES))
        pp = draw(st.sampled_from([2, 4]))
        if name == "dualpipe":
            n = 2 * pp + 2 * draw(st.integers(0, 3))
        elif name == "dualpipev":
            n = 2 * pp + draw(st.integers(0, 4))
        elif name == "interleaved-1f1b":
            n = pp * draw(st.integers(1, 3))
        else:
            n = draw(st.integers(1, 10))
        return name, pp, n, draw(st.integers(0, 10_000))
    return draw()


SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(layouts())
def test_one_task_at_a_time_per_stream_and_every_action_runs(layout):
    name, pp, n, seed = layout
    sched, _, trace = run(name, pp, n, seed)
    assert len(trace.actions) == sched.num_actions
    by_stream: dict = {}
    for t in trace.tasks:
        by_stream.setdefault((t.rank, t.stream), []).append((t.start, t.end))
    for spans in by_stream.values():
        spans.sort()
        for (_s0, e0), (s1, _e1) in itertools.pairwise(spans):
            assert s1 >= e0 - 1e-12
    actions: dict = {}
    for a in trace.actions:
        actions.setdefault(a.rank, []).append((a.start, a.end))
    for spans in actions.values():
        for (_s0, e0), (s1, _e1) in itertools.pairwise(spans):
            assert s1 >= e0 - 1e-12


@SETTINGS
@given(layouts())
def test_dependencies_respected(layout):
    name, pp, n, seed = layout
    sched, _, trace = run(name, pp, n, seed)
    end_of: dict = {}
    start_of: dict = {}
    for a in trace.actions:
        for part in a.label.split("&"):
            end_of[part] = a.end
            start_of[part] = a.start
    for actions in sched.ranks:
        for a in actions:
            for dep in sched.dependencies(a):
                for part in a.parts():
                    if dep in sched.dependencies(part):
                        assert start_of[str(part)] >= end_of[str(dep)] - 1e-12


@SETTINGS
@given(layouts(), st.floats(0.1, 10.0))
def test_deterministic_and_scaling_durations_scales_step(layout, k):
    name, pp, n, seed = layout
    _, base, t1 = run(name, pp, n, seed, tail=True)
    _, again, t2 = run(name, pp, n, seed, tail=True)
    assert base == again and t1.tasks == t2.tasks
    _, scaled, _ = run(name, pp, n, seed, scale=k, tail=True)
    assert scaled == pytest.approx(k * base, rel=1e-9)


@SETTINGS
@given(layouts(), st.floats(0.05, 1.0), st.sampled_from([0, 20]))
def test_more_bandwidth_never_slows_the_step(layout, factor, comm_sms):
    """Shorter transfers (more bandwidth), same action order: the step is never longer. Without SM sharing
    the streams form a max-plus system, monotone in every duration; with it (compute slowed while
    communication runs) monotonicity is not guaranteed in general, but none of our searches found a case."""
    name, pp, n, seed = layout
    _, base, _ = run(name, pp, n, seed, comm_sms=comm_sms)
    _, faster, _ = run(name, pp, n, seed, comm_scale=factor, comm_sms=comm_sms)
    assert faster <= base + 1e-9


@SETTINGS
@given(layouts())
def test_sm_sharing_only_slows_compute(layout):
    name, pp, n, seed = layout
    _, free, _ = run(name, pp, n, seed, comm_sms=0)
    _, shared, _ = run(name, pp, n, seed, comm_sms=20)
    assert shared >= free - 1e-9


@pytest.mark.parametrize(("name", "pp", "n"), [("gpipe", 4, 6), ("1f1b", 4, 8), ("interleaved-1f1b", 2, 4),
                                               ("zb1p", 4, 8), ("dualpipe", 4, 10), ("dualpipev", 2, 6)])
def test_engine_equals_the_list_scheduler_without_communication(name, pp, n):
    """With no communication and zero-cost sends, actions are pure compute: the engine's makespan is exactly
    the list scheduler's for the same per-action durations (both are max-plus evaluations of one order)."""
    vpp = 2 if name == "interleaved-1f1b" else 1
    sched = build_schedule(name, pp, n, vpp)
    plans = plans_for(sched, seed=7, comm_scale=0.0, send_s=0.0)
    duration = {str(a): isolated_run(plan_action.work, 132, 0)[0]
                for actions, plan in zip(sched.ranks, plans, strict=True)
                for a, plan_action in zip(actions, plan.actions, strict=True)}
    engine = run_pipeline(plans, num_sms=132, comm_sms=0).makespan_s
    fast = run_pipeline([RankPlan(tuple(PlannedAction(pa.work, pa.label, pa.category, pa.inputs, pa.outputs,
                                                      timed=isolated_run(pa.work, 132, 0)) for pa in p.actions))
                         for p in plans], num_sms=132, comm_sms=0, fast=True).makespan_s
    listed = simulate(sched, lambda a: duration[str(a)]).makespan
    assert engine == pytest.approx(listed, rel=1e-12)
    assert fast == pytest.approx(listed, rel=1e-12)


def test_sm_sharing_by_hand():
    """Compute of 1 s beside a 0.5 s transfer holding 33 of 132 SMs: compute runs at 3/4 rate for 0.5 s
    (0.375 s of work), then at full rate for the remaining 0.625 s: 1.125 s in all."""
    work = Work.of((Task("c", "F", Stream.COMPUTE, 1.0), Task("m", "F", Stream.COMM, 0.5, links=NIC,
                                                              holds_sms=True)))
    makespan, busy = isolated_run(work, 132, 33)
    assert makespan == pytest.approx(1.125)
    assert busy == pytest.approx((1.125, 0.0, 0.0))


def test_links_are_shared_equally_by_the_transfers_on_them():
    """Two 1 s transfers on one GPU's NIC (different streams) share it: each at half rate, both end at 2 s.
    A 0.1 s one beside a 1 s one: half rate while both run, so the short one ends at 0.2 s (not after the long
    one, at 1.1 s, as first come first served would have it) and the long one at 1.1 s (its own 1 s plus the
    other's 0.1 s): the link carries its full rate throughout, never more."""
    def ends(a_s: float, b_s: float) -> dict[str, float]:
        work = Work.of((Task("a", "F", Stream.COMM, a_s, links=NIC), Task("b", "F", Stream.DP, b_s, links=NIC)))
        res = run_pipeline([RankPlan((PlannedAction(work, "F0.0", "forward"),))], num_sms=132, comm_sms=0)
        return {t.name: t.end for t in res.trace.tasks}

    assert ends(1.0, 1.0) == {"a": pytest.approx(2.0), "b": pytest.approx(2.0)}
    assert ends(0.1, 1.0) == {"a": pytest.approx(0.2), "b": pytest.approx(1.1)}
    assert isolated_run(Work.of((Task("a", "F", Stream.COMM, 1.0, links=NIC),)), 132, 0)[0] == pytest.approx(1.0)


def test_background_works_share_the_isolated_works_data_parallel_stream():
    """A work gathers 1 s on the data-parallel stream, then computes 1 s on what it gathered. A 2 s reduction
    started with it (delay 0) takes the stream first, as the engine starts it before the action's work: the
    gather waits until 2 s, the compute ends at 4 s, the reduction at 2 s. Started 0.5 s in, the reduction waits
    for the gather (the stream is one queue): the work ends at 2 s and the reduction at 1 + 2 = 3 s. The
    background's own time is not the work's: busy seconds count the work's compute only."""
    work = Work.of((Task("g", "I", Stream.DP, 1.0, links=NIC), Task("c", "I", Stream.COMPUTE, 1.0, deps=(0,))))
    reduce = Work.of((Task("rs", "I", Stream.DP, 2.0, links=NIC),))
    makespan, busy, ends = isolated_run_beside(work, 132, 0, background=((0.0, reduce),))
    assert (makespan, ends) == (pytest.approx(4.0), (pytest.approx(2.0),))
    assert busy == (0.0, pytest.approx(1.0), 0.0)
    makespan, _busy, ends = isolated_run_beside(work, 132, 0, background=((0.5, reduce),))
    assert (makespan, ends) == (pytest.approx(2.0), (pytest.approx(3.0),))
    assert isolated_run(work, 132, 0)[0] == isolated_run_beside(work, 132, 0)[0] == pytest.approx(2.0)


def test_a_send_shares_the_receivers_nic_with_its_collective():
    """Rank 1 starts a 1 s data-parallel collective at 0 (its NIC's both sides); rank 0 finishes a 0.5 s action
    and sends 0.25 s to rank 1 at 0.5 s. The send shares rank 1's receive side: half rate, arriving at 1.0 s,
    and the collective, slowed meanwhile, ends at 1.25 s. Rank 1's action waits for the arrival (1.0 s) and
    computes 1 s: the step ends at 2.0 s (first come first served: the send after the collective, 1.25 s, then
    2.25 s)."""
    key = ("F", 0, 0, 0)
    compute = Work.of((Task("c", "F", Stream.COMPUTE, 0.5),))
    grad = Work.of((Task("g", "tail", Stream.DP, 1.0, links=NIC),))
    plans = [RankPlan((PlannedAction(compute, "F0.0", "forward", outputs=(Send(key, 1, 0.25, NIC, "F0.0"),)),)),
             RankPlan((PlannedAction(Work.of((Task("c", "F", Stream.COMPUTE, 1.0),)), "F1.0", "forward",
                                     inputs=(key,)),), prologue=(grad,))]
    res = run_pipeline(plans, num_sms=132, comm_sms=0)
    assert [(t.start, t.end) for t in res.trace.transfers] == [(pytest.approx(0.5), pytest.approx(1.0))]
    assert {t.name: t.end for t in res.trace.tasks if t.rank == 1} == {"g": pytest.approx(1.25),
                                                                      "c": pytest.approx(2.0)}
    assert res.makespan_s == pytest.approx(2.0)


def test_a_send_weighs_its_share_against_a_collective():
    """A send of weight 1/8 (2 channels against a collective's 16) beside a collective on the receiver's NIC
    moves at (1/8) / (1 + 1/8) = 1/9 of the rate: 0.1 s of data takes 0.9 s while the 2 s collective runs,
    which ends 0.1 s late (2.1 s): the link carries its full rate throughout."""
    key = ("F", 0, 0, 0)
    plans = [RankPlan((PlannedAction(Work.of((Task("c", "F", Stream.COMPUTE, 0.5),)), "F0.0", "forward",
                                     outputs=(Send(key, 1, 0.1, NIC, "F0.0", weight=0.125),)),)),
             RankPlan((PlannedAction(Work.of((Task("c", "F", Stream.COMPUTE, 0.1),)), "F1.0", "forward",
                                     inputs=(key,)),), prologue=(Work.of((Task("g", "tail", Stream.DP, 2.0,
                                                                               links=NIC),)),))]
    res = run_pipeline(plans, num_sms=132, comm_sms=0)
    assert [(t.start, t.end) for t in res.trace.transfers] == [(pytest.approx(0.5), pytest.approx(1.4))]
    assert {t.name: t.end for t in res.trace.tasks if t.rank == 1} == {"g": pytest.approx(2.1),
                                                                      "c": pytest.approx(1.5)}


def test_a_reduction_left_for_the_end_waits_for_the_last_of_two_sends():
    """Rank 0 sends 0.1 s to rank 1 over NVLink and 0.4 s to rank 2 over its NIC at 0.5 s (different sides:
    each at the full rate): arrivals at 0.6 and 0.9 s; its reduction left for the end starts at 0.9 s, not at
    the first arrival."""
    grad = Work.of((Task("g", "tail", Stream.DP, 1.0, links=NIC),))
    a, b = ("F", 0, 0, 0), ("F", 0, 0, 1)
    plans = [RankPlan((PlannedAction(Work.of((Task("c", "F", Stream.COMPUTE, 0.5),)), "F0.0", "forward",
                                     outputs=(Send(a, 1, 0.1, NVLINK, "a"), Send(b, 2, 0.4, NIC, "b"))),),
                      end_triggers=(grad,)),
             RankPlan((PlannedAction(Work.of((Task("c", "F", Stream.COMPUTE, 0.1),)), "F1.0", "forward",
                                     inputs=(a,)),)),
             RankPlan((PlannedAction(Work.of((Task("c", "F", Stream.COMPUTE, 0.1),)), "F2.0", "forward",
                                     inputs=(b,)),))]
    res = run_pipeline(plans, num_sms=132, comm_sms=0)
    assert sorted((t.label, t.end) for t in res.trace.transfers) == [("a", pytest.approx(0.6)),
                                                                     ("b", pytest.approx(0.9))]
    assert [t.start for t in res.trace.tasks if t.name == "g"] == [pytest.approx(0.9)]


def test_a_reduction_left_for_the_end_starts_once_the_last_sends_are_out():
    """Rank 0 computes 0.5 s and sends 0.25 s to rank 1; its gradient reduction (1 s on its NIC) is left for
    the end (stacks issue it after the last send, in stream order): the send has the NIC alone (0.5-0.75 s),
    the reduction follows (0.75-1.75 s), rank 1 computes from the arrival (0.75-1.75 s). Started together,
    the reduction would have taken 8/9 of the NIC and delayed rank 1 by almost 2 s."""
    key = ("F", 0, 0, 0)
    grad = Work.of((Task("g", "tail", Stream.DP, 1.0, links=NIC),))
    plans = [RankPlan((PlannedAction(Work.of((Task("c", "F", Stream.COMPUTE, 0.5),)), "F0.0", "forward",
                                     outputs=(Send(key, 1, 0.25, NIC, "F0.0", weight=0.125),)),),
                      end_triggers=(grad,)),
             RankPlan((PlannedAction(Work.of((Task("c", "F", Stream.COMPUTE, 1.0),)), "F1.0", "forward",
                                     inputs=(key,)),))]
    res = run_pipeline(plans, num_sms=132, comm_sms=0)
    assert [(t.start, t.end) for t in res.trace.transfers] == [(pytest.approx(0.5), pytest.approx(0.75))]
    assert [(t.start, t.end) for t in res.trace.tasks if t.name == "g"] == [(pytest.approx(0.75),
                                                                            pytest.approx(1.75))]
    assert res.makespan_s == pytest.approx(1.75)


def test_one_data_parallel_stream_per_gpu():
    """Three background works' collectives on one GPU run one after the other, in the order they asked (one
    data-parallel stream, first in first out), even on links they would share: 1, 2 and 0.5 s end at 1, 3 and
    3.5 s."""
    works = tuple(Work.of((Task(name, "tail", Stream.DP, secs, links=NIC),)) for name, secs in
                  (("a", 1.0), ("b", 2.0), ("c", 0.5)))
    res = run_pipeline([RankPlan((PlannedAction(Work.of((Task("x", "F", Stream.COMPUTE, 0.1),)), "F0.0",
                                                "forward"),), prologue=works)], num_sms=132, comm_sms=0)
    assert [(t.name, t.start, t.end) for t in res.trace.tasks if t.stream == Stream.DP] == [
        ("a", 0.0, pytest.approx(1.0)), ("b", pytest.approx(1.0), pytest.approx(3.0)),
        ("c", pytest.approx(3.0), pytest.approx(3.5))]


def test_tail_waits_for_background_work_and_reports_it():
    grad = Work.of((Task("grad", "tail", Stream.DP, 3.0, links=NIC, holds_sms=True),))
    opt = Work.of((Task("optimizer", "tail", Stream.COMPUTE, 1.0),))
    act = PlannedAction(Work.of((Task("c", "F", Stream.COMPUTE, 2.0),)), "F0.0", "forward", triggers=(grad,))
    res = run_pipeline([RankPlan((act,), tail=(TailItem(opt, "optimizer", "optimizer"),))], num_sms=132,
                       comm_sms=0)
    # action 0-2 s, gradient 2-5 s (waited for from 2 to 5), optimizer 5-6 s.
    assert res.makespan_s == pytest.approx(6.0)
    assert res.finish_s == [pytest.approx(2.0)]
    waits = [a for a in res.trace.actions if a.label == "grad_sync_wait"]
    assert [(w.start, w.end) for w in waits] == [(pytest.approx(2.0), pytest.approx(5.0))]


def test_deadlock_is_reported():
    sched = build_schedule("1f1b", 2, 2)
    plans = plans_for(sched, 0)
    stuck = [RankPlan(tuple(PlannedAction(a.work, a.label, a.category, (("never", 0, 0, 0),)) for a in p.actions))
             for p in plans]
    with pytest.raises(SimulationError, match="deadlocked"):
        run_pipeline(stuck, num_sms=132, comm_sms=0)


def test_a_work_that_cannot_finish_is_an_error():
    work = Work((Task("a", "F", Stream.COMPUTE, 1.0, deps=(1,)), Task("b", "F", Stream.COMPUTE, 1.0, deps=(0,))),
                ((0, 1), (), ()))
    with pytest.raises(SimulationError, match="deadlocked"):
        isolated_run(work, 132, 0)


def test_an_empty_reduction_left_for_the_end_starts_the_tail_once():
    """A reduction with no tasks finishes as it starts; the tail (the optimizer) still runs exactly once."""
    opt = Work.of((Task("optimizer", "tail", Stream.COMPUTE, 1.0),))
    plan = RankPlan((PlannedAction(Work.of((Task("c", "F", Stream.COMPUTE, 2.0),)), "F0.0", "forward"),),
                    end_triggers=(Work.of(()),), tail=(TailItem(opt, "optimizer", "optimizer"),))
    res = run_pipeline([plan], num_sms=132, comm_sms=0)
    assert [a.label for a in res.trace.actions] == ["F0.0", "optimizer"]
    assert res.makespan_s == pytest.approx(3.0)


def test_a_send_weighs_more_than_nothing():
    with pytest.raises(ValueError, match=r"Send\.weight"):
        Send(("F", 0, 0, 0), 1, 0.1, NIC, "F0.0", weight=0.0)
