"""The network a layout sees (sim.network.collectives.Network): where each group's ranks lie (Megatron-LM's
tp-cp-dp-pp order) and which link model each transfer takes."""

from __future__ import annotations

import pytest

from sim.loading import load_scenario
from sim.network.alltoall import expected_max_normal, expert_a2a_seconds
from sim.network.collectives import Network
from sim.network.fabric import fabric_path, place_group
from sim.network.nccl import collective_seconds, group_on_fabric, p2p_link, send_seconds

# GPT-3 on 4 nodes of 8 A100s: TP 2, CP 2, PP 2, so DP = 32 / 8 = 4; a stage spans 16 GPUs (2 nodes).
LAYOUT = ["parallel.tp=2", "parallel.cp=2", "parallel.pp=2", "cluster.num_nodes=4", "training.global_batch_size=64"]


def network(*overrides: str, job: str = "gpt3_175b_a100.yaml") -> Network:
    return Network(load_scenario(job, overrides=list(overrides)))


def test_ranks_are_numbered_tp_then_cp_then_dp_then_pp():
    """global rank = ((stage x dp + dp_index) x cp + cp_index) x tp + tp_index; node = rank // 8."""
    net = network(*LAYOUT)
    assert (net.tp, net.cp, net.dp, net.stage_gpus) == (2, 2, 4, 16)
    assert net.node_of(0) == 0 and net.node_of(1) == 2  # the second stage starts at rank 16
    assert net.node_of(0, dp_index=2) == 1            # rank (0*4+2)*2*2 = 8
    assert net.node_of(0, dp_index=1, cp_index=1, tp_index=1) == 0   # rank ((1*2)+1)*2+1 = 7
    assert net.node_of(1, dp_index=3, cp_index=1, tp_index=1) == 3   # rank ((4+3)*2+1)*2+1 = 31
    assert net.same_node(0, 0) and not net.same_node(0, 1)


def test_groups_take_their_size_and_stride():
    """TP: tp consecutive ranks; CP: cp ranks tp apart; DP (data x context): dp x cp ranks tp apart, here 8 ranks
    2 apart, spanning 16 ranks = 2 nodes of 4; experts' replicas: stage / ep ranks ep apart."""
    net = network(*LAYOUT)
    node, fabric = net.node, net.fabric
    assert net.tp_group() == group_on_fabric(2, 1, node, fabric)
    assert net.cp_group() == group_on_fabric(2, 2, node, fabric)
    dp = net.dp_group()
    assert dp == group_on_fabric(8, 2, node, fabric)
    assert (dp.size, dp.ranks_per_node, dp.num_nodes) == (8, 4, 2)
    assert net.shard_group() == dp and net.replica_group().size == 1  # no hybrid sharding: one shard group
    assert net.expert_dp_group() == group_on_fabric(16, 1, node, fabric)  # EP 1: every rank of the stage
    hybrid = network(*LAYOUT, "parallel.zero_stage=3", "parallel.fsdp_shard_group=4")
    # HSDP: shard over 4 ranks tp apart, replicate over the 8 / 4 = 2 shard groups, 2 x 4 = 8 ranks apart.
    assert hybrid.shard_group() == group_on_fabric(4, 2, node, fabric)
    assert hybrid.replica_group() == group_on_fabric(2, 8, node, fabric)


def test_collectives_are_nccls_and_nothing_to_do_costs_nothing():
    net = network(*LAYOUT)
    dp = net.dp_group()
    for kind in ("all_reduce", "reduce_scatter", "all_gather"):
        assert net.collective_seconds(kind, 1e8, dp) == collective_seconds(kind, 1e8, dp)
    assert net.collective_seconds("all_reduce", 1e6, dp) < net.collective_seconds("all_reduce", 1e8, dp)
    assert net.collective_seconds("all_reduce", 1.0, dp) > 0
    assert net.collective_seconds("all_reduce", 0.0, dp) == 0.0
    assert net.collective_seconds("all_reduce", 1e8, net.replica_group()) == 0.0  # a group of one


def test_pipeline_sends_and_context_parallel_ring_steps():
    """A pipeline send: every stage's 16 ranks send to the next stage at once (the link of ranks 16 apart);
    a CP ring step: NVLink while the TP x CP ranks fit in a node (4 <= 8; exactly 8 still fits), else the NIC."""
    net = network(*LAYOUT)
    node, fabric = net.node, net.fabric
    for local in (True, False):
        assert net.p2p_seconds(1e7, local) == send_seconds(1e7, p2p_link(node, fabric, 16, same_node=local))
    assert net.p2p_seconds(1e7, False) > net.p2p_seconds(1e7, True)
    nvlink = send_seconds(1e7, p2p_link(node, fabric, 2, same_node=True))
    assert net.cp_ring_step_seconds(1e7) == nvlink
    assert net.cp_ring_step_seconds(1.0) > 0 and net.cp_ring_step_seconds(0.0) == 0.0
    fits = network("parallel.tp=4", "parallel.cp=2", "parallel.pp=2", "cluster.num_nodes=4",
                   "training.global_batch_size=64")
    assert fits.cp_ring_step_seconds(1e7) == send_seconds(1e7, p2p_link(node, fabric, 4, same_node=True))
    wide = network("parallel.tp=8", "parallel.cp=2", "parallel.pp=2", "cluster.num_nodes=4",
                   "training.global_batch_size=64")
    assert wide.cp_ring_step_seconds(1e7) == send_seconds(1e7, p2p_link(node, fabric, 8, same_node=False))
    assert network("parallel.tp=8", "parallel.pp=2", "cluster.num_nodes=4",
                   "training.global_batch_size=64").cp_ring_step_seconds(1e7) == 0.0  # CP 1: no ring


def test_nccl_all_to_all_by_hand():
    """NCCL all-to-all over EP 64 (8 nodes): one network latency per peer node, then the slower of the busiest
    rank's NIC bytes at the fabric's all-to-all rate and its NVLink bytes at NVLink's rate."""
    net = network("software.a2a_library=nccl", job="deepseek_v3.yaml")
    assert net.ep == 64 and net.a2a_profile is None
    place = place_group(64, 1, 8)
    path = fabric_path(net.fabric, net.node, place, "all_to_all")
    lat = 7 * path.latency_s
    assert net.alltoall_seconds(4e7, 1e6, notify=False) == pytest.approx(lat + 4e7 / path.scaleout_bytes_per_s)
    assert net.alltoall_seconds(1e6, 4e9, notify=False) == pytest.approx(lat + 4e9 / net.node.nvlink_bytes_per_s)
    assert net.alltoall_seconds(0.0, 4e9, notify=True) == pytest.approx(lat + 4e9 / net.node.nvlink_bytes_per_s)
    assert net.alltoall_seconds(1.0, 0.0, notify=True) > lat
    assert net.alltoall_seconds(0.0, 0.0, notify=True) == 0.0


def test_deepep_all_to_all_is_the_sm_driven_model():
    """DeepEP: the mechanism of sim.network.alltoall with the job's GPU, fabric and comm SMs; the in-situ wait
    depends on the compute before it (none by default)."""
    net = network(job="deepseek_v3.yaml")
    assert net.a2a_profile is not None
    s = net.scenario

    def direct(ib, nvl, notify, before=0.0):
        return expert_a2a_seconds(ib, nvl, ep=64, stride=1, node=net.node, gpu_name=s.cluster.gpu.name,
                                  arch=s.cluster.gpu.arch, fabric=net.fabric, comm_sms=s.parallel.comm_sms,
                                  notify=notify, profile=net.a2a_profile, preceding_compute_s=before).total_s

    assert net.alltoall_seconds(4e7, 1e8, notify=True) == direct(4e7, 1e8, True)
    assert net.alltoall_seconds(4e7, 1e8, notify=False) == direct(4e7, 1e8, False)
    assert net.alltoall_seconds(4e7, 1e8, notify=True, preceding_compute_s=1e-3) == direct(4e7, 1e8, True, 1e-3)
    assert net.alltoall_seconds(4e7, 1e8, notify=True) == net.alltoall_seconds(4e7, 1e8, notify=True,
                                                                              preceding_compute_s=0.0)


def test_one_gpu_per_stage_numbers_ranks_by_stage():
    """TP = CP = DP = 1 and 8 stages on one node: stage s is rank s, so stage 7 is the node's last GPU (any
    other index would be the next node's)."""
    net = network("parallel.tp=1", "parallel.pp=8", "cluster.num_nodes=1", "training.global_batch_size=64",
                  "parallel.vpp=1", "parallel.schedule=1f1b")
    assert net.stage_gpus == 1 and [net.node_of(s) for s in range(8)] == [0] * 8
    assert net.same_node(0, 7)


def test_a_full_node_tp_group_and_nvlink_sharp():
    """Llama 3 70B on H100s: TP 8 fills a node (8 consecutive ranks, one node), on NVSwitch with NVLink SHARP."""
    net = network(job="llama3_70b_h100.yaml")
    tp = net.tp_group()
    assert (tp.size, tp.ranks_per_node, tp.num_nodes, tp.nvls) == (8, 8, 1, True)
    assert net.dp_group().nvls and net.dp_group().num_nodes > 1


def test_expert_replicas_are_ep_apart():
    """The tiny MoE with EP 2 on 4 data-parallel ranks: each expert shard lives on 4 / 2 = 2 ranks, 2 apart."""
    net = network("parallel.ep=2", job="workloads/tiny_moe_job.yaml")
    assert net.stage_gpus == 4
    assert net.expert_dp_group() == group_on_fabric(2, 2, net.node, net.fabric, nvls=net.nvls)


def test_the_jobs_deepep_profile_and_in_situ_wait_reach_the_all_to_all():
    """DeepEP V2's profile (not the default V1) prices a V2 job's all-to-all; compute just before it adds the
    expected wait for the slowest of the EP group's 64 ranks: jitter x compute x E[max of 64 normals]."""
    v2 = network("software.a2a_library=deepep_v2", job="deepseek_v3.yaml")
    v1 = network(job="deepseek_v3.yaml")
    assert v2.a2a_profile is not None and v2.a2a_profile.name != v1.a2a_profile.name
    assert v2.alltoall_seconds(4e7, 1e8, notify=True) != v1.alltoall_seconds(4e7, 1e8, notify=True)
    s = v1.scenario
    args = dict(ep=64, stride=1, node=v1.node, gpu_name=s.cluster.gpu.name, fabric=v1.fabric,
                comm_sms=s.parallel.comm_sms, notify=True, profile=v1.a2a_profile, arch=s.cluster.gpu.arch)
    waited = expert_a2a_seconds(4e7, 1e8, preceding_compute_s=1e-3, **args)
    assert waited.wait_s == pytest.approx(v1.a2a_profile.jitter_frac * 1e-3 * expected_max_normal(64))
    assert expert_a2a_seconds(4e7, 1e8, **args).wait_s == 0.0
