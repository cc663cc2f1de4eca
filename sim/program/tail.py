"""The end of a step as work: gradient synchronization, the optimizer step and the parameter gather.

ZeRO (Rajbhandari et al. 2020): stage 0 all-reduces gradients; stages 1-3 reduce-scatter them so each
data-parallel rank updates its shard, then all-gather the updated parameters. Dense parameters synchronize
over the data-parallel group, routed experts over the ranks that replicate the same expert shard
(``dp * tp / ep``). Gradients travel in ``precision.grad_reduce``, parameters in ``precision.weights``.
Collectives run on the data-parallel stream, over the GPU's NIC and NVLink port, holding communication SMs.

The optimizer (AdamW) is memory-bound. Per parameter of the local shard it reads and writes the master
weight and both moments, reads the gradient (twice: once for the global norm used by clipping) and writes
the working weight; with an FP8 recipe every working weight is re-quantized once per step (read BF16,
write FP8).
"""

from __future__ import annotations

from collections.abc import Sequence

from sim.config import Scenario
from sim.costs.kernels import CostModel
from sim.model.counts import stage_expert_params, stage_params
from sim.model.stages import StagePartition
from sim.network import Collective, Network
from sim.program.tasks import NIC, NVLINK, Task, Work
from sim.timeline import Stream
from sim.units import dtype_bytes


class StepTail:
    """Seconds and works of the end of a step, per stage (gradients) or per rank (its stages)."""

    def __init__(self, scenario: Scenario, partition: StagePartition, network: Network, costs: CostModel) -> None:
        self.s = scenario
        self.net = network
        self.costs = costs
        p = scenario.parallel
        params = stage_params(partition, scenario.model)
        experts = stage_expert_params(partition)
        self.dense = [(a - e) / p.tp for a, e in zip(params, experts, strict=True)]
        self.expert = [e / p.ep for e in experts]
        self.dp_group = network.dp_group()
        self.edp_group = network.expert_dp_group()

    # ------------------------------------------------------------------ seconds
    def grad_sync_seconds(self, stage: int) -> float:
        prec = self.s.precision
        kind: Collective = "all_reduce" if self.s.parallel.zero_stage == 0 else "reduce_scatter"
        b = dtype_bytes(prec.grad_reduce)
        return (self.net.collective_seconds(kind, self.dense[stage] * b, self.dp_group)
                + self.net.collective_seconds(kind, self.expert[stage] * b, self.edp_group))

    def param_gather_seconds(self, stages: Sequence[int]) -> float:
        if self.s.parallel.zero_stage == 0:
            return 0.0
        b = dtype_bytes(self.s.precision.weights)
        return sum(self.net.collective_seconds("all_gather", self.dense[s] * b, self.dp_group)
                   + self.net.collective_seconds("all_gather", self.expert[s] * b, self.edp_group) for s in stages)

    def optimizer_seconds(self, stages: Sequence[int]) -> float:
        prec = self.s.precision
        sharded = self.s.parallel.zero_stage >= 1
        dense = sum(self.dense[s] for s in stages)
        expert = sum(self.expert[s] for s in stages)
        shard = dense / self.dp_group.size + expert / self.edp_group.size if sharded else dense + expert
        per_param = (2 * dtype_bytes(prec.master_weights) + 4 * dtype_bytes(prec.optimizer_states)
                     + 2 * dtype_bytes(prec.grads) + dtype_bytes(prec.weights))
        seconds = self.costs.memory_seconds(shard * per_param, "optimizer")
        if prec.fprop == "fp8" or prec.dgrad == "fp8" or prec.wgrad == "fp8":
            seconds += self.costs.memory_seconds((dense + expert) * (dtype_bytes("bf16") + dtype_bytes("fp8")),
                                                 "fp8_cast")
        return seconds

    # ------------------------------------------------------------------ works
    @staticmethod
    def _collective(name: str, seconds: float) -> Work:
        return Work.of((Task(name, "tail", Stream.DP, seconds, links=NIC | NVLINK, holds_sms=True),))

    def grad_sync_work(self, stage: int) -> Work:
        return self._collective("grad_reduce", self.grad_sync_seconds(stage))

    def param_gather_work(self, stages: Sequence[int]) -> Work:
        return self._collective("param_gather", self.param_gather_seconds(stages))

    def optimizer_work(self, stages: Sequence[int]) -> Work:
        return Work.of((Task("optimizer", "tail", Stream.COMPUTE, self.optimizer_seconds(stages)),))
