"""The SimPy discrete-event engine: one pipeline's ranks executing their plans over shared links.

The only code that advances time. It receives durations (:mod:`sim.program`) and never computes a cost.

Each simulated GPU has three streams (:class:`~sim.timeline.Stream`): compute, communication (expert
all-to-all, tensor-parallel collectives) and data-parallel collectives. A rank runs its actions one after
another (DualPipe and Megatron-LM both wait for an op's communication before the next op); an action starts
once its inputs have arrived from neighbouring stages, and within it each stream runs its tasks in the work's
order, a task starting when its dependencies and its stream predecessor are done. Stage-boundary sends leave
when an action ends. Background works (a parameter gather at the start, gradient reductions started after an
action or a given time into it) run on the data-parallel stream beside the actions, one collective at a time
per GPU; the rank's tail (waiting for them, the optimizer, an exposed gather) runs after its last action.

Links are shared resources: each GPU has a NIC and an NVLink port, each with a transmit and a receive side
(:class:`~sim.timeline.LinkSide`). A transfer (a stage-boundary send: the sender's transmit and the receiver's
receive side; a collective task: its own GPU's sides) starts at once and shares each of its sides with the
transfers active there in proportion to their weights, moving at its scarcest side's share: alone it takes its
duration, and every start or end re-times the transfers on the sides it touches (a fluid, weighted
processor-sharing model). A collective weighs 1 and a send its :attr:`Send.weight` (over the network, its NCCL
channels against a collective's: a NIC serves its queue pairs in turn). A link never carries more than its
achievable bandwidth, and a small send beside a long collective finishes after a multiple of its own time
rather than after the whole collective, as NCCL's concurrent communicators share a NIC. Communication takes
SMs from compute in one of two ways: ``dynamic`` (NCCL:
while communication tasks that hold SMs run on a GPU, compute proceeds at ``(SMs - comm_sms) / SMs`` of its
rate, and the running compute task is re-timed whenever the count of such tasks changes from or to zero; a
superseded completion is skipped when it fires), or ``static`` (DeepEP with DeepGEMM: ``comm_sms`` SMs are
reserved for communication for the whole step and compute kernels are launched on the rest, e.g. 112 of 132 in
DeepSeek's trace, so compute always runs at that rate).

Detailed mode runs every task as an event. Fast mode runs each action as one timed event whose duration is
the makespan of its work simulated once in isolation (:func:`isolated_run`, memoized per distinct work), except
where isolation does not hold, which runs task by task as in detailed mode: an action that starts while its
rank has background collectives asked for or running (they share its links, SMs and, for ZeRO-3's gathers, its
data-parallel stream: timed alone, ZeRO-3 rows read 20-37 % fast, ZeRO-2 and context-parallel jobs up to 16 %),
and an action left untimed (``PlannedAction.timed`` None: :mod:`sim.assemble` leaves those with gathers of
their own, which also share the NIC with stage-boundary sends).
The engine is callback-driven: no generator process per task, no ``AllOf`` per stream. Its events are
slim (:class:`_Wake`: one callback, scheduled with the priority and delay a ``simpy.Timeout`` would have, so
the event order is SimPy's), a superseded compute completion is disarmed rather than left to fire, and the
cyclic garbage collector pauses while a run allocates its trace.
"""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import simpy
from simpy.events import NORMAL

from sim.program.tasks import NIC, NVLINK, Work
from sim.timeline import ActionEvent, LinkSide, Stream, TaskEvent, Trace, TransferEvent

#: What an action waits for: one stage-boundary output of one micro-batch (an int: ``sim.assemble``'s
#: :func:`~sim.assemble.arrival_key`; any hashable works for the engine).
ArrivalKey = Hashable
_SIDES: dict[int, tuple[LinkSide, ...]] = {
    0: (), NIC: (LinkSide.NIC_TX, LinkSide.NIC_RX), NVLINK: (LinkSide.NVLINK_TX, LinkSide.NVLINK_RX),
    NIC | NVLINK: (LinkSide.NIC_TX, LinkSide.NIC_RX, LinkSide.NVLINK_TX, LinkSide.NVLINK_RX),
}
_PART_SLOT = {"F": 0, "I": 1, "W": 2}


class SimulationError(RuntimeError):
    """The simulation could not complete (a deadlock): a bug in a schedule or a program, never user input."""


@dataclass(frozen=True, slots=True)
class Send:
    """A stage-boundary transfer leaving when its action ends: ``key`` arrives at rank ``dst``."""

    key: ArrivalKey
    dst: int
    seconds: float
    links: int
    label: str = ""  # what the trace calls it (``F3.5``: stage 3's forward output of micro-batch 5)
    weight: float = 1.0  # its share of a link side against a collective's 1 (see :class:`_Flow`)

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"Send.weight: must be > 0 (got {self.weight!r})")


@dataclass(frozen=True, slots=True)
class PlannedAction:
    """One action of a rank's plan."""

    work: Work
    label: str
    category: str
    inputs: tuple[ArrivalKey, ...] = ()
    outputs: tuple[Send, ...] = ()
    triggers: tuple[Work, ...] = ()  # background works started when the action ends
    starts: tuple[tuple[float, Work], ...] = ()  # (delay, work): background works started that long after the
    #                                              action starts (gradient buckets filled by a backward)
    timed: tuple[float, tuple[float, float, float]] | None = None  # fast mode: seconds, busy F/I/W seconds
    #                                                                  (None: run task by task)


@dataclass(frozen=True, slots=True)
class TailItem:
    work: Work
    label: str
    category: str


@dataclass(frozen=True)
class RankPlan:
    """What one rank does in a step: background works from the start, its actions, works started when its
    last action ends, then its tail in order once every background work is done."""

    actions: tuple[PlannedAction, ...]
    prologue: tuple[Work, ...] = ()
    end_triggers: tuple[Work, ...] = ()
    tail: tuple[TailItem, ...] = ()
    wait_label: str = "grad_sync_wait"


@dataclass
class EngineResult:
    makespan_s: float
    finish_s: list[float]  # when each rank's last action ended (before its tail)
    trace: Trace = field(repr=False)


class _Wake:
    """A slim SimPy event: ``fn(event)`` runs when the environment reaches it. Scheduled like a
    ``simpy.Timeout`` (``env.schedule(event, NORMAL, delay)``: time ``now + delay``, then FIFO among equal times),
    so runs order events exactly as timeouts would; it only skips the timeout's bookkeeping."""

    __slots__ = ("callbacks",)
    _ok = True  # SimPy's step() checks this: a wake never fails

    def __init__(self, fn: Callable[[Any], None]) -> None:
        self.callbacks: list[Callable[[Any], None]] | None = [fn]


def _after(env: simpy.Environment, delay: float, fn: Callable[[Any], None]) -> _Wake:
    """Run ``fn(event)`` ``delay`` seconds from now (``delay >= 0``)."""
    wake = _Wake(fn)
    env.schedule(wake, NORMAL, delay)  # type: ignore[arg-type]  # duck-typed event, see _Wake
    return wake


class _TaskWake:
    """A slim event that ends task ``i`` (stream ``s``, started at ``t0``) of a work run; see :class:`_Wake`."""

    __slots__ = ("callbacks", "i", "run", "s", "t0")
    _ok = True

    def __init__(self, run: _WorkRun, s: int, i: int, t0: float) -> None:
        self.callbacks: list[Callable[[Any], None]] | None = [_task_done]
        self.run, self.s, self.i, self.t0 = run, s, i, t0


def _task_done(wake: _TaskWake) -> None:
    wake.run._end(wake.s, wake.i, wake.t0)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a run allocates its many small, long-lived trace records
    (generation-2 passes over them cost more than the run itself); restored afterwards, as it was."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class Gpu:
    """One simulated GPU: fluid-rate compute, communication holding SMs, four link sides."""

    __slots__ = ("_fire_cb", "_last", "_rate", "_remaining", "_run", "_t0", "_task", "_wake", "active",
                 "busy_since", "comm_active", "dp_busy", "dp_waiting", "env", "intervals", "rank", "sides_of", "slow",
                 "static", "usage")

    def __init__(self, env: simpy.Environment, rank: int, num_sms: int, comm_sms: int, static: bool = False) -> None:
        self.env = env
        self.rank = rank
        self.slow = (num_sms - comm_sms) / num_sms
        self.static = static
        self.comm_active = 0
        self.active: tuple[list[_Flow], ...] = ([], [], [], [])  # per LinkSide, the transfers on it now
        self.busy_since = [0.0, 0.0, 0.0, 0.0]  # per LinkSide, when its current busy interval began
        self.sides_of: dict[tuple[int, ...], tuple[tuple[Gpu, int], ...]] = {}  # a task's sides, with this GPU
        #: the data-parallel stream is one per GPU, whichever work (a gather, a reduction) queues a task on it
        self.dp_busy = False
        self.dp_waiting: deque[tuple[_WorkRun, int]] = deque()
        self.usage = [0.0, 0.0, 0.0, 0.0]
        #: per LinkSide, the trace's list of busy intervals, looked up on first use
        self.intervals: list[list[tuple[float, float]] | None] = [None, None, None, None]
        self._run: _WorkRun | None = None  # the running compute task: its work run, index and start
        self._task = 0
        self._t0 = 0.0
        self._remaining = 0.0
        self._rate = 1.0
        self._last = 0.0
        self._wake: _Wake | None = None
        self._fire_cb = self._fire

    def compute(self, seconds: float, run: _WorkRun, task: int, t0: float) -> None:
        """Start ``seconds`` of full-rate work for ``task`` of ``run`` (started at ``t0``); the run's
        ``_end`` is called when it is finished at the varying rate."""
        self._run, self._task, self._t0 = run, task, t0
        self._remaining = seconds
        self._rate = self.slow if self.comm_active or self.static else 1.0
        self._last = self.env.now
        self._arm()

    def _arm(self) -> None:
        old = self._wake
        if old is not None and old.callbacks:
            old.callbacks = []  # superseded: it still leaves the queue at its time, doing nothing
        wake = self._wake = _Wake(self._fire_cb)
        self.env.schedule(wake, NORMAL, self._remaining / self._rate)  # type: ignore[arg-type]

    def _fire(self, _event: Any) -> None:
        self._wake = None
        run, self._run = self._run, None
        if run is not None:
            run._end(_COMPUTE, self._task, self._t0)

    def _retime(self) -> None:
        if self._run is None:
            return
        rate = self.slow if self.comm_active else 1.0
        if rate == self._rate:
            return
        now = self.env.now
        self._remaining = max(0.0, self._remaining - (now - self._last) * self._rate)
        self._last, self._rate = now, rate
        self._arm()

    def comm_started(self) -> None:
        self.comm_active += 1
        if self.comm_active == 1 and not self.static:
            self._retime()

    def comm_ended(self) -> None:
        self.comm_active -= 1
        if self.comm_active == 0 and not self.static:
            self._retime()


class _Flow:
    """A transfer on one or more link sides (:class:`Gpu`, side index): ``remaining`` seconds of it at the full
    link rate, moving at ``rate`` since ``last``. On each side it gets ``weight`` over the sum of the weights of
    the transfers there, and it moves at the smallest of those shares (a collective weighs 1; a stage-boundary
    send its :attr:`Send.weight`). Not max-min fair: a transfer held back on one side leaves its share of the
    others unused rather than handing it on."""

    __slots__ = ("done", "env", "intervals", "last", "rate", "remaining", "send", "sides", "src", "start", "wake",
                 "weight")

    def __init__(self, env: simpy.Environment, sides: tuple[tuple[Gpu, int], ...], seconds: float,
                 done: Callable[[_Flow], None], intervals: dict | None, weight: float) -> None:
        self.env, self.sides, self.remaining, self.done, self.intervals = env, sides, seconds, done, intervals
        self.weight = weight
        self.start = self.last = env.now
        self.rate = 0.0
        self.wake: _Wake | None = None
        self.send: Send | None = None  # a stage-boundary transfer: what it carries, and from which rank
        self.src = -1

    def arm(self, rate: float, now: float) -> None:
        """Move at ``rate`` from ``now``: charge the work done at the old rate, supersede the old wake."""
        old = self.wake
        if old is not None:
            self.remaining = max(0.0, self.remaining - (now - self.last) * self.rate)
            old.callbacks = []  # superseded: it still leaves the queue at its time, doing nothing
        self.last, self.rate = now, rate
        wake = self.wake = _Wake(self.fire)
        self.env.schedule(wake, NORMAL, self.remaining / rate)  # type: ignore[arg-type]

    def fire(self, _event: Any) -> None:
        """Done: leave its sides (closing a side's busy interval when it empties), re-time the transfers still
        on them, call ``done(self)``."""
        now = self.env.now
        others = False
        for gpu, side in self.sides:
            active = gpu.active[side]
            active.remove(self)
            if active:
                others = True
            elif self.intervals is not None:
                _interval_list(gpu, side, self.intervals).append((gpu.busy_since[side], now))
        if others:
            _reshare(self.sides, now)
        self.done(self)


def _start_flow(env: simpy.Environment, sides: tuple[tuple[Gpu, int], ...], seconds: float,
                done: Callable[[_Flow], None], intervals: dict | None, weight: float = 1.0,
                timed: bool = True) -> _Flow:
    """Start a transfer of ``seconds`` (at the full rate of its sides) now; ``done(flow)`` when it ends.
    ``timed=False`` leaves its timing (and that of the transfers beside it) to the caller: :func:`_reshare`
    once for a batch started at the same instant."""
    flow = _Flow(env, sides, seconds, done, intervals, weight)
    now = flow.start
    alone = True
    for gpu, side in sides:
        active = gpu.active[side]
        if active:
            alone = False
        else:
            gpu.busy_since[side] = now
        active.append(flow)
        gpu.usage[side] += seconds
    if timed:
        if alone:  # the common case: the full rate, nothing else to re-time
            flow.arm(1.0, now)
        else:
            _reshare(sides, now)
    return flow


def _reshare(sides: tuple[tuple[Gpu, int], ...], now: float) -> None:
    """Re-time every transfer on ``sides`` (in the order they started there: deterministic) to its new share."""
    handled: list[_Flow] = []  # a few at most: a list is quicker than a set
    for gpu, side in sides:
        for flow in gpu.active[side]:
            if flow in handled:  # on two of these sides
                continue
            handled.append(flow)
            busiest = 0.0
            for g, sd in flow.sides:
                load = 0.0
                for other in g.active[sd]:
                    load += other.weight
                if load > busiest:
                    busiest = load
            rate = flow.weight / busiest
            if flow.wake is None or rate != flow.rate:
                flow.arm(rate, now)


def _interval_list(gpu: Gpu, side: int, intervals: dict) -> list[tuple[float, float]]:
    """The trace's interval list of ``gpu``'s link ``side`` (created in the trace on first use)."""
    got = gpu.intervals[side]
    if got is None:
        got = gpu.intervals[side] = intervals.setdefault((gpu.rank, side), [])
    return got


_new_tuple = tuple.__new__
_NIC_TX, _NIC_RX, _NVLINK_TX, _NVLINK_RX = (int(s) for s in LinkSide)
_COMPUTE, _COMM, _DP = int(Stream.COMPUTE), int(Stream.COMM), int(Stream.DP)
#: Streams are tried in this order when a task ends: communication first, so that compute starting at the same
#: instant starts at the rate the new communication leaves it (no re-timing at zero elapsed time).
_PUMP_ORDER = (_COMM, _DP, _COMPUTE)


class _Compiled:
    """A work's tasks as flat per-task tuples, built once per distinct work for the engine's inner loop."""

    __slots__ = ("deps", "holds", "kind", "names", "orders", "seconds", "sides", "slots", "streams", "wakes")

    def __init__(self, work: Work) -> None:
        tasks = work.tasks
        self.deps = tuple(t.deps for t in tasks)
        self.seconds = tuple(t.seconds for t in tasks)
        self.kind = tuple(int(t.stream) for t in tasks)
        self.streams = tuple(t.stream for t in tasks)
        self.sides = tuple(tuple(int(x) for x in _SIDES[t.links]) for t in tasks)
        self.holds = tuple(t.holds_sms for t in tasks)
        self.slots = tuple(_PART_SLOT.get(t.part, -1) for t in tasks)
        self.names = tuple(t.name for t in tasks)
        self.orders = tuple(work.orders[s] if s < len(work.orders) else () for s in range(len(Stream)))
        # When task i ends, only its own stream and the streams of tasks that wait for it can start a task.
        waiting = [{int(t.stream)} for t in tasks]
        for t in tasks:
            for d in t.deps:
                waiting[d].add(int(t.stream))
        self.wakes = tuple(tuple(s for s in _PUMP_ORDER if s in w) for w in waiting)


class _WorkRun:
    """Runs one work's tasks on one GPU's streams; calls ``on_done`` when all are done."""

    __slots__ = ("busy", "c", "done", "env", "gpu", "intervals", "label", "left", "on_done", "ptr", "record",
                 "running", "trace")

    def __init__(self, env: simpy.Environment, gpu: Gpu, compiled: _Compiled, label: str, trace: Trace | None,
                 on_done: Callable[[], None]) -> None:
        self.env, self.gpu, self.c, self.label, self.trace, self.on_done = env, gpu, compiled, label, trace, on_done
        recording = trace is not None and trace.record_tasks
        self.intervals = trace.links.intervals if recording else None  # type: ignore[union-attr]
        self.record = trace.tasks.append if recording else None  # type: ignore[union-attr]
        self.done = [False] * len(compiled.seconds)
        self.ptr = [0, 0, 0]
        self.running = [False, False, False]
        self.left = len(compiled.seconds)
        self.busy = [0.0, 0.0, 0.0]

    def start(self) -> None:
        if self.left == 0:
            self.on_done()
        else:
            self._pump(_PUMP_ORDER)

    def _pump(self, streams: tuple[int, ...]) -> None:
        c, done, ptr, running = self.c, self.done, self.ptr, self.running
        for s in streams:
            order = c.orders[s]
            if running[s] or ptr[s] >= len(order):
                continue
            i = order[ptr[s]]
            for d in c.deps[i]:
                if not done[d]:
                    break
            else:
                self._start(s, i)

    def _start(self, s: int, i: int) -> None:
        c, env = self.c, self.env
        self.running[s] = True
        t0 = env.now
        seconds = c.seconds[i]
        if s == _COMPUTE:
            if seconds > 0:
                self.gpu.compute(seconds, self, i, t0)
            else:
                self._end(s, i, t0)
            return
        if s == _DP:
            gpu = self.gpu
            if gpu.dp_busy:  # another work's collective holds the GPU's data-parallel stream: after it
                gpu.dp_waiting.append((self, i))
                return
            gpu.dp_busy = True
        self._launch(s, i, t0, seconds)

    def _launch(self, s: int, i: int, t0: float, seconds: float) -> None:
        """Start communication task ``i`` of stream ``s`` now: a transfer on its link sides, else a timer."""
        c, env = self.c, self.env
        if c.holds[i]:
            self.gpu.comm_started()
        sides = c.sides[i]
        if sides and seconds > 0:
            gpu = self.gpu
            mine = gpu.sides_of.get(sides)
            if mine is None:
                mine = gpu.sides_of[sides] = tuple((gpu, side) for side in sides)
            _start_flow(env, mine, seconds, lambda _f: self._end(s, i, t0), self.intervals)
        else:
            env.schedule(_TaskWake(self, s, i, t0), NORMAL, seconds)  # type: ignore[arg-type]

    def _end(self, s: int, i: int, t0: float) -> None:
        c = self.c
        now = self.env.now
        if s == _COMPUTE:
            slot = c.slots[i]
            if slot >= 0:
                self.busy[slot] += now - t0
        elif c.holds[i]:
            self.gpu.comm_ended()
        if s == _DP:
            gpu = self.gpu
            if gpu.dp_waiting:
                run, k = gpu.dp_waiting.popleft()
                run._launch(_DP, k, now, run.c.seconds[k])
            else:
                gpu.dp_busy = False
        record = self.record
        if record is not None:  # TaskEvent(...) without the namedtuple's Python-level __new__
            record(_new_tuple(TaskEvent, (self.gpu.rank, c.streams[i], c.names[i], t0, now, self.label)))
        self.done[i] = True
        self.running[s] = False
        self.ptr[s] += 1
        self.left -= 1
        if self.left == 0:
            if self.trace is not None:
                self.trace.num_tasks += len(c.seconds)
            self.on_done()
        else:
            self._pump(c.wakes[i])


def isolated_run(work: Work, num_sms: int, comm_sms: int, static_sms: bool = False
                 ) -> tuple[float, tuple[float, float, float]]:
    """``work`` alone on an idle GPU: its makespan and compute-busy seconds of its F, I and W tasks."""
    run = isolated_run_beside(work, num_sms, comm_sms, static_sms)
    return run.makespan, run.busy


def _starter(run: _WorkRun) -> Callable[[Any], None]:
    """An event callback that starts ``run``."""
    return lambda _e: run.start()


class Isolated(NamedTuple):
    """A work run in isolation (:func:`isolated_run_beside`)."""

    makespan: float
    busy: tuple[float, float, float]  # compute-busy seconds of its F, I and W tasks
    ends: tuple[float, ...]           # when each background work ended


def isolated_run_beside(work: Work, num_sms: int, comm_sms: int, static_sms: bool = False,
                        background: tuple[tuple[float, Work], ...] = ()) -> Isolated:
    """:func:`isolated_run` with ``background`` works ((delay, work)) started that long after ``work`` on the same
    GPU, as the engine starts the gradient reductions a backward fills: they share its data-parallel stream and
    link sides."""
    env = simpy.Environment()
    gpu = Gpu(env, 0, num_sms, comm_sms, static_sms)
    finished: list[float] = []
    run = _WorkRun(env, gpu, _Compiled(work), "", None, lambda: finished.append(env.now))
    ends = [0.0] * len(background)
    for k, (delay, other) in enumerate(background):  # as _RankRun.advance starts them: at once, before the
        def ended(k: int = k) -> None:                # work, or from an event
            ends[k] = env.now

        side = _WorkRun(env, gpu, _Compiled(other), "", None, ended)
        if delay <= 0:
            side.start()
        else:
            _after(env, delay, _starter(side))
    run.start()
    env.run()  # superseded compute timers may still fire after the work is done: the end is when it finished
    if not finished:
        stuck = [work.tasks[o[p]].name for o, p in zip(run.c.orders, run.ptr, strict=True) if p < len(o)]
        raise SimulationError(f"a work deadlocked: its streams wait at tasks {stuck}")
    return Isolated(float(finished[0]), (run.busy[0], run.busy[1], run.busy[2]), tuple(ends))


class _RankRun:
    """Drives one rank through its plan."""

    def __init__(self, eng: _Engine, rank: int, plan: RankPlan) -> None:
        self.eng, self.rank, self.plan = eng, rank, plan
        self.gpu = eng.gpus[rank]
        self.i = 0
        self.outstanding = 0
        self.actions_done = False
        self.finish = 0.0
        self.completed = False
        self.end = 0.0
        self.waiting_for: ArrivalKey | None = None
        self.sending = 0  # its stage-boundary transfers in flight
        self.after_sends: Callable[[], None] | None = None

    def begin(self) -> None:
        for work in self.plan.prologue:
            self._background(work, "param_gather")

    def _background(self, work: Work, label: str) -> None:
        self.outstanding += 1
        _WorkRun(self.eng.env, self.gpu, self.eng.compiled(work), label, self.eng.trace,
                 self._background_done).start()

    def _background_after(self, delay: float, work: Work) -> None:
        if delay <= 0:
            self._background(work, "grad_reduce")
            return
        self._background_at_event(delay, work)

    def _background_at_event(self, delay: float, work: Work) -> None:
        """Start ``work`` from an event ``delay`` seconds from now (0: after the events already due now), counted
        at once: the tail waits for it even if the rank's actions end first."""
        self.outstanding += 1

        def begin(_e: object) -> None:
            self.outstanding -= 1
            self._background(work, "grad_reduce")

        _after(self.eng.env, delay, begin)

    def _background_done(self) -> None:
        self.outstanding -= 1
        if self.actions_done and self.outstanding == 0:
            self._tail_start()

    def advance(self) -> None:
        eng, actions = self.eng, self.plan.actions
        if self.i == len(actions):
            self._actions_end()
            return
        action = actions[self.i]
        for key in action.inputs:
            if key not in eng.arrived:
                self.waiting_for = key
                eng.waiters.setdefault(key, []).append(self.advance)
                return
        self.waiting_for = None
        start = eng.env.now
        for delay, work in action.starts:
            self._background_after(delay, work)
        # Fast mode times an action as one event unless it was left untimed or the rank's background
        # collectives (a parameter gather, gradient buckets, asked for or running) would share its GPU's
        # data-parallel stream, links and SMs while it runs: then it runs task by task, as in detailed mode.
        if eng.fast and action.timed is not None and not self.outstanding:
            seconds, busy = action.timed
            _after(eng.env, seconds, lambda _e: self._action_end(action, start, busy))
        else:
            run = _WorkRun(eng.env, self.gpu, eng.compiled(action.work), action.label, eng.trace,
                           lambda: self._action_end(action, start, tuple(run.busy)))  # type: ignore[arg-type]
            run.start()

    def _action_end(self, action: PlannedAction, start: float, busy: tuple[float, float, float]) -> None:
        eng = self.eng
        now = eng.env.now
        eng.trace.actions.append(_new_tuple(ActionEvent, (self.rank, start, now, action.label, action.category,
                                                          *busy)))
        if eng.progress is not None:
            eng.progress(1)
        if action.outputs:
            eng.send(self.rank, action.outputs)
        # Triggered reductions start after the events due now: beside the sends just started, sharing their links
        # whatever the order, and on the data-parallel stream after any collective another work asked for at
        # this instant (the analytic tier starts them at this instant too).
        for work in action.triggers:
            self._background_at_event(0.0, work)
        self.i += 1
        self.advance()

    def _actions_end(self) -> None:
        """After the last action: the reductions it leaves for the end start once the rank's sends have arrived
        (a stack issues them after its last send, in stream order: DeepSpeed's ReduceGrads closing the
        schedule, Megatron-LM's finalize_model_grads after the pipeline), then the tail once they are done."""
        self.finish = self.eng.env.now
        self.actions_done = True
        self._wait_start = self.finish
        self.outstanding += 1  # a placeholder for the end triggers: the tail cannot start before they do
        if self.sending and self.plan.end_triggers:
            self.after_sends = self._end_triggers
        else:
            self._end_triggers()

    def _end_triggers(self) -> None:
        self.after_sends = None
        for work in self.plan.end_triggers:
            self._background(work, "grad_reduce")
        self._background_done()  # the placeholder: starts the tail when nothing else is outstanding

    def sent(self) -> None:
        """One of this rank's stage-boundary transfers arrived."""
        self.sending -= 1
        if not self.sending and self.after_sends is not None:
            self.after_sends()

    def _tail_start(self) -> None:
        now = self.eng.env.now
        if now > self._wait_start:
            self.eng.trace.actions.append(ActionEvent(self.rank, self._wait_start, now, self.plan.wait_label,
                                                      "exposed_comm"))
        self._tail_next(0)

    def _tail_next(self, k: int) -> None:
        if k == len(self.plan.tail):
            self.completed = True
            self.end = self.eng.env.now
            return
        item = self.plan.tail[k]
        start = self.eng.env.now

        def done() -> None:
            end = self.eng.env.now
            if end > start:
                self.eng.trace.actions.append(ActionEvent(self.rank, start, end, item.label, item.category))
            self._tail_next(k + 1)

        _WorkRun(self.eng.env, self.gpu, self.eng.compiled(item.work), item.label, self.eng.trace, done).start()


class _Engine:
    def __init__(self, num_ranks: int, num_sms: int, comm_sms: int, static_sms: bool, trace: Trace, fast: bool,
                 progress: Callable[[int], None] | None) -> None:
        self.env = simpy.Environment()
        self.gpus = [Gpu(self.env, r, num_sms, comm_sms, static_sms) for r in range(num_ranks)]
        self.trace = trace
        self.fast = fast
        self.progress = progress
        self.arrived: set[ArrivalKey] = set()
        self.runs: list[_RankRun] = []
        self.waiters: dict[ArrivalKey, list[Callable[[], None]]] = {}
        self._compiled: dict[int, tuple[Work, _Compiled]] = {}
        #: (sender, receiver, over the NIC?) -> the link sides a send between them takes
        self._pairs: dict[tuple[int, int, bool], tuple[tuple[Gpu, int], ...]] = {}

    def compiled(self, work: Work) -> _Compiled:
        """The work's compiled form, built once per distinct work object of this run (the plans keep every work
        alive while the run lasts, so its identity is a sound key here)."""
        hit = self._compiled.get(id(work))
        if hit is None:
            hit = self._compiled[id(work)] = (work, _Compiled(work))
        return hit[1]

    def send(self, src: int, sends: tuple[Send, ...]) -> None:
        """Start an action's stage-boundary transfers, all at this instant (timed together)."""
        intervals = self.trace.links.intervals if self.trace.record_tasks else None
        sender = self.runs[src]
        env, pairs, sent = self.env, self._pairs, self._sent
        flows: list[_Flow] = []
        for send in sends:
            if send.dst == src or send.seconds <= 0:
                self._arrive(send.key)
                continue
            nic = bool(send.links & NIC)
            sides = pairs.get((src, send.dst, nic))
            if sides is None:
                tx, rx = (_NIC_TX, _NIC_RX) if nic else (_NVLINK_TX, _NVLINK_RX)
                sides = pairs[(src, send.dst, nic)] = ((self.gpus[src], tx), (self.gpus[send.dst], rx))
            flow = _start_flow(env, sides, send.seconds, sent, intervals, send.weight, timed=False)
            flow.send, flow.src = send, src
            flows.append(flow)
            sender.sending += 1
        crowded = False
        for flow in flows:
            for gpu, side in flow.sides:
                if len(gpu.active[side]) > 1:
                    crowded = True
        if crowded:
            _reshare(tuple(side for flow in flows for side in flow.sides), env.now)
        else:  # each alone on its sides: the full rate
            now = env.now
            for flow in flows:
                flow.arm(1.0, now)

    def _sent(self, flow: _Flow) -> None:
        """A stage-boundary transfer arrived: record it, wake what waits for it, tell its sender."""
        send = flow.send
        assert send is not None
        if self.trace.record_tasks:
            self.trace.transfers.append(TransferEvent(flow.src, send.dst, flow.start, self.env.now, send.label))
        self._arrive(send.key)
        self.runs[flow.src].sent()

    def _arrive(self, key: ArrivalKey) -> None:
        self.arrived.add(key)
        for cb in self.waiters.pop(key, ()):
            cb()


def run_pipeline(plans: Sequence[RankPlan], *, num_sms: int, comm_sms: int, static_sms: bool = False,
                 fast: bool = False, record_tasks: bool = True, progress: Callable[[int], None] | None = None
                 ) -> EngineResult:
    """Run every rank's plan. ``static_sms``: ``comm_sms`` are reserved for communication all step (else taken
    only while communication runs). ``fast``: each action is one timed event (``PlannedAction.timed``), its
    tasks are not simulated (those of an untimed action are); the tail still is. ``progress(n)`` is called as
    actions complete. Raises :class:`SimulationError` on a deadlock."""
    trace = Trace(record_tasks=record_tasks)
    eng = _Engine(len(plans), num_sms, comm_sms, static_sms, trace, fast, progress)
    runs = eng.runs = [_RankRun(eng, r, plan) for r, plan in enumerate(plans)]
    with _gc_paused():
        for run in runs:
            run.begin()
        for run in runs:
            run.advance()
        eng.env.run()
    if not all(r.completed for r in runs):
        stuck = [f"rank {r.rank} at action {r.i} ({r.plan.actions[r.i].label if r.i < len(r.plan.actions) else 'end'})"
                 f" waiting for arrival {r.waiting_for}" for r in runs if not r.completed]
        raise SimulationError("pipeline deadlocked: " + "; ".join(stuck[:5]))
    for g in eng.gpus:
        for side in LinkSide:
            if g.usage[side]:
                trace.links.busy_s[(g.rank, side)] = g.usage[side]
    trace.links.intervals = {(r, LinkSide(s)): v for (r, s), v in trace.links.intervals.items()}
    # The step ends when the last rank's tail does (superseded compute timers may fire later; they do nothing).
    return EngineResult(max(r.end for r in runs), [r.finish for r in runs], trace)
