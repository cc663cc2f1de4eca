"""Every new layout key is validated: impossible combinations exit with a message naming the field and what is
allowed (``sim.config.scenario`` cross-field rules; ``sim.config.parallel`` values)."""

from __future__ import annotations

import pytest

from sim.errors import SimInputError

REFUSED = [
    # (overrides, expected fragment of the message)
    (("parallel.cp=3",), r"parallel: tp x pp x cp = 1 x 1 x 3 must divide the 8 GPUs"),
    (("parallel.cp=2", "training.seq_len=510"), r"parallel\.cp: the sequence \(510 tokens\) must divide into 2 x cp"),
    (("parallel.cp_mode=zigzag",), r"parallel\.cp_mode"),
    (("parallel.zero_stage=1", "parallel.fsdp_shard_group=4"), r"parallel\.fsdp_shard_group: applies to FSDP"),
    (("parallel.fsdp_reshard_after_forward=false",), r"parallel\.fsdp_reshard_after_forward: applies to FSDP"),
    (("parallel.zero_stage=3", "parallel.fsdp_shard_group=3"), r"parallel\.fsdp_shard_group: must divide the 8"),
    (("parallel.zero_stage=3", "parallel.fsdp_prefetch=-1"), r"parallel\.fsdp_prefetch"),
    (("parallel.tp_comm_overlap=true",), r"parallel\.tp_comm_overlap: needs tp >= 2 and sequence_parallel"),
    (("parallel.tp=2", "parallel.tp_comm_overlap=true"), r"parallel\.tp_comm_overlap: needs tp >= 2"),
    (("parallel.ep_overlap=true",), r"parallel\.ep_overlap: overlaps the expert all-to-all; needs an MoE model"),
    (("parallel.recompute=partial",), r"parallel\.recompute: got 'partial'; allowed: none, selective, activations"),
    (("parallel.recompute=[]",), r"parallel\.recompute: a recompute list needs one or more"),
    (("parallel.grad_bucket_mb=0",), r"parallel\.grad_bucket_mb"),
    (("parallel.pp=8", "training.global_batch_size=64"), r"parallel\.pp: 8 pipeline stages exceed the 4"),
    (("parallel.tp=2", "parallel.sequence_parallel=true", "training.seq_len=511"),
     r"parallel\.sequence_parallel: each GPU's 511 tokens"),
]


@pytest.mark.parametrize(("overrides", "message"), REFUSED)
def test_impossible_dense_layouts_are_refused(gpt, overrides, message):
    with pytest.raises(SimInputError, match=message):
        gpt(*overrides)


MOE_REFUSED = [
    (("parallel.ep_overlap=true",), r"parallel\.ep_overlap: applies to 1f1b and interleaved-1f1b \(got dualpipe"),
    (("parallel.ep_overlap=true", "parallel.schedule=1f1b"), r"parallel\.ep_overlap: with pipeline parallelism"),
    (("parallel.tp=2",), r"parallel\.sequence_parallel: an MoE model with tp > 1 needs sequence parallelism"),
    (("parallel.ep=8",), r"parallel\.ep: must divide dp x tp x cp = 4"),
    (("experts.num_redundant_experts=3",), r"experts\.num_redundant_experts: must be a multiple of the EP size 4"),
]


@pytest.mark.parametrize(("overrides", "message"), MOE_REFUSED)
def test_impossible_moe_layouts_are_refused(moe, overrides, message):
    with pytest.raises(SimInputError, match=message):
        moe(*overrides)


def test_possible_layouts_load(gpt, moe):
    assert gpt("parallel.cp=2", "parallel.cp_mode=all_gather").grad_replicas == 8
    assert gpt("parallel.zero_stage=3", "parallel.fsdp_shard_group=4").fsdp_shard_size == 4
    s = gpt("parallel.tp=2", "parallel.sequence_parallel=true", "parallel.tp_comm_overlap=true")
    assert s.parallel.tp_comm_overlap
    assert gpt("parallel.recompute=[core_attn, mlp]").parallel.recompute == ("core_attn", "mlp")
    assert gpt("parallel.pp=4", "parallel.stage_layers=[0, 2, 2, 0]", "training.global_batch_size=64").num_stages == 4
    assert moe("parallel.pp=1", "parallel.schedule=1f1b", "parallel.ep_overlap=true").parallel.ep_overlap
