"""What the analytic tier (:mod:`sim.analytic`) evaluates: a scenario's :class:`Table` (action durations,
transfer times, tail seconds and memory, none of which depend on the number of micro-batches) and the exact
max-plus evaluation of a schedule over it, without an event loop.

:func:`evaluate` is the fast mode's pipeline without events: a rank's action starts when the rank is free
and every input has arrived; it lasts its work's isolated duration (:meth:`sim.assemble.Assembler.timing`);
when it ends it sends its outputs, one after another on the rank's NIC or NVLink transmit side, which an
overlapped parameter gather holds from the start (on both ends of a transfer). It costs O(actions) in plain
Python loops, like :mod:`sim.schedules.listsched`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from math import nextafter
from typing import Any, NamedTuple

from sim.assemble import Assembler, Timing, hook_dims, routing_is_skewed, schedule_hooks, uses_dp_stream
from sim.config import Scenario
from sim.context import build_context
from sim.memory import peak_activation_bytes, rank_model_states
from sim.model.activations import stage_activation_bytes, stage_rerun_bytes, stage_workspace_bytes
from sim.model.counts import stage_expert_params, stage_params
from sim.network.nccl import send_weight
from sim.pipeline import all_stages_of
from sim.program.tasks import NIC, NVLINK
from sim.schedules.actions import Schedule

ClassKey = tuple[tuple[int, str], ...]  # per part of an action: (stage, chunk kind)


@dataclass
class Table:
    """Everything the analytic tier needs from one scenario that does not depend on its micro-batch count
    (under skewed routing, the scenario's own per-action durations too)."""

    schedule: str
    pp: int
    vpp: int
    combined_1f1b: bool                          # parallel.ep_overlap: the schedule's combined 1F1B form
    skewed: bool
    stages: tuple[tuple[int, ...], ...]          # per rank, its stages (parameter order)
    asm: Assembler = field(repr=False)           # times works not seen yet (no cost-model call: see build_table)
    timings: dict[Any, Timing]                   # ClassKey (balanced) or the action's part keys (skewed)
    sends: dict[tuple[int, int], tuple[float, int]]
    prologue_s: list[float]                      # overlapped parameter gather, per rank
    prologue_buckets: list[tuple[float, ...]]    # its buckets' seconds, per rank
    gather_sides: tuple[int, ...]                # link sides (0 NIC, 1 NVLink) a parameter gather holds
    reduce_sides: tuple[int, ...]                # link sides a gradient reduction holds
    exposed_gather_s: list[float]                # parameter gather after the optimizer, per rank
    tied_sync_s: list[float]                     # tied embeddings' all-reduce before the optimizer, per rank
    grad_sync_s: list[float]                     # per stage
    optimizer_s: list[float]                     # per rank
    overlap_grad_reduce: bool                    # buckets beside the backward that completes them
    reduce_every: bool                           # gradients reduced after every micro-batch's backward
    after_stage: bool                            # unit buckets after each stage's last backward (ZeRO-3, PP)
    model_states: list[tuple[float, float, float]]  # per rank: weights, gradients, optimizer states bytes
    stage_bytes: tuple[float, ...]               # activations one micro-batch leaves on each stage
    stage_work: tuple[float, ...]                # the largest working set of a backward on each stage
    stage_rerun: tuple[float, ...]               # what a split backward's I re-creates for its W, per stage
    imbalance: float
    notes: tuple[str, ...]
    warnings: tuple[str, ...]
    fit: tuple[list[float], list[float], int] | None = None  # see sim.analytic._fit
    evaluated: dict[int, list[list[float]]] = field(default_factory=dict)  # rows of direct evaluations, by count
    reductions: dict[Any, tuple[float, tuple[float, ...]]] = field(default_factory=dict)  # see reduction()
    reducing_timings: dict[Any, tuple[Timing, float]] = field(default_factory=dict)  # see reducing()
    dp_own: dict[Any, bool] = field(default_factory=dict)  # see queues()

    def timing(self, key: Any, parts: tuple[tuple[int, str, int], ...]) -> Timing:
        hit = self.timings.get(key)
        if hit is None:
            hit = self.timings[key] = self.asm.timing(parts)[0]
        return hit

    def queues(self, key: Any, parts: tuple[tuple[int, str, int], ...]) -> bool:
        """Whether the action's own work has data-parallel tasks (:func:`sim.assemble.uses_dp_stream`)."""
        hit = self.dp_own.get(key)
        if hit is None:
            hit = self.dp_own[key] = uses_dp_stream(self.asm.work(parts)[0])
        return hit

    def reducing(self, key: Any, parts: tuple[tuple[int, str, int], ...], part: tuple[int, str, int]
                 ) -> tuple[Timing, float]:
        """The timing of an action that starts the overlapped reduction of its backward ``part``, and the delay
        that reduction starts after (:meth:`sim.assemble.Assembler.timing`: both can move when the action's own
        work queues on the data-parallel stream with it)."""
        memo = (key, _reduction_key(part, self.skewed))
        hit = self.reducing_timings.get(memo)
        if hit is None:
            hit = self.reducing_timings[memo] = self.asm.timing(parts, part)
        return hit

    def reduction(self, key: Any, part: tuple[int, str, int]) -> tuple[float, tuple[float, ...]]:
        """(delay after the action starts, seconds of each bucket) of the overlapped gradient reduction the
        backward ``part`` completes (:meth:`sim.assemble.Assembler.reduction`)."""
        hit = self.reductions.get(key)
        if hit is None:
            delay, work = self.asm.reduction(part)
            hit = self.reductions[key] = (delay, tuple(t.seconds for t in work.tasks))
        return hit

    def send(self, src: int, dst: int) -> tuple[float, int]:
        hit = self.sends.get((src, dst))
        if hit is None:
            hit = self.sends[(src, dst)] = self.asm.send(src, dst)
        return hit


def build_table(scenario: Scenario, allow_cpu: bool, strict: bool) -> Table:
    """The scenario's :class:`Table`. Every chunk the schedule runs is built here, so the cost model's notes
    are complete; pairs met later (another micro-batch count) only merge chunks already built."""
    ctx = build_context(scenario, allow_cpu_calibration=allow_cpu, strict_calibration=strict)
    p = scenario.parallel
    skewed = routing_is_skewed(scenario)
    asm = Assembler(ctx.inputs)
    stages = all_stages_of(p.schedule, p.pp, p.vpp)
    tail = ctx.tail
    # the once-per-step gather as the engine runs it: bucket by bucket (each bucket's latency counted)
    gather = [sum(t.seconds for t in tail.param_gather_work(st).tasks) if tail.param_gather_seconds(st) > 0
              else 0.0 for st in stages]
    overlapped_gather = p.overlap_param_gather or tail.plan.zero_stage == 3  # as sim.assemble runs it
    overlap = p.overlap_grad_reduce and not tail.plan.sync_after_stage  # as sim.assemble runs it
    traffic = tail.traffic
    sp, se = stage_params(ctx.partition, scenario.model), stage_expert_params(ctx.partition)
    table = Table(
        schedule=p.schedule, pp=p.pp, vpp=p.vpp, combined_1f1b=p.ep_overlap, skewed=skewed, stages=stages,
        asm=asm, timings={}, sends={},
        prologue_s=gather if overlapped_gather else [0.0] * p.pp,
        prologue_buckets=[tuple(t.seconds for t in tail.param_gather_work(st).tasks) if overlapped_gather and g > 0
                          else () for st, g in zip(stages, gather, strict=True)],
        gather_sides=_sides(traffic.gather_links), reduce_sides=_sides(traffic.reduce_links),
        exposed_gather_s=[0.0] * p.pp if overlapped_gather else gather,
        tied_sync_s=[tail.tied_embedding_seconds(st) for st in stages],
        grad_sync_s=[tail.grad_sync_seconds(s) for s in range(scenario.num_stages)],
        optimizer_s=[asm.timings.get(tail.optimizer_work(st), asm.num_sms, asm.comm_sms, asm.static_sms)[0]
                     for st in stages],  # as the engine runs it: at the compute rate a static SM split leaves
        overlap_grad_reduce=overlap, reduce_every=tail.plan.reduce_every_microbatch,
        after_stage=tail.plan.sync_after_stage,
        model_states=[rank_model_states(ctx.partition, scenario, st, sp, se) for st in stages],
        stage_bytes=tuple(stage_activation_bytes(ctx.partition, scenario)),
        stage_work=tuple(stage_workspace_bytes(ctx.partition, scenario)),
        stage_rerun=tuple(stage_rerun_bytes(ctx.partition, scenario)), imbalance=ctx.loads.imbalance,
        notes=(), warnings=())
    comp = compiled(ctx.schedule)
    for r, slots in enumerate(comp.ranks):
        for slot in slots:
            table.timing(slot.parts if skewed else slot.cls, slot.parts)
            for _key, dst in slot.outputs:
                table.send(r, dst)
            if (overlap or table.after_stage) and slot.backward is not None:
                table.reduction(_reduction_key(slot.backward, skewed), slot.backward)
    table.notes = (*ctx.notes, *ctx.costs.notes)
    table.warnings = tuple(ctx.warnings)
    return table


def _sides(links: int) -> tuple[int, ...]:
    return tuple(side for side, bit in enumerate((NIC, NVLINK)) if links & bit)


def _reduction_key(part: tuple[int, str, int], skewed: bool) -> Any:
    return part if skewed else part[:2]


class Slot(NamedTuple):
    """One action, compiled for :func:`evaluate` (a named tuple: tens of thousands are built per schedule)."""

    cls: ClassKey
    parts: tuple[tuple[int, str, int], ...]
    inputs: tuple[int, ...]               # arrival key ids
    outputs: tuple[tuple[int, int], ...]  # (arrival key id, destination rank)
    pair: bool
    triggers: tuple[int, ...]             # stages whose last backward this action runs
    backward: tuple[int, str, int] | None  # its part that completes weight gradients (a B or W)


@dataclass(frozen=True, slots=True)
class Compiled:
    ranks: tuple[tuple[Slot, ...], ...]
    num_keys: int


def compiled(sched: Schedule) -> Compiled:
    """The schedule's hooks as slots (arrival keys index an array: :func:`sim.assemble.arrival_key`), derived
    once and kept on the schedule."""
    hit = sched._cache.get("analytic.compiled")
    if isinstance(hit, Compiled):
        return hit
    hooks = schedule_hooks(sched)
    classes: dict[tuple, ClassKey] = {}
    ranks = []
    for r, actions in enumerate(hooks.ranks):
        trig: dict[int, tuple[int, ...]] = {}
        for stage, i in hooks.last_backward[r].items():
            trig[i] = (*trig.get(i, ()), stage)
        slots = []
        for i, h in enumerate(actions):
            parts = h.parts
            cls = classes.get(parts)
            if cls is None:
                cls = classes[parts] = tuple([(p[0], p[1]) for p in parts])
            slots.append(Slot(cls, parts, h.inputs, h.outputs, len(parts) == 2, trig.get(i, ()), h.backward))
        ranks.append(tuple(slots))
    num_dirs, num_stages, per_dir = hook_dims(sched)
    out = Compiled(tuple(ranks), 2 * num_dirs * num_stages * per_dir)
    sched._cache["analytic.compiled"] = out
    return out


class Evaluation:
    """Per rank, a row: end of its last action, then the sums over its actions of duration and of compute-busy
    F, I, W seconds in plain actions and of busy seconds in overlapped pairs, its activation peak (bytes), when
    its last send arrived (at least the end of its last action), then (reductions beside the actions) when each
    of its stages' last gradient reduction ends, in ``Table.stages`` order; an overlapped one asks for its
    stream its bucket delay after the backward that fills it starts, another when that backward ends, and it
    starts once the rank's data-parallel stream is free. Sends of the rank, and sends to it, share its links
    with them (see :func:`evaluate`)."""

    FINISH, DURATION, BUSY_F, BUSY_I, BUSY_W, OVERLAPPED, PEAK, SENT, SYNCS = range(9)

    def __init__(self, per_rank: list[list[float]]) -> None:
        self.per_rank = per_rank


def shared_arrival(t: float, d: float, weight: float, collective_s: float, sends_s: float) -> float:
    """When a send of ``d`` seconds (alone) started at ``t`` arrives, sharing its link sides as the engine does:
    with collectives (weight 1) loading them for ``collective_s`` more seconds it gets ``weight / (weight + 1)``
    of the rate until it or they are done, arriving ``min(d / weight, collective_s)`` late; with the rank's
    earlier sends (its own weight) loading its transmit side for ``sends_s`` more seconds, half the rate,
    ``min(d, sends_s)`` late. The larger delay applies (one other kind of transfer at a time)."""
    late = 0.0
    if collective_s > 0.0:
        late = min(d / weight, collective_s)
    if sends_s > 0.0:
        late = max(late, min(d, sends_s))
    return t + d + late


def evaluate(table: Table, sched: Schedule) -> Evaluation:
    """Exact evaluation of ``sched`` over the table's durations (see the module docstring).

    Links are shared as the engine shares them, to first order. Each rank's data-parallel collectives (an
    overlapped parameter gather from the start, gradient reductions) queue on its data-parallel stream bucket
    by bucket, each keeping its links loaded while it runs; every bucket asked for by the instant of a send is
    placed first, so ``w`` below runs to the end of the chain queued by then, which loads the link bucket after
    bucket while the send is in flight (those the action itself triggers start beside its sends, as in the
    engine). A send then arrives at :func:`shared_arrival`: late by ``min(d / v, w)`` beside collectives with
    ``w`` seconds left on its sides (its own rank's or the receiver's; ``v``: its
    :func:`~sim.network.nccl.send_weight`), by ``min(d, w)`` beside the rank's earlier sends. Left out: a send
    slowing the collectives beside it (sends are short), collectives asked for while a send is in flight, and
    sends of different ranks sharing one receiving side (ranks are evaluated one after another, not in time
    order)."""
    comp = compiled(sched)
    n_ranks = len(comp.ranks)
    arrive = [-1.0] * comp.num_keys
    parked: dict[int, list[int]] = {}
    ptr = [0] * n_ranks
    free = [0.0] * n_ranks
    sent = [[0.0, 0.0] for _ in range(n_ranks)]  # per rank: until when its sends load its NIC, NVLink transmit
    last_sent = [0.0] * n_ranks  # per rank: when its last send arrives
    # per rank and side: when each placed bucket was asked for and when it ends (both nondecreasing), so a send
    # to the rank sees the receive side as the engine would at the send's request time
    held_req: list[list[list[float]]] = [[[], []] for _ in range(n_ranks)]
    held_end: list[list[list[float]]] = [[[], []] for _ in range(n_ranks)]
    # per rank: data-parallel buckets not placed yet, (asked at, seconds, stage or -1, sides), in stream order
    pending: list[deque[tuple[float, float, int, tuple[int, ...]]]] = [
        deque((0.0, b, -1, table.gather_sides) for b in buckets) for buckets in table.prologue_buckets]
    dp_free = [0.0] * n_ranks  # when each rank's data-parallel stream is free
    inf = float("inf")
    weight = (send_weight(True), send_weight(False))  # a send's share against a collective's 1, per side
    sync_s, overlap, every, skewed = table.grad_sync_s, table.overlap_grad_reduce, table.reduce_every, table.skewed
    after = table.after_stage
    during = overlap or every or after  # reductions run beside the actions, not after the last one
    reduce_sides = table.reduce_sides
    sums = [[0.0] * 5 for _ in range(n_ranks)]
    trig: list[dict[int, float]] = [{} for _ in range(n_ranks)]

    def place(r: int, until: float) -> None:
        """Place rank ``r``'s data-parallel buckets asked for before ``until``: the stream runs them in that order,
        whenever each starts."""
        q = pending[r]
        while q:
            asked, secs, stage, sides = q[0]
            if asked >= until:
                return
            req = asked if asked > dp_free[r] else dp_free[r]
            q.popleft()
            end = dp_free[r] = req + secs  # one stream; sends beside it only share its links
            for side in sides:
                held_req[r][side].append(req)
                held_end[r][side].append(end)
            if stage >= 0:
                trig[r][stage] = end

    timings, timing, sends, send = table.timings, table.timing, table.sends, table.send
    dp_own, queues = table.dp_own, table.queues
    ready = list(range(n_ranks - 1, -1, -1))
    while ready:
        r = ready.pop()
        slots, i, t, acc, mine = comp.ranks[r], ptr[r], free[r], sums[r], sent[r]
        while i < len(slots):
            cls, parts, inputs, outputs, pair, triggers, part = slots[i]  # a Slot, in field order
            blocked = False
            for k in inputs:
                e = arrive[k]
                if e < 0.0:
                    parked.setdefault(k, []).append(r)
                    blocked = True
                    break
                if e > t:
                    t = e
            if blocked:
                break
            key = parts if skewed else cls
            reduces = part is not None and during and (every or bool(triggers))
            if reduces and overlap:  # timed with its buckets, which start after the delay the timing gives
                assert part is not None  # reduces implies it
                (secs, (bf, bi, bw)), delay = table.reducing(key, parts, part)
            else:
                secs, (bf, bi, bw) = timings.get(key) or timing(key, parts)
            queued = dp_own.get(key)
            if queued is None:
                queued = queues(key, parts)
            if queued:  # its own data-parallel tasks queue behind the buckets asked for by its start, those its
                # predecessor triggered at this instant included (the stream runs them after its first task,
                # which holds up the rest of its tasks as much)
                place(r, nextafter(t, inf))
                if dp_free[r] > t:
                    t = dp_free[r]
            t += secs
            if reduces and overlap:  # its buckets, asked for their delay after the action starts
                assert part is not None  # reduces implies it
                _delay, buckets = table.reduction(_reduction_key(part, skewed), part)
                first = t - secs + delay
                pending[r].extend((first if j == 0 else 0.0, b, part[0], reduce_sides)
                                  for j, b in enumerate(buckets))
            acc[0] += secs
            if pair:
                acc[4] += bf + bi + bw
            else:
                acc[1] += bf
                acc[2] += bi
                acc[3] += bw
            if reduces and not overlap:  # asked for when the action ends, beside its sends
                assert part is not None  # reduces implies it
                if after:  # FSDP's post-backward: the unit buckets back to back
                    _delay, buckets = table.reduction(_reduction_key(part, skewed), part)
                    pending[r].extend((t if j == 0 else 0.0, b, part[0], reduce_sides) for j, b in enumerate(buckets))
                else:  # the whole reduction
                    pending[r].append((t, sync_s[part[0]], part[0], reduce_sides))
            for k, dst in outputs:
                seconds, links = sends.get((r, dst)) or send(r, dst)
                if dst == r or seconds <= 0:
                    arrive[k] = t
                else:
                    side = 0 if links & NIC else 1
                    now = nextafter(t, inf)  # buckets asked at t start beside the send, as in the engine
                    place(r, now)  # the whole chain asked for by now loads the link while it runs
                    place(dst, now)
                    own = held_end[r][side][-1] if held_end[r][side] else 0.0
                    j = bisect_left(held_req[dst][side], now)  # the receiver's buckets asked for by t
                    theirs = held_end[dst][side][j - 1] if j else 0.0
                    arrive[k] = shared_arrival(t, seconds, weight[side], max(own, theirs) - t, mine[side] - t)
                    mine[side] = max(t, mine[side]) + seconds
                    if arrive[k] > last_sent[r]:
                        last_sent[r] = arrive[k]
                if parked and k in parked:
                    ready.extend(parked.pop(k))
            i += 1
        ptr[r], free[r] = i, t
    for r in range(n_ranks):
        place(r, inf)
    if any(p < len(slots) for p, slots in zip(ptr, comp.ranks, strict=True)):
        raise RuntimeError(f"schedule {sched.name} deadlocked in the analytic evaluation")  # a generator bug
    peaks = peak_activation_bytes(sched, table.stage_bytes, table.stage_rerun)
    rows = []
    for r in range(n_ranks):
        work = max(table.stage_work[s] for s in table.stages[r])
        rows.append([free[r], *sums[r], peaks[r] + work, max(free[r], last_sent[r]),
                     *(trig[r].get(s, free[r]) for s in table.stages[r])])
    return Evaluation(rows)
