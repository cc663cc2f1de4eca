"""The scale-out fabric: switch-level capacities of fat trees, rail-optimized and multi-plane fat trees.

A fabric is described by what sets its capacity and latency: the switch radix (ports), the tiers (2: leaf and
spine; 3: leaf, aggregation and core, grouped in pods), the oversubscription at the leaf (downlinks : uplinks)
and at the aggregation layer, the number of planes, and the latencies of an endpoint and of a switch hop.

Kinds (``kind``):

- ``fat_tree``: every NIC of a node on the same leaf (top-of-rack), e.g. Meta's Llama 3 RoCE clusters: 16 GPUs
  per ToR, 3,072-GPU pods at full bisection, 1:7 oversubscription above the pods (Llama 3, arXiv 2407.21783,
  3.3.1).
- ``rail_optimized``: NIC k of every node on rail k (its own leaf); the rails meet at the spine. NVIDIA's
  HGX/DGX reference architectures: a non-blocking (full bisection) rail-optimized fat tree, a super-spine for
  larger builds (docs.nvidia.com/enterprise-reference-architectures, networking-physical-topologies).
- ``multi_plane_fat_tree``: one independent fat tree per NIC rail ("plane"); traffic between planes must be
  forwarded inside the node (NVLink/PCIe, NCCL PXN). DeepSeek's MPFT: 8 planes of two-layer fat trees of
  64-port 400G InfiniBand switches, 16,384 GPUs at most (ISCA'25 "Insights into DeepSeek-V3", arXiv
  2505.09343, 5.1, Fig. 3).
- ``nvlink_domain_only``: a single NVLink domain and no scale-out network (one node, e.g. one NVL72 rack).

Capacity of a fat tree of radix-R switches (endpoints = NIC ports): a leaf has ``d`` endpoint ports and ``u``
uplinks with ``d / u`` = ``leaf_oversubscription`` (non-blocking: d = u = R/2). Two tiers: R leaves (a spine
has one port per leaf), R * d endpoints: 64 * 32 = 2,048 (ISCA'25 Table 3, FT2). Three tiers: a pod is the
leaves under one set of aggregation switches, ``a`` leaves with ``a / (R - a)`` = ``spine_oversubscription``
(non-blocking a = R/2), pods of a * d endpoints, R pods: 64 * 32 * 32 = 65,536 (Table 3, FT3). A multi-plane
fabric has that many endpoints per plane: 8 * 2,048 = 16,384 (Table 3, MPFT). A built fabric may state its
leaf and pod sizes (``leaf_endpoints``, ``pod_endpoints``) instead.

Latency: ISCA'25 Table 5 measures 64 B latency of 2.8 us (same leaf, 1 switch hop) and 3.7 us (cross leaf,
3 hops) on InfiniBand, 3.6 / 5.6 us on RoCE: 0.45 us (IB) or 1.0 us (RoCE) per switch hop and 2.35 us
(IB) or 2.6 us (RoCE) for the endpoints (NICs and software) [DERIVED].
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sim import units
from sim.config import limits as L
from sim.config.base import Frozen

FabricKind = Literal["fat_tree", "rail_optimized", "multi_plane_fat_tree", "nvlink_domain_only"]

ISCA25 = "ISCA'25 'Insights into DeepSeek-V3' (arXiv 2505.09343)"
IB_LATENCY_SOURCE = (f"{ISCA25} Table 5: IB 64 B latency 2.8 us same leaf (1 hop), 3.7 us cross leaf (3 hops): "
                     "0.45 us per hop, 2.35 us endpoints [DERIVED]")
ROCE_LATENCY_SOURCE = (f"{ISCA25} Table 5: RoCE 64 B latency 3.6 us same leaf, 5.6 us cross leaf: 1.0 us per hop, "
                       "2.6 us endpoints [DERIVED]")


class FabricSpec(Frozen):
    """A scale-out fabric by its switch-level capacities. Counts are switch ports (one per NIC endpoint)."""

    kind: FabricKind = "rail_optimized"
    tiers: Literal[2, 3] = Field(default=2, description="2: leaf-spine; 3: leaf-aggregation-core (pods)")
    switch_radix: int = Field(default=64, ge=4, le=L.SWITCH_RADIX_MAX, description="ports per switch")
    planes: int = Field(default=1, ge=1, le=L.PLANES_MAX,
                        description="independent fabrics, one per NIC rail (multi-plane only)")
    leaf_oversubscription: float = Field(default=1.0, ge=1.0, le=L.OVERSUBSCRIPTION_MAX,
                                         description="leaf endpoint ports : uplinks")
    spine_oversubscription: float = Field(default=1.0, ge=1.0, le=L.OVERSUBSCRIPTION_MAX,
                                          description="3 tiers: aggregation down : up")
    leaf_endpoints: int | None = Field(default=None, ge=1, le=L.SWITCH_RADIX_MAX,
                                       description="endpoint ports per leaf, if the "
                                       "built fabric states it; default from the radix and oversubscription")
    pod_endpoints: int | None = Field(default=None, ge=1, le=L.SWITCH_RADIX_MAX**2,
                                      description="3 tiers: endpoint ports per pod, if "
                                      "stated; default from the radix")
    endpoint_latency_us: float = Field(default=2.35, ge=0, le=L.LATENCY_US_MAX,
                                       description="NICs and software, both ends")
    switch_hop_latency_us: float = Field(default=0.45, ge=0, le=L.LATENCY_US_MAX)
    sources: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> FabricSpec:
        if self.kind == "multi_plane_fat_tree" and self.planes < 2:
            raise ValueError("planes: a multi_plane_fat_tree has at least 2 planes")
        if self.kind != "multi_plane_fat_tree" and self.planes != 1:
            raise ValueError(f"planes: only a multi_plane_fat_tree has more than one plane (kind {self.kind})")
        if self.spine_oversubscription > 1.0 and self.tiers != 3:
            raise ValueError("spine_oversubscription: needs tiers: 3 (the aggregation layer of a pod)")
        if self.pod_endpoints is not None and self.tiers != 3:
            raise ValueError("pod_endpoints: only a 3-tier fabric has pods")
        if self.leaf_endpoints is not None and self.leaf_endpoints >= self.switch_radix:
            raise ValueError(f"leaf_endpoints: must leave uplinks on a {self.switch_radix}-port leaf")
        if self.pod_endpoints is not None and self.pod_endpoints % self.leaf_ports:
            raise ValueError(f"pod_endpoints: must be a multiple of the leaf's {self.leaf_ports} endpoint ports")
        return self

    @property
    def leaf_ports(self) -> int:
        """Endpoint (down) ports per leaf."""
        if self.leaf_endpoints is not None:
            return self.leaf_endpoints
        r = self.leaf_oversubscription
        return max(1, min(self.switch_radix - 1, int(self.switch_radix * r / (1.0 + r))))

    @property
    def leaves_per_pod(self) -> int:
        """3 tiers: leaves under one pod's aggregation switches (their down ports)."""
        if self.pod_endpoints is not None:
            return self.pod_endpoints // self.leaf_ports
        s = self.spine_oversubscription
        return max(1, min(self.switch_radix - 1, int(self.switch_radix * s / (1.0 + s))))

    @property
    def pod_ports(self) -> int | None:
        """3 tiers: endpoint ports per pod; None in 2 tiers (the whole plane is one pod)."""
        return self.leaves_per_pod * self.leaf_ports if self.tiers == 3 else None

    @property
    def endpoints_per_plane(self) -> int:
        """Largest number of endpoint ports one plane can connect: R leaves (2 tiers) or R pods (3 tiers)."""
        if self.kind == "nvlink_domain_only":
            return 0
        pod = self.pod_ports
        return self.switch_radix * (self.leaf_ports if pod is None else pod)

    @property
    def max_endpoints(self) -> int:
        return self.endpoints_per_plane * self.planes

    @property
    def switch_hop_latency_s(self) -> float:
        return self.switch_hop_latency_us * units.US

    @property
    def endpoint_latency_s(self) -> float:
        return self.endpoint_latency_us * units.US

    def describe(self) -> str:
        if self.kind == "nvlink_domain_only":
            return "nvlink_domain_only fabric (one NVLink domain, no scale-out network)"
        planes = f", {self.planes} planes" if self.planes > 1 else ""
        over = (f", leaf {self.leaf_oversubscription:g}:1" if self.leaf_oversubscription > 1 else "")
        return f"{self.kind} fabric ({self.tiers} tiers of {self.switch_radix}-port switches{planes}{over})"


_NDR_SWITCH = "64-port 400G InfiniBand switches (DeepSeek MPFT, ISCA'25 5.1; FT2/FT3 of Table 3 use the same radix)"

#: Named fabrics with their sources. ``default_fabric`` picks among them from a cluster's ``topology`` string.
PRESETS: dict[str, FabricSpec] = {
    "deepseek_mpft": FabricSpec(
        kind="multi_plane_fat_tree", tiers=2, switch_radix=64, planes=8,
        sources={"kind": f"{ISCA25} 5.1, Fig. 3: multi-plane fat tree, one plane per GPU-NIC pair",
                 "planes": f"{ISCA25} 5.1: 8 planes (8 x 400G CX7 per node)",
                 "switch_radix": _NDR_SWITCH, "tiers": f"{ISCA25} 5.1: two-layer; 16,384 GPUs max (Table 3)",
                 "endpoint_latency_us": IB_LATENCY_SOURCE, "switch_hop_latency_us": IB_LATENCY_SOURCE}),
    "ft2_64": FabricSpec(
        kind="rail_optimized", tiers=2, switch_radix=64,
        sources={"tiers": f"{ISCA25} Table 3: FT2, 2,048 endpoints, 96 switches", "switch_radix": _NDR_SWITCH,
                 "kind": "NVIDIA HGX reference architecture: rail-optimized, non-blocking fat tree",
                 "endpoint_latency_us": IB_LATENCY_SOURCE, "switch_hop_latency_us": IB_LATENCY_SOURCE}),
    "ft3_64": FabricSpec(
        kind="rail_optimized", tiers=3, switch_radix=64,
        sources={"tiers": f"{ISCA25} Table 3: FT3, 65,536 endpoints, 5,120 switches", "switch_radix": _NDR_SWITCH,
                 "kind": "NVIDIA HGX reference architecture: rail-optimized, non-blocking; super-spine when larger",
                 "endpoint_latency_us": IB_LATENCY_SOURCE, "switch_hop_latency_us": IB_LATENCY_SOURCE}),
    "llama3_roce": FabricSpec(
        kind="fat_tree", tiers=3, switch_radix=64, leaf_endpoints=16, pod_endpoints=3072,
        spine_oversubscription=7.0, endpoint_latency_us=2.6, switch_hop_latency_us=1.0,
        sources={"leaf_endpoints": "Llama 3 (arXiv 2407.21783) 3.3.1: 16 GPUs (2 servers) per ToR",
                 "pod_endpoints": "Llama 3 3.3.1: 192 racks = 3,072-GPU pods at full bisection",
                 "spine_oversubscription": "Llama 3 3.3.1: 1:7 oversubscription between pods (aggregation layer)",
                 "switch_radix": "ASSUMED 64 ports (only the pod count bound depends on it; Llama 3 built 8 pods)",
                 "endpoint_latency_us": ROCE_LATENCY_SOURCE, "switch_hop_latency_us": ROCE_LATENCY_SOURCE}),
    "nvlink_only": FabricSpec(kind="nvlink_domain_only",
                              sources={"kind": "one NVLink domain (e.g. GB200 NVL72), no scale-out network"}),
}


def default_fabric(topology: str, num_nics: int) -> FabricSpec:
    """The fabric a cluster gets from its ``topology`` string when it states no fabric of its own.

    ``multi_plane_fat_tree`` is DeepSeek's design as built (2 tiers, 8 planes): a larger cluster does not fit
    and ``check_fits`` reports it. ``fat_tree`` and ``rail_optimized`` get the smallest non-blocking tree of
    64-port switches (2 tiers, else 3) that connects ``num_nics`` NIC ports; beyond 3 tiers the check reports it.
    """
    if topology == "multi_plane_fat_tree":
        return PRESETS["deepseek_mpft"]
    if topology == "nvlink_domain_only":
        return PRESETS["nvlink_only"]
    if topology not in ("fat_tree", "rail_optimized"):
        raise ValueError(f"topology: unknown {topology!r}; allowed: fat_tree, rail_optimized, "
                         "multi_plane_fat_tree, nvlink_domain_only")
    base = PRESETS["ft2_64"] if num_nics <= PRESETS["ft2_64"].max_endpoints else PRESETS["ft3_64"]
    return base.model_copy(update={"kind": topology})


def nic_ports_per_node(fabric: FabricSpec, nics_per_node: int) -> int:
    """NIC ports a node has in one plane."""
    return max(1, nics_per_node // fabric.planes)


def max_gpus(fabric: FabricSpec, gpus_per_node: int, nics_per_node: int) -> int:
    """The most GPUs the fabric connects: whole nodes, each using ``nics_per_node / planes`` ports per plane."""
    if fabric.kind == "nvlink_domain_only":
        return gpus_per_node
    if nics_per_node < 1:
        return gpus_per_node
    ports = nic_ports_per_node(fabric, nics_per_node)
    if fabric.kind == "fat_tree":  # a node's NICs sit on one leaf: whole nodes per leaf
        per_leaf = fabric.leaf_ports // ports
        leaves = fabric.endpoints_per_plane // fabric.leaf_ports
        return per_leaf * leaves * gpus_per_node
    return fabric.endpoints_per_plane // ports * gpus_per_node


def check_fits(fabric: FabricSpec, num_nodes: int, gpus_per_node: int, nics_per_node: int) -> str | None:
    """None when the cluster fits the fabric; else a message naming the field and the fabric's limit."""
    gpus = num_nodes * gpus_per_node
    if num_nodes > 1 and fabric.kind == "nvlink_domain_only":
        return (f"cluster.num_nodes: {num_nodes} nodes need a scale-out network; a {fabric.describe()} holds one "
                f"node ({gpus_per_node} GPUs)")
    if num_nodes > 1 and nics_per_node < 1:
        return f"cluster.node.nics_per_node: 0 NICs cannot join {num_nodes} nodes"
    if fabric.planes > 1 and nics_per_node % fabric.planes:
        return (f"cluster.node.nics_per_node: {nics_per_node} NICs cannot be spread evenly over the fabric's "
                f"{fabric.planes} planes")
    if fabric.kind == "fat_tree" and nics_per_node > fabric.leaf_ports:
        return (f"cluster.node.nics_per_node: {nics_per_node} NICs do not fit one top-of-rack leaf of "
                f"{fabric.leaf_ports} endpoint ports")
    limit = max_gpus(fabric, gpus_per_node, nics_per_node)
    if num_nodes > 1 and gpus > limit:
        return (f"cluster.num_nodes: {num_nodes} nodes x {gpus_per_node} GPUs = {gpus:,} GPUs exceed the limit of "
                f"{limit:,} GPUs of a {fabric.describe()}; use more tiers, planes or switch ports")
    return None
