"""Transfers and collectives on the cluster topology: alpha-beta costs with achievable bandwidths.

Ranks are laid out with tensor parallelism innermost, then data (and expert) parallelism, then pipeline
stages outermost (Megatron-LM's order): global rank = (stage * dp + dp_index) * tp + tp_index, node =
rank // gpus_per_node. So TP groups stay inside a node, EP groups are contiguous runs of data-parallel ranks
and pipeline neighbours usually sit on different nodes.

Collectives follow NCCL's ring algorithms (nccl-tests PERFORMANCE.md): all-reduce moves ``2 (n-1)/n S`` per
rank, reduce-scatter and all-gather ``(n-1)/n S`` (S the full buffer). A group spanning nodes with ``g`` of
its ranks per node runs ``g`` parallel rings, one per NIC: the inter-node share is ``1/g`` of each rank's
traffic over its own NIC, the rest crosses NVLink; the slower of the two paces the collective. Latency is one
link latency per ring step. The expert all-to-all (DeepEP, DeepSeek-V3 3.2.2) costs its bytes over the NIC
and over NVLink in parallel (IB sending, NVLink forwarding and receiving are pipelined), paced by the slower.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sim.config import ClusterSpec, ParallelSpec
from sim.units import US

Collective = Literal["all_reduce", "reduce_scatter", "all_gather"]


@dataclass(frozen=True, slots=True)
class Group:
    """A communication group: ``size`` ranks, ``per_node`` of them on each node they span."""

    size: int
    per_node: int

    @property
    def nodes(self) -> int:
        return max(1, self.size // self.per_node)


@dataclass(frozen=True)
class Network:
    """Costs of transfers for one layout. ``a2a_overhead_s`` adds, per kind of expert all-to-all
    (``dispatch`` / ``combine``), what a calibration measured beyond pure transfer at the links' achievable
    rates: handshakes and waits for peers inside a real run (an alpha term: it does not scale with bytes)."""

    cluster: ClusterSpec
    parallel: ParallelSpec
    dp: int
    a2a_overhead_s: tuple[tuple[str, float], ...] = ()

    @property
    def gpus_per_node(self) -> int:
        return self.cluster.node.gpus_per_node

    def node_of(self, stage_rank: int, dp_index: int = 0, tp_index: int = 0) -> int:
        p = self.parallel
        return ((stage_rank * self.dp + dp_index) * p.tp + tp_index) // self.gpus_per_node

    def same_node(self, rank_a: int, rank_b: int) -> bool:
        """Whether pipeline ranks ``rank_a`` and ``rank_b`` (same dp and tp index) share a node."""
        return self.node_of(rank_a) == self.node_of(rank_b)

    # ----------------------------------------------------------------- groups
    def _strided_group(self, size: int, stride: int) -> Group:
        per_node = max(1, min(size, self.gpus_per_node // stride)) if stride < self.gpus_per_node else 1
        return Group(size, per_node)

    def tp_group(self) -> Group:
        return Group(self.parallel.tp, self.parallel.tp)

    def dp_group(self) -> Group:
        return self._strided_group(self.dp, self.parallel.tp)

    def ep_group(self) -> Group:
        return self._strided_group(self.parallel.ep, self.parallel.tp)

    def expert_dp_group(self) -> Group:
        """Replicas of one expert shard: the data-parallel ranks outside its EP group."""
        size = max(1, self.dp * self.parallel.tp // self.parallel.ep)
        return self._strided_group(size, self.parallel.tp * self.parallel.ep)

    # ----------------------------------------------------------------- links
    @property
    def nvlink_bytes_per_s(self) -> float:
        return self.cluster.node.nvlink_bytes_per_s

    @property
    def nic_bytes_per_s(self) -> float:
        return self.cluster.node.nic_bytes_per_s_per_gpu

    @property
    def nvlink_latency_s(self) -> float:
        return self.cluster.node.nvlink_latency_us * US

    @property
    def ib_latency_s(self) -> float:
        return self.cluster.ib_latency_s

    def p2p_seconds(self, bytes_: float, same_node: bool) -> float:
        if same_node:
            return self.nvlink_latency_s + bytes_ / self.nvlink_bytes_per_s
        return self.ib_latency_s + bytes_ / self.nic_bytes_per_s

    def collective_seconds(self, kind: Collective, bytes_: float, group: Group) -> float:
        """Ring collective over ``group`` on a buffer of ``bytes_`` (the full, unsharded size)."""
        n = group.size
        if n <= 1 or bytes_ <= 0:
            return 0.0
        steps = 2 * (n - 1) if kind == "all_reduce" else n - 1
        per_rank = bytes_ * steps / n
        if group.nodes <= 1:
            return steps * self.nvlink_latency_s + per_rank / self.nvlink_bytes_per_s
        g = group.per_node
        ib = per_rank / g / self.nic_bytes_per_s
        nvl = per_rank * (g - 1) / g / self.nvlink_bytes_per_s if g > 1 else 0.0
        return steps * self.ib_latency_s + max(ib, nvl)

    def with_a2a_overheads(self, overheads: tuple[tuple[str, float], ...]) -> Network:
        return Network(self.cluster, self.parallel, self.dp, overheads)

    def a2a_overhead(self, measured_s: float, ib_bytes: float, nvlink_bytes: float, kind: str,
                     nic_bytes_per_s: float | None, nvlink_bytes_per_s: float | None) -> float:
        """What a measured all-to-all took beyond pure transfer at the measured cluster's link rates."""
        pure = self.alltoall_seconds(ib_bytes, nvlink_bytes, kind, nic_bytes_per_s, nvlink_bytes_per_s)
        return max(0.0, measured_s - pure)

    def alltoall_seconds(self, ib_bytes: float, nvlink_bytes: float, kind: str = "dispatch",
                         nic_bytes_per_s: float | None = None, nvlink_bytes_per_s: float | None = None) -> float:
        """Expert dispatch or combine: bytes a GPU moves over its NIC and over NVLink, pipelined, plus the
        calibrated overhead of ``kind``. Bandwidths default to this cluster's achievable ones."""
        if ib_bytes <= 0 and nvlink_bytes <= 0:
            return 0.0
        latency = self.ib_latency_s if ib_bytes > 0 else self.nvlink_latency_s
        nic = nic_bytes_per_s or self.nic_bytes_per_s
        nvl = nvlink_bytes_per_s or self.nvlink_bytes_per_s
        return latency + max(ib_bytes / nic, nvlink_bytes / nvl) + dict(self.a2a_overhead_s).get(kind, 0.0)
