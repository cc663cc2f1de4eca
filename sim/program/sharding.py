"""Data-parallel traffic by ZeRO stage: which gathers and reductions happen, how often, over which groups.

ZeRO (Rajbhandari et al. 2020, section 7) and PyTorch FSDP2 (``fully_shard``), per stage of the model:

- stage 0 (DDP): gradients all-reduced once per step, bucketed and overlapped with the last backward
  (PyTorch DDP, ``bucket_cap_mb`` = 25 MB by default);
- stage 1 (optimizer states sharded; Megatron-LM's distributed optimizer): gradients reduce-scattered once per
  step, updated parameters all-gathered once (2 x the parameters, like an all-reduce);
- stage 2 (and gradients sharded): a sharded gradient cannot accumulate across micro-batches, so gradients are
  reduce-scattered after every micro-batch's backward (DeepSpeed ZeRO-2), parameters all-gathered once;
- stage 3 (and parameters sharded, FSDP): each layer group's parameters are all-gathered before its forward,
  ``fsdp_prefetch`` groups ahead, and again before its backward when ``fsdp_reshard_after_forward`` (3 x the
  parameters per micro-batch with the reduce-scatter); gradients are reduce-scattered after every
  micro-batch's backward. With a pipeline (``pp > 1``), FSDP runs as ``torch.distributed.pipelining`` drives
  it: gradient sync only once a stage's last backward is done (``set_requires_gradient_sync``, then FSDP's
  post-backward: the reduce-scatters follow that backward instead of running beside it), and without resharding
  after forward the parameters stay gathered for the whole step (one gather per step: torchtitan's "for PP,
  do not reshard after forward to avoid per-microbatch all-gathers").

Hybrid sharding (``fsdp_shard_group`` = g, PyTorch HSDP): states are sharded over g ranks and replicated across
the ``dp x cp / g`` shard groups; gathers and reduce-scatters run inside the shard group, and each reduced
gradient shard is all-reduced across the replicas. Dense parameters are split by TP and shared by the data-
and context-parallel ranks; routed experts are split by EP and replicated over the expert-data-parallel ranks,
over which their states are sharded (no hybrid sharding for experts). Gradients travel in
``precision.grad_reduce``, parameters in ``precision.weights`` (FP8 with ``precision.fp8_weight_gather``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from math import floor

from sim.config import Scenario
from sim.model.stages import Unit
from sim.network import Collective, Group, Network
from sim.program.tasks import NIC, NVLINK
from sim.units import dtype_bytes


def group_links(*groups: Group) -> int:
    """The link mask a collective over ``groups`` occupies on each GPU: the NIC when a group spans nodes,
    NVLink when it has several ranks in a node."""
    mask = 0
    for g in groups:
        if g.size > 1:
            mask |= (NIC if g.num_nodes > 1 else 0) | (NVLINK if g.ranks_per_node > 1 else 0)
    return mask


def unit_param_counts(unit: Unit, tp: int, ep: int) -> tuple[float, float]:
    """(dense parameters per GPU, routed-expert parameters per GPU) of one unit."""
    expert = sum(op.params for op in unit.ops if op.name.startswith("experts_"))
    dense = sum(op.params for op in unit.ops) - expert
    return dense / tp, expert / ep


@dataclass(frozen=True)
class ShardingPlan:
    """When the data-parallel collectives of one scenario happen (see the module docstring)."""

    zero_stage: int
    pp: int
    reshard: bool
    prefetch: int
    bucket_bytes: float
    zero1_all_reduce: bool = False

    @classmethod
    def of(cls, s: Scenario) -> ShardingPlan:
        p = s.parallel
        if p.grad_bucket_mb is not None:
            bucket = p.grad_bucket_mb * 1e6
        else:  # Megatron-Core DistributedDataParallelConfig: max(40M, 1M x DP) elements per bucket
            bucket = max(40e6, 1e6 * s.grad_replicas) * dtype_bytes(s.precision.grad_reduce)
        return cls(p.zero_stage, p.pp, s.fsdp_reshard, p.fsdp_prefetch, bucket,
                   s.software.zero1_grad_reduce == "all_reduce")

    @property
    def gather_forward(self) -> bool:
        """ZeRO-3: parameters gathered before every micro-batch's forward, layer group by layer group."""
        return self.zero_stage == 3 and (self.reshard or self.pp == 1)

    @property
    def gather_backward(self) -> bool:
        """ZeRO-3 with resharding after forward: gathered again before every backward."""
        return self.zero_stage == 3 and self.reshard

    @property
    def gather_per_step(self) -> bool:
        """One parameter all-gather per step: the updated shards after the optimizer (ZeRO-1/2), or the whole
        stage at the start of the step (ZeRO-3 under a pipeline without resharding)."""
        return self.zero_stage in (1, 2) or (self.zero_stage == 3 and not self.gather_forward)

    @property
    def sync_after_stage(self) -> bool:
        """ZeRO-3 under a pipeline: ``torch.distributed.pipelining`` runs every backward of an FSDP stage with
        gradient sync off and then calls FSDP's post-backward for all its parameter groups once the stage's last
        backward is done (torch 2.6 ``stage.py`` ``backward_maybe_with_nosync``), so the stage's reduce-scatters
        start after that backward, never beside it, whatever ``parallel.overlap_grad_reduce`` says."""
        return self.zero_stage == 3 and self.pp > 1

    @property
    def reduce_every_microbatch(self) -> bool:
        """Gradients reduced after every micro-batch (ZeRO-2; ZeRO-3 without a pipeline)."""
        return self.zero_stage == 2 or (self.zero_stage == 3 and self.pp == 1)

    @property
    def grad_kind(self) -> Collective:
        """All-reduce without sharded states (ZeRO-0) or when the stack all-reduces ZeRO-1 gradients in full;
        else a reduce-scatter, each rank receiving the shard it updates."""
        full = self.zero_stage == 0 or (self.zero_stage == 1 and self.zero1_all_reduce)
        return "all_reduce" if full else "reduce_scatter"

    @property
    def params_stay_gathered(self) -> bool:
        """ZeRO-3 parameters unsharded from a micro-batch's forward to its backward (or all step)."""
        return self.zero_stage == 3 and not self.reshard


class DpTraffic:
    """Seconds of the data-parallel collectives of one scenario's layout."""

    def __init__(self, scenario: Scenario, network: Network) -> None:
        self.s = scenario
        self.net = network
        self.plan = ShardingPlan.of(scenario)
        p = scenario.parallel
        self.tp, self.ep = p.tp, p.ep
        self.shard = network.shard_group()  # every data x context-parallel rank unless hybrid-sharded
        self.replicas = network.replica_group()
        self.experts = network.expert_dp_group()
        self.grad_b = dtype_bytes(scenario.precision.grad_reduce)
        self.accum_b = dtype_bytes(scenario.precision.grads)  # the accumulated gradient (Megatron's main_grad)
        prec = scenario.precision
        # FP8 weight gathers move the FP8 GEMMs' weights (nearly all parameters; norms and embeddings are noise)
        self.weight_b = dtype_bytes("fp8") if prec.fp8_weight_gather else dtype_bytes(prec.weights)
        expert = (self.experts,) if scenario.model.is_moe else ()
        self.gather_links = group_links(self.shard, *expert)
        self.reduce_links = group_links(self.shard, self.replicas, *expert)
        self.efficiency = scenario.software.dp_collective_efficiency

    def gather_seconds(self, dense: float, expert: float) -> float:
        """All-gather ``dense`` and ``expert`` parameters (per GPU, unsharded) over their shard groups."""
        return (self.net.collective_seconds("all_gather", dense * self.weight_b, self.shard)
                + self.net.collective_seconds("all_gather", expert * self.weight_b, self.experts)) / self.efficiency

    def reduce_seconds(self, dense: float, expert: float) -> float:
        """Reduce the gradients of ``dense`` and ``expert`` parameters: all-reduce (ZeRO-0), else reduce-scatter
        in the shard group, plus the all-reduce of the shard across replicas under hybrid sharding."""
        kind = self.plan.grad_kind
        secs = (self.net.collective_seconds(kind, dense * self.grad_b, self.shard)
                + self.net.collective_seconds(kind, expert * self.grad_b, self.experts))
        if self.plan.zero_stage == 3 and self.replicas.size > 1:
            secs += self.net.collective_seconds("all_reduce", dense * self.grad_b / self.shard.size, self.replicas)
        return secs / self.efficiency

    def tied_embedding_seconds(self, params: float) -> float:
        """All-reduce the gradient of ``params`` tied embedding parameters (per GPU) between the first and the
        last pipeline stage (:meth:`sim.network.Network.embedding_group`), in the dtype gradients accumulate in
        (``precision.grads``: Megatron-LM reduces ``main_grad``, DeepSpeed the BF16 optimizer's FP32 copy)."""
        return self.net.collective_seconds("all_reduce", params * self.accum_b,
                                           self.net.embedding_group()) / self.efficiency

    def buckets(self, grads: Iterable[tuple[float, float]], gather: bool = False) -> list[tuple[int, float]]:
        """Gradient buckets in the order units finish their weight gradients: ``grads`` gives (dense, expert)
        parameters per unit; returns, per bucket, (index of the unit that completes it, seconds of its
        reduction). Units accumulate into a bucket until it holds ``grad_bucket_mb``; a unit larger than a bucket
        fills several, each a collective of its own (as DDP issues them). ZeRO-3 reduces each unit (FSDP's layer
        group) as one collective. ``gather``: the parameter all-gathers
        of the same buckets instead (Megatron-LM's overlapped parameter gather)."""
        cost = self.gather_seconds if gather else self.reduce_seconds
        out: list[tuple[int, float]] = []
        if self.plan.zero_stage == 3:
            return [(i, cost(d, e)) for i, (d, e) in enumerate(grads) if d + e > 0]
        cap = self.plan.bucket_bytes / self.grad_b  # parameters per bucket
        acc_d = acc_e = 0.0
        last = -1
        for i, (d, e) in enumerate(grads):
            acc_d, acc_e, last = acc_d + d, acc_e + e, i
            if acc_d + acc_e >= cap:
                n = max(1, floor((acc_d + acc_e) / cap + 1e-9))
                out += [(i, cost(acc_d / n, acc_e / n))] * n
                acc_d = acc_e = 0.0
        if acc_d + acc_e > 0:
            out.append((last, cost(acc_d, acc_e)))
        return out
