"""Data-parallel work around the pipeline: gradient reductions, parameter gathers and the optimizer step.

When each collective happens depends on the ZeRO stage (:mod:`sim.program.sharding`). Gradient reductions are
bucketed as PyTorch DDP and Megatron-LM do: buckets of ``grad_bucket_mb`` fill in the order the backward
completes each unit's weight gradients, and with ``overlap_grad_reduce`` each bucket's collective starts as
soon as its last unit is done, beside the rest of the backward (:meth:`StepTail.reduction_work`: the buckets
back to back, from the earliest moment none of them starts before its gradients are ready). Without overlap the whole
reduction runs after the rank's last action (or, for reductions after every micro-batch, after the backward
that produced the gradients). ZeRO-3 under a pipeline never overlaps: each stage's unit buckets start once its
last backward is done (FSDP's post-backward under PyTorch pipelining, ``ShardingPlan.sync_after_stage``).
ZeRO-1/2 all-gather the updated parameters once per step, after the optimizer or beside the next step's first
forwards (``overlap_param_gather``, as Megatron-LM does); ZeRO-3 under a pipeline
without resharding gathers its stages once at the start of the step. Collectives run on the data-parallel
stream, over the GPU's NIC and NVLink port, holding communication SMs. Tied input and output embeddings on
different pipeline ranks add an exposed all-reduce of the embedding's gradient between the first and the last
stage before the optimizer (:meth:`StepTail.tied_embedding_seconds`).

The optimizer (AdamW) is memory-bound. Per parameter of the local shard it reads and writes the master
weight and both moments, reads the gradient (twice: once for the global norm used by clipping) and writes
the working weight; with a tilewise FP8 recipe every working weight is re-quantized once per step (read BF16,
write FP8 and one FP32 scale per ``precision.weight_block`` square block).
"""

from __future__ import annotations

from collections.abc import Sequence

from sim.config import Scenario
from sim.costs.kernels import CostModel
from sim.model.counts import stage_params_per_gpu
from sim.model.stages import StagePartition
from sim.network import Network
from sim.program.sharding import DpTraffic, group_links, unit_param_counts
from sim.program.tasks import Task, Work
from sim.timeline import Stream
from sim.units import dtype_bytes


class StepTail:
    """Seconds and works of the data-parallel side of a step, per stage (gradients) or per rank (its stages)."""

    def __init__(self, scenario: Scenario, partition: StagePartition, network: Network, costs: CostModel) -> None:
        self.s = scenario
        self.net = network
        self.costs = costs
        self.partition = partition
        p = scenario.parallel
        self.dense, self.expert = stage_params_per_gpu(partition, scenario.model, p.tp, p.ep)
        self.traffic = DpTraffic(scenario, network)
        self.plan = self.traffic.plan
        self.shard_size = network.shard_group().size
        self.expert_dp_size = network.expert_dp_group().size
        self._reduction: dict[tuple, tuple[float, Work]] = {}

    # ------------------------------------------------------------------ seconds
    def grad_sync_seconds(self, stage: int) -> float:
        """The whole stage's gradient reduction, as one collective per kind of parameter."""
        return self.traffic.reduce_seconds(self.dense[stage], self.expert[stage])

    def param_gather_seconds(self, stages: Sequence[int]) -> float:
        if not self.plan.gather_per_step:
            return 0.0
        return sum(self.traffic.gather_seconds(self.dense[s], self.expert[s]) for s in stages)

    def tied_embedding_seconds(self, stages: Sequence[int]) -> float:
        """Tied input and output embeddings on different pipeline ranks: once the backward is done, the first
        and the last stage all-reduce the word embedding's gradient before the optimizer (Megatron-LM's
        ``_allreduce_word_embedding_grads``, DeepSpeed's pipeline ``ReduceTiedGrads``), exposed. Both ranks of
        the pair pay it; the rank holding both ends (DualPipe's V), or neither, nothing."""
        m, last = self.s.model, self.s.num_stages - 1
        if not m.tie_word_embeddings or last == 0 or (0 in stages) == (last in stages):
            return 0.0
        return self.traffic.tied_embedding_seconds(m.vocab_size * m.dim / self.s.parallel.tp)

    def optimizer_seconds(self, stages: Sequence[int]) -> float:
        prec = self.s.precision
        sharded = self.plan.zero_stage >= 1
        dense = sum(self.dense[s] for s in stages)
        expert = sum(self.expert[s] for s in stages)
        shard = dense / self.shard_size + expert / self.expert_dp_size if sharded else dense + expert
        per_param = (2 * dtype_bytes(prec.master_weights) + 4 * dtype_bytes(prec.optimizer_states)
                     + 2 * dtype_bytes(prec.grads) + dtype_bytes(prec.weights))
        seconds = self.costs.memory_seconds(shard * per_param, "optimizer")
        tilewise = prec.fp8_scaling == "tilewise"  # tensorwise scaling casts the weights in every forward instead
        if tilewise and (prec.fprop == "fp8" or prec.dgrad == "fp8" or prec.wgrad == "fp8"):
            scale = dtype_bytes("fp32") / prec.weight_block**2  # one FP32 scale per weight_block x weight_block
            seconds += self.costs.memory_seconds((dense + expert) * (dtype_bytes("bf16") + dtype_bytes("fp8") + scale),
                                                 "fp8_cast")
        return seconds

    # ------------------------------------------------------------------ works
    @staticmethod
    def _collective(name: str, seconds: float, links: int) -> Work:
        return Work.of((Task(name, "tail", Stream.DP, seconds, links=links, holds_sms=True),))

    @property
    def grad_name(self) -> str:
        return "grad_all_reduce" if self.plan.grad_kind == "all_reduce" else "grad_reduce_scatter"

    def grad_sync_work(self, stage: int) -> Work:
        return self._collective(self.grad_name, self.grad_sync_seconds(stage), self.traffic.reduce_links)

    def reduction_work(self, stage: int, ready_s: Sequence[float]) -> tuple[float, Work]:
        """The stage's gradient buckets, one collective each, as a background work started with the backward that
        completes them, and its delay: the buckets run back to back from the earliest moment at which none
        starts before its last unit's weight gradients are done (``ready_s``: seconds into the backward, in
        backward unit order)."""
        key = (stage, tuple(ready_s))
        hit = self._reduction.get(key)
        if hit is not None:
            return hit
        p = self.s.parallel
        grads = [unit_param_counts(u, p.tp, p.ep) for u in reversed(self.partition.stages[stage])]
        buckets = self.traffic.buckets(grads)
        delay, before = 0.0, 0.0
        for unit, seconds in buckets:
            delay = max(delay, (ready_s[unit] if unit < len(ready_s) else 0.0) - before)
            before += seconds
        links = self.traffic.reduce_links
        work = Work.of(tuple(Task(self.grad_name, "tail", Stream.DP, seconds, links=links, holds_sms=True)
                             for _, seconds in buckets))
        hit = self._reduction[key] = (delay, work)
        return hit

    def param_gather_work(self, stages: Sequence[int]) -> Work:
        """The once-per-step parameter gather of the rank's stages, bucket by bucket in forward order."""
        p = self.s.parallel
        params = [unit_param_counts(u, p.tp, p.ep) for s in stages for u in self.partition.stages[s]]
        links = self.traffic.gather_links
        return Work.of(tuple(Task("param_all_gather", "tail", Stream.DP, seconds, links=links, holds_sms=True)
                             for _, seconds in self.traffic.buckets(params, gather=True)))

    def tied_embedding_work(self, stages: Sequence[int]) -> Work:
        return self._collective("tied_embedding_all_reduce", self.tied_embedding_seconds(stages),
                                group_links(self.net.embedding_group()))

    def optimizer_work(self, stages: Sequence[int]) -> Work:
        return Work.of((Task("optimizer", "tail", Stream.COMPUTE, self.optimizer_seconds(stages)),))
