"""NCCL collectives (sim.network.nccl): NCCL's tuning.cc cost model with achievable rates and the fabric.

Hand-derived values carry their arithmetic; what-if rows carry the physical reason beside them."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.config.fabric import PRESETS, FabricSpec
from sim.config.hardware import NodeSpec
from sim.network.nccl import (
    CommGroup,
    best_collective,
    collective_options,
    collective_seconds,
    group_on_fabric,
    load_nccl_profile,
    p2p_link,
    send_seconds,
)

H100 = NodeSpec(name="h100", gpus_per_node=8, nvlink_gb_per_s=450, nvlink_achievable_gb_per_s=370,
                nvlink_latency_us=3.33, nics_per_node=8, nic_gbit_per_s=400, nic_achievable_gb_per_s=46,
                pcie_gb_per_s=63)
H800 = H100.model_copy(update={"nvlink_gb_per_s": 200, "nvlink_achievable_gb_per_s": 160})
ONE_NODE = CommGroup(8, 8, 1, 370e9, 0.0)
TWO_NODES = CommGroup(16, 8, 2, 370e9, 46e9, 0.45e-6)


def option(kind: str, s: float, g: CommGroup, algo: str, proto: str) -> float:
    return next(o for o in collective_options(kind, s, g) if (o.algorithm, o.protocol) == (algo, proto)).seconds


def test_single_node_latencies_match_nccl_model() -> None:
    # mechanisms of NCCL tuning.cc, 8 GPUs on NVLink (zero bytes: latency only)
    assert option("all_reduce", 0.0, ONE_NODE, "ring", "LL") == pytest.approx(15.0e-6)     # 6.6 + 14 x 0.6
    assert option("all_reduce", 0.0, ONE_NODE, "ring", "LL128") == pytest.approx(40.6e-6)  # 14 + 14 x 1.9
    assert option("all_reduce", 0.0, ONE_NODE, "ring", "Simple") == pytest.approx(56.0e-6)  # 8.4 + 14 x 3.4
    assert option("all_gather", 0.0, ONE_NODE, "ring", "Simple") == pytest.approx(32.2e-6)  # 8.4 + 7 x 3.4
    nvls = CommGroup(8, 8, 1, 370e9, 0.0, nvls=True)
    assert option("all_reduce", 0.0, nvls, "nvls", "Simple") == pytest.approx(23.0e-6)


def test_ring_bandwidth_single_node() -> None:
    s = 1e9
    # Simple ring all-reduce: algBw = 370 GB/s x 8 / 14; time = 56 us + S / algBw
    assert option("all_reduce", s, ONE_NODE, "ring", "Simple") == pytest.approx(56e-6 + s / (370e9 * 8 / 14))
    # LL: busBw / 4
    assert option("all_reduce", s, ONE_NODE, "ring", "LL") == pytest.approx(15e-6 + s / (370e9 / 4 * 8 / 14))
    # all-gather: algBw = busBw x 8 / 7
    assert option("all_gather", s, ONE_NODE, "ring", "Simple") == pytest.approx(32.2e-6 + s / (370e9 * 8 / 7))


def test_two_node_ring_and_tree() -> None:
    s = 1e9
    # busBw = min(NVLink 370, 8 NICs x 46) = 368 GB/s; 30 steps of which 2 x (2-1) = 2 inter-node
    # intraLat = max(3.4, 1 x 3) = 3.4 us; interLat = 14 + 2 x 0.45 (Simple adds the switch hops twice) = 14.9 us
    lat = 8.4e-6 + 28 * 3.4e-6 + 2 * 14.9e-6
    assert option("all_reduce", s, TWO_NODES, "ring", "Simple") == pytest.approx(lat + s / (368e9 * 16 / 30))
    # tree Simple: 0 + 2 x ((8-1) x 28 + log2(2) x (28 + 0.9)) us; algBw = 368 x 0.92 x 0.5
    lat = 2 * (7 * 28e-6 + 1 * 28.9e-6)
    assert option("all_reduce", s, TWO_NODES, "tree", "Simple") == pytest.approx(lat + s / (368e9 * 0.92 * 0.5))


def test_tree_latency_grows_with_log2_nodes() -> None:
    g = CommGroup(32, 8, 4, 370e9, 46e9, 0.45e-6)
    # Simple: 2 x ((8-1) x 28 + log2(4) x (28 + 2 x 0.45)) us, zero bytes
    assert option("all_reduce", 0.0, g, "tree", "Simple") == pytest.approx(2 * (7 * 28e-6 + 2 * 28.9e-6))
    # LL: 6.8 + 2 x (7 x 0.6 + 2 x (5.0 + 0.45)) us
    assert option("all_reduce", 0.0, g, "tree", "LL") == pytest.approx((6.8 + 2 * (7 * 0.6 + 2 * 5.45)) * 1e-6)


def test_one_rank_per_node_uses_the_nic() -> None:
    g = CommGroup(4, 1, 4, 370e9, 46e9, 0.45e-6)
    t = option("reduce_scatter", 1e9, g, "ring", "Simple")
    # busBw = 1 x 46 GB/s; 3 steps all inter-node: 8.4 + 3 x 14.9 us; algBw = 46 x 4 / 3
    assert t == pytest.approx(8.4e-6 + 3 * 14.9e-6 + 1e9 / (46e9 * 4 / 3))


def test_nvls_matches_h800_all_reduce_report() -> None:
    # 8 x H800 all-reduce busbw 215 GB/s (user report, nccl #1374): NVLS algbw 0.743 x 160 = 118.9 GB/s, busbw
    # x 2 x 7/8 = 208 GB/s
    g = CommGroup(8, 8, 1, 160e9, 0.0, nvls=True)
    best = best_collective("all_reduce", 4e9, g)
    assert best.algorithm == "nvls"
    assert best.algbw_bytes_per_s * 2 * 7 / 8 == pytest.approx(215e9, rel=0.05)


def test_algorithm_choice() -> None:
    big = CommGroup(256, 8, 32, 370e9, 46e9, 1.35e-6)
    assert best_collective("all_reduce", 1e3, big).algorithm == "tree"   # 2 x log2(32) steps beat ring's 510
    # 10 GB: ring 2.6 ms of latency + S / (368 x 256/510 GB/s) = 56.7 ms; tree 0.7 + S / (368 x 0.46) = 59.8 ms
    assert best_collective("all_reduce", 1e10, big).algorithm == "ring"
    assert best_collective("all_reduce", 1e3, ONE_NODE).protocol == "LL"
    assert best_collective("all_reduce", 1e10, ONE_NODE).protocol == "Simple"
    assert collective_seconds("all_reduce", 1e9, CommGroup(1, 1, 1, 370e9, 0.0)) == 0


def test_group_on_fabric_and_p2p() -> None:
    g = group_on_fabric(128, 1, H800, PRESETS["deepseek_mpft"])
    assert (g.ranks_per_node, g.num_nodes, g.net_bytes_per_s) == (8, 16, 46e9)
    assert g.net_switch_latency_s == pytest.approx(0.45e-6)          # 16 nodes under one rail leaf: 1 hop
    link = p2p_link(H800, PRESETS["deepseek_mpft"], 128)  # neighbours 16 nodes apart: half cross a 32-node leaf
    assert (link.bytes_per_s, link.latency_s) == (46e9, pytest.approx(3.7e-6))
    assert send_seconds(58.7e6, link) == pytest.approx(3.7e-6 + 58.7e6 / 46e9)
    assert send_seconds(1e6, p2p_link(H800, PRESETS["deepseek_mpft"], 2)) == pytest.approx(3.33e-6 + 1e6 / 160e9)
    assert send_seconds(0.0, link) == 0


def test_bad_input_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"^kind"):
        collective_options("all_to_all", 1.0, ONE_NODE)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^group"):
        collective_options("all_reduce", 1.0, CommGroup(16, 8, 2, 370e9, 0.0))


WHAT_IF = [
    # (fabric A, fabric B, size, stride, differs?, reason)
    (PRESETS["deepseek_mpft"], PRESETS["ft2_64"], 128, 1, False, "DP ring on 16 nodes stays on one rail leaf"),
    (PRESETS["ft2_64"], FabricSpec(kind="fat_tree", leaf_endpoints=32, leaf_oversubscription=2.0), 128, 1, True,
     "ToR leaves of 4 nodes: the ring crosses leaves, 3 hops instead of 1 (bandwidth unchanged: 2 x 1/4 < 1)"),
    (PRESETS["ft2_64"], PRESETS["ft3_64"], 128, 1, False, "a third tier unused by 16 nodes"),
]


@pytest.mark.parametrize(("a", "b", "size", "stride", "differs", "reason"), WHAT_IF)
def test_dp_collective_differs_only_where_traffic_crosses(a: FabricSpec, b: FabricSpec, size: int, stride: int,
                                                          differs: bool, reason: str) -> None:
    ta = collective_seconds("all_reduce", 1e8, group_on_fabric(size, stride, H800, a))
    tb = collective_seconds("all_reduce", 1e8, group_on_fabric(size, stride, H800, b))
    assert (ta != tb) == differs, reason


def test_weak_scaling_loses_a_little_not_nothing() -> None:
    small = collective_seconds("all_reduce", 1e9, group_on_fabric(2048, 1, H100, PRESETS["ft2_64"]))
    large = collective_seconds("all_reduce", 1e9, group_on_fabric(65536, 1, H100, PRESETS["ft3_64"]))
    assert small < large < 1.2 * small  # more ring steps and a third tier of latency, same bandwidth


def test_profile_constants_have_sources() -> None:
    prof = load_nccl_profile()
    assert {"base_latency_us", "nvlink_latency_us", "net_latency_us", "nvls_algbw_frac"} <= set(prof.sources)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["all_reduce", "reduce_scatter", "all_gather"]), st.floats(1.0, 1e11),
       st.integers(1, 16), st.integers(1, 512), st.floats(1e10, 1e12), st.floats(1e9, 1e11), st.booleans(),
       st.floats(1.0, 4.0), st.sampled_from(["bytes", "nvl", "net"]))
def test_monotone_finite_positive(kind: str, s: float, ppn: int, nodes: int, nvl: float, net: float, nvls: bool,
                                  k: float, which: str) -> None:
    g = CommGroup(ppn * nodes, ppn, nodes, nvl, net, 0.45e-6, nvls)
    t = collective_seconds(kind, s, g)  # type: ignore[arg-type]
    if g.size > 1:
        assert math.isfinite(t) and t > 0
    if which == "bytes":
        assert collective_seconds(kind, s * k, g) >= t  # type: ignore[arg-type]
    else:
        faster = CommGroup(g.size, ppn, nodes, nvl * (k if which == "nvl" else 1), net * (k if which == "net" else 1),
                           0.45e-6, nvls)
        assert collective_seconds(kind, s, faster) <= t * (1 + 1e-12)  # type: ignore[arg-type]
