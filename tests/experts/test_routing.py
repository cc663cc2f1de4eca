"""The per-token DeepSeek-V3 gate (sim.experts.routing): k distinct experts, at most M groups (nodes), the bias
steers selection only; checked by hand on a small case and by property on random affinities."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.config import ModelSpec
from sim.experts.placement import contiguous
from sim.experts.routing import distinct_per_token, group_scores, route, sample_logits
from tests.experts.conftest import make_v3

TINY = ModelSpec(name="tiny", n_layers=2, n_dense_layers=1, dim=16, n_heads=2, vocab_size=10, inter_dim=32,
                 moe_inter_dim=8, n_routed_experts=8, n_shared_experts=1, n_activated_experts=2,
                 n_expert_groups=4, n_limited_groups=2, score_func="sigmoid")


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def test_gate_by_hand_group_limit_overrides_global_top_k():
    # Groups {0,1} {2,3} {4,5} {6,7}. Expert 0 has the best single score, but group 0's top-2 sum (0.9 + 0.1)
    # loses to groups 1 (0.8 + 0.7) and 2 (0.6 + 0.6): V3 keeps groups 1 and 2 and picks experts 2 and 3.
    scores = np.array([0.9, 0.1, 0.8, 0.7, 0.6, 0.6, 0.2, 0.2])
    logits = np.array([_logit(p) for p in scores])
    assert sorted(route(logits[None, :], None, TINY)[0].tolist()) == [2, 3]
    # Without the group limit the two best are 0 and 2.
    free = TINY.model_copy(update={"n_limited_groups": 4})
    assert sorted(route(logits[None, :], None, free)[0].tolist()) == [0, 2]


def test_bias_shifts_selection():
    scores = np.array([0.9, 0.1, 0.8, 0.7, 0.6, 0.6, 0.2, 0.2])
    logits = np.array([_logit(p) for p in scores])
    bias = np.zeros(8)
    bias[6] = 1.0  # group 3 now scores 1.2 + 0.2 and expert 6 leads
    assert 6 in route(logits[None, :], bias, TINY)[0].tolist()


def test_softmax_gate_uses_group_max():
    m = TINY.model_copy(update={"score_func": "softmax"})
    logits = np.array([[5.0, -9.0, 4.0, 3.9, 0.0, 0.0, 0.0, 0.0]])
    assert group_scores(logits, m).tolist() == [[5.0, 4.0, 0.0, 0.0]]
    assert sorted(route(logits, None, m)[0].tolist()) == [0, 2]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.1, 5.0), bias_scale=st.floats(0.0, 0.5))
def test_route_gives_k_distinct_experts_within_m_nodes(seed, scale, bias_scale):
    s = make_v3()
    m = s.model
    rng = np.random.default_rng(seed)
    logits = scale * rng.standard_normal((64, m.n_routed_experts))
    bias = bias_scale * rng.standard_normal(m.n_routed_experts)
    top = route(logits, bias, m)
    assert top.shape == (64, m.n_activated_experts)
    assert (np.sort(top, axis=-1)[:, 1:] != np.sort(top, axis=-1)[:, :-1]).all()  # distinct
    where = contiguous(m, s.parallel.ep, s.cluster.node.gpus_per_node)
    node_of_expert = where.rank_node[where.slot_rank]
    assert distinct_per_token(node_of_expert, top).max() <= m.n_limited_groups


def test_node_limit_binds_for_v3_affinity_model():
    # With 8 of 256 experts spread freely a token would touch ~5.3 of 8 nodes; the gate caps it at M = 4.
    m = make_v3().model
    logits = sample_logits(np.full(256, 1 / 256), 2000, np.random.default_rng(0))
    nodes = distinct_per_token(np.arange(256) // 32, route(logits, None, m))
    free = distinct_per_token(np.arange(256) // 32, route(logits, None, m.model_copy(update={"n_limited_groups": 8})))
    assert nodes.max() == 4 and free.mean() > 5.0
