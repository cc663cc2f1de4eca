"""Where a communication group's traffic goes on the fabric, and what that costs, by symmetry.

The simulator runs one representative pipeline; every other pipeline and EP group runs the same traffic at the
same time. So a pattern's per-GPU bandwidth and latency follow analytically from the topology
(``sim.config.fabric.FabricSpec``), at a cost independent of the GPU count.

Placement. Ranks are laid out tensor-parallel innermost, then data/expert parallel, then pipeline stages
(Megatron-LM's order, ``sim.network.collectives``): a group is ``size`` ranks ``stride`` apart. With
``stride < gpus_per_node`` it has ``gpus_per_node // stride`` ranks on each of its nodes, which are contiguous;
with a larger stride one rank per node, nodes ``stride / gpus_per_node`` apart. GPU i of a node uses NIC i, on
rail (plane) i, as in DGX/HGX nodes with one NIC per GPU (eight 400 Gb/s ConnectX-7: NVIDIA DGX H100 and DGX
B200 user guides).

Traffic patterns of one GPU:

- ``all_to_all``: equal bytes to every other member (the expert all-to-all, DeepEP, DeepSeek-V3 3.2.2);
- ``ring``: NCCL rings, one per channel and NIC; in a ring over ``n`` ranks with ``p`` per node one hop in
  ``p`` leaves the node (nccl-tests PERFORMANCE.md; NCCL keeps a channel's inter-node hops on one rail), and the
  ring crosses a leaf (pod) boundary once per leaf (pod) it spans;
- ``pairs``: every rank sends to the rank ``stride`` away (pipeline neighbours).

Leaves. A leaf serves ``leaf_ports`` NIC ports: on a ``fat_tree`` (top-of-rack) all NICs of
``leaf_ports // nics_per_node`` nodes; on a ``rail_optimized`` fabric NIC k of ``leaf_ports`` nodes (rail k);
on a ``multi_plane_fat_tree`` likewise within plane k. Traffic between rails either is forwarded over NVLink
inside the node to the GPU on the destination's rail (NCCL PXN; DeepEP forwards this way, so its IB traffic
never changes rail), or, on a rail-optimized fabric without PXN, climbs to the spine. A multi-plane fabric has
no path between planes: it always forwards (ISCA'25 5.1).

Bandwidth under symmetric load: each GPU's NIC carries its network share; a leaf's uplinks carry the share
that leaves the leaf, from all ``d`` endpoints, over ``d / leaf_oversubscription`` uplinks at the same rate; a
pod's uplinks the share that leaves the pod, over a further ``1 / spine_oversubscription``. The per-GPU rate
is the NIC's achievable rate times ``1 / max(1, r * f_up, r * s * f_pod)`` (f: fractions of the network
traffic). Hash collisions of ECMP routing are not modelled (adaptive routing assumed).

Latency of the farthest pair: ``endpoint + hops * hop`` with 1 hop under a leaf, 3 across leaves (2 tiers or
inside a pod), 5 across pods (FabricSpec's latencies, from ISCA'25 Table 5), plus an NVLink hop when traffic
is forwarded to another rail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from sim.config.fabric import FabricSpec, nic_ports_per_node
from sim.config.hardware import NodeSpec
from sim.units import US

Pattern = Literal["all_to_all", "ring", "pairs"]


@dataclass(frozen=True, slots=True)
class Placement:
    """How a group of ``size`` ranks, ``stride`` global ranks apart, sits on nodes of ``gpus_per_node``."""

    size: int
    stride: int
    gpus_per_node: int
    ranks_per_node: int
    num_nodes: int
    node_stride: float        # nodes between consecutive member nodes
    same_rail_frac: float     # of a member's peers on other nodes, the share on its own rail (in-node index)


def place_group(size: int, stride: int, gpus_per_node: int) -> Placement:
    """Placement of a group of ``size`` ranks ``stride`` apart (Megatron-LM order, aligned to its first rank)."""
    if size < 1:
        raise ValueError(f"size: must be >= 1 (got {size})")
    if stride < 1:
        raise ValueError(f"stride: must be >= 1 (got {stride})")
    if gpus_per_node < 1:
        raise ValueError(f"gpus_per_node: must be >= 1 (got {gpus_per_node})")
    g = gpus_per_node
    if stride < g:
        per_node = min(size, max(1, g // stride))
        nodes = math.ceil(size / per_node)
        remote = size - per_node
        same = (nodes - 1) / remote if remote > 0 else 1.0
        return Placement(size, stride, g, per_node, nodes, 1.0, same)
    offset = stride % g
    cycle = g // math.gcd(offset, g) if offset else 1  # in-node indices repeat every `cycle` members
    same = (math.ceil(size / cycle) - 1) / (size - 1) if size > 1 else 1.0
    return Placement(size, stride, g, 1, size, stride / g, same)


@dataclass(frozen=True, slots=True)
class TrafficSplit:
    """Shares of one GPU's bytes: inside the node; over the network under one leaf, across leaves (inside a pod
    or over a 2-tier spine), across pods. ``rail_change`` is the share first forwarded over NVLink to the GPU on
    another rail (PXN); it is part of the network shares and adds NVLink bytes."""

    nvlink: float
    same_leaf: float
    cross_leaf: float
    cross_pod: float
    rail_change: float

    @property
    def network(self) -> float:
        return self.same_leaf + self.cross_leaf + self.cross_pod


def nodes_per_leaf(fabric: FabricSpec, nics_per_node: int) -> int:
    """Nodes whose same-rail NICs share a leaf (all their NICs, on a top-of-rack ``fat_tree``)."""
    if fabric.kind == "rail_optimized":
        return fabric.leaf_ports
    return max(1, fabric.leaf_ports // nic_ports_per_node(fabric, nics_per_node))


def nodes_per_pod(fabric: FabricSpec, nics_per_node: int) -> float:
    """Nodes under one pod (3 tiers); infinite in 2 tiers, where the spine joins the whole plane."""
    pod = fabric.pod_ports
    if pod is None:
        return math.inf
    return max(1, pod // nic_ports_per_node(fabric, nics_per_node))


def _members_under(span_nodes: float, placement: Placement) -> int:
    """Member nodes of the group inside one aligned block of ``span_nodes`` nodes."""
    if math.isinf(span_nodes):
        return placement.num_nodes
    return min(placement.num_nodes, max(1, int(span_nodes // placement.node_stride)))


def traffic_split(fabric: FabricSpec, nics_per_node: int, placement: Placement, pattern: Pattern,
                  pxn: bool = True) -> TrafficSplit:
    """Where one GPU's traffic of ``pattern`` goes (see the module docstring). ``pxn``: forward cross-rail
    traffic over NVLink first (always, on a multi-plane fabric)."""
    n, p, m = placement.size, placement.ranks_per_node, placement.num_nodes
    if pattern == "pairs":
        return _pairs_split(fabric, nics_per_node, placement, pxn)
    if n <= 1 or m <= 1:
        return TrafficSplit(1.0, 0.0, 0.0, 0.0, 0.0)
    c_leaf = _members_under(nodes_per_leaf(fabric, nics_per_node), placement)
    c_pod = _members_under(nodes_per_pod(fabric, nics_per_node), placement)
    if pattern == "all_to_all":
        local = (p - 1) / (n - 1)
        remote = 1.0 - local
        same_leaf, in_pod, out_pod = (c_leaf - 1) / (m - 1), (c_pod - c_leaf) / (m - 1), (m - c_pod) / (m - 1)
        cross_rail = remote * (1.0 - placement.same_rail_frac)
    elif pattern == "ring":
        local = (p - 1) / p
        remote = 1.0 - local
        g_leaf, g_pod = math.ceil(m / c_leaf), math.ceil(m / c_pod)
        out_pod = g_pod / m if g_pod > 1 else 0.0
        in_pod = (g_leaf / m if g_leaf > 1 else 0.0) - out_pod
        same_leaf = 1.0 - in_pod - out_pod
        # NCCL keeps a ring's inter-node hops on one rail unless consecutive members sit on different rails
        cross_rail = remote if p == 1 and placement.stride % placement.gpus_per_node else 0.0
    else:
        raise ValueError(f"pattern: unknown {pattern!r}; allowed: all_to_all, ring, pairs")
    return _classify(fabric, local, remote, same_leaf, in_pod, out_pod, cross_rail, pxn)


def _classify(fabric: FabricSpec, local: float, remote: float, same_leaf: float, in_pod: float, out_pod: float,
              cross_rail: float, pxn: bool) -> TrafficSplit:
    """Network shares from the node-level shares; cross-rail traffic either forwarded (PXN) or via the spine."""
    if fabric.kind == "fat_tree" or cross_rail <= 0:  # all rails of a node share its leaf, or no rail change
        return TrafficSplit(local, remote * same_leaf, remote * in_pod, remote * out_pod, 0.0)
    if pxn or fabric.kind == "multi_plane_fat_tree":
        return TrafficSplit(local, remote * same_leaf, remote * in_pod, remote * out_pod, cross_rail)
    same_rail = remote - cross_rail  # rail-optimized without PXN: another rail's leaf is reached via the spine
    return TrafficSplit(local, same_rail * same_leaf, same_rail * in_pod + cross_rail * (same_leaf + in_pod),
                        remote * out_pod, 0.0)


def _pairs_split(fabric: FabricSpec, nics_per_node: int, placement: Placement, pxn: bool) -> TrafficSplit:
    """Each rank sends to the rank ``stride`` away: averaged over positions, a share ``stride / gpus_per_node``
    leaves the node, ``distance / nodes_per_leaf`` of it leaves the leaf (``/ nodes_per_pod``, the pod)."""
    s, g = placement.stride, placement.gpus_per_node
    remote = min(1.0, s / g)
    distance = max(1.0, s / g)
    out_leaf = min(1.0, distance / nodes_per_leaf(fabric, nics_per_node))
    out_pod = min(1.0, distance / nodes_per_pod(fabric, nics_per_node))
    cross_rail = remote if s % g else 0.0
    return _classify(fabric, 1.0 - remote, remote, 1.0 - out_leaf, out_leaf - out_pod, out_pod, cross_rail, pxn)


def scaleout_efficiency(fabric: FabricSpec, split: TrafficSplit) -> float:
    """Per-GPU share of the NIC's achievable rate under symmetric load: ``1 / max(1, r f_up, r s f_pod)``."""
    net = split.network
    if net <= 0:
        return 1.0
    r, s = fabric.leaf_oversubscription, fabric.spine_oversubscription
    leaf_load = r * (split.cross_leaf + split.cross_pod) / net
    pod_load = r * s * split.cross_pod / net
    return 1.0 / max(1.0, leaf_load, pod_load)


def max_switch_hops(split: TrafficSplit) -> int:
    """Switch hops of the farthest pair: 0 (NVLink only), 1 (one leaf), 3 (across leaves), 5 (across pods)."""
    eps = 1e-12
    if split.cross_pod > eps:
        return 5
    if split.cross_leaf > eps:
        return 3
    return 1 if split.same_leaf > eps else 0


def network_latency_s(fabric: FabricSpec, hops: int) -> float:
    """Small-message latency over ``hops`` switches: endpoints plus hops (0 when nothing crosses the network)."""
    return fabric.endpoint_latency_s + hops * fabric.switch_hop_latency_s if hops > 0 else 0.0


@dataclass(frozen=True, slots=True)
class FabricPath:
    """What a group's traffic pattern gets from the fabric, per GPU."""

    split: TrafficSplit
    efficiency: float
    scaleout_bytes_per_s: float   # effective NIC rate per GPU under symmetric load
    hops: int
    network_latency_s: float      # farthest pair over the network: endpoints and switch hops
    latency_s: float              # the same plus an NVLink hop when traffic is forwarded to another rail
    switch_latency_s: float       # the switch hops' part (added to NCCL's per-step network latency)


def fabric_path(fabric: FabricSpec, node: NodeSpec, placement: Placement, pattern: Pattern,
                pxn: bool = True) -> FabricPath:
    """Effective per-GPU scale-out bandwidth and the farthest pair's latency for ``pattern`` on ``placement``."""
    if placement.gpus_per_node != node.gpus_per_node:
        raise ValueError(f"placement: made for {placement.gpus_per_node} GPUs per node, the node has "
                         f"{node.gpus_per_node}")
    split = traffic_split(fabric, node.nics_per_node, placement, pattern, pxn)
    if split.network > 0 and (fabric.kind == "nvlink_domain_only" or node.nics_per_node == 0):
        raise ValueError(f"fabric.kind: a group spanning {placement.num_nodes} nodes needs a scale-out network "
                         f"({fabric.describe()}, {node.nics_per_node} NICs per node)")
    eff = scaleout_efficiency(fabric, split)
    hops = max_switch_hops(split)
    network = network_latency_s(fabric, hops)
    forward = node.nvlink_latency_us * US if split.rail_change > 0 else 0.0
    bw = node.nic_bytes_per_s_per_gpu * eff if node.nics_per_node > 0 else 0.0
    return FabricPath(split, eff, bw, hops, network, network + forward, hops * fabric.switch_hop_latency_s)
