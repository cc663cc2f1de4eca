"""Fabric capacities, group placement, traffic splits, effective bandwidth and latency (sim.network.fabric).

Hand-derived values carry their arithmetic; what-if rows carry the physical reason beside them."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.config.fabric import PRESETS, FabricSpec, check_fits, default_fabric, max_gpus
from sim.config.hardware import NodeSpec
from sim.network.fabric import (
    Placement,
    TrafficSplit,
    fabric_path,
    max_switch_hops,
    nodes_per_leaf,
    nodes_per_pod,
    place_group,
    scaleout_efficiency,
    traffic_split,
)

H800 = NodeSpec(name="h800", gpus_per_node=8, nvlink_gb_per_s=200, nvlink_achievable_gb_per_s=160,
                nvlink_latency_us=3.33, nics_per_node=8, nic_gbit_per_s=400, nic_achievable_gb_per_s=46,
                pcie_gb_per_s=63)
MPFT, FT2, FT3 = PRESETS["deepseek_mpft"], PRESETS["ft2_64"], PRESETS["ft3_64"]
TOR = FT2.model_copy(update={"kind": "fat_tree"})
TOR_2TO1 = FabricSpec(kind="fat_tree", leaf_endpoints=32, leaf_oversubscription=2.0)


# ----------------------------------------------------------------------------------------- capacity
def test_endpoint_counts_match_isca25_table3() -> None:
    assert FT2.max_endpoints == 2048          # 64 leaves x 32 down ports
    assert FT3.max_endpoints == 65536         # 64 pods x 32 leaves x 32 down ports
    assert MPFT.max_endpoints == 16384        # 8 planes x 2,048
    assert max_gpus(MPFT, 8, 8) == 16384      # one port per node per plane: 2,048 nodes x 8 GPUs
    assert max_gpus(FT2, 8, 8) == 2048        # rail-optimized: 2,048 ports / 8 NICs = 256 nodes x 8
    assert max_gpus(TOR, 8, 8) == 2048        # top-of-rack: 32 ports = 4 nodes per leaf x 64 leaves x 8


def test_leaf_oversubscription_trades_uplinks_for_endpoints() -> None:
    f = FabricSpec(leaf_oversubscription=3.0)
    assert f.leaf_ports == 48                 # int(64 x 3/4): 48 down, 16 up
    assert f.max_endpoints == 64 * 48


def test_llama3_pods() -> None:
    f = PRESETS["llama3_roce"]
    assert f.leaves_per_pod == 192            # 3,072 / 16 GPUs per ToR (Llama 3 3.3.1)
    assert nodes_per_leaf(f, 8) == 2 and nodes_per_pod(f, 8) == 384


def test_cluster_larger_than_fabric_is_reported() -> None:
    msg = check_fits(MPFT, 8192, 8, 8)        # 65,536 GPUs on a 16,384-GPU MPFT
    assert msg is not None and msg.startswith("cluster.num_nodes") and "16,384" in msg
    assert check_fits(MPFT, 256, 8, 8) is None  # DeepSeek's 2,048 GPUs
    assert check_fits(default_fabric("rail_optimized", 16384), 2048, 8, 8) is None  # 3 tiers picked
    assert check_fits(default_fabric("multi_plane_fat_tree", 65536), 8192, 8, 8) is not None
    msg = check_fits(PRESETS["nvlink_only"], 2, 72, 72)
    assert msg is not None and msg.startswith("cluster.num_nodes")
    msg = check_fits(MPFT, 4, 8, 4)           # 4 NICs over 8 planes
    assert msg is not None and msg.startswith("cluster.node.nics_per_node")


def test_fabric_spec_rules_name_the_field() -> None:
    with pytest.raises(ValueError, match="planes"):
        FabricSpec(kind="multi_plane_fat_tree", planes=1)
    with pytest.raises(ValueError, match="planes"):
        FabricSpec(kind="rail_optimized", planes=8)
    with pytest.raises(ValueError, match="spine_oversubscription"):
        FabricSpec(tiers=2, spine_oversubscription=2.0)
    with pytest.raises(ValueError, match="leaf_endpoints"):
        FabricSpec(leaf_endpoints=64)


# ----------------------------------------------------------------------------------------- placement
def test_place_group() -> None:
    ep = place_group(64, 1, 8)                # EP64, TP1: 8 per node on 8 nodes
    assert (ep.ranks_per_node, ep.num_nodes) == (8, 8)
    assert ep.same_rail_frac == pytest.approx(7 / 56)  # 7 same-index peers among 56 remote ones
    dp = place_group(16, 8, 8)                # stride 8: one per node, all on one rail
    assert (dp.ranks_per_node, dp.num_nodes, dp.same_rail_frac) == (1, 16, 1.0)
    odd = place_group(16, 12, 8)              # in-node index alternates 0, 4: 8 of 16 share mine
    assert odd.same_rail_frac == pytest.approx(7 / 15)
    small = place_group(4, 2, 8)              # fits in one node
    assert (small.ranks_per_node, small.num_nodes) == (4, 1)


# ----------------------------------------------------------------------------------------- traffic
def test_all_to_all_split_rail_optimized_with_pxn() -> None:
    s = traffic_split(FT2, 8, place_group(64, 1, 8), "all_to_all")
    assert s.nvlink == pytest.approx(7 / 63)       # 7 local peers of 63
    assert s.same_leaf == pytest.approx(56 / 63)   # 8 nodes under 32-node rail leaves
    assert s.rail_change == pytest.approx(49 / 63)  # 56/63 remote x 7/8 on other rails
    assert s.cross_leaf == s.cross_pod == 0


def test_all_to_all_split_top_of_rack() -> None:
    s = traffic_split(TOR, 8, place_group(64, 1, 8), "all_to_all")  # 4 nodes per leaf
    assert s.same_leaf == pytest.approx(56 / 63 * 3 / 7)   # 3 of 7 remote nodes under my leaf
    assert s.cross_leaf == pytest.approx(56 / 63 * 4 / 7)
    assert s.rail_change == 0


def test_rail_optimized_without_pxn_climbs_to_the_spine() -> None:
    s = traffic_split(FT2, 8, place_group(64, 1, 8), "all_to_all", pxn=False)
    assert s.same_leaf == pytest.approx(7 / 63)     # same-rail peers only: 56/63 x 1/8
    assert s.cross_leaf == pytest.approx(49 / 63)   # other rails: another leaf
    assert max_switch_hops(s) == 3


def test_ring_split() -> None:
    dp = place_group(128, 1, 8)                     # 16 nodes
    s = traffic_split(FT2, 8, dp, "ring")
    assert s.nvlink == pytest.approx(7 / 8) and s.same_leaf == pytest.approx(1 / 8)
    s = traffic_split(TOR, 8, dp, "ring")           # 4 leaf groups: 4 of 16 inter-node edges leave a leaf
    assert s.cross_leaf == pytest.approx(1 / 8 * 4 / 16)


def test_pairs_split() -> None:
    s = traffic_split(FT2, 8, place_group(2, 128, 8), "pairs")  # 16 nodes apart, 32-node rail leaves
    assert s.nvlink == 0 and s.same_leaf == pytest.approx(0.5) and s.cross_leaf == pytest.approx(0.5)
    s = traffic_split(FT2, 8, place_group(2, 4, 8), "pairs")    # half the partners in the node, other rail
    assert s.nvlink == pytest.approx(0.5) and s.rail_change == pytest.approx(0.5)


def test_oversubscribed_leaf_efficiency() -> None:
    # EP64 on 2:1 top-of-rack leaves, 4 nodes per leaf: 4/7 of the network bytes leave the leaf; 2 x 4/7 = 8/7
    s = traffic_split(TOR_2TO1, 8, place_group(64, 1, 8), "all_to_all")
    assert scaleout_efficiency(TOR_2TO1, s) == pytest.approx(7 / 8)


def test_spine_oversubscription_between_pods() -> None:
    f = PRESETS["llama3_roce"]                      # 2 nodes per ToR, 384 per pod, 1:7 between pods
    s = traffic_split(f, 8, place_group(1024, 8, 8), "all_to_all")  # one rank on each of 1,024 nodes
    assert s.cross_pod == pytest.approx(640 / 1023)
    assert scaleout_efficiency(f, s) == pytest.approx(1 / (7 * 640 / 1023))


def test_oversubscription_compounds_at_leaf_and_pod() -> None:
    f = FabricSpec(kind="fat_tree", tiers=3, leaf_endpoints=32, pod_endpoints=1024, leaf_oversubscription=2.0,
                   spine_oversubscription=4.0)        # 4 nodes per leaf, 128 per pod
    s = traffic_split(f, 8, place_group(1024, 8, 8), "all_to_all")
    assert (s.same_leaf, s.cross_leaf, s.cross_pod) == pytest.approx((3 / 1023, 124 / 1023, 896 / 1023))
    # leaf uplinks: 2 x 1020/1023 < pod uplinks: 2 x 4 x 896/1023 = 7.007
    assert scaleout_efficiency(f, s) == pytest.approx(1023 / (8 * 896))


def test_latency_by_hops() -> None:
    p = fabric_path(MPFT, H800, place_group(64, 1, 8), "all_to_all")
    assert p.hops == 1 and p.network_latency_s == pytest.approx(2.8e-6)   # Table 5, same leaf
    assert p.latency_s == pytest.approx(2.8e-6 + 3.33e-6)                  # plus the NVLink forward
    p = fabric_path(TOR, H800, place_group(64, 1, 8), "all_to_all")
    assert p.hops == 3 and p.network_latency_s == pytest.approx(3.7e-6)   # Table 5, cross leaf
    p = fabric_path(PRESETS["llama3_roce"], H800, place_group(1024, 8, 8), "all_to_all")
    assert p.hops == 5 and p.network_latency_s == pytest.approx(2.6e-6 + 5 * 1.0e-6)
    assert fabric_path(FT2, H800, place_group(8, 1, 8), "all_to_all").latency_s == 0  # NVLink only
    assert fabric_path(FT2, H800, place_group(64, 1, 8), "all_to_all").scaleout_bytes_per_s == 46e9


def test_nvlink_domain_only_refuses_multi_node_groups() -> None:
    with pytest.raises(ValueError, match=r"fabric\.kind"):
        fabric_path(PRESETS["nvlink_only"], H800, place_group(16, 1, 8), "ring")


# ----------------------------------------------------------------------------------------- what-ifs
WHAT_IF = [
    # (fabric A, fabric B, group, pattern, same?, reason)
    (MPFT, FT2, (64, 1), "all_to_all", True, "EP64 fits under one rail leaf on both: nothing crosses a spine"),
    (FT2, FT3, (64, 1), "all_to_all", True, "a third tier is not used by 8 nodes under one leaf"),
    (FT2, TOR_2TO1, (64, 1), "all_to_all", False, "ToR leaves hold 4 nodes: half the group is behind 2:1 uplinks"),
    (FT2, FT3, (2048, 8), "all_to_all", False, "2,048 nodes span pods in 3 tiers: 5 hops instead of 3"),
]


@pytest.mark.parametrize(("a", "b", "group", "pattern", "same", "reason"), WHAT_IF)
def test_topologies_differ_only_where_traffic_crosses(a: FabricSpec, b: FabricSpec, group: tuple[int, int],
                                                      pattern: str, same: bool, reason: str) -> None:
    place = place_group(group[0], group[1], 8)
    pa, pb = fabric_path(a, H800, place, pattern), fabric_path(b, H800, place, pattern)  # type: ignore[arg-type]
    got = (pa.scaleout_bytes_per_s, pa.network_latency_s) == (pb.scaleout_bytes_per_s, pb.network_latency_s)
    assert got == same, reason


def test_weak_scaling_loses_a_little() -> None:
    # a DP ring over 256 nodes (2 tiers) and 8,192 nodes (3 tiers): same bandwidth, 2 more hops of latency
    small = fabric_path(default_fabric("rail_optimized", 2048), H800, place_group(256, 8, 8), "ring")
    large = fabric_path(default_fabric("rail_optimized", 65536), H800, place_group(8192, 8, 8), "ring")
    assert large.scaleout_bytes_per_s == small.scaleout_bytes_per_s      # non-blocking: no bandwidth lost
    assert large.network_latency_s > small.network_latency_s             # but farther apart
    assert large.network_latency_s - small.network_latency_s == pytest.approx(2 * 0.45e-6)


# ----------------------------------------------------------------------------------------- invariants
FABRICS = [MPFT, FT2, FT3, TOR, TOR_2TO1, PRESETS["llama3_roce"]]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FABRICS), st.integers(1, 4096), st.sampled_from([1, 2, 4, 8, 12, 16, 64, 128]),
       st.sampled_from(["all_to_all", "ring", "pairs"]), st.booleans())
def test_split_is_a_partition(fabric: FabricSpec, size: int, stride: int, pattern: str, pxn: bool) -> None:
    place = place_group(2 if pattern == "pairs" else size, stride, 8)
    s = traffic_split(fabric, 8, place, pattern, pxn)  # type: ignore[arg-type]
    parts = (s.nvlink, s.same_leaf, s.cross_leaf, s.cross_pod)
    assert all(-1e-12 <= x <= 1 + 1e-12 for x in (*parts, s.rail_change))
    assert math.fsum(parts) == pytest.approx(1.0)
    eff = scaleout_efficiency(fabric, s)
    assert 0 < eff <= 1


@settings(max_examples=100, deadline=None)
@given(st.floats(1.0, 8.0), st.floats(1.0, 8.0), st.integers(2, 2048))
def test_more_oversubscription_never_helps(r1: float, r2: float, nodes: int) -> None:
    lo, hi = sorted((r1, r2))
    a = FabricSpec(kind="fat_tree", tiers=3, leaf_endpoints=32, pod_endpoints=1024, leaf_oversubscription=lo)
    b = a.model_copy(update={"leaf_oversubscription": hi})
    s = traffic_split(a, 8, place_group(nodes, 8, 8), "all_to_all")
    assert scaleout_efficiency(b, s) <= scaleout_efficiency(a, s)


def test_place_group_edges_by_hand() -> None:
    """Strides that do not divide the node: stride 3 on 8 GPUs puts 8 // 3 = 2 members per node (whole ranks);
    stride 5 one per node. A group of one is on its own rail. One GPU per node is a valid node."""
    three = place_group(3, 3, 8)
    assert (three.ranks_per_node, three.num_nodes, three.node_stride) == (2, 2, 1.0)
    assert three.same_rail_frac == 1.0  # the one remote member: 1 other node, 1 remote member
    five = place_group(4, 5, 8)
    assert (five.ranks_per_node, five.num_nodes) == (1, 4)
    assert place_group(1, 16, 8).same_rail_frac == 1.0 and place_group(1, 16, 8).node_stride == 2.0
    two = place_group(16, 2, 8)  # 4 per node on 4 nodes: of 12 remote peers, 3 share my in-node index
    assert two.same_rail_frac == pytest.approx(3 / 12)
    assert place_group(2, 1, 1) == Placement(2, 1, 1, 1, 2, 1.0, 1.0)
    for args, field in (((0, 1, 8), "size"), ((2, 0, 8), "stride"), ((2, 1, 0), "gpus_per_node")):
        with pytest.raises(ValueError, match=rf"^{field}: must be >= 1 \(got 0\)$"):
            place_group(*args)


def test_a_multi_plane_fabric_always_forwards_across_rails() -> None:
    """No path between planes (ISCA'25 5.1): cross-rail traffic goes over NVLink to the right rail with or
    without PXN; a rail-optimized fabric without PXN sends it up to the spine instead."""
    ep = place_group(64, 1, 8)
    with_pxn = traffic_split(MPFT, 8, ep, "all_to_all", pxn=True)
    assert traffic_split(MPFT, 8, ep, "all_to_all", pxn=False) == with_pxn and with_pxn.rail_change > 0
    assert traffic_split(FT2, 8, ep, "all_to_all", pxn=False).rail_change == 0.0
    path = fabric_path(FT2, H800, ep, "all_to_all", pxn=False)
    assert path.split == traffic_split(FT2, 8, ep, "all_to_all", pxn=False)
    assert path.efficiency == scaleout_efficiency(FT2, path.split)
    assert path.latency_s == path.network_latency_s  # nothing forwarded over NVLink
    assert fabric_path(FT2, H800, ep, "all_to_all").latency_s == pytest.approx(
        fabric_path(FT2, H800, ep, "all_to_all").network_latency_s + 3.33e-6)


def test_scaleout_efficiency_by_hand() -> None:
    """Leaf uplinks 2:1 and spine 2:1 oversubscribed. Half the GPU's bytes stay in the node; of the network half,
    0.45 leaves the leaf and 0.4 the pod: leaf load 2 x 0.45 / 0.5 = 1.8, pod load 2 x 2 x 0.4 / 0.5 = 3.2, so the
    GPU gets 1 / 3.2 of its NIC. With 0.1 leaving the pod instead: leaf load 2 x 0.4 / 0.5 = 1.6 dominates."""
    over = FT3.model_copy(update={"leaf_oversubscription": 2.0, "spine_oversubscription": 2.0})
    assert scaleout_efficiency(over, TrafficSplit(0.5, 0.05, 0.05, 0.4, 0.0)) == pytest.approx(1 / 3.2)
    assert scaleout_efficiency(over, TrafficSplit(0.5, 0.1, 0.3, 0.1, 0.0)) == pytest.approx(1 / 1.6)
    assert scaleout_efficiency(over, TrafficSplit(1.0, 0.0, 0.0, 0.0, 0.0)) == 1.0


def test_fabric_path_refuses_what_it_cannot_carry() -> None:
    with pytest.raises(ValueError, match=r"^placement: made for 4 GPUs per node, the node has 8$"):
        fabric_path(FT2, H800, place_group(8, 1, 4), "ring")
    no_nic = H800.model_copy(update={"nics_per_node": 0})
    inside = fabric_path(FT2, no_nic, place_group(8, 1, 8), "ring")
    assert inside.scaleout_bytes_per_s == 0.0 and inside.hops == 0
    with pytest.raises(ValueError, match=r"^fabric\.kind: a group spanning 2 nodes needs a scale-out network"):
        fabric_path(FT2, no_nic, place_group(16, 1, 8), "ring")
