"""From a schedule and a program to the engine's input: one :class:`~sim.engine.RankPlan` per pipeline rank.

For every action of a rank: its work (a chunk, or an overlapped pair merged by :mod:`sim.program.pairs`), the
arrivals it waits for (its dependencies on other stages), the stage-boundary sends it makes when it ends
(NVLink when both ranks share a node, else the NIC), and its gradient reduction: with ``overlap_grad_reduce``
the buckets of the backward that completes a stage's gradients (its last backward, or every backward when the
ZeRO stage reduces per micro-batch, :mod:`sim.program.sharding`) start with that backward as a background work
(:meth:`~sim.program.tail.StepTail.reduction_work`); without it, the whole stage's reduction starts after the
rank's last action (or after each backward, for per-micro-batch reductions). ZeRO-3 under a pipeline reduces
each stage unit by unit after the stage's last backward, whatever the flag says (FSDP's post-backward). The
once-per-step parameter gather runs beside the first forwards when ``overlap_param_gather`` (Megatron-LM gathers
each bucket ahead of its first use; nothing waits for it here), or after the optimizer, exposed. In fast mode
every action also carries its isolated duration (:func:`sim.engine.isolated_run`), computed once per distinct work.
An action whose own work uses the data-parallel stream (ZeRO-3's per-layer parameter gathers) shares that one
stream with the rank's gradient reductions, so its gathers wait behind buckets as they do in detailed mode, and
its gathers share the NIC with the stage-boundary sends: fast mode leaves it untimed, so the engine runs it task
by task (:mod:`sim.engine`); the analytic tier times it with the reductions it starts running beside it
(:meth:`Assembler.timed`) and starts it once the buckets queued before it are out. Timed alone, such a backward
got the whole link while its reduce-scatters took it too (20-37 % fast on Narayanan's ZeRO-3 rows).

What depends on the schedule alone (labels, chunk keys, arrivals, send destinations, the backward of each
action and the last backward of each stage: :class:`ScheduleHooks`) is derived once per schedule and kept on
the (immutable, cached) schedule. The isolated timing of a work is memoized by the work's content in
:data:`TIMINGS`, an explicit cache shared across scenarios (a sweep re-times only works it has not seen);
:func:`clear_caches` empties it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

from sim.config import Scenario
from sim.engine import Isolated, PlannedAction, RankPlan, Send, TailItem, isolated_run_beside
from sim.network import Network
from sim.network.nccl import send_weight
from sim.pipeline import all_stages_of
from sim.program.chunks import ChunkKind, Program
from sim.program.pairs import merge_pair, sequential_pair
from sim.program.tail import StepTail
from sim.program.tasks import NIC, NVLINK, Work
from sim.schedules.actions import Action, Phase, Schedule, action_text
from sim.timeline import Category, Stream

CATEGORY = {Phase.F: Category.FORWARD, Phase.B: Category.BACKWARD, Phase.I: Category.BACKWARD_INPUT,
            Phase.W: Category.BACKWARD_WEIGHT, Phase.FB: Category.OVERLAPPED}

Timing = tuple[float, tuple[float, float, float]]  # seconds, compute-busy seconds of F, I and W tasks
PartKey = tuple[int, str, int]  # (stage, chunk kind, global micro-batch) of one part of an action


def routing_is_skewed(scenario: Scenario) -> bool:
    """Whether routing in ``scenario`` can load experts unevenly (else every micro-batch's chunk of a stage is
    the same work: :class:`sim.program.moe.LoadModel` gives balanced routing one load for all)."""
    e = scenario.experts
    return scenario.model.is_moe and (e.skew != "balanced" or e.drift_per_step > 0)


def uses_dp_stream(work: Work) -> bool:
    """Whether ``work`` has tasks of its own on the data-parallel stream (ZeRO-3's parameter gathers)."""
    return any(t.stream == Stream.DP for t in work.tasks)


class TimingCache:
    """Isolated timings of works, keyed by the work's content, the GPU's SM split and the background works beside
    it (everything :func:`~sim.engine.isolated_run_beside` reads), least recently used first out."""

    def __init__(self, maxsize: int = 8192) -> None:
        self.maxsize = maxsize
        self._d: OrderedDict[tuple, Isolated] = OrderedDict()

    def get(self, work: Work, num_sms: int, comm_sms: int, static_sms: bool = False) -> Timing:
        run = self.beside(work, num_sms, comm_sms, static_sms)
        return run.makespan, run.busy

    def beside(self, work: Work, num_sms: int, comm_sms: int, static_sms: bool = False,
               background: tuple[tuple[float, Work], ...] = ()) -> Isolated:
        """The work run in isolation with ``background`` ((delay, work)) beside it."""
        key = (work, num_sms, comm_sms, static_sms, background)
        hit = self._d.get(key)
        if hit is None:
            hit = self._d[key] = isolated_run_beside(work, num_sms, comm_sms, static_sms, background)
            if len(self._d) > self.maxsize:
                self._d.popitem(last=False)
        return hit

    def clear(self) -> None:
        self._d.clear()

    def __len__(self) -> int:
        return len(self._d)


#: Isolated timings of works seen so far (fast mode and the analytic tier); see :func:`clear_caches`.
TIMINGS = TimingCache()


def scenario_key(scenario: Scenario, exclude: dict[str, Any] | None = None) -> tuple | None:
    """A cache key for what is built from ``scenario``: every field (but those in ``exclude``, pydantic's
    ``model_dump`` form) and the identity (path, size, modification time) of its calibration file. ``None``
    when the scenario reads a file that may change unseen (a routing histogram) or a file that is missing:
    such scenarios are not cached."""
    if scenario.experts.skew == "histogram":
        return None
    stamp = None
    if scenario.calibration:
        try:
            st = os.stat(scenario.calibration)
        except OSError:
            return None
        stamp = (os.path.abspath(scenario.calibration), st.st_size, st.st_mtime_ns)
    return (scenario.model_dump_json(exclude=exclude), stamp)


def clear_caches() -> None:
    """Empty this module's caches (the per-schedule hooks live and die with their schedule)."""
    TIMINGS.clear()


class ActionHooks(NamedTuple):
    """What one action needs that depends on the schedule alone (a named tuple: one per action of a schedule)."""

    action: Action                                   # what it is (its label is formatted on demand)
    category: str
    parts: tuple[PartKey, ...]                       # the chunk(s) it runs
    inputs: tuple[int, ...]                          # arrivals it waits for (arrival_key)
    outputs: tuple[tuple[int, int], ...]             # (what it sends, destination rank), in send order
    backward: PartKey | None                         # its part that completes weight gradients (a B or W)

    @property
    def label(self) -> str:
        """``F3.1``, ``F0.2&B1.5``: :func:`sim.schedules.actions.action_text` (only traces and plots need it,
        so the analytic tier never formats one)."""
        return action_text(self.action)


@dataclass(frozen=True, slots=True)
class ScheduleHooks:
    """Per rank, each action's hooks, and the index of the action holding each stage's last backward."""

    ranks: tuple[tuple[ActionHooks, ...], ...]
    last_backward: tuple[dict[int, int], ...]


_F, _B, _W = Phase.F, Phase.B, Phase.W  # enum members looked up once (class attribute access is slow on 3.11)
_KIND = {Phase.F: "F", Phase.B: "B", Phase.I: "I", Phase.W: "W"}  # a part's chunk kind (``.value`` is slow too)


def arrival_key(backward: bool, direction: int, stage: int, microbatch: int, dims: tuple[int, int, int]) -> int:
    """The arrival key of a stage's forward (or backward) output of one micro-batch in one direction, in a
    schedule of ``dims`` = (directions, stages, micro-batches per direction): dense integers from 0 to
    ``2 * directions * stages * micro-batches`` (the engine and the analytic tier index arrivals by them)."""
    num_dirs, num_stages, per_dir = dims
    return ((backward * num_dirs + direction) * num_stages + stage) * per_dir + microbatch


def arrival_text(key: int, dims: tuple[int, int, int]) -> str:
    """``F3.5``: stage 3's forward output of micro-batch 5 (its direction's), as traces name transfers."""
    num_dirs, num_stages, per_dir = dims
    rest, m = divmod(key, per_dir)
    rest, s = divmod(rest, num_stages)
    return f"{'B' if rest >= num_dirs else 'F'}{s}.{m}"


def _action_hooks(a: Action, dims: tuple[int, int, int], rank_of: dict[tuple[int, int], int]) -> ActionHooks:
    """The hooks of ``a`` in a schedule of ``dims`` (see :func:`arrival_key`). Its inputs are the outputs of
    its parts' dependencies on other stages (:meth:`Schedule.dependencies`): a forward's on the previous stage,
    a backward's (B or I) on the next one unless it is the last; a W depends on its own stage only.
    ``rank_of``: (stage, direction) -> rank."""
    num_dirs, num_stages, per_dir = dims
    last = num_stages - 1
    parts, inputs, outputs = [], [], []
    backward = None
    for p in ((a,) if a.fwd is None else (a.fwd, a.bwd)):
        assert p is not None  # a pair has both halves (Action.__post_init__)
        d, s, m, ph = p.direction, p.stage, p.microbatch, p.phase
        part = (s, _KIND[ph], d * per_dir + m)
        parts.append(part)
        fwd_key = (d * num_stages + s) * per_dir + m      # arrival_key(False, d, s, m, dims), inlined
        if ph is _F:
            if s > 0:
                inputs.append(fwd_key - per_dir)          # stage s - 1's forward output
            if s < last:
                outputs.append((fwd_key, rank_of[s + 1, d]))
            continue
        if backward is None and (ph is _B or ph is _W):
            backward = part
        if ph is not _W:
            bwd_key = fwd_key + num_dirs * num_stages * per_dir
            if s < last:
                inputs.append(bwd_key + per_dir)          # stage s + 1's backward output
            if s > 0:
                outputs.append((bwd_key, rank_of[s - 1, d]))
    return ActionHooks(a, CATEGORY[a.phase], tuple(parts), tuple(inputs), tuple(outputs), backward)


def hook_dims(sched: Schedule) -> tuple[int, int, int]:
    """(directions, stages, micro-batches per direction): what :func:`arrival_key` encodes over."""
    return sched.num_directions, sched.num_stages, sched.microbatches_per_direction


def schedule_hooks(sched: Schedule) -> ScheduleHooks:
    """The schedule's :class:`ScheduleHooks`, derived once and kept on the schedule."""
    hit = sched._cache.get("assemble.hooks")
    if isinstance(hit, ScheduleHooks):
        return hit
    ranks = []
    lasts = []
    rank_of = {(s, d): sched.rank_of(s, d) for s in range(sched.num_stages) for d in range(sched.num_directions)}
    dims = hook_dims(sched)
    for actions in sched.ranks:
        hooks = tuple([_action_hooks(a, dims, rank_of) for a in actions])
        ranks.append(hooks)
        last_backward: dict[int, int] = {}
        for i, h in enumerate(hooks):
            for part in h.parts:
                if part[1] == "B" or part[1] == "W":
                    last_backward[part[0]] = i
        lasts.append(last_backward)
    out = ScheduleHooks(tuple(ranks), tuple(lasts))
    sched._cache["assemble.hooks"] = out
    return out


@dataclass(frozen=True)
class StepInputs:
    """What the assembler reads: the scenario and the pieces built from it."""

    scenario: Scenario
    program: Program
    schedule: Schedule
    network: Network
    tail: StepTail


class Assembler:
    """Works, isolated timings and stage-boundary sends of one scenario's actions, memoized per call."""

    def __init__(self, inp: StepInputs, timings: TimingCache | None = None) -> None:
        self.inp = inp
        self.timings = TIMINGS if timings is None else timings
        self.p2p_bytes = inp.program.p2p_bytes()
        self.p2p_regather_s = inp.program.p2p_regather_seconds()
        #: balanced routing: a stage's chunk of a kind is the same work for every micro-batch
        self.uniform = not routing_is_skewed(inp.scenario)
        self._keys: dict[tuple[int, str, int], tuple] = {}
        self._works: dict[tuple, Work] = {}
        self._timed: dict[tuple, tuple[Timing, tuple[tuple[float, Work], ...]]] = {}
        self._sends: dict[tuple[int, int], tuple[float, int]] = {}
        gpu = inp.scenario.cluster.gpu
        self.num_sms, self.comm_sms = gpu.num_sms, inp.scenario.parallel.comm_sms
        self.static_sms = inp.scenario.sm_partition == "static"

    def _chunk_key(self, part: PartKey) -> tuple:
        stage, kind, _ = part
        memo = (stage, kind, 0) if self.uniform else part
        hit = self._keys.get(memo)
        if hit is None:
            hit = self._keys[memo] = self.inp.program.chunk_key(stage, cast(ChunkKind, kind), memo[2])
        return hit

    def work(self, parts: tuple[PartKey, ...]) -> tuple[Work, tuple]:
        """The work of an action with these parts, and its key (the parts' chunk keys)."""
        key = tuple(self._chunk_key(p) for p in parts)
        hit = self._works.get(key)
        if hit is None:
            prog = self.inp.program
            if len(key) == 1:
                hit = prog.chunk_at(key[0]).work
            elif self.inp.scenario.parallel.overlap_pairs:
                hit = merge_pair(prog.chunk_at(key[0]), prog.chunk_at(key[1]))
            else:
                hit = sequential_pair(prog.chunk_at(key[0]), prog.chunk_at(key[1]))
            self._works[key] = hit
        return hit, key

    def timed(self, work: Work, key: tuple, starts: tuple[tuple[float, Work], ...] = ()
              ) -> tuple[Timing, tuple[tuple[float, Work], ...]]:
        """Isolated seconds and busy F/I/W seconds of ``work`` (``key``: its chunk keys), an action that starts
        the gradient reductions ``starts`` ((delay, work), see :meth:`reductions`), and those reductions as the
        analytic tier starts them. They run beside it in the isolated run only when the work itself has
        data-parallel tasks: then they share its one data-parallel stream (in detailed mode its gathers and the
        buckets queue there together), and each is started late enough to end when it ended beside the work
        (its full-rate seconds before that), as the stream it shared would have let it; otherwise they leave its
        duration alone and start as asked."""
        if not starts or not uses_dp_stream(work):
            hit = self._timed.get(key)
            if hit is None:
                hit = self._timed[key] = (self.timings.get(work, self.num_sms, self.comm_sms, self.static_sms), ())
            return hit[0], starts
        memo = (key, starts)
        hit = self._timed.get(memo)
        if hit is None:
            run = self.timings.beside(work, self.num_sms, self.comm_sms, self.static_sms, starts)
            late = tuple((max(delay, end - sum(t.seconds for t in bg.tasks)), bg)
                         for (delay, bg), end in zip(starts, run.ends, strict=True))
            hit = self._timed[memo] = ((run.makespan, run.busy), late)
        return hit

    def timing(self, parts: tuple[PartKey, ...], reduces: PartKey | None = None
               ) -> tuple[Timing, float]:
        """Isolated seconds and busy F/I/W seconds of an action with these parts, and the delay its overlapped
        gradient reduction starts after (``reduces``: its backward part whose reduction it starts; 0 if none)
        as :meth:`timed` places it."""
        work, key = self.work(parts)
        if reduces is None:
            return self.timed(work, key)[0], 0.0
        timing, late = self.timed(work, key, (self.reduction(reduces),))
        return timing, late[0][0]

    def send(self, src: int, dst: int) -> tuple[float, int]:
        """Seconds and link mask of one stage-boundary transfer from rank ``src`` to ``dst`` (with the scatter/
        gather optimization, the receiver's TP all-gather counts as part of the transfer)."""
        hit = self._sends.get((src, dst))
        if hit is None:
            net = self.inp.network
            same = net.same_node(src, dst)
            secs = net.p2p_seconds(self.p2p_bytes, same) + self.p2p_regather_s
            hit = self._sends[(src, dst)] = (secs, NVLINK if same else NIC)
        return hit

    def reduction(self, part: PartKey) -> tuple[float, Work]:
        """(delay, bucketed work) of the gradient reduction the backward ``part`` completes."""
        chunk = self.inp.program.chunk_at(self._chunk_key(part))
        return self.inp.tail.reduction_work(part[0], chunk.grads_ready_s)

    def reductions(self, r: int) -> tuple[dict[int, list[tuple[float, Work]]], dict[int, list[Work]], list[int]]:
        """Gradient reductions of rank ``r``: (delay, work) started with an action, works started when an action
        ends, and the stages reduced after the rank's last action."""
        hooks = schedule_hooks(self.inp.schedule)
        tail = self.inp.tail
        overlap = self.inp.scenario.parallel.overlap_grad_reduce and not tail.plan.sync_after_stage
        every = tail.plan.reduce_every_microbatch
        after_stage = tail.plan.sync_after_stage
        last = hooks.last_backward[r]
        starts: dict[int, list[tuple[float, Work]]] = {}
        ends: dict[int, list[Work]] = {}
        late: list[int] = []
        for i, h in enumerate(hooks.ranks[r]):
            part = h.backward
            if part is None or not (every or last[part[0]] == i):
                continue
            if overlap:
                starts.setdefault(i, []).append(self.reduction(part))
            elif after_stage:  # FSDP's post-backward: one reduce-scatter per unit, once the backward is done
                ends.setdefault(i, []).append(self.reduction(part)[1])
            elif every:
                ends.setdefault(i, []).append(tail.grad_sync_work(part[0]))
            else:
                late.append(part[0])
        return starts, ends, late

    def rank_plan(self, r: int, fast: bool) -> RankPlan:
        s = self.inp.scenario
        p = s.parallel
        tail = self.inp.tail
        hooks = schedule_hooks(self.inp.schedule)
        dims = hook_dims(self.inp.schedule)
        stages = all_stages_of(p.schedule, p.pp, p.vpp)[r]
        starts, ends, late_stages = self.reductions(r)
        planned = []
        for i, h in enumerate(hooks.ranks[r]):
            work, key = self.work(h.parts)
            outputs = tuple(Send(k, dst, *self.send(r, dst), arrival_text(k, dims),
                                 send_weight(bool(self.send(r, dst)[1] & NIC))) for k, dst in h.outputs)
            timed = self.timed(work, key)[0] if fast and not uses_dp_stream(work) else None
            planned.append(PlannedAction(work, h.label, h.category, h.inputs, outputs, tuple(ends.get(i, ())),
                                         tuple(starts.get(i, ())), timed))
        late = tuple(tail.grad_sync_work(stage) for stage in late_stages)
        items = [TailItem(tail.optimizer_work(stages), "optimizer", Category.OPTIMIZER)]
        if tail.tied_embedding_seconds(stages) > 0:
            items.insert(0, TailItem(tail.tied_embedding_work(stages), "tied_embedding_sync", Category.EXPOSED_COMM))
        prologue: tuple[Work, ...] = ()
        if tail.param_gather_seconds(stages) > 0:
            if p.overlap_param_gather or tail.plan.zero_stage == 3:
                prologue = (tail.param_gather_work(stages),)
            else:
                items.append(TailItem(tail.param_gather_work(stages), "param_gather", Category.EXPOSED_COMM))
        return RankPlan(tuple(planned), prologue, late, tuple(items))


def rank_plans(inp: StepInputs, *, fast: bool) -> list[RankPlan]:
    """One plan per pipeline rank of ``inp.schedule``."""
    asm = Assembler(inp)
    return [asm.rank_plan(r, fast) for r in range(inp.schedule.num_ranks)]
