"""The network a layout sees: its communication groups on the cluster's fabric and the seconds of each
transfer, by the mechanisms of :mod:`sim.network.nccl` (collectives), :mod:`sim.network.alltoall` (the expert
all-to-all) and :mod:`sim.network.fabric` (where traffic goes, effective bandwidth, hops).

Ranks are laid out with tensor parallelism innermost, then context parallelism, then data parallelism, then
pipeline stages outermost (Megatron-LM's order ``tp-cp-dp-pp``; Llama 3 section 3.3.2 orders [TP, CP, PP, DP]
likewise from the innermost, highest-bandwidth dimension): global rank = ((stage * dp + dp_index) * cp +
cp_index) * tp + tp_index, node = rank // gpus_per_node. So TP groups stay inside a node (stride 1), CP groups
are ``tp`` apart (inside the node while ``tp x cp`` fits), the ranks that reduce the same gradients (data x
context parallel) ``tp`` apart, and pipeline neighbours ``dp * cp * tp`` apart. ZeRO-3 with hybrid sharding
(``fsdp_shard_group`` = g) shards over the first g of those ranks and replicates across groups ``tp * g``
apart (PyTorch HSDP's 2-D mesh). Experts follow Megatron-Core's MoE parallel folding with expert tensor
parallelism 1: an EP group is ``ep`` consecutive ranks (stride 1, TP and CP folded in), and the replicas of one
expert shard are ``ep`` apart. By symmetry every group of a kind does the same traffic at the same time; the
fabric turns that into each GPU's effective scale-out bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sim.config import Scenario
from sim.config.fabric import FabricSpec
from sim.errors import SimInputError
from sim.network.alltoall import A2AProfile, expert_a2a_seconds, load_a2a_profile
from sim.network.fabric import fabric_path, place_group
from sim.network.nccl import CommGroup, collective_seconds, group_on_fabric, p2p_link, send_seconds

Collective = Literal["all_reduce", "reduce_scatter", "all_gather"]
Group = CommGroup


@dataclass
class Network:
    """Transfers of one scenario's layout; memoizes what it computes (a pure function of the scenario)."""

    scenario: Scenario
    _memo: dict[tuple, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        s = self.scenario
        self.cluster = s.cluster
        self.node = s.cluster.node
        self.fabric: FabricSpec = s.cluster.fabric_spec
        p = s.parallel
        self.tp, self.ep, self.dp, self.cp = p.tp, p.ep, s.dp, p.cp
        self.stage_gpus = self.dp * self.cp * self.tp
        self.nvls = self.node.nvlink_sharp
        library = s.a2a_library
        self.a2a_profile: A2AProfile | None = None if library == "nccl" else load_a2a_profile(library)
        self.comm_sms = p.comm_sms
        prof = self.a2a_profile
        if prof is not None and s.model.is_moe and p.ep > 1 and p.comm_sms < prof.min_sms:
            raise SimInputError(f"the expert all-to-all ({prof.name}, software.a2a_library) runs on SMs and needs "
                                f"at least {prof.min_sms} (got {p.comm_sms}); give it SMs (DeepSeek-V3: 20) or "
                                "set software.a2a_library=nccl", field="parallel.comm_sms")

    @property
    def gpus_per_node(self) -> int:
        return self.node.gpus_per_node

    def node_of(self, stage_rank: int, dp_index: int = 0, tp_index: int = 0, cp_index: int = 0) -> int:
        return (((stage_rank * self.dp + dp_index) * self.cp + cp_index) * self.tp + tp_index) // self.gpus_per_node

    def same_node(self, rank_a: int, rank_b: int) -> bool:
        """Whether pipeline ranks ``rank_a`` and ``rank_b`` (same dp and tp index) share a node."""
        return self.node_of(rank_a) == self.node_of(rank_b)

    # ----------------------------------------------------------------- groups
    def _group(self, size: int, stride: int) -> CommGroup:
        return group_on_fabric(size, stride, self.node, self.fabric, nvls=self.nvls)

    def tp_group(self) -> CommGroup:
        return self._group(self.tp, 1)

    def cp_group(self) -> CommGroup:
        return self._group(self.cp, self.tp)

    def dp_group(self) -> CommGroup:
        """The ranks that hold the same dense parameters and reduce their gradients: data x context parallel."""
        return self._group(self.dp * self.cp, self.tp)

    def shard_group(self) -> CommGroup:
        """ZeRO's shard group for dense parameters: ``fsdp_shard_group`` ranks (hybrid sharding), else all of
        :meth:`dp_group`."""
        return self._group(self.scenario.fsdp_shard_size, self.tp)

    def replica_group(self) -> CommGroup:
        """Hybrid sharding: the shard groups holding the same shard (size 1 without hybrid sharding)."""
        g = self.scenario.fsdp_shard_size
        return self._group(self.dp * self.cp // g, self.tp * g)

    def expert_dp_group(self) -> CommGroup:
        """Replicas of one expert shard: the ranks of the stage outside its EP group, ``ep`` apart."""
        return self._group(max(1, self.stage_gpus // self.ep), self.ep)

    def embedding_group(self) -> CommGroup:
        """The first and the last pipeline stage's ranks with the same data, context and tensor index: the pair
        that keeps tied input and output embeddings in sync."""
        pp = self.scenario.parallel.pp
        return self._group(2, (pp - 1) * self.stage_gpus) if pp > 1 else self._group(1, 1)

    # ----------------------------------------------------------------- transfers
    def collective_seconds(self, kind: Collective, bytes_: float, group: CommGroup) -> float:
        """NCCL's collective over ``group`` on a buffer of ``bytes_`` (the full, unsharded size)."""
        if group.size <= 1 or bytes_ <= 0:
            return 0.0
        key = ("coll", kind, bytes_, group)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = collective_seconds(kind, bytes_, group)
        return hit

    def p2p_seconds(self, bytes_: float, same_node: bool) -> float:
        """A stage-boundary send while every pipeline pair sends at once."""
        link = p2p_link(self.node, self.fabric, self.stage_gpus, same_node=same_node)
        return send_seconds(bytes_, link)

    def cp_ring_step_seconds(self, bytes_: float) -> float:
        """One step of a context-parallel ring: every rank sends ``bytes_`` to its neighbour at once (NVLink
        when the whole CP group sits in one node, else the NIC: the slowest hop paces the step)."""
        if self.cp <= 1 or bytes_ <= 0:
            return 0.0
        key = ("cp_ring", bytes_)
        hit = self._memo.get(key)
        if hit is None:
            local = self.tp * self.cp <= self.gpus_per_node
            hit = self._memo[key] = send_seconds(bytes_, p2p_link(self.node, self.fabric, self.tp, same_node=local))
        return hit

    def alltoall_seconds(self, ib_bytes: float, nvlink_bytes: float, *, notify: bool,
                         preceding_compute_s: float = 0.0) -> float:
        """One expert dispatch or combine moving the busiest rank's ``ib_bytes`` and ``nvlink_bytes``.

        DeepEP (``software.a2a_library``): the SM-driven mechanism of :mod:`sim.network.alltoall`, on
        ``comm_sms`` SMs, with the in-situ wait after ``preceding_compute_s`` of compute. NCCL all-to-all: its
        bytes (one row per token and expert, none merged per node: :mod:`sim.experts.loads`) over the
        fabric-effective NIC and NVLink at link rate (NCCL picks its own channels), plus a ring-like latency per
        peer node."""
        if ib_bytes <= 0 and nvlink_bytes <= 0:
            return 0.0
        key = ("a2a", ib_bytes, nvlink_bytes, notify, preceding_compute_s)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        if self.a2a_profile is not None:
            secs = expert_a2a_seconds(ib_bytes, nvlink_bytes, ep=self.ep, stride=1, node=self.node,
                                      gpu_name=self.cluster.gpu.name, arch=self.cluster.gpu.arch,
                                      fabric=self.fabric, comm_sms=self.comm_sms, notify=notify,
                                      profile=self.a2a_profile, preceding_compute_s=preceding_compute_s).total_s
        else:
            place = place_group(self.ep, 1, self.gpus_per_node)
            path = fabric_path(self.fabric, self.node, place, "all_to_all")
            ib = ib_bytes / path.scaleout_bytes_per_s if ib_bytes > 0 else 0.0
            secs = (place.num_nodes - 1) * path.latency_s + max(ib, nvlink_bytes / self.node.nvlink_bytes_per_s)
        self._memo[key] = secs
        return secs
