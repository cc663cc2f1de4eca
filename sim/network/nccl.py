"""NCCL collectives with NCCL's own cost model: ring, tree and NVLS, three protocols, the fastest chosen.

NCCL's tuner (NVIDIA/nccl ``src/graph/tuning.cc``; constants in ``hardware_profiles/comm/nccl.yaml``)::

    time = latency + S / algBw          S: the full buffer (nccl-tests PERFORMANCE.md conventions)

- Ring (all-reduce: ``nsteps = 2(n-1)``; reduce-scatter, all-gather: ``n-1``): ``algBw = busBw * n / nsteps``;
  latency ``base + (nsteps - nInter) * intraLat + nInter * interLat`` with ``nInter = 2 (nodes-1)`` (all-reduce)
  or ``nodes - 1``, 0 inside a node; an inter-node ring's intra-node steps cost at least the network post
  overhead (1 us, x3 for Simple).
- Tree (all-reduce; NCCL's hierarchical algorithm: a chain inside each node, a binary tree across nodes):
  ``algBw = 0.5 * 0.92 * busBw``, latency ``base + 2 ((ppn - 1) intraLat + floor(log2 nodes) interLat)``.
- NVLS (all-reduce inside one NVLink domain with NVLink SHARP): latency 23 us; ``algBw`` = the measured share
  of the achievable NVLink rate (275 of 370 GB/s on 8 x H100, nccl-tests #212).
- Protocols scale ``busBw``: LL x 1/4 (x 1/3 for a single-node gather), LL128 x 0.92 (x 0.7 with one rank per
  node), Simple x 1; tree LL x 1/3.8, LL128 x 7/9 (one node) or 120/128.

``busBw`` is what one rank's links carry: NVLink's achievable rate inside a node; across nodes the lower of
NVLink (when ``ppn > 1``) and the group's NICs per node, ``ppn x`` the per-GPU effective scale-out rate from
the fabric (a ring's inter-node hops carry 1/ppn of each rank's bytes, one channel per NIC: about the
``2 (N-1)/N S/ppn`` of a two-level intra-node then inter-node all-reduce over N nodes). ``interLat`` adds
the fabric's switch hops (twice for Simple, as NCCL adds its graph's inter-node latency). Per-channel caps
and CollNet/NVLSTree/PAT are not modelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field

from sim.config.base import Frozen
from sim.config.fabric import FabricSpec
from sim.config.hardware import NodeSpec
from sim.network.alltoall import comm_profiles_dir
from sim.network.fabric import FabricPath, Placement, fabric_path, place_group
from sim.units import US

CollectiveKind = Literal["all_reduce", "reduce_scatter", "all_gather"]
Protocol = Literal["LL", "LL128", "Simple"]
PROTOCOLS: tuple[Protocol, ...] = ("LL", "LL128", "Simple")


class NcclProfile(Frozen):
    """NCCL tuning constants (microseconds, dimensionless factors) with their sources."""

    name: str
    base_latency_us: dict[str, dict[str, float]]
    nvlink_latency_us: dict[str, dict[str, float]]
    net_latency_us: dict[str, dict[str, float]]
    net_overhead_us: float = Field(ge=0)
    simple_net_overhead_factor: float = Field(ge=1)
    ring_ll_factor: float = Field(gt=0, le=1)
    ring_ll_factor_single_node_gather: float = Field(gt=0, le=1)
    ring_ll128_factor: float = Field(gt=0, le=1)
    ring_ll128_factor_one_per_node: float = Field(gt=0, le=1)
    tree_factor: float = Field(gt=0, le=1)
    tree_ll_factor: float = Field(gt=0, le=1)
    tree_ll128_factor_single_node: float = Field(gt=0, le=1)
    tree_ll128_factor_multi_node: float = Field(gt=0, le=1)
    tree_algbw_ratio: float = Field(gt=0, le=1)
    nvls_algbw_frac: float = Field(gt=0)
    p2p_channels_per_net_peer: int = Field(default=2, ge=1, le=64)
    collective_channels_per_nic: int = Field(default=16, ge=1, le=64)
    sources: dict[str, str] = Field(default_factory=dict)


@lru_cache(maxsize=4)
def load_nccl_profile(name: str = "nccl") -> NcclProfile:
    """``hardware_profiles/comm/<name>.yaml`` (or a path to a YAML file)."""
    path = Path(name) if name.endswith(".yaml") else comm_profiles_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"profile: no NCCL profile {name!r} ({path})")
    return NcclProfile.model_validate(yaml.safe_load(path.read_text()))


@dataclass(frozen=True, slots=True)
class CommGroup:
    """A collective's group as NCCL sees it: its shape and the rates and latencies of its links."""

    size: int
    ranks_per_node: int
    num_nodes: int
    nvlink_bytes_per_s: float        # achievable per GPU and direction
    net_bytes_per_s: float           # effective scale-out per GPU under symmetric load (fabric)
    net_switch_latency_s: float = 0.0  # switch hops of the farthest pair (fabric)
    nvls: bool = False               # NVLink SHARP inside the node (NVSwitch gen3+)


def comm_group(placement: Placement, node: NodeSpec, path: FabricPath | None, nvls: bool = False) -> CommGroup:
    """A group from its placement, its node and the fabric path of its ``ring`` pattern (None: one node)."""
    net = path.scaleout_bytes_per_s if path is not None else 0.0
    hops = path.switch_latency_s if path is not None else 0.0
    return CommGroup(placement.size, placement.ranks_per_node, placement.num_nodes, node.nvlink_bytes_per_s, net,
                     hops, nvls)


def group_on_fabric(size: int, stride: int, node: NodeSpec, fabric: FabricSpec, nvls: bool = False) -> CommGroup:
    """Shortcut: place a group of ``size`` ranks ``stride`` apart and read its ring path from the fabric."""
    place = place_group(size, stride, node.gpus_per_node)
    path = fabric_path(fabric, node, place, "ring") if place.num_nodes > 1 else None
    return comm_group(place, node, path, nvls)


@dataclass(frozen=True, slots=True)
class CollectiveTime:
    algorithm: str
    protocol: str
    latency_s: float
    algbw_bytes_per_s: float
    seconds: float


def _bus_bytes_per_s(g: CommGroup) -> float:
    if g.num_nodes <= 1:
        return g.nvlink_bytes_per_s
    net = g.ranks_per_node * g.net_bytes_per_s
    return min(g.nvlink_bytes_per_s, net) if g.ranks_per_node > 1 else net


def _inter_latency_s(prof: NcclProfile, algo: str, proto: str, g: CommGroup) -> float:
    extra = g.net_switch_latency_s * (2 if proto == "Simple" else 1)
    return prof.net_latency_us[algo][proto] * US + extra


def _ring(kind: CollectiveKind, s: float, g: CommGroup, prof: NcclProfile, proto: Protocol) -> CollectiveTime:
    n, m = g.size, g.num_nodes
    nsteps = 2 * (n - 1) if kind == "all_reduce" else n - 1
    if proto == "LL":
        factor = prof.ring_ll_factor if (m > 1 or kind == "all_reduce") else prof.ring_ll_factor_single_node_gather
    elif proto == "LL128":
        factor = prof.ring_ll128_factor if g.ranks_per_node >= 2 else prof.ring_ll128_factor_one_per_node
    else:
        factor = 1.0
    algbw = _bus_bytes_per_s(g) * factor * n / nsteps
    intra = prof.nvlink_latency_us["ring"][proto] * US
    n_inter = 0
    if m > 1:
        overhead = prof.net_overhead_us * (prof.simple_net_overhead_factor if proto == "Simple" else 1.0) * US
        intra = max(intra, overhead)
        n_inter = 2 * (m - 1) if kind == "all_reduce" else m - 1
    latency = (prof.base_latency_us["ring"][proto] * US + (nsteps - n_inter) * intra
               + n_inter * _inter_latency_s(prof, "ring", proto, g))
    return CollectiveTime("ring", proto, latency, algbw, latency + s / algbw)


def _tree(s: float, g: CommGroup, prof: NcclProfile, proto: Protocol) -> CollectiveTime:
    m = g.num_nodes
    factor = prof.tree_factor
    if proto == "LL":
        factor *= prof.tree_ll_factor
    elif proto == "LL128":
        factor *= prof.tree_ll128_factor_single_node if m == 1 else prof.tree_ll128_factor_multi_node
    algbw = _bus_bytes_per_s(g) * factor * prof.tree_algbw_ratio
    intra = prof.nvlink_latency_us["tree"][proto] * US
    levels = m.bit_length() - 1  # floor(log2 nodes), as NCCL's log2i
    latency = prof.base_latency_us["tree"][proto] * US + 2 * (
        (g.ranks_per_node - 1) * intra + levels * _inter_latency_s(prof, "tree", proto, g))
    return CollectiveTime("tree", proto, latency, algbw, latency + s / algbw)


def _nvls(s: float, g: CommGroup, prof: NcclProfile) -> CollectiveTime:
    latency = (prof.base_latency_us["nvls"]["Simple"] + prof.nvlink_latency_us["nvls"]["Simple"]) * US
    algbw = prof.nvls_algbw_frac * g.nvlink_bytes_per_s
    return CollectiveTime("nvls", "Simple", latency, algbw, latency + s / algbw)


def collective_options(kind: CollectiveKind, bytes_: float, group: CommGroup,
                       profile: NcclProfile | None = None) -> list[CollectiveTime]:
    """Every (algorithm, protocol) NCCL would consider for this collective, with its modelled time; a group of
    one has nothing to exchange and no option (:func:`best_collective` costs it nothing)."""
    if kind not in ("all_reduce", "reduce_scatter", "all_gather"):
        raise ValueError(f"kind: unknown {kind!r}; allowed: all_reduce, reduce_scatter, all_gather")
    if bytes_ < 0:
        raise ValueError(f"bytes_: must be >= 0 (got {bytes_})")
    if group.size < 1 or group.ranks_per_node < 1 or group.num_nodes < 1:
        raise ValueError("group: size, ranks_per_node and num_nodes must be >= 1")
    if group.num_nodes > 1 and group.net_bytes_per_s <= 0:
        raise ValueError("group: spans nodes but has no scale-out bandwidth")
    if group.size == 1:
        return []
    prof = profile or load_nccl_profile()
    out = [_ring(kind, bytes_, group, prof, p) for p in PROTOCOLS]
    if kind == "all_reduce":
        out += [_tree(bytes_, group, prof, p) for p in PROTOCOLS]
        if group.nvls and group.num_nodes == 1 and group.size > 1:
            out.append(_nvls(bytes_, group, prof))
    return out


def best_collective(kind: CollectiveKind, bytes_: float, group: CommGroup,
                    profile: NcclProfile | None = None) -> CollectiveTime:
    """The fastest option, as NCCL's tuner picks it. A group of one (or no bytes) costs nothing."""
    if group.size <= 1 or bytes_ <= 0:
        return CollectiveTime("none", "none", 0.0, math.inf, 0.0)
    return min(collective_options(kind, bytes_, group, profile), key=lambda c: c.seconds)


def collective_seconds(kind: CollectiveKind, bytes_: float, group: CommGroup,
                       profile: NcclProfile | None = None) -> float:
    """Seconds of an all-reduce, reduce-scatter or all-gather of a ``bytes_`` buffer (the full, unsharded size)."""
    return best_collective(kind, bytes_, group, profile).seconds


@dataclass(frozen=True, slots=True)
class P2PLink:
    bytes_per_s: float
    latency_s: float


def p2p_link(node: NodeSpec, fabric: FabricSpec, stride: int, same_node: bool | None = None) -> P2PLink:
    """A send between ranks ``stride`` apart while every such pair sends at once (pipeline neighbours).
    Inside the node (``same_node``; default: ``stride < gpus_per_node``): NVLink's achievable rate and
    latency (ISCA'25 Table 5); else the NIC's effective rate and the pair's network latency."""
    local = stride < node.gpus_per_node if same_node is None else same_node
    if local:
        return P2PLink(node.nvlink_bytes_per_s, node.nvlink_latency_us * US)
    distance = max(stride, node.gpus_per_node)
    path = fabric_path(fabric, node, place_group(2, distance, node.gpus_per_node), "pairs")
    return P2PLink(path.scaleout_bytes_per_s, path.latency_s)


def send_weight(nic: bool, profile: NcclProfile | None = None) -> float:
    """How a stage-boundary send shares a link side with a collective (the engine's weights; a collective
    weighs 1): over the network, its channels against a collective's (a NIC serves its queue pairs in turn,
    one connection per channel: 2 against 16 by default, so a send beside a reduce-scatter gets 1/9 of the
    NIC); over NVLink, an equal share."""
    if not nic:
        return 1.0
    prof = profile or load_nccl_profile()
    return prof.p2p_channels_per_net_peer / prof.collective_channels_per_nic


def send_seconds(bytes_: float, link: P2PLink) -> float:
    """Point-to-point send: ``latency + bytes / rate`` (alpha-beta); nothing to send costs nothing."""
    if bytes_ < 0:
        raise ValueError(f"bytes_: must be >= 0 (got {bytes_})")
    return 0.0 if bytes_ == 0 else link.latency_s + bytes_ / link.bytes_per_s
