"""Everything one step simulation is built from: :func:`build_context` makes the stage partition, the cost
model (with the scenario's calibration table), the network, the expert loads, the program, the schedule and
the step's tail, once per scenario."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

from sim.assemble import StepInputs
from sim.config import ModelSpec, Scenario
from sim.costs.calibration import resolve_calibration
from sim.costs.kernels import CostModel, cost_model, stack_gpu
from sim.costs.ops import OpCoster
from sim.memory import MemoryBreakdown, memory_per_rank
from sim.model.stages import StagePartition, partition
from sim.network import Network
from sim.pipeline import all_stages_of
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
    notes: tuple[str, ...] = ()

    @cached_property
    def memory(self) -> list[MemoryBreakdown]:
        """Memory per pipeline rank (:func:`sim.memory.memory_per_rank`): the scenario's and the schedule's alone,
        so a context kept for repeated steps computes it once."""
        return memory_per_rank(self.scenario, self.partition, self.schedule)

    @property
    def inputs(self) -> StepInputs:
        return StepInputs(self.scenario, self.program, self.schedule, self.network, self.tail)


@lru_cache(maxsize=64)
def stage_partition(model: ModelSpec, num_stages: int, stage_layers: tuple[int, ...] | None, split: str,
                    seq_len: int, groups: tuple[tuple[int, ...], ...]) -> StagePartition:
    """:func:`sim.model.stages.partition` balanced over the stages each rank holds (``groups``), memoized (a
    pure function of its hashable arguments; its balanced split is a dynamic program worth caching across
    scenarios; cleared by :func:`sim.step.clear_caches`)."""
    return partition(model, num_stages, stage_layers, split, seq_len, groups=groups)  # type: ignore[arg-type]


def peak_memory_bytes(scenario: Scenario) -> float:
    """The most bytes any GPU of ``scenario`` holds by the memory model, as ``sim run`` reports it (the same
    partition, balanced over the stages each rank holds, and schedule), without building the step."""
    p = scenario.parallel
    parts = stage_partition(scenario.model, scenario.num_stages, p.stage_layers, p.stage_split,
                            scenario.training.seq_len, all_stages_of(p.schedule, p.pp, p.vpp))
    schedule = build_schedule(p.schedule, p.pp, scenario.num_microbatches, p.vpp, p.ep_overlap)
    return max(m.total for m in memory_per_rank(scenario, parts, schedule))


def build_context(scenario: Scenario, *, allow_cpu_calibration: bool = False,
                  strict_calibration: bool = True) -> StepContext:
    p = scenario.parallel
    parts = stage_partition(scenario.model, scenario.num_stages, p.stage_layers, p.stage_split,
                            scenario.training.seq_len, all_stages_of(p.schedule, p.pp, p.vpp))
    cal = resolve_calibration(scenario, allow_cpu=allow_cpu_calibration, strict=strict_calibration)
    costs = cost_model(stack_gpu(scenario), scenario.precision, cal.table, cal.source)
    loads = LoadModel(scenario, parts)
    network = Network(scenario)
    program = Program(scenario, OpCoster(scenario, costs), network, parts, loads.moe_load)
    schedule = build_schedule(p.schedule, p.pp, scenario.num_microbatches, p.vpp, p.ep_overlap)
    tail = StepTail(scenario, parts, network, costs)
    warnings = ((cal.warning,) if cal.warning else ()) + known_gaps(scenario)
    return StepContext(scenario, parts, costs, network, loads, program, schedule, tail, warnings,
                       (cal.note,) if cal.note else ())


def known_gaps(scenario: Scenario) -> tuple[str, ...]:
    """Warnings where the simulator is known to miss published runs, or fits a factor for want of a mechanism,
    said beside the result and not only in the README: a planner reading one step time should not have to know
    the validation report."""
    return _dp_collective_gap(scenario) + _cp_gap(scenario)


def _dp_collective_gap(scenario: Scenario) -> tuple[str, ...]:
    eff = scenario.software.dp_collective_efficiency
    if eff >= 1 or scenario.dp < 2:
        return ()
    return (f"data-parallel collectives at software.dp_collective_efficiency = {eff:g} of NCCL's modelled "
            "bandwidth, an empirical factor of the software stack for a cause not modelled (per-parameter "
            "collectives from Python hooks; deepspeed_zero3_2021's value is fitted to the ZeRO-3 rows of Narayanan "
            "et al. 2021, 384-2240 A100); away from such runs this step time is less certain than the rest of "
            "the model",)


def _cp_gap(scenario: Scenario) -> tuple[str, ...]:
    p, eff = scenario.parallel, scenario.software.pytorch_cp_step_efficiency
    if p.cp_mode != "pytorch" or p.cp < 2:
        return ()
    if eff < 1:
        return (f"context parallelism (cp_mode pytorch): the ring steps after the diagonal run at "
                f"software.pytorch_cp_step_efficiency = {eff:g} of the attention kernel's rate, an empirical factor "
                "for a cause not modelled (torchtitan_2024's value is fitted to torchtitan's Llama 3.1 8B CP runs and "
                "checked on its 405B ones, CP 2-8, 64K-256K tokens; the two models alone would want about 0.5 and "
                "0.7); away from such runs this step time is less certain than the rest of the model",)
    if p.cp >= 4:
        return ("context parallelism (cp_mode pytorch, CP >= 4) without a fitted ring-step efficiency "
                "(software.pytorch_cp_step_efficiency = 1): the kernels' rate alone was optimistic on every "
                "published torchtitan run at CP 4 and 8; read this step time as a lower bound",)
    return ()
