"""The SimPy discrete-event engine: one pipeline's ranks executing a schedule over the program's phases.

The only code that advances time. It receives durations (``sim.program``) and never computes a cost.

Each simulated GPU has a compute stream and a communication stream; each phase runs on one of them, in the
order its action (a chunk or an overlapped pair) gives, once its dependencies are done. Actions on a rank
run one after another (DualPipe and Megatron-LM both wait for an op's communication before the next op);
an action starts when its inputs have arrived from the neighbouring stage. Stage-boundary sends leave
when an action ends and cross NVLink or InfiniBand.

Links are resources: each GPU has a NIC and an NVLink port, each with a transmit and a receive side. A
transfer starts when all its links are free and holds them for its duration (first come, first served:
the bytes a link carries per second never exceed its achievable bandwidth; the order of completion is
FIFO rather than fair-shared). While communication kernels run on a GPU (expert all-to-all, TP and DP
collectives) they hold ``comm_sms`` SMs and compute proceeds at ``(SMs - comm_sms) / SMs`` of its rate:
running compute is re-timed whenever communication starts or stops.

Detailed mode runs every phase as events. Fast mode runs each action as one timed event whose duration is
the same phases' makespan, simulated once per distinct action in isolation by this engine (memoized).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import simpy

from sim.program import COMM, IB, NVLINK, Phase, Work

IB_TX, IB_RX, NVL_TX, NVL_RX = 0, 1, 2, 3


@dataclass(slots=True)
class TraceRecord:
    """Phases (``rank, stream, name, start, end, label``); actions (``rank, start, end, label, category,
    compute-busy seconds of its F, I and W phases``); stage-boundary transfers (``src, dst, start, end``)."""

    phases: list[tuple[int, int, str, float, float, str]] = field(default_factory=list)
    actions: list[tuple[int, float, float, str, str, tuple[float, float, float]]] = field(default_factory=list)
    transfers: list[tuple[int, int, float, float, str]] = field(default_factory=list)


class Gpu:
    """One simulated GPU: fluid-rate compute, communication holding SMs, four link sides."""

    __slots__ = ("_done", "_last", "_rate", "_remaining", "_version", "comm_active", "env", "links", "rank",
                 "slow")

    def __init__(self, env: simpy.Environment, rank: int, num_sms: int, comm_sms: int) -> None:
        self.env = env
        self.rank = rank
        self.slow = (num_sms - comm_sms) / num_sms
        self.comm_active = 0
        self.links = [0.0, 0.0, 0.0, 0.0]
        self._done: simpy.Event | None = None
        self._remaining = 0.0
        self._rate = 1.0
        self._last = 0.0
        self._version = 0

    # ------------------------------------------------------------- compute
    def _current_rate(self) -> float:
        return self.slow if self.comm_active else 1.0

    def compute(self, seconds: float) -> simpy.Event:
        """Start ``seconds`` of full-rate work; the event fires when it is done at the varying rate."""
        self._done = self.env.event()
        self._remaining = seconds
        self._rate = self._current_rate()
        self._last = self.env.now
        self._arm()
        return self._done

    def _arm(self) -> None:
        self._version += 1
        version = self._version
        t = self.env.timeout(self._remaining / self._rate)
        t.callbacks.append(lambda _ev: self._finish(version))

    def _finish(self, version: int) -> None:
        if version == self._version and self._done is not None:
            done, self._done = self._done, None
            done.succeed()

    def _retime(self) -> None:
        if self._done is None:
            return
        rate = self._current_rate()
        if rate == self._rate:
            return
        now = self.env.now
        self._remaining = max(0.0, self._remaining - (now - self._last) * self._rate)
        self._last, self._rate = now, rate
        self._arm()

    def comm_started(self) -> None:
        self.comm_active += 1
        if self.comm_active == 1:
            self._retime()

    def comm_ended(self) -> None:
        self.comm_active -= 1
        if self.comm_active == 0:
            self._retime()


def link_sides(links: int) -> tuple[int, ...]:
    sides: tuple[int, ...] = ()
    if links & IB:
        sides += (IB_TX, IB_RX)
    if links & NVLINK:
        sides += (NVL_TX, NVL_RX)
    return sides


def occupy(gpus: Sequence[tuple[Gpu, int]], seconds: float, now: float) -> float:
    """Reserve link sides ``(gpu, side)`` for a transfer of ``seconds``; returns its end time."""
    start = max([now, *(g.links[s] for g, s in gpus)])
    end = start + seconds
    for g, s in gpus:
        g.links[s] = end
    return end


PART_INDEX = {"F": 0, "I": 1, "W": 2}


def run_work(env: simpy.Environment, gpu: Gpu, work: Work, trace: TraceRecord | None, label: str,
             busy: list[float]) -> Any:
    """Process: run ``work``'s phases on ``gpu``'s two streams; finishes when both streams are done.
    Adds the wall time of compute phases to ``busy`` (indexed by part: F, I, W)."""
    done = [env.event() for _ in work.phases]
    streams = [env.process(_stream(env, gpu, work.phases, order, done, trace, label, busy))
               for order in work.orders if order]
    if streams:
        yield simpy.AllOf(env, streams)


def _stream(env: simpy.Environment, gpu: Gpu, phases: tuple[Phase, ...], order: tuple[int, ...],
            done: list[simpy.Event], trace: TraceRecord | None, label: str, busy: list[float]) -> Any:
    for i in order:
        ph = phases[i]
        for d in ph.deps:
            if not done[d].processed:
                yield done[d]
        start = env.now
        if ph.stream == COMM:
            end = occupy([(gpu, s) for s in link_sides(ph.links)], ph.seconds, start)
            if ph.holds_sms:
                gpu.comm_started()
            yield env.timeout(end - start)
            if ph.holds_sms:
                gpu.comm_ended()
        elif ph.seconds > 0:
            yield gpu.compute(ph.seconds)
            busy[PART_INDEX[ph.part]] += env.now - start
        if trace is not None:
            trace.phases.append((gpu.rank, ph.stream, ph.name, start, env.now, label))
        done[i].succeed()


def isolated_run(work: Work, num_sms: int, comm_sms: int) -> tuple[float, tuple[float, float, float]]:
    """``work`` alone on an idle GPU: its makespan and compute-busy seconds per part (fast mode)."""
    env = simpy.Environment()
    gpu = Gpu(env, 0, num_sms, comm_sms)
    busy = [0.0, 0.0, 0.0]
    env.process(run_work(env, gpu, work, None, "", busy))
    env.run()
    return float(env.now), (busy[0], busy[1], busy[2])


ArrivalKey = tuple[str, int, int, int]  # ("F" | "B", direction, stage, micro-batch)


@dataclass
class EngineHooks:
    """What the engine needs from the layer above: the work of an action and the neighbours' transfers."""

    work: Callable[[Any], Work]
    # Fast mode: an action's seconds and compute-busy seconds per part; None: detailed mode.
    duration: Callable[[Any], tuple[float, tuple[float, float, float]]] | None
    inputs: Callable[[Any], tuple[ArrivalKey, ...]]
    outputs: Callable[[Any], tuple[tuple[ArrivalKey, int, float, int], ...]]  # key, dst rank, seconds, links
    label: Callable[[Any], tuple[str, str]]  # (label, category)
    on_start: Callable[[int, Any, float], None] | None = None
    on_end: Callable[[int, Any, float], None] | None = None


def simulate_pipeline(ranks: Sequence[Sequence[Any]], hooks: EngineHooks, num_sms: int, comm_sms: int,
                      tail: Callable[[simpy.Environment, list[Gpu], int], Any] | None = None,
                      trace: TraceRecord | None = None,
                      setup: Callable[[simpy.Environment, list[Gpu]], None] | None = None,
                      ) -> tuple[float, list[float]]:
    """Run every rank's actions. ``setup(env, gpus)`` runs first (to start background transfers);
    ``tail(env, gpus, rank)`` is a process run after a rank's last action (gradient synchronization,
    optimizer). Returns the makespan and each rank's finish time; raises on a deadlock."""
    env = simpy.Environment()
    gpus = [Gpu(env, r, num_sms, comm_sms) for r in range(len(ranks))]
    arrived: dict[ArrivalKey, simpy.Event] = {}
    finish = [0.0] * len(ranks)
    completed = [False] * len(ranks)
    if setup is not None:
        setup(env, gpus)

    def event(key: ArrivalKey) -> simpy.Event:
        ev = arrived.get(key)
        if ev is None:
            ev = arrived[key] = env.event()
        return ev

    def send(src: int, key: ArrivalKey, dst: int, seconds: float, links: int) -> None:
        if dst == src or seconds <= 0:
            event(key).succeed()
            return
        sides = [(gpus[src], IB_TX if links & IB else NVL_TX), (gpus[dst], IB_RX if links & IB else NVL_RX)]
        start = max(env.now, *(g.links[s] for g, s in sides))
        end = occupy(sides, seconds, env.now)
        if trace is not None:
            trace.transfers.append((src, dst, start, end, f"{key[0]}{key[2]}.{key[3]}"))
        arrival = event(key)

        def arrive(_ev: simpy.Event) -> None:
            arrival.succeed()

        env.timeout(end - env.now).callbacks.append(arrive)

    def rank_proc(r: int) -> Any:
        gpu = gpus[r]
        for action in ranks[r]:
            for key in hooks.inputs(action):
                ev = event(key)
                if not ev.processed:
                    yield ev
            start = env.now
            if hooks.on_start:
                hooks.on_start(r, action, start)
            label, category = hooks.label(action)
            if hooks.duration is not None:
                seconds, busy = hooks.duration(action)
                yield env.timeout(seconds)
            else:
                acc = [0.0, 0.0, 0.0]
                yield from run_work(env, gpu, hooks.work(action), trace, label, acc)
                busy = (acc[0], acc[1], acc[2])
            if trace is not None:
                trace.actions.append((r, start, env.now, label, category, busy))
            if hooks.on_end:
                hooks.on_end(r, action, env.now)
            for key, dst, seconds, links in hooks.outputs(action):
                send(r, key, dst, seconds, links)
        finish[r] = env.now
        if tail is not None:
            yield from tail(env, gpus, r)
        completed[r] = True

    for r in range(len(ranks)):
        env.process(rank_proc(r))
    env.run()
    if not all(completed):
        waiting = [k for k, ev in arrived.items() if not ev.triggered]
        stuck = [r for r, c in enumerate(completed) if not c]
        raise RuntimeError(f"pipeline deadlocked: ranks {stuck} wait for inputs {waiting[:5]} that never arrive")
    return float(env.now), finish
