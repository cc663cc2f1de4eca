"""One training step of a scenario, end to end: layout, costs, program, schedule, engine, metrics.

The glue between the pure layers and the engine. It builds the stage layout, the cost model (with the
scenario's calibration table when it names one), the network, the expert loads, the program and the
schedule, then lets the engine run the pipeline and hands the trace to ``sim.metrics``.

After a rank's last backward for a stage, that stage's gradients are reduce-scattered across its data-
parallel group (ZeRO-1 and up; all-reduced under ZeRO-0) on the rank's links while later actions proceed
(``overlap_grad_reduce``), or after the rank's last action otherwise. The optimizer step (memory-bound) then
updates the local shard, and the updated parameters are all-gathered: at the start of the step beside the
first forwards when ``overlap_param_gather`` (Megatron-LM gathers each bucket ahead of its first use;
nothing waits for it here), or after the optimizer, exposed, otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import simpy

from sim.config import Scenario
from sim.costs import CostModel
from sim.engine import (
    IB_RX,
    IB_TX,
    NVL_RX,
    NVL_TX,
    EngineHooks,
    Gpu,
    TraceRecord,
    isolated_run,
    occupy,
    simulate_pipeline,
)
from sim.experts.loads import token_bytes
from sim.loads import LoadModel
from sim.metrics import StepResult, step_result
from sim.model.layout import StageLayout, partition
from sim.model.memory import rank_stages, stage_activation_bytes
from sim.network import Network
from sim.opcosts import OpCoster
from sim.program import IB, NVLINK, ChunkKind, Program, Work, merge_pair, sequential_pair
from sim.schedules.actions import Action, Phase
from sim.schedules.generators import build_schedule
from sim.tail import StepTail


@dataclass
class StepContext:
    """Everything the step simulation built, for reports, plots and tests."""

    scenario: Scenario
    layout: StageLayout
    costs: CostModel
    network: Network
    program: Program
    schedule: Any
    loads: LoadModel
    tail: StepTail


def load_calibration(scenario: Scenario, allow_cpu: bool = False, strict: bool = True
                     ) -> tuple[Any | None, str | None]:
    """The scenario's calibration table and a warning to show (a CPU table in pipeline-validation mode).

    A table measured on another GPU is refused when ``strict`` (the user named it); otherwise (a job file's
    own table under a what-if on other hardware) it is set aside with a warning and the profile is used."""
    if not scenario.calibration:
        return None, None
    from sim.calibrate.table import gpu_model_token, load_table

    table = load_table(scenario.calibration)
    gpu = scenario.cluster.gpu.name
    if not strict and table.is_gpu and gpu_model_token(table.device.name) != gpu_model_token(gpu):
        return None, (f"the job's calibration ({table.device.name}) does not describe {gpu}: "
                      "profile efficiencies used")
    return table, table.check_usable_for(gpu, allow_cpu=allow_cpu)


def build_context(scenario: Scenario, allow_cpu_calibration: bool = False,
                  strict_calibration: bool = True) -> StepContext:
    p = scenario.parallel
    layout = partition(scenario.model, scenario.num_stages, p.stage_layers, p.stage_split, scenario.training.seq_len)
    table, warning = load_calibration(scenario, allow_cpu_calibration, strict_calibration)
    costs = CostModel(scenario.cluster.gpu, scenario.precision, table)
    if warning:
        costs.warnings.add(warning)
    loads = LoadModel(scenario, layout)
    network = Network(scenario.cluster, p, scenario.dp, a2a_calibration(scenario, costs, loads))
    program = Program(scenario, OpCoster(scenario, costs), network, layout, loads.moe_load)
    schedule = build_schedule(p.schedule, p.pp, scenario.num_microbatches, p.vpp)
    tail = StepTail(scenario, layout, network, costs)
    return StepContext(scenario, layout, costs, network, program, schedule, loads, tail)


def a2a_calibration(scenario: Scenario, costs: CostModel, loads: LoadModel) -> tuple[tuple[str, float], ...]:
    """Per kind of expert all-to-all, the seconds a calibration table measured beyond pure transfer: the
    measured time (balanced routing, this EP size and micro-batch) minus the transfer time at the measured
    cluster's link bandwidths. Empty when the table does not cover the scenario."""
    m, p = scenario.model, scenario.parallel
    if not (m.is_moe and p.ep > 1) or costs.table is None:
        return ()
    link = Network(scenario.cluster, p, scenario.dp)
    load = loads.balanced_load()
    out = []
    for kind, dtype in (("dispatch", scenario.precision.dispatch), ("combine", scenario.precision.combine)):
        logical = scenario.tokens_per_microbatch * m.n_activated_experts * token_bytes(scenario, kind)
        measured = costs.alltoall_measured(kind, dtype, logical, p.ep)
        if measured is None:
            costs.notes.add(f"no calibration for the expert {kind} at EP{p.ep}; pure transfer time used")
            continue
        seconds, nic, nvl = measured
        ib = load.dispatch_ib_bytes if kind == "dispatch" else load.combine_ib_bytes
        nv = load.dispatch_nvlink_bytes if kind == "dispatch" else load.combine_nvlink_bytes
        out.append((kind, max(0.0, seconds - link.alltoall_seconds(ib, nv, kind, nic, nvl))))
    return tuple(out)


class _Driver:
    """Engine hooks for one scenario: the work, inputs and outputs of every action, and the step's tail."""

    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx
        self.sched = ctx.schedule
        s = ctx.scenario
        self.per_dir = self.sched.microbatches_per_direction
        self.p2p_bytes = ctx.program.p2p_bytes()
        self._work: dict[Action, Work] = {}
        self._pairs: dict[tuple[int, int], Work] = {}
        self._durations: dict[int, tuple[float, tuple[float, float, float]]] = {}
        self.gpu = s.cluster.gpu
        self.comm_sms = s.parallel.comm_sms
        self.owned = rank_stages(s.parallel.schedule, s.parallel.pp, ctx.layout.num_stages)
        self.stage_act = stage_activation_bytes(ctx.layout, s)
        self.inflight = [[0] * len(o) for o in self.owned]
        self.peak_act = [0.0] * len(self.owned)
        self.backwards_left = self._count_backwards()
        self.grad_sync: dict[tuple[int, int], simpy.Event] = {}
        self.trace: TraceRecord | None = None
        self.progress: Callable[[int], None] | None = None
        self.env: simpy.Environment
        self.gpus: list[Gpu] = []

    # ----------------------------------------------------------- actions
    def global_mb(self, a: Action) -> int:
        return a.direction * self.per_dir + a.microbatch

    def work(self, a: Action) -> Work:
        hit = self._work.get(a)
        if hit is not None:
            return hit
        prog = self.ctx.program
        if a.phase is Phase.FB:
            fa, ba = a.parts()
            f = prog.chunk(fa.stage, "F", self.global_mb(fa))
            b = prog.chunk(ba.stage, cast(ChunkKind, ba.phase.value), self.global_mb(ba))
            key = (id(f), id(b))
        else:
            f = b = prog.chunk(a.stage, cast(ChunkKind, a.phase.value), self.global_mb(a))
            key = (id(f), 0)
        w = self._pairs.get(key)
        if w is None:
            if a.phase is not Phase.FB:
                w = Work.single(f)
            elif self.ctx.scenario.parallel.overlap_pairs:
                w = merge_pair(f, b)
            else:
                w = sequential_pair(f, b)
            self._pairs[key] = w
        self._work[a] = w
        return w

    def duration(self, a: Action) -> tuple[float, tuple[float, float, float]]:
        w = self.work(a)
        key = id(w)
        d = self._durations.get(key)
        if d is None:
            d = self._durations[key] = isolated_run(w, self.gpu.num_sms, self.comm_sms)
        return d

    def inputs(self, a: Action) -> tuple[tuple[str, int, int, int], ...]:
        """Arrivals an action waits for: the outputs of its dependencies on other stages."""
        return tuple(("F" if dep.phase is Phase.F else "B", dep.direction, dep.stage, dep.microbatch)
                     for p in a.parts() for dep in self.sched.dependencies(p) if dep.stage != p.stage)

    def outputs(self, a: Action) -> tuple[tuple[tuple[str, int, int, int], int, float, int], ...]:
        out = []
        last = self.sched.num_stages - 1
        for p in a.parts():
            d, s, m = p.direction, p.stage, p.microbatch
            if p.phase is Phase.F and s < last:
                out.append((("F", d, s, m), self.sched.rank_of(s + 1, d)))
            elif p.phase in (Phase.B, Phase.I) and s > 0:
                out.append((("B", d, s, m), self.sched.rank_of(s - 1, d)))
        src = self.sched.rank_of(a.stage, a.direction)
        return tuple((key, dst, *self._p2p(src, dst)) for key, dst in out)

    def _p2p(self, src: int, dst: int) -> tuple[float, int]:
        net = self.ctx.network
        same = net.same_node(src, dst)
        return net.p2p_seconds(self.p2p_bytes, same), (NVLINK if same else IB)

    def label(self, a: Action) -> tuple[str, str]:
        cat = {Phase.F: "forward", Phase.B: "backward", Phase.I: "backward_input", Phase.W: "backward_weight",
               Phase.FB: "overlapped"}[a.phase]
        return str(a), cat

    # ----------------------------------------------------------- memory and gradient sync
    def _count_backwards(self) -> dict[tuple[int, int], int]:
        left: dict[tuple[int, int], int] = {}
        for r, actions in enumerate(self.sched.ranks):
            for a in actions:
                for p in a.parts():
                    if p.phase in (Phase.B, Phase.W):
                        left[(r, p.stage)] = left.get((r, p.stage), 0) + 1
        return left

    def _slot(self, r: int, stage: int) -> int:
        return self.owned[r].index(stage)

    def on_start(self, r: int, a: Action, now: float) -> None:
        for p in a.parts():
            if p.phase is Phase.F:
                self.inflight[r][self._slot(r, p.stage)] += 1
        held = sum(n * self.stage_act[s] for n, s in zip(self.inflight[r], self.owned[r], strict=True))
        self.peak_act[r] = max(self.peak_act[r], held)

    def on_end(self, r: int, a: Action, now: float) -> None:
        if self.progress is not None:
            self.progress(1)
        for p in a.parts():
            if p.phase in (Phase.B, Phase.W):
                self.inflight[r][self._slot(r, p.stage)] -= 1
                self.backwards_left[(r, p.stage)] -= 1
                if self.backwards_left[(r, p.stage)] == 0 and self.ctx.scenario.parallel.overlap_grad_reduce:
                    self._start_grad_sync(r, p.stage)

    def _start_grad_sync(self, r: int, stage: int) -> None:
        ev = self.env.event()
        self.grad_sync[(r, stage)] = ev
        self.env.process(self._dp_comm(r, self.ctx.tail.grad_sync_seconds(stage), ev, "grad_reduce"))

    def _dp_comm(self, r: int, seconds: float, done: simpy.Event | None, name: str) -> Any:
        """A data-parallel collective on rank ``r``'s NIC and NVLink port, holding communication SMs."""
        gpu = self.gpus[r]
        end = occupy([(gpu, IB_TX), (gpu, IB_RX), (gpu, NVL_TX), (gpu, NVL_RX)], seconds, self.env.now)
        start = end - seconds  # collectives queue on the links; the kernel holds SMs while it transfers
        if start > self.env.now:
            yield self.env.timeout(start - self.env.now)
        gpu.comm_started()
        yield self.env.timeout(end - start)
        gpu.comm_ended()
        if self.trace is not None:
            self.trace.phases.append((r, 2, name, start, end, name))
        if done is not None:
            done.succeed()

    def setup(self, env: simpy.Environment, gpus: list[Gpu]) -> None:
        self.env, self.gpus = env, gpus
        if self.ctx.scenario.parallel.overlap_param_gather:
            for r in range(len(gpus)):
                env.process(self._dp_comm(r, self.ctx.tail.param_gather_seconds(self.owned[r]), None,
                                          "param_gather"))

    def tail(self, env: simpy.Environment, gpus: list[Gpu], r: int) -> Any:
        start = env.now
        for stage in self.owned[r]:
            if (r, stage) not in self.grad_sync:
                self._start_grad_sync(r, stage)
            ev = self.grad_sync[(r, stage)]
            if not ev.processed:
                yield ev
        self._action(r, start, env.now, "grad_sync_wait", "exposed_comm")
        start = env.now
        yield env.timeout(self.ctx.tail.optimizer_seconds(self.owned[r]))
        self._action(r, start, env.now, "optimizer", "optimizer")
        if self.trace is not None:
            self.trace.phases.append((r, 0, "optimizer", start, env.now, "optimizer"))
        if not self.ctx.scenario.parallel.overlap_param_gather:
            start = env.now
            yield from self._dp_comm(r, self.ctx.tail.param_gather_seconds(self.owned[r]), None, "param_gather")
            self._action(r, start, env.now, "param_gather", "exposed_comm")

    def _action(self, r: int, start: float, end: float, label: str, category: str) -> None:
        if self.trace is not None and end > start:
            self.trace.actions.append((r, start, end, label, category, (0.0, 0.0, 0.0)))


def simulate_step(scenario: Scenario, mode: str = "detailed", allow_cpu_calibration: bool = False,
                  imbalance_cost: bool = False, progress: Callable[[int], None] | None = None,
                  strict_calibration: bool = True) -> StepResult:
    """Simulate one optimizer step of ``scenario`` at its full batch size (``mode``: detailed or fast).
    ``imbalance_cost``: when routing is skewed, also simulate balanced routing and report the difference.
    ``progress(n)`` is called as each schedule action completes (``num_actions(scenario)`` in all).
    ``strict_calibration``: refuse a calibration table of another GPU (else set it aside, with a warning)."""
    t0 = time.perf_counter()
    ctx = build_context(scenario, allow_cpu_calibration, strict_calibration)
    drv = _Driver(ctx)
    drv.progress = progress
    drv.trace = trace = TraceRecord()
    hooks = EngineHooks(work=drv.work, duration=drv.duration if mode == "fast" else None, inputs=drv.inputs,
                        outputs=drv.outputs, label=drv.label, on_start=drv.on_start, on_end=drv.on_end)
    makespan, finish = simulate_pipeline(ctx.schedule.ranks, hooks, scenario.cluster.gpu.num_sms,
                                         scenario.parallel.comm_sms, tail=drv.tail, trace=trace, setup=drv.setup)
    result = step_result(ctx, makespan, finish, trace, drv.peak_act, mode, time.perf_counter() - t0)
    if imbalance_cost and routing_is_skewed(scenario):
        even = scenario.model_copy(update={"experts": scenario.experts.model_copy(
            update={"skew": "balanced", "drift_per_step": 0.0})})
        balanced = simulate_step(even, mode, allow_cpu_calibration, strict_calibration=strict_calibration)
        result.imbalance_cost_s = result.step_time_s - balanced.step_time_s
    return result


def num_actions(scenario: Scenario) -> int:
    """Schedule actions one step of ``scenario`` runs (for progress reporting)."""
    p = scenario.parallel
    return build_schedule(p.schedule, p.pp, scenario.num_microbatches, p.vpp).num_actions


def routing_is_skewed(scenario: Scenario) -> bool:
    """Whether routing in ``scenario`` can load experts unevenly."""
    e = scenario.experts
    return scenario.model.is_moe and (e.skew != "balanced" or e.drift_per_step > 0)
