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

from dataclasses import dataclass, field
from typing import Any

from sim.assemble import Assembler, Timing, routing_is_skewed, schedule_hooks
from sim.config import Scenario
from sim.context import build_context
from sim.memory import model_state_bytes, peak_activation_bytes
from sim.model.activations import stage_activation_bytes
from sim.model.counts import stage_expert_params, stage_params
from sim.pipeline import all_stages_of
from sim.program.tasks import NIC
from sim.schedules.actions import Schedule

ClassKey = tuple[tuple[int, str], ...]  # per part of an action: (stage, chunk kind)


@dataclass
class Table:
    """Everything the analytic tier needs from one scenario that does not depend on its micro-batch count
    (under skewed routing, the scenario's own per-action durations too)."""

    schedule: str
    pp: int
    vpp: int
    skewed: bool
    stages: tuple[tuple[int, ...], ...]          # per rank, its stages (parameter order)
    asm: Assembler = field(repr=False)           # times works not seen yet (no cost-model call: see build_table)
    timings: dict[Any, Timing]                   # ClassKey (balanced) or the action's part keys (skewed)
    sends: dict[tuple[int, int], tuple[float, int]]
    prologue_s: list[float]                      # overlapped parameter gather, per rank
    exposed_gather_s: list[float]                # parameter gather after the optimizer, per rank
    grad_sync_s: list[float]                     # per stage
    optimizer_s: list[float]                     # per rank
    overlap_grad_reduce: bool
    model_states: list[tuple[float, float, float]]  # per rank: weights, gradients, optimizer states bytes
    stage_bytes: tuple[float, ...]               # activations one micro-batch leaves on each stage
    imbalance: float
    notes: tuple[str, ...]
    warnings: tuple[str, ...]
    fit: tuple[list[float], list[float], int] | None = None  # see sim.analytic._fit
    evaluated: dict[int, list[list[float]]] = field(default_factory=dict)  # rows of direct evaluations, by count

    def timing(self, key: Any, parts: tuple[tuple[int, str, int], ...]) -> Timing:
        hit = self.timings.get(key)
        if hit is None:
            hit = self.timings[key] = self.asm.timing(parts)
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
    gather = [tail.param_gather_seconds(st) for st in stages]
    sp, se = stage_params(ctx.partition, scenario.model), stage_expert_params(ctx.partition)
    table = Table(
        schedule=p.schedule, pp=p.pp, vpp=p.vpp, skewed=skewed, stages=stages, asm=asm, timings={}, sends={},
        prologue_s=gather if p.overlap_param_gather else [0.0] * p.pp,
        exposed_gather_s=[0.0] * p.pp if p.overlap_param_gather else gather,
        grad_sync_s=[tail.grad_sync_seconds(s) for s in range(scenario.num_stages)],
        optimizer_s=[asm.timings.get(tail.optimizer_work(st), asm.num_sms, asm.comm_sms, asm.static_sms)[0]
                     for st in stages],  # as the engine runs it: at the compute rate a static SM split leaves
        overlap_grad_reduce=p.overlap_grad_reduce,
        model_states=[model_state_bytes(sum(sp[s] for s in st), sum(se[s] for s in st), scenario)
                      for st in stages],
        stage_bytes=tuple(stage_activation_bytes(ctx.partition, scenario)), imbalance=ctx.loads.imbalance,
        notes=(), warnings=())
    comp = compiled(ctx.schedule)
    for r, slots in enumerate(comp.ranks):
        for slot in slots:
            table.timing(slot.parts if skewed else slot.cls, slot.parts)
            for _key, dst in slot.outputs:
                table.send(r, dst)
    table.notes = (*ctx.notes, *ctx.costs.notes)
    table.warnings = tuple(ctx.warnings)
    return table


@dataclass(frozen=True, slots=True)
class Slot:
    """One action, compiled for :func:`evaluate`."""

    cls: ClassKey
    parts: tuple[tuple[int, str, int], ...]
    inputs: tuple[int, ...]               # arrival key ids
    outputs: tuple[tuple[int, int], ...]  # (arrival key id, destination rank)
    pair: bool
    triggers: tuple[int, ...]             # stages whose last backward this action runs


@dataclass(frozen=True, slots=True)
class Compiled:
    ranks: tuple[tuple[Slot, ...], ...]
    num_keys: int


def compiled(sched: Schedule) -> Compiled:
    """The schedule's hooks with integer arrival keys, derived once and kept on the schedule."""
    hit = sched._cache.get("analytic.compiled")
    if isinstance(hit, Compiled):
        return hit
    hooks = schedule_hooks(sched)
    ids: dict[tuple, int] = {}
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
            inputs = []
            for k in h.inputs:
                kid = ids.get(k)
                if kid is None:
                    kid = ids[k] = len(ids)
                inputs.append(kid)
            outputs = []
            for k, dst in h.outputs:
                kid = ids.get(k)
                if kid is None:
                    kid = ids[k] = len(ids)
                outputs.append((kid, dst))
            slots.append(Slot(cls, parts, tuple(inputs), tuple(outputs), len(parts) == 2, trig.get(i, ())))
        ranks.append(tuple(slots))
    out = Compiled(tuple(ranks), len(ids))
    sched._cache["analytic.compiled"] = out
    return out


class Evaluation:
    """Per rank, a row: end of its last action, then the sums over its actions of duration and of compute-busy
    F, I, W seconds in plain actions and of busy seconds in overlapped pairs, its activation peak (bytes), then
    (with ``overlap_grad_reduce``) when each of its stages' gradient synchronization ends, in ``Table.stages``
    order; it starts when the action holding the stage's last backward ends and the rank's links are free.
    Its links stay held until then: later sends of the rank, and sends to it asked for after it started,
    wait."""

    FINISH, DURATION, BUSY_F, BUSY_I, BUSY_W, OVERLAPPED, PEAK, SYNCS = range(8)

    def __init__(self, per_rank: list[list[float]]) -> None:
        self.per_rank = per_rank


def evaluate(table: Table, sched: Schedule) -> Evaluation:
    """Exact evaluation of ``sched`` over the table's durations (see the module docstring)."""
    comp = compiled(sched)
    n_ranks = len(comp.ranks)
    arrive = [-1.0] * comp.num_keys
    parked: dict[int, list[int]] = {}
    ptr = [0] * n_ranks
    free = [0.0] * n_ranks
    tx = [[g, g] for g in table.prologue_s]  # per rank: when its NIC and NVLink transmit sides are free
    rx = table.prologue_s  # receive sides: held by an overlapped gather from the start
    syncs: list[list[tuple[float, float]]] = [[] for _ in range(n_ranks)]  # per rank: (requested, end)
    sync_s, overlap = table.grad_sync_s, table.overlap_grad_reduce
    sums = [[0.0] * 5 for _ in range(n_ranks)]
    trig: list[dict[int, float]] = [{} for _ in range(n_ranks)]
    key_of = (lambda s: s.parts) if table.skewed else (lambda s: s.cls)
    timings, timing, sends, send = table.timings, table.timing, table.sends, table.send
    ready = list(range(n_ranks - 1, -1, -1))
    while ready:
        r = ready.pop()
        slots, i, t, acc, txr = comp.ranks[r], ptr[r], free[r], sums[r], tx[r]
        while i < len(slots):
            slot = slots[i]
            blocked = False
            for k in slot.inputs:
                e = arrive[k]
                if e < 0.0:
                    parked.setdefault(k, []).append(r)
                    blocked = True
                    break
                if e > t:
                    t = e
            if blocked:
                break
            key = key_of(slot)
            secs, (bf, bi, bw) = timings.get(key) or timing(key, slot.parts)
            t += secs
            acc[0] += secs
            if slot.pair:
                acc[4] += bf + bi + bw
            else:
                acc[1] += bf
                acc[2] += bi
                acc[3] += bw
            for k, dst in slot.outputs:
                seconds, links = sends.get((r, dst)) or send(r, dst)
                if dst == r or seconds <= 0:
                    arrive[k] = t
                else:
                    side = 0 if links & NIC else 1
                    start = max(t, txr[side], rx[dst])
                    for asked, end in syncs[dst]:  # a synchronization the receiver started before holds its links
                        if asked <= t and end > start:
                            start = end
                    arrive[k] = txr[side] = start + seconds
                if parked and k in parked:
                    ready.extend(parked.pop(k))
            if overlap:
                for stage in slot.triggers:  # the stage's gradient synchronization holds the rank's links
                    start = max(t, txr[0], txr[1], rx[r], syncs[r][-1][1] if syncs[r] else 0.0)
                    end = txr[0] = txr[1] = start + sync_s[stage]
                    syncs[r].append((t, end))
                    trig[r][stage] = end
            i += 1
        ptr[r], free[r] = i, t
    if any(p < len(slots) for p, slots in zip(ptr, comp.ranks, strict=True)):
        raise RuntimeError(f"schedule {sched.name} deadlocked in the analytic evaluation")  # a generator bug
    peaks = peak_activation_bytes(sched, table.stage_bytes)
    rows = []
    for r in range(n_ranks):
        rows.append([free[r], *sums[r], peaks[r], *(trig[r].get(s, free[r]) for s in table.stages[r])])
    return Evaluation(rows)


def gpipe_closed_form(table: Table, n: int) -> list[list[float]] | None:
    """GPipe's rows of :class:`Evaluation` at ``n`` micro-batches in closed form, or ``None`` outside its
    preconditions (transfers no longer than the chunks they follow, so they never queue on their own; the
    overlapped parameter gather over before the backward sweep's transfers).

    With identical micro-batches the forward sweep is a flow shop: the longest path to micro-batch ``n - 1``
    on stage ``s`` repeats the slowest stage of the run ``[e, s]`` it crosses, ``(n - 1) max F[e..s]`` (the
    identical-jobs argument). Paths enter at stage 0 at time 0, or at stage ``e + 1`` when the gather holds
    rank ``e``'s sends: the j-th leaves at ``H_e + j Lf_e`` at the earliest (``H_e``: the later of the two
    ranks' gathers; held sends then leave back to back), entering micro-batch ``j`` (0 or ``n - 1`` is the
    longest). Each rank starts its backwards after its last forward; the backward sweep runs the other way:
    ``finish(s) = max_{e >= s} (F_end(e) + sum B[s..e] + sum Lb[s+1..e] + (n - 1) max B[s..e])``.
    """
    if table.skewed or not table.overlap_grad_reduce:
        return None
    pp, hold = table.pp, table.prologue_s
    f = [table.timing(((s, "F"),), ((s, "F", 0),)) for s in range(pp)]
    b = [table.timing(((s, "B"),), ((s, "B", 0),)) for s in range(pp)]
    lf = [table.send(s, s + 1)[0] if s + 1 < pp else 0.0 for s in range(pp)]
    lb = [table.send(s, s - 1)[0] if s > 0 else 0.0 for s in range(pp)]
    if any(lf[s] > f[s][0] or lb[s] > b[s][0] for s in range(pp)):
        return None
    f_end = []
    for s in range(pp):
        best = 0.0
        run_sum, run_max = 0.0, 0.0
        for e in range(s, -1, -1):  # the run [e, s], entered at stage e
            run_sum += f[e][0] + (lf[e] if e < s else 0.0)
            run_max = max(run_max, f[e][0])
            if e == 0:
                best = max(best, run_sum + (n - 1) * run_max)
            else:  # a send of rank e - 1 held by the gather
                h = max(hold[e - 1], hold[e]) + lf[e - 1]
                best = max(best, h + run_sum + (n - 1) * run_max, h + (n - 1) * lf[e - 1] + run_sum)
        f_end.append(best)
    for s in range(pp):  # held sends must be gone before the rank's backward sends, the gather before them
        if (s + 1 < pp and max(hold[s], hold[s + 1]) + n * lf[s] > f_end[s] + b[s][0]) or hold[s] > f_end[s]:
            return None
    rows = []
    for s in range(pp):
        finish = 0.0
        run_sum, run_max = 0.0, 0.0
        for e in range(s, pp):
            run_sum += b[e][0] + (lb[e] if e > s else 0.0)
            run_max = max(run_max, b[e][0])
            finish = max(finish, f_end[e] + run_sum + (n - 1) * run_max)
        (fs, (ff, _, _)), (bs, (_, bi, bw)) = f[s], b[s]
        sync = max(finish + lb[s], hold[s]) + table.grad_sync_s[s]
        rows.append([finish, n * (fs + bs), n * ff, n * bi, n * bw, 0.0, n * table.stage_bytes[s], sync])
    return rows
