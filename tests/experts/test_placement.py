"""Expert slots on GPUs (sim.experts.placement): contiguous as in DeepSeek-V3, replicas split rows evenly and
conserve them, impossible layouts are input errors naming the field."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.errors import SimInputError
from sim.experts.placement import ExpertPlacement, contiguous, placement
from tests.experts.conftest import make_v3


def test_v3_contiguous_places_four_experts_per_gpu_and_a_group_per_node():
    s = make_v3()
    where = contiguous(s.model, 64, 8)
    assert where.slots_per_rank == 4 and where.num_nodes == 8
    node_of_expert = where.rank_node[where.slot_rank[np.arange(256)]]
    assert (node_of_expert == np.arange(256) // 32).all()  # group g on node g


def test_replicas_split_rows_evenly_and_conserve_them():
    # Two ranks, slots [0, 1 | 0, 2]: expert 0 has two replicas.
    where = ExpertPlacement(np.array([[0, 1, 0, 2]]), num_experts=3, ep=2, gpus_per_node=2)
    counts = np.array([[7, 4, 1]])
    assert where.slot_counts(counts).tolist() == [[4, 4, 3, 1]]
    assert where.rank_loads(counts.astype(float)).tolist() == [[7.5, 4.5]]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), spare=st.sampled_from([0, 16, 32, 64]))
def test_slot_counts_conserve_rows(seed, spare):
    m = make_v3().model.model_copy(update={"n_routed_experts": 64, "n_expert_groups": 8})
    rng = np.random.default_rng(seed)
    loads = rng.dirichlet(np.ones(64), size=2)
    where = placement(m, 16, 8, spare, loads)
    counts = rng.integers(0, 1000, size=(2, 5, 64))
    slots = where.slot_counts(counts)
    assert (slots.sum(axis=-1) == counts.sum(axis=-1)).all()
    assert (where.replicas.sum(axis=-1) == 64 + spare).all()


def test_layout_errors_name_the_field():
    m = make_v3().model
    with pytest.raises(SimInputError, match=r"experts\.num_redundant_experts"):
        placement(m, 64, 8, redundant=10)
    with pytest.raises(SimInputError, match=r"parallel\.ep"):
        contiguous(m, 24, 16)
