"""Everything one step simulation is built from: :func:`build_context` makes the stage partition, the cost
model (with the scenario's calibration table), the network, the expert loads, the program, the schedule and
the step's tail, once per scenario."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from sim.assemble import StepInputs
from sim.config import ModelSpec, Scenario
from sim.costs.calibration import resolve_calibration
from sim.costs.kernels import CostModel
from sim.costs.ops import OpCoster
from sim.experts.loads import token_bytes
from sim.model.stages import StagePartition, partition
from sim.network import Network
from sim.program.chunks import Program
from sim.program.moe import LoadModel
from sim.program.tail import StepTail
from sim.schedules.actions import Schedule
from sim.schedules.generators import build_schedule


@dataclass(frozen=True)
class StepContext:
    """Everything a step simulation is built from, for reports, plots and tests."""

    scenario: Scenario
    partition: StagePartition
    costs: CostModel
    network: Network
    loads: LoadModel
    program: Program
    schedule: Schedule
    tail: StepTail
    warnings: tuple[str, ...] = ()

    @property
    def inputs(self) -> StepInputs:
        return StepInputs(self.scenario, self.program, self.schedule, self.network, self.tail)


def _a2a_overheads(scenario: Scenario, costs: CostModel, network: Network, loads: LoadModel
                   ) -> tuple[tuple[str, float], ...]:
    """Per kind of expert all-to-all, what the calibration table measured beyond pure transfer (balanced
    routing, this EP size and micro-batch); empty when the table does not cover the scenario."""
    m, p = scenario.model, scenario.parallel
    if not (m.is_moe and p.ep > 1) or costs.table is None:
        return ()
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
        out.append((kind, network.a2a_overhead(seconds, ib, nv, kind, nic, nvl)))
    return tuple(out)


@lru_cache(maxsize=64)
def stage_partition(model: ModelSpec, num_stages: int, stage_layers: tuple[int, ...] | None, split: str,
                    seq_len: int) -> StagePartition:
    """:func:`sim.model.stages.partition`, memoized (a pure function of its hashable arguments; its balanced
    split is a dynamic program worth caching across scenarios; cleared by :func:`sim.step.clear_caches`)."""
    return partition(model, num_stages, stage_layers, split, seq_len)  # type: ignore[arg-type]


def build_context(scenario: Scenario, *, allow_cpu_calibration: bool = False,
                  strict_calibration: bool = True) -> StepContext:
    p = scenario.parallel
    parts = stage_partition(scenario.model, scenario.num_stages, p.stage_layers, p.stage_split,
                            scenario.training.seq_len)
    table, warning = resolve_calibration(scenario, allow_cpu=allow_cpu_calibration, strict=strict_calibration)
    costs = CostModel(scenario.cluster.gpu, scenario.precision, table)
    loads = LoadModel(scenario, parts)
    base = Network(scenario.cluster, p, scenario.dp)
    network = base.with_a2a_overheads(_a2a_overheads(scenario, costs, base, loads))
    program = Program(scenario, OpCoster(scenario, costs), network, parts, loads.moe_load)
    schedule = build_schedule(p.schedule, p.pp, scenario.num_microbatches, p.vpp)
    tail = StepTail(scenario, parts, network, costs)
    return StepContext(scenario, parts, costs, network, loads, program, schedule, tail,
                       (warning,) if warning else ())
