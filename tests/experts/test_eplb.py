"""DeepSeek's EPLB, ported (sim.experts.eplb): the README example, packing with equal counts, replication,
and redundant experts never raise the busiest GPU."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.experts.eplb import balanced_packing, rebalance_experts, replicate_experts
from sim.experts.placement import contiguous, placement
from tests.experts.conftest import make_v3


def test_readme_example():
    # deepseek-ai/EPLB README (commit d52c72d): 2 layers, 12 experts, 16 replicas, 4 groups, 2 nodes, 8 GPUs.
    weight = np.array([[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                       [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]], dtype=float)
    phy2log, log2phy, logcnt = rebalance_experts(weight, 16, 4, 2, 8)
    assert phy2log.tolist() == [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                                [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]
    assert (logcnt.sum(axis=-1) == 16).all()
    for layer in range(2):
        for expert in range(12):
            slots = [s for s in log2phy[layer, expert] if s >= 0]
            assert len(slots) == logcnt[layer, expert]
            assert all(phy2log[layer, s] == expert for s in slots)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), packs=st.sampled_from([1, 2, 4, 8]), per=st.integers(1, 5))
def test_balanced_packing_gives_equal_counts(seed, packs, per):
    w = np.random.default_rng(seed).exponential(size=(3, packs * per))
    pack, rank = balanced_packing(w, packs)
    for layer in range(3):
        assert np.bincount(pack[layer], minlength=packs).tolist() == [per] * packs
        pairs = set(zip(pack[layer].tolist(), rank[layer].tolist(), strict=True))
        assert len(pairs) == packs * per  # every (pack, rank) used once


def test_replicas_go_to_the_heaviest_per_replica():
    # Per-replica loads 10, 4, 3: expert 0 (10 -> 5), expert 0 again (5 > 4; -> 3.33), then expert 1 (4 > 3.33).
    phy2log, rank, logcnt = replicate_experts(np.array([[10.0, 4.0, 3.0]]), 6)
    assert logcnt.tolist() == [[3, 2, 1]]
    assert phy2log[0].tolist() == [0, 1, 2, 0, 0, 1]
    assert rank[0].tolist() == [0, 0, 0, 1, 2, 1]


def _max_gpu(where, loads):
    return where.rank_loads(loads).max(axis=-1)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), concentration=st.floats(0.05, 5.0), spare=st.sampled_from([0, 16, 32]))
def test_redundant_experts_never_raise_the_busiest_gpu(seed, concentration, spare):
    m = make_v3().model.model_copy(update={"n_routed_experts": 64, "n_expert_groups": 4,
                                           "n_limited_groups": 2})
    loads = np.random.default_rng(seed).dirichlet(np.full(64, concentration), size=3)
    before = _max_gpu(contiguous(m, 16, 4), loads)
    after = _max_gpu(placement(m, 16, 4, spare, loads), loads)
    assert (after <= before * (1 + 1e-12)).all()


def test_eplb_lowers_the_busiest_gpu_under_skew():
    s = make_v3()
    w = np.arange(1, 257, dtype=float) ** -1.0
    loads = np.stack([np.random.default_rng(i).permutation(w) for i in range(4)])
    before = _max_gpu(contiguous(s.model, 64, 8), loads)
    after = _max_gpu(placement(s.model, 64, 8, 64, loads), loads)
    assert (after < 0.5 * before).all()


def test_a_worse_eplb_arrangement_is_not_deployed():
    # Greedy packing is not optimal: items 5, 4, 3, 3, 3, 0 on two GPUs of three slots pack as {5, 3, 0} and
    # {4, 3, 3} (max 10), while the contiguous order 5, 4, 0 | 3, 3, 3 already gives 9 on each GPU.
    m = make_v3().model.model_copy(update={"n_routed_experts": 6, "n_expert_groups": 1, "n_limited_groups": 1,
                                           "n_activated_experts": 2})
    loads = np.array([[5.0, 4.0, 0.0, 3.0, 3.0, 3.0]])
    phy2log, _, _ = rebalance_experts(loads, 6, 1, 1, 2)
    greedy = (loads[0][phy2log[0]].reshape(2, 3).sum(-1)).max()
    assert greedy == 10.0
    assert _max_gpu(placement(m, 2, 2, 0, loads), loads).tolist() == [9.0]
