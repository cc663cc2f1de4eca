"""From a schedule and a program to the engine's input: one :class:`~sim.engine.RankPlan` per pipeline rank.

For every action of a rank: its work (a chunk, or an overlapped pair merged by :mod:`sim.program.pairs`), the
arrivals it waits for (its dependencies on other stages), the stage-boundary sends it makes when it ends
(NVLink when both ranks share a node, else the NIC), and its gradient reduction: with ``overlap_grad_reduce``
the buckets of the backward that completes a stage's gradients (its last backward, or every backward when the
ZeRO stage reduces per micro-batch, :mod:`sim.program.sharding`) start with that backward as a background work
(:meth:`~sim.program.tail.StepTail.reduction_work`); without it, the whole stage's reduction starts after the
rank's last action (or after each backward, for per-micro-batch reductions). The once-per-step parameter
gather runs beside the first forwards when ``overlap_param_gather`` (Megatron-LM gathers each bucket ahead of
its first use; nothing waits for it here), or after the optimizer, exposed. In fast mode every action also
carries its isolated duration (:func:`sim.engine.isolated_run`), computed once per distinct work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from sim.config import Scenario
from sim.engine import PlannedAction, RankPlan, Send, TailItem, isolated_run
from sim.network import Network
from sim.pipeline import all_stages_of
from sim.program.chunks import ChunkKind, Program
from sim.program.pairs import merge_pair, sequential_pair
from sim.program.tail import StepTail
from sim.program.tasks import NIC, NVLINK, Work
from sim.schedules.actions import Action, Phase, Schedule
from sim.timeline import Category

CATEGORY = {Phase.F: Category.FORWARD, Phase.B: Category.BACKWARD, Phase.I: Category.BACKWARD_INPUT,
            Phase.W: Category.BACKWARD_WEIGHT, Phase.FB: Category.OVERLAPPED}


@dataclass(frozen=True)
class StepInputs:
    """What the assembler reads: the scenario and the pieces built from it."""

    scenario: Scenario
    program: Program
    schedule: Schedule
    network: Network
    tail: StepTail


class _Assembler:
    def __init__(self, inp: StepInputs, fast: bool) -> None:
        self.inp = inp
        self.fast = fast
        self.sched = inp.schedule
        self.per_dir = self.sched.microbatches_per_direction
        self.p2p_bytes = inp.program.p2p_bytes()
        self._works: dict[tuple, Work] = {}
        self._timed: dict[tuple, tuple[float, tuple[float, float, float]]] = {}
        gpu = inp.scenario.cluster.gpu
        self.num_sms, self.comm_sms = gpu.num_sms, inp.scenario.parallel.comm_sms
        self.static_sms = inp.scenario.sm_partition == "static"

    def global_mb(self, a: Action) -> int:
        return a.direction * self.per_dir + a.microbatch

    def _key(self, a: Action) -> tuple:
        prog = self.inp.program
        if a.phase is Phase.FB:
            fa, ba = a.parts()
            return (prog.chunk_key(fa.stage, "F", self.global_mb(fa)),
                    prog.chunk_key(ba.stage, cast(ChunkKind, ba.phase.value), self.global_mb(ba)))
        return (prog.chunk_key(a.stage, cast(ChunkKind, a.phase.value), self.global_mb(a)),)

    def work(self, a: Action) -> tuple[Work, tuple]:
        key = self._key(a)
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

    def timed(self, work: Work, key: tuple) -> tuple[float, tuple[float, float, float]]:
        hit = self._timed.get(key)
        if hit is None:
            hit = self._timed[key] = isolated_run(work, self.num_sms, self.comm_sms, self.static_sms)
        return hit

    def inputs(self, a: Action) -> tuple[tuple[str, int, int, int], ...]:
        """Arrivals an action waits for: the outputs of its dependencies on other stages."""
        return tuple(("F" if dep.phase is Phase.F else "B", dep.direction, dep.stage, dep.microbatch)
                     for p in a.parts() for dep in self.sched.dependencies(p) if dep.stage != p.stage)

    def outputs(self, a: Action) -> tuple[Send, ...]:
        out = []
        last = self.sched.num_stages - 1
        net = self.inp.network
        src = self.sched.rank_of(a.stage, a.direction)
        for p in a.parts():
            d, s, m = p.direction, p.stage, p.microbatch
            if p.phase is Phase.F and s < last:
                key, dst = ("F", d, s, m), self.sched.rank_of(s + 1, d)
            elif p.phase in (Phase.B, Phase.I) and s > 0:
                key, dst = ("B", d, s, m), self.sched.rank_of(s - 1, d)
            else:
                continue
            same = net.same_node(src, dst)
            out.append(Send(key, dst, net.p2p_seconds(self.p2p_bytes, same), NVLINK if same else NIC))
        return tuple(out)

    def _backward_chunk(self, a: Action) -> tuple[int, tuple] | None:
        """(stage, chunk key) of the part of ``a`` that completes weight gradients (a B or W), if any."""
        prog = self.inp.program
        for p in a.parts():
            if p.phase in (Phase.B, Phase.W):
                return p.stage, prog.chunk_key(p.stage, cast(ChunkKind, p.phase.value), self.global_mb(p))
        return None

    def _reductions(self, actions: tuple[Action, ...]) -> tuple[dict[int, list[Work]], dict[int, list[Work]],
                                                                 list[int]]:
        """Gradient reductions of a rank: works started with an action, after an action, and the stages
        reduced after the last action."""
        p = self.inp.scenario.parallel
        tail, prog = self.inp.tail, self.inp.program
        every = tail.plan.reduce_every_microbatch
        found = [(i, self._backward_chunk(a)) for i, a in enumerate(actions)]
        last: dict[int, int] = {hit[0]: i for i, hit in found if hit is not None}
        starts: dict[int, list[Work]] = {}
        ends: dict[int, list[Work]] = {}
        late: list[int] = []
        for i, hit in found:
            if hit is None or not (every or last[hit[0]] == i):
                continue
            stage, key = hit
            if p.overlap_grad_reduce:
                starts.setdefault(i, []).append(tail.reduction_work(stage, prog.chunk_at(key).grads_ready_s))
            elif every:
                ends.setdefault(i, []).append(tail.grad_sync_work(stage))
            else:
                late.append(stage)
        return starts, ends, late

    def rank_plan(self, r: int) -> RankPlan:
        s = self.inp.scenario
        p = s.parallel
        tail = self.inp.tail
        stages = all_stages_of(p.schedule, p.pp, p.vpp)[r]
        actions = self.sched.ranks[r]
        starts, ends, late_stages = self._reductions(actions)
        planned = []
        for i, a in enumerate(actions):
            work, key = self.work(a)
            planned.append(PlannedAction(work, str(a), CATEGORY[a.phase], self.inputs(a), self.outputs(a),
                                         triggers=tuple(ends.get(i, ())), starts=tuple(starts.get(i, ())),
                                         timed=self.timed(work, key) if self.fast else None))
        late = tuple(tail.grad_sync_work(stage) for stage in late_stages)
        items = [TailItem(tail.optimizer_work(stages), "optimizer", Category.OPTIMIZER)]
        prologue: tuple[Work, ...] = ()
        if tail.param_gather_seconds(stages) > 0:
            if p.overlap_param_gather or tail.plan.zero_stage == 3:
                prologue = (tail.param_gather_work(stages),)
            else:
                items.append(TailItem(tail.param_gather_work(stages), "param_gather", Category.EXPOSED_COMM))
        return RankPlan(tuple(planned), prologue, late, tuple(items))


def rank_plans(inp: StepInputs, *, fast: bool) -> list[RankPlan]:
    """One plan per pipeline rank of ``inp.schedule``."""
    asm = _Assembler(inp, fast)
    return [asm.rank_plan(r) for r in range(inp.schedule.num_ranks)]
