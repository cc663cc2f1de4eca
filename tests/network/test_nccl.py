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
    send_weight,
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


def test_a_group_of_one_has_nothing_to_exchange() -> None:
    """A ring of one rank has no steps: no option (it divided by n - 1 = 0 before), and nothing to pay."""
    one = CommGroup(1, 1, 1, 370e9, 0.0)
    for kind in ("all_reduce", "reduce_scatter", "all_gather"):
        assert collective_options(kind, 1e6, one) == []
        assert collective_seconds(kind, 1e6, one) == 0.0


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


def _opt(kind: str, s: float, g: CommGroup, algo: str, proto: str):
    return next(o for o in collective_options(kind, s, g) if (o.algorithm, o.protocol) == (algo, proto))


def test_every_protocols_bandwidth_factor_by_hand() -> None:
    """tuning.cc's protocol factors on busBw: ring LL 1/4 (1/3 for a one-node gather), LL128 0.92 (0.7 with one
    rank per node); tree 0.92 x (LL 1/3.8, LL128 7/9 on one node or 120/128 across nodes), algBw half of that.
    Two nodes of two ranks: busBw = min(NVLink 370, 2 x 46) = 92 GB/s; one rank per node: the NIC's 46."""
    two_by_two = CommGroup(4, 2, 2, 370e9, 46e9)
    one_per_node = CommGroup(4, 1, 4, 370e9, 46e9)
    bus = 92e9
    assert _opt("all_gather", 1e9, two_by_two, "ring", "LL").algbw_bytes_per_s == pytest.approx(bus * 0.25 * 4 / 3)
    assert _opt("all_gather", 1e9, ONE_NODE, "ring", "LL").algbw_bytes_per_s == pytest.approx(
        370e9 / 3 * 8 / 7, rel=1e-6)
    assert _opt("all_gather", 1e9, two_by_two, "ring", "LL128").algbw_bytes_per_s == pytest.approx(bus * 0.92 * 4 / 3)
    assert _opt("all_gather", 1e9, one_per_node, "ring", "LL128").algbw_bytes_per_s == pytest.approx(
        46e9 * 0.7 * 4 / 3)
    assert _opt("all_reduce", 1e9, one_per_node, "ring", "Simple").algbw_bytes_per_s == pytest.approx(46e9 * 4 / 6)
    tree = {p: _opt("all_reduce", 1e9, two_by_two, "tree", p).algbw_bytes_per_s for p in ("LL", "LL128", "Simple")}
    assert tree == pytest.approx({"LL": bus * 0.92 / 3.8 * 0.5, "LL128": bus * 0.92 * 0.9375 * 0.5,
                                  "Simple": bus * 0.92 * 0.5}, rel=1e-6)
    one = _opt("all_reduce", 1e9, ONE_NODE, "tree", "LL128").algbw_bytes_per_s
    assert one == pytest.approx(370e9 * 0.92 * 7 / 9 * 0.5, rel=1e-6)
    for o in collective_options("all_reduce", 1e9, two_by_two):
        assert o.seconds == pytest.approx(o.latency_s + 1e9 / o.algbw_bytes_per_s)


def test_inter_node_ring_latency_by_hand() -> None:
    """Two nodes of two ranks, switch hops 1 us. All-gather: 3 steps, 1 across nodes; all-reduce 6 and 2. The
    intra-node steps cost at least the network post overhead (1 us; x3 = 3 us for Simple, below NVLink's 3.4)."""
    g = CommGroup(4, 2, 2, 370e9, 46e9, 1e-6)
    ll = _opt("all_gather", 0.0, g, "ring", "LL").latency_s
    assert ll == pytest.approx((6.6 + 2 * 1.0 + 1 * (2.7 + 1.0)) * 1e-6)
    simple = _opt("all_gather", 0.0, g, "ring", "Simple").latency_s
    assert simple == pytest.approx((8.4 + 2 * 3.4 + 1 * (14.0 + 2 * 1.0)) * 1e-6)  # Simple: hops twice
    ar = _opt("all_reduce", 0.0, g, "ring", "LL128").latency_s
    assert ar == pytest.approx((14.0 + 4 * 1.9 + 2 * (4.0 + 1.0)) * 1e-6)
    no_overhead = load_nccl_profile().model_copy(update={"simple_net_overhead_factor": 5.0})
    slow = next(o for o in collective_options("all_gather", 0.0, g, no_overhead) if o.protocol == "Simple"
                and o.algorithm == "ring")
    assert slow.latency_s == pytest.approx((8.4 + 2 * 5.0 + 1 * 16.0) * 1e-6)  # 5 us > NVLink's 3.4


def test_nothing_to_do_and_the_profile_reaches_the_choice() -> None:
    none = best_collective("all_reduce", 1e9, CommGroup(1, 1, 1, 370e9, 0.0))
    assert (none.algorithm, none.protocol, none.latency_s, none.algbw_bytes_per_s, none.seconds) == (
        "none", "none", 0.0, math.inf, 0.0)
    assert best_collective("all_reduce", 0.0, ONE_NODE).seconds == 0.0
    assert best_collective("all_reduce", 1.0, ONE_NODE).seconds > 0
    slower = load_nccl_profile().model_copy(update={"base_latency_us": {
        k: {p: v + 100.0 for p, v in d.items()} for k, d in load_nccl_profile().base_latency_us.items()}})
    for kind in ("all_reduce", "all_gather"):
        assert collective_seconds(kind, 1e3, ONE_NODE, slower) == pytest.approx(
            collective_seconds(kind, 1e3, ONE_NODE) + 100e-6)
    # NVLS only inside one node.
    assert not [o for o in collective_options("all_reduce", 1e6, CommGroup(16, 8, 2, 370e9, 46e9, nvls=True))
                if o.algorithm == "nvls"]
    nvls = _opt("all_reduce", 1e9, CommGroup(8, 8, 1, 370e9, 0.0, nvls=True), "nvls", "Simple")
    assert (nvls.latency_s, nvls.algbw_bytes_per_s) == (pytest.approx(23e-6), pytest.approx(0.743 * 370e9))
    assert collective_options("all_gather", 1e6, CommGroup(2, 1, 2, 370e9, 0.5))  # slow, but a network
    with pytest.raises(ValueError, match="ranks_per_node and num_nodes must be >= 1"):
        collective_options("all_reduce", 1e6, CommGroup(0, 1, 1, 370e9, 0.0))
    with pytest.raises(ValueError, match="ranks_per_node and num_nodes must be >= 1"):
        collective_options("all_reduce", 1e6, CommGroup(2, 1, 0, 370e9, 0.0))
    with pytest.raises(ValueError, match=r"bytes_: must be >= 0 \(got -1"):
        collective_options("all_reduce", -1.0, ONE_NODE)
    with pytest.raises(ValueError, match=r"bytes_: must be >= 0 \(got -1"):
        send_seconds(-1.0, p2p_link(H100, PRESETS["deepseek_mpft"], 1))


def test_groups_inside_one_node_have_no_network() -> None:
    g = group_on_fabric(8, 1, H100, PRESETS["deepseek_mpft"])
    assert (g.net_bytes_per_s, g.net_switch_latency_s, g.nvls) == (0.0, 0.0, False)
    assert group_on_fabric(8, 1, H100, PRESETS["deepseek_mpft"], nvls=True).nvls
    # A pipeline neighbour exactly one node away is across the network.
    mpft = PRESETS["deepseek_mpft"]
    assert p2p_link(H100, mpft, 8).bytes_per_s < p2p_link(H100, mpft, 7).bytes_per_s


def test_a_network_send_weighs_its_channels_against_a_collectives():
    """NCCL sends to a network peer over 2 channels (NCCL_NCHANNELS_PER_NET_PEER); a ring collective runs 16
    through the NIC: a NIC serving its queue pairs in turn gives the send 2/16 of a collective's share. Over
    NVLink the share is equal."""
    prof = load_nccl_profile()
    assert (prof.p2p_channels_per_net_peer, prof.collective_channels_per_nic) == (2, 16)
    assert send_weight(True) == pytest.approx(2 / 16)
    assert send_weight(False) == 1.0
    assert send_weight(True, prof.model_copy(update={"collective_channels_per_nic": 4})) == pytest.approx(0.5)
