"""Per-micro-batch loads (sim.experts.loads): tokens conserved, balanced routing gives factor 1.0 exactly, the
node reach is the exact expectation and never exceeds M, link bytes of balanced V3 by hand, more skew never
makes the busiest rank or link lighter, and (with the engine) never makes the step faster."""

from __future__ import annotations

from itertools import combinations, pairwise

import numpy as np
import pytest

from sim.errors import SimInputError
from sim.experts.balancing import moe_layers
from sim.experts.fanout import fanout, reach_probability
from sim.experts.loads import microbatch_loads, token_bytes
from sim.step import simulate_step
from tests.experts.conftest import make_small, make_v3


@pytest.mark.parametrize("skew", ["balanced", "zipf", "dirichlet"])
def test_tokens_are_conserved(skew):
    s = make_small(f"experts.skew={skew}", "experts.policy=eplb", "experts.num_redundant_experts=16",
                   "experts.balancing_steps=20")
    loads = microbatch_loads(s, [3, 4, 60], 6)
    t, k = s.tokens_per_microbatch, s.model.n_activated_experts
    assert loads.rank_tokens.shape == (3, 6, 16)
    assert (loads.rank_tokens.sum(axis=-1) == 16 * t * k).all()            # every token counted top-k times
    assert (loads.local_expert_tokens.sum(axis=-1) == loads.rank_tokens).all()
    assert loads.shared_tokens_per_rank == t * s.model.n_shared_experts    # plus the shared expert, locally


def test_balanced_routing_gives_factor_one_exactly():
    s = make_v3("experts.skew=balanced")
    loads = microbatch_loads(s, moe_layers(s), 4)
    assert (loads.imbalance == 1.0).all() and loads.imbalance_overall == 1.0
    assert (loads.rank_tokens == 4096 * 8).all() and (loads.local_expert_tokens == 8192).all()


def test_v3_balanced_bytes_by_hand():
    s = make_v3("experts.skew=balanced")
    loads = microbatch_loads(s, [3], 1)
    fp8, bf16 = 7168 + 4 * 7168 / 128, 7168 * 2.0                      # one fp32 scale per 128 values
    assert token_bytes(s, "dispatch") == fp8 and token_bytes(s, "combine") == bf16
    remote = 4 * 7 / 8                                                   # 4 nodes per token, 1 in 8 local
    assert np.allclose(loads.dispatch_bytes["ib_send"], 4096 * remote * fp8)
    assert np.allclose(loads.dispatch_bytes["ib_recv"], 4096 * remote * fp8)
    assert np.allclose(loads.combine_bytes["ib_send"], 4096 * remote * bf16)
    gpus = fanout(s.model, 64, 8).gpus_per_token
    assert np.allclose(loads.dispatch_bytes["nvlink_send"], 4096 * gpus * 7 / 8 * fp8)
    assert np.allclose(loads.remote_nodes_per_token, remote)


def test_v3_balanced_bytes_of_a_plain_all_to_all_by_hand():
    """NCCL's all-to-all (software.a2a_library=nccl) sends every routed row to its expert's GPU: of a token's 8
    rows, balanced over 64 GPUs on 8 nodes, 1 stays in its node (7/8 of it over NVLink, 1/8 on its own GPU) and
    7 cross IB, one per row, against DeepEP's 3.5 node copies; each GPU receives 4096 x 8 / 64 rows from each
    of the other 56 (IB) and 7 (NVLink) GPUs."""
    s = make_v3("experts.skew=balanced", "software.a2a_library=nccl", "parallel.comm_sms=0")
    loads = microbatch_loads(s, [3], 1)
    fp8 = 7168 + 4 * 7168 / 128
    assert np.allclose(loads.dispatch_bytes["ib_send"], 4096 * 7 * fp8)
    assert np.allclose(loads.dispatch_bytes["ib_recv"], 56 * 4096 * 8 / 64 * fp8)
    assert np.allclose(loads.dispatch_bytes["nvlink_send"], 4096 * (1 - 1 / 8) * fp8)
    assert np.allclose(loads.dispatch_bytes["nvlink_recv"], 7 * 4096 * 8 / 64 * fp8)
    deepep = microbatch_loads(make_v3("experts.skew=balanced"), [3], 1)
    assert (loads.max_link_bytes("dispatch", "ib") > 1.9 * deepep.max_link_bytes("dispatch", "ib")).all()


def test_reach_is_exact_against_enumeration():
    # 4 groups of 4 experts, M = 2, k = 3: enumerate every group pair and every 3-subset reaching both groups.
    hits, total = 0, 0
    target = {0, 1}                                                      # two experts of group 0
    for groups in combinations(range(4), 2):
        experts = [4 * g + i for g in groups for i in range(4)]
        for chosen in combinations(experts, 3):
            if {c // 4 for c in chosen} != set(groups):
                continue
            total += 1
            hits += bool(target & set(chosen))
    assert reach_probability({0: 2}, 4, 4, 2, 3) == pytest.approx(hits / total, abs=1e-15)


def test_v3_token_reaches_at_most_m_nodes():
    reach = fanout(make_v3().model, 64, 8)
    assert reach.nodes_per_token == pytest.approx(4.0, abs=1e-12)        # every chosen node used, never more
    assert 7.4 < reach.gpus_per_token < 7.5 and reach.remote_nodes_per_token == pytest.approx(3.5)


def _busiest(exponent: float, seed: int) -> tuple[float, float, float]:
    skew = "balanced" if exponent == 0 else "zipf"
    s = make_v3(f"experts.skew={skew}", f"experts.zipf_exponent={exponent}", f"experts.seed={seed}",
                "experts.policy=none")
    loads = microbatch_loads(s, list(range(3, 9)), 4)
    return (float(loads.max_rank_tokens.mean()), float(loads.max_link_bytes("dispatch", "ib").mean()),
            float(loads.max_link_bytes("combine", "nvlink").mean()))


@pytest.mark.parametrize("seed", [0, 1])
def test_more_skew_never_lightens_the_busiest_rank_or_link(seed):
    costs = [_busiest(x, seed) for x in (0.0, 0.25, 0.5, 1.0, 1.5)]
    for lighter, heavier in pairwise(costs):
        assert all(b >= a for a, b in zip(lighter, heavier, strict=True)), costs


def test_skewed_microbatches_fluctuate_around_the_expectation():
    s = make_v3("experts.skew=zipf", "experts.policy=none")
    loads = microbatch_loads(s, [3], 40)
    rows = loads.rank_tokens[0].astype(float)
    assert rows.std(axis=0).max() > 0                                    # micro-batches differ
    assert np.abs(rows.mean(axis=0) / rows.mean() - 1).max() > 0.5       # and the skew shows


def test_bad_layers_and_layouts_are_input_errors():
    s = make_v3()
    with pytest.raises(SimInputError, match="layers"):
        microbatch_loads(s, [0], 2)                                      # layer 0 is dense
    with pytest.raises(SimInputError, match=r"experts\.num_redundant_experts"):
        microbatch_loads(make_v3("experts.num_redundant_experts=3"), [3], 2)


def test_more_skew_never_faster_step():
    """The step time must not fall as skew grows (no balancing); any skew costs time over balanced routing.
    32 micro-batches instead of 120 keep it quick; fast mode shares the detailed mode's costs."""
    times = []
    for exponent in (0.0, 0.1, 0.3, 0.5, 1.0):
        skew = "balanced" if exponent == 0 else "zipf"
        s = make_v3(f"experts.skew={skew}", f"experts.zipf_exponent={exponent}", "experts.policy=none",
                    "training.global_batch_size=4096")
        times.append(simulate_step(s, mode="fast").step_time_s)
    assert times[0] < times[1], times
    assert all(a <= b for a, b in pairwise(times)), times
