"""The expert all-to-all mechanism (sim.network.alltoall) and its fitted profile.

Hand-derived values carry their arithmetic; what-if rows carry the physical reason beside them."""

from __future__ import annotations

import math
from functools import cache

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.calibrate import fit_alltoall
from sim.config.fabric import PRESETS, FabricSpec, default_fabric
from sim.experts.loads import microbatch_loads
from sim.loading import load_scenario, profiles_dir
from sim.network.alltoall import (
    A2ALinks,
    A2AProfile,
    A2ATraffic,
    a2a_links,
    a2a_seconds,
    expected_max_normal,
    expert_a2a_seconds,
    handshake_seconds,
    load_a2a_profile,
    smooth_max,
)
from sim.network.fabric import fabric_path, place_group

TOY = A2AProfile(name="toy", library="toy", smoothness=2.0, per_sm_gb_per_s={"sm90": 10.0}, kernel_launch_us=2.5,
                 kernels_notify=3, kernels_cached=2, jitter_frac=0.1, gpu_arch={"G": "sm90"},
                 sources={"sm90": "test"})
LINKS = A2ALinks(ib_bytes_per_s=46e9, nvlink_bytes_per_s=160e9, network_latency_s=2.8e-6, nvlink_latency_s=3.33e-6,
                 per_sm_bytes_per_s=10e9)
TRAFFIC = A2ATraffic(ib_bytes=46e6, nvlink_bytes=160e6, ranks=16, nodes=2)


def test_hand_derived_dispatch() -> None:
    t = a2a_seconds(TRAFFIC, LINKS, 20, TOY, notify=True, preceding_compute_s=1e-3)
    # stages: IB 46 MB / 46 GB/s = 1 ms; NVLink 160 MB / 160 GB/s = 1 ms; SMs 206 MB / (20 x 10 GB/s) = 1.03 ms
    assert (t.ib_s, t.nvlink_s, t.sm_s) == pytest.approx((1e-3, 1e-3, 1.03e-3))
    assert t.transfer_s == pytest.approx(math.sqrt(1 + 1 + 1.03**2) * 1e-3)       # p = 2
    assert t.launch_s == pytest.approx(3 * 2.5e-6)                                 # layout + notify + dispatch
    # barrier: ceil(log2 2) = 1 network latency + 1 NVLink latency; notify: one more of each
    assert t.handshake_s == pytest.approx((2.8 + 3.33) * 2 * 1e-6)
    assert t.wait_s == pytest.approx(0.1 * 1e-3 * expected_max_normal(16))
    assert t.total_s == pytest.approx(t.launch_s + t.handshake_s + t.transfer_s + t.wait_s)
    assert t.bottleneck == "sm"


def test_hand_derived_cached_combine() -> None:
    t = a2a_seconds(TRAFFIC, LINKS, 20, TOY, notify=False)
    assert t.launch_s == pytest.approx(2 * 2.5e-6) and t.wait_s == 0
    assert t.handshake_s == pytest.approx((2.8 + 3.33) * 1e-6)
    # 8 nodes: a dissemination barrier of 3 rounds
    assert handshake_seconds(8, LINKS, notify=False) == pytest.approx((3 * 2.8 + 3.33) * 1e-6)
    assert handshake_seconds(1, LINKS, notify=True) == pytest.approx(2 * 3.33e-6)   # one node: NVLink only


def test_expected_max_normal_exact_values() -> None:
    assert expected_max_normal(1) == 0
    assert expected_max_normal(2) == pytest.approx(1 / math.sqrt(math.pi), rel=1e-6)        # 0.5642
    assert expected_max_normal(3) == pytest.approx(1.5 / math.sqrt(math.pi), rel=1e-6)      # 0.8463
    assert expected_max_normal(64) == pytest.approx(2.3440, abs=2e-3)


def test_smooth_max_bounds() -> None:
    assert smooth_max((3.0, 4.0), 2.0) == pytest.approx(5.0)
    assert 4.0 <= smooth_max((3.0, 4.0, 1.0), 16.0) <= 4.0 * 3 ** (1 / 16)
    assert smooth_max((0.0, 0.0), 4.0) == 0


def test_no_traffic_costs_nothing_and_bad_input_names_the_field() -> None:
    assert a2a_seconds(A2ATraffic(0, 0, 1, 1), LINKS, 20, TOY).total_s == 0
    with pytest.raises(ValueError, match=r"^comm_sms"):
        a2a_seconds(TRAFFIC, LINKS, 0, TOY)
    with pytest.raises(ValueError, match=r"^arch"):
        TOY.per_sm_bytes_per_s("sm70")
    with pytest.raises(ValueError, match=r"^gpu\.name"):
        TOY.arch_of("unknown GPU")


# ----------------------------------------------------------------------------------------- real profile
V3 = "workloads/deepseek_v3.yaml"


def v3_a2a(overrides: tuple[str, ...], phase: str, sms: int, fabric: FabricSpec | None = None) -> float:
    """Dispatch or combine of DeepSeek-V3 on its cluster with the committed DeepEP V1 profile."""
    return _v3_a2a(overrides, phase, sms, fabric.model_dump_json() if fabric else None)


@cache
def _v3_a2a(overrides: tuple[str, ...], phase: str, sms: int, fabric_json: str | None) -> float:
    s = load_scenario(V3, overrides=["experts.skew=balanced", *overrides])
    lo = microbatch_loads(s, [3], 1)
    node, p = s.cluster.node, s.parallel
    place = place_group(p.ep, p.tp, node.gpus_per_node)
    fab = (FabricSpec.model_validate_json(fabric_json) if fabric_json
           else default_fabric(s.cluster.topology, s.cluster.num_gpus))
    prof = load_a2a_profile("deepep_v1")
    links = a2a_links(node, fabric_path(fab, node, place, "all_to_all"),
                      prof.per_sm_bytes_per_s(prof.arch_of(s.cluster.gpu.name)))
    ib, nvl = float(lo.max_link_bytes(phase, "ib")[0, 0]), float(lo.max_link_bytes(phase, "nvlink")[0, 0])
    t = a2a_seconds(A2ATraffic(ib, nvl, p.ep, place.num_nodes), links, sms, prof, notify=phase == "dispatch")
    one_call = expert_a2a_seconds(ib, nvl, ep=p.ep, stride=p.tp, node=node, gpu_name=s.cluster.gpu.name, fabric=fab,
                                  comm_sms=sms, notify=phase == "dispatch")
    assert one_call == t
    return t.total_s


WHAT_IF = [
    # (overrides, phase, slower than (overrides), reason)
    (("parallel.ep=64",), "dispatch", ("parallel.ep=32",), "EP64 sends to more remote nodes per token than EP32"),
    (("parallel.ep=128",), "dispatch", ("parallel.ep=64",), "EP128: 16 nodes, more remote copies and peers"),
    (("precision.dispatch=bf16",), "dispatch", (), "BF16 tokens are twice FP8's bytes"),
    ((), "dispatch", ("model.n_limited_groups=2",), "tokens limited to 2 nodes cross IB half as often as with 4"),
    ((), "combine", ("model.n_limited_groups=2",), "combine mirrors dispatch's IB bytes"),
]


@pytest.mark.parametrize(("slow", "phase", "fast", "reason"), WHAT_IF)
def test_all_to_all_moves_the_right_way(slow: tuple[str, ...], phase: str, fast: tuple[str, ...],
                                        reason: str) -> None:
    assert v3_a2a(slow, phase, 20) > v3_a2a(fast, phase, 20), reason


def test_comm_sms_throttle_then_saturate() -> None:
    for phase in ("dispatch", "combine"):
        t4, t20, t60 = (v3_a2a((), phase, sms) for sms in (4, 20, 60))
        assert t4 > 3 * t20, "4 SMs cannot copy the bytes at the links' rates"
        assert t60 <= t20 < 1.03 * t60, "20 SMs already saturate IB: 60 gain (almost) nothing"


def test_oversubscribed_fabric_slows_the_all_to_all() -> None:
    tor = FabricSpec(kind="fat_tree", leaf_endpoints=32, leaf_oversubscription=3.0)
    # 4 nodes per ToR leaf: 4/7 of EP64's network bytes cross 3:1 uplinks (3 x 4/7 > 1); MPFT keeps EP64 on a leaf
    assert v3_a2a((), "dispatch", 20, tor) > v3_a2a((), "dispatch", 20, PRESETS["deepseek_mpft"])


def test_default_scenario_near_deepseek_benchmark() -> None:
    # DeepEP V1 EP64 at 20 SMs: 51 / 50 GB/s logical -> 2.38 / 4.70 ms isolated (fit script); V3 routing moves
    # 3.5 remote nodes per token against the test's 3.49, so the isolated times agree within the fit error
    assert v3_a2a((), "dispatch", 20) == pytest.approx(2.38e-3, rel=0.06)
    assert v3_a2a((), "combine", 20) == pytest.approx(4.70e-3, rel=0.06)


# ----------------------------------------------------------------------------------------- the fit
def test_committed_profiles_equal_a_fresh_fit() -> None:
    fresh = fit_alltoall.profiles(fit_alltoall.run())
    for name, data in fresh.items():
        committed = yaml.safe_load((profiles_dir() / "comm" / f"{name}.yaml").read_text())
        assert committed == yaml.safe_load(yaml.safe_dump(data)), f"regenerate {name}.yaml with --write"


def test_fit_errors_are_small_on_held_out_data() -> None:
    r = fit_alltoall.run()
    assert r.error("held out", "v1") < 10 and r.error("held out", "v2") < 15
    assert r.trace_held_err[0] < r.trace_held_err[1]     # the in-situ wait explains part of the trace


# ----------------------------------------------------------------------------------------- invariants
pos = st.floats(1e3, 1e10)
rate = st.floats(1e9, 1e12)


@settings(max_examples=200, deadline=None)
@given(pos, pos, rate, rate, st.floats(1e8, 1e11), st.integers(2, 132), st.integers(1, 64), st.floats(1.0, 2.0),
       st.sampled_from(["ib", "nvl", "sm", "ib_bytes", "nvl_bytes", "sms"]), st.booleans())
def test_monotone_finite_positive(ib: float, nvl: float, bib: float, bnv: float, per_sm: float, sms: int,
                                  nodes: int, k: float, which: str, notify: bool) -> None:
    links = A2ALinks(bib, bnv, 3.7e-6, 3.33e-6, per_sm)
    traffic = A2ATraffic(ib, nvl, nodes * 8, nodes)
    base = a2a_seconds(traffic, links, sms, TOY, notify=notify).total_s
    assert math.isfinite(base) and base > 0
    more = {"ib": (traffic, A2ALinks(bib * k, bnv, 3.7e-6, 3.33e-6, per_sm), sms),
            "nvl": (traffic, A2ALinks(bib, bnv * k, 3.7e-6, 3.33e-6, per_sm), sms),
            "sm": (traffic, A2ALinks(bib, bnv, 3.7e-6, 3.33e-6, per_sm * k), sms),
            "sms": (traffic, links, sms + 1)}
    if which in more:  # more bandwidth or SMs: never slower
        t, lk, s = more[which]
        assert a2a_seconds(t, lk, s, TOY, notify=notify).total_s <= base * (1 + 1e-12)
    else:  # more bytes: never faster
        t = A2ATraffic(ib * k, nvl, nodes * 8, nodes) if which == "ib_bytes" else A2ATraffic(ib, nvl * k, nodes * 8,
                                                                                              nodes)
        assert a2a_seconds(t, links, sms, TOY, notify=notify).total_s >= base * (1 - 1e-12)


def test_every_bad_traffic_names_its_field_and_empty_traffic_is_all_zero() -> None:
    empty = a2a_seconds(A2ATraffic(0, 0, 1, 1), LINKS, 20, TOY)
    assert (empty.launch_s, empty.handshake_s, empty.transfer_s, empty.wait_s, empty.ib_s, empty.nvlink_s,
            empty.sm_s) == (0.0,) * 7
    for traffic, message in ((A2ATraffic(-1, 0, 2, 1), "traffic: bytes must be >= 0"),
                             (A2ATraffic(0, -1, 2, 1), "traffic: bytes must be >= 0"),
                             (A2ATraffic(1, 1, 0, 1), "traffic: ranks and nodes must be >= 1"),
                             (A2ATraffic(1, 1, 2, 0), "traffic: ranks and nodes must be >= 1")):
        with pytest.raises(ValueError, match=f"^{message}$"):
            a2a_seconds(traffic, LINKS, 20, TOY)
    with pytest.raises(ValueError, match=r"^preceding_compute_s: must be >= 0$"):
        a2a_seconds(TRAFFIC, LINKS, 20, TOY, preceding_compute_s=-1.0)
    no_nic = A2ALinks(ib_bytes_per_s=0.0, nvlink_bytes_per_s=160e9, network_latency_s=2.8e-6,
                      nvlink_latency_s=3.33e-6, per_sm_bytes_per_s=10e9)
    with pytest.raises(ValueError, match=r"^links: IB bytes but no scale-out bandwidth$"):
        a2a_seconds(TRAFFIC, no_nic, 20, TOY)
    # NVLink-only traffic needs no NIC, and one byte over IB is IB time.
    assert a2a_seconds(A2ATraffic(0, 1e6, 8, 1), no_nic, 20, TOY).ib_s == 0.0
    assert a2a_seconds(A2ATraffic(1.0, 1e6, 16, 2), LINKS, 20, TOY).ib_s == pytest.approx(1.0 / 46e9)
    with pytest.raises(ValueError, match=r"known: G$"):
        TOY.arch_of("unknown GPU")
    two = TOY.model_copy(update={"per_sm_gb_per_s": {"sm90": 10.0, "sm100": 12.0}})
    with pytest.raises(ValueError, match=r"sm100, sm90$"):
        two.per_sm_bytes_per_s("sm70")


def test_handshake_barrier_grows_with_log2_nodes() -> None:
    """The notify handshake's barrier: ceil(log2 nodes) network latencies plus one NVLink hop; on one node just
    the NVLink hop (and the cached layout skips it)."""
    one, eight = handshake_seconds(1, LINKS, True), handshake_seconds(8, LINKS, True)
    two = handshake_seconds(2, LINKS, True)
    assert eight - two == pytest.approx(2 * (handshake_seconds(4, LINKS, True) - two))  # 3 - 1 = 2 x (2 - 1)
    assert one < two < eight
