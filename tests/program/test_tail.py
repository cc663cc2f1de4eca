"""The data-parallel side of a step (sim.program.tail, sim.program.sharding): optimizer bytes, gradient buckets,
when each ZeRO stage communicates, and the delay of an overlapped gradient reduction, by hand."""

from __future__ import annotations

import pytest

from sim.context import build_context
from sim.network.nccl import CommGroup
from sim.program.sharding import DpTraffic, ShardingPlan, group_links, unit_param_counts
from sim.program.tail import StepTail
from sim.program.tasks import NIC, NVLINK
from sim.step import simulate_step
from sim.timeline import Stream


class Bytes:
    """A cost model whose memory-bound kernels cost their bytes (and record their names)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def memory_seconds(self, bytes_: float, name: str = "elementwise") -> float:
        self.names.append(name)
        return bytes_


def _tail(scenario) -> tuple[StepTail, Bytes]:
    ctx = build_context(scenario)
    costs = Bytes()
    return StepTail(scenario, ctx.partition, ctx.network, costs), costs  # type: ignore[arg-type]


def test_optimizer_bytes_per_parameter_by_hand(moe):
    """AdamW per parameter of the local shard: master weight read + write (FP32: 2 x 4), both moments read +
    write (BF16 here: 4 x 2), the gradient read twice (FP32: 2 x 4, once for the clipping norm), the working
    weight written (BF16: 2) = 26 B; ZeRO-1 shards it over the data-parallel ranks (dense) and the expert
    replicas (experts). FP8: every working weight re-quantized, read BF16 + write FP8 = 3 B, plus its block's FP32
    scale: 4 / 128^2 B in DeepSeek-V3's 128 x 128 blocks, 4 B were every weight its own block."""
    s = moe()
    p = s.precision
    assert (p.master_weights, p.optimizer_states, p.grads, p.weights, p.fprop) == ("fp32", "bf16", "fp32", "bf16",
                                                                                    "fp8")
    tail, costs = _tail(s)
    assert s.parallel.zero_stage == 1
    stages = range(len(tail.dense))
    dense, expert = sum(tail.dense), sum(tail.expert)
    shard = dense / tail.shard_size + expert / tail.expert_dp_size
    assert tail.shard_size > 1 and expert > 0
    assert p.weight_block == 128
    assert tail.optimizer_seconds(stages) == pytest.approx(shard * 26 + (dense + expert) * (3 + 4 / 128**2))
    assert costs.names == ["optimizer", "fp8_cast"]
    per_weight, _ = _tail(moe("precision.weight_block=1"))
    assert per_weight.optimizer_seconds(stages) == pytest.approx(shard * 26 + (dense + expert) * 7)
    # Tensorwise scaling (torchao) casts the weights in every forward instead: no re-quantization here.
    tensorwise, costs = _tail(moe("precision.fp8_scaling=tensorwise"))
    assert tensorwise.optimizer_seconds(stages) == pytest.approx(shard * 26)
    assert costs.names == ["optimizer"]
    unsharded, costs = _tail(moe("parallel.zero_stage=0", "precision.fprop=bf16", "precision.dgrad=bf16",
                                      "precision.wgrad=bf16"))
    q = unsharded.s.precision
    per = 2 * 4 + 4 * (4 if q.optimizer_states == "fp32" else 2) + 2 * (4 if q.grads == "fp32" else 2) + 2
    assert unsharded.optimizer_seconds(stages) == pytest.approx((dense + expert) * per)
    assert costs.names == ["optimizer"]
    work = unsharded.optimizer_work(stages)
    (task,) = work.tasks
    assert (task.name, task.part, task.stream, task.seconds) == ("optimizer", "tail", Stream.COMPUTE,
                                                                 unsharded.optimizer_seconds(stages))


def test_only_zero_stages_one_and_up_shard_the_optimizer(moe):
    for zero in (1, 2):
        tail, _ = _tail(moe(f"parallel.zero_stage={zero}"))
        assert tail.optimizer_seconds([0]) < _tail(moe("parallel.zero_stage=0"))[0].optimizer_seconds([0])


def test_gradient_buckets_by_hand(gpt):
    """Buckets of 800 B of FP32 gradients = 200 parameters: units fill a bucket until it holds 200, a unit
    larger than a bucket fills several (each its own collective), the rest goes in a last bucket; ZeRO-3 reduces
    each unit with gradients as one collective."""
    s = gpt("parallel.grad_bucket_mb=0.0008", "precision.grad_reduce=fp32", nodes=2)
    dp = DpTraffic(s, build_context(s).network)
    assert dp.plan.bucket_bytes == pytest.approx(800) and dp.grad_b == 4
    c = dp.reduce_seconds
    assert dp.buckets([(100, 0), (100, 0), (250, 0), (30, 20)]) == [(1, c(200, 0)), (2, c(250, 0)), (3, c(30, 20))]
    assert dp.buckets([(500, 0)]) == [(0, c(250, 0)), (0, c(250, 0))]
    assert dp.buckets([(120, 0), (0, 0)]) == [(1, c(120, 0))]
    assert dp.buckets([(100, 0), (100, 0)], gather=True) == [(1, dp.gather_seconds(200, 0))]
    # Expert parameters count toward a bucket like dense ones, and a unit three buckets large is split in three.
    assert dp.buckets([(100, 100), (0, 30)]) == [(0, c(100, 100)), (1, c(0, 30))]
    assert dp.buckets([(300, 300)]) == [(0, c(100, 100))] * 3
    z3 = gpt("parallel.zero_stage=3", nodes=2)
    dp3 = DpTraffic(z3, build_context(z3).network)
    assert dp3.buckets([(100, 0), (0, 0), (7, 0)]) == [(0, dp3.reduce_seconds(100, 0)), (2, dp3.reduce_seconds(7, 0))]
    assert dp3.buckets([(0, 7), (0.5, 0)]) == [(0, dp3.reduce_seconds(0, 7)), (1, dp3.reduce_seconds(0.5, 0))]


def test_megatron_default_bucket_is_40m_elements_or_1m_per_replica(gpt):
    s = gpt("precision.grad_reduce=fp32", nodes=2)
    assert s.grad_replicas == 16 and ShardingPlan.of(s).bucket_bytes == 40e6 * 4
    wide = gpt("precision.grad_reduce=fp32", nodes=8)  # 64 data-parallel replicas: 64M elements
    assert wide.grad_replicas == 64 and ShardingPlan.of(wide).bucket_bytes == 64e6 * 4


@pytest.mark.parametrize(("zero", "pp", "reshard", "fwd", "bwd", "per_step", "every_mb", "stay", "kind", "after"), [
    (0, 1, False, False, False, False, False, False, "all_reduce", False),
    (0, 2, False, False, False, False, False, False, "all_reduce", False),  # DDP's hooks fire in the last backward
    (1, 1, False, False, False, True, False, False, "reduce_scatter", False),
    (2, 2, False, False, False, True, True, False, "reduce_scatter", False),
    (3, 1, False, True, False, False, True, True, "reduce_scatter", False),
    (3, 2, False, False, False, True, False, True, "reduce_scatter", True),   # the stage gathered once per step
    (3, 2, True, True, True, False, False, False, "reduce_scatter", True),
])
def test_when_each_zero_stage_communicates(zero, pp, reshard, fwd, bwd, per_step, every_mb, stay, kind, after):
    """``after``: FSDP under torch.distributed.pipelining reduces a stage once its last backward is done."""
    plan = ShardingPlan(zero, pp, reshard, 1, 1e6)
    assert (plan.gather_forward, plan.gather_backward, plan.gather_per_step, plan.reduce_every_microbatch,
            plan.params_stay_gathered, plan.grad_kind, plan.sync_after_stage) == (
        fwd, bwd, per_step, every_mb, stay, kind, after)


@pytest.mark.parametrize("schedule", ["1f1b", "interleaved-1f1b"])
def test_zero3_under_a_pipeline_reduces_each_stage_after_its_last_backward(gpt, schedule):
    """torch 2.6 pipelining runs FSDP's post-backward after a stage's last backward (backward_maybe_with_nosync):
    with overlap_grad_reduce on, no reduce-scatter of a rank starts before the end of the backward that completes
    its stage. Fast mode runs these actions task by task (their gathers queue on the data-parallel stream), so it
    gives detailed mode's step; the analytic tier queues them behind the reductions to first order (within the
    tiers' 3 %). With one stage per rank (1F1B) that backward is the rank's last action, so the step is exactly
    the step without overlap."""
    vpp = ["parallel.vpp=2"] if schedule == "interleaved-1f1b" else []
    ov = ("parallel.zero_stage=3", "parallel.pp=2", f"parallel.schedule={schedule}", *vpp,
          "parallel.overlap_grad_reduce=true")
    s = gpt(*ov, nodes=2)
    r = simulate_step(s, mode="detailed")
    assert r.trace is not None
    for rank in range(s.parallel.pp):
        ends: dict[str, float] = {}  # stage -> end of its last backward (labels "B<stage>.<micro-batch>")
        for a in r.trace.actions:
            if a.rank == rank and a.category == "backward":
                stage = a.label[1:].split(".")[0]
                ends[stage] = max(ends.get(stage, 0.0), a.end)
        assert len(ends) == (2 if vpp else 1)
        first_reduce = min(t.start for t in r.trace.tasks if t.rank == rank and t.name == "grad_reduce_scatter")
        assert first_reduce >= min(ends.values()) - 1e-12
    steps = {m: simulate_step(s, mode=m).step_time_s for m in ("fast", "analytic")}
    assert steps["fast"] == pytest.approx(r.step_time_s, rel=1e-9)
    assert steps["analytic"] == pytest.approx(r.step_time_s, rel=0.03)
    if schedule == "1f1b":
        late = simulate_step(gpt(*ov[:-1], "parallel.overlap_grad_reduce=false", nodes=2), mode="fast").step_time_s
        assert steps["fast"] == pytest.approx(late, rel=1e-12)


@pytest.mark.parametrize(("zero", "kind"), [(0, "all_reduce"), (1, "all_reduce"), (2, "reduce_scatter"),
                                           (3, "reduce_scatter")])
def test_zero1_full_all_reduce_only_changes_zero_stage_one(zero, kind):
    """DeepSpeed's BF16 optimizer under its pipeline all-reduces ZeRO-1 gradients in full; stages 2 and 3
    reduce-scatter by definition (the gradients themselves are sharded)."""
    assert ShardingPlan(zero, 2, False, 1, 1e6, zero1_all_reduce=True).grad_kind == kind


def test_zero1_all_reduce_costs_an_all_reduce_and_names_it(gpt):
    s = gpt("software.zero1_grad_reduce=all_reduce", nodes=2)
    tail = StepTail(s, build_context(s).partition, build_context(s).network, build_context(s).costs)
    dp = tail.traffic
    assert tail.grad_name == "grad_all_reduce"
    assert dp.reduce_seconds(1e6, 0.0) == pytest.approx(
        dp.net.collective_seconds("all_reduce", 1e6 * dp.grad_b, dp.shard))
    assert dp.reduce_seconds(1e6, 0.0) > DpTraffic(gpt(nodes=2), dp.net).reduce_seconds(1e6, 0.0)


def test_tied_embedding_sync_by_hand(gpt):
    """Tied embeddings over 2 pipeline stages on 2 nodes (1 GPU per node in the pair): the first and the last
    stage all-reduce V x h / tp gradient elements between themselves; untied embeddings, or one stage, none."""
    s = gpt("model.tie_word_embeddings=true", "parallel.pp=2", "parallel.tp=2", "precision.grads=fp32", nodes=2)
    ctx = build_context(s)
    tail = ctx.tail
    group = ctx.network.embedding_group()
    assert (group.size, group.num_nodes) == (2, 2)
    # in the accumulated gradients' dtype (FP32 here), not the BF16 of the data-parallel reduction
    want = ctx.network.collective_seconds("all_reduce", 1024 * 256 / 2 * 4, group)
    assert want > 0
    assert tail.tied_embedding_seconds([0]) == pytest.approx(want)
    assert tail.tied_embedding_seconds([1]) == pytest.approx(want)
    assert tail.tied_embedding_seconds([0, 1]) == 0.0  # both ends on one rank (a V schedule)
    assert _tail(gpt("parallel.pp=2", nodes=2))[0].tied_embedding_seconds([0]) == 0.0  # untied
    assert _tail(gpt("model.tie_word_embeddings=true", nodes=2))[0].tied_embedding_seconds([0]) == 0.0  # pp 1


def test_tied_embedding_sync_is_in_the_step_of_every_tier(gpt):
    """The all-reduce is exposed on the ranks of the pair and counted as exposed communication, the same in
    the engine (fast) and the analytic tier."""
    s = gpt("model.tie_word_embeddings=true", "parallel.pp=2", nodes=2)
    secs = build_context(s).tail.tied_embedding_seconds([0])
    fast, analytic = simulate_step(s, mode="fast"), simulate_step(s, mode="analytic")
    assert analytic.step_time_s == pytest.approx(fast.step_time_s, rel=1e-6)
    assert fast.breakdown_per_rank_s[0]["exposed_comm"] >= secs
    assert analytic.breakdown_per_rank_s[0]["exposed_comm"] == pytest.approx(
        fast.breakdown_per_rank_s[0]["exposed_comm"], rel=1e-6)


def test_group_links_by_hand():
    one_node = CommGroup(8, 8, 1, 1e11, 0.0)
    across = CommGroup(4, 1, 4, 1e11, 5e10)
    both = CommGroup(16, 8, 2, 1e11, 5e10)
    alone = CommGroup(1, 1, 1, 1e11, 0.0)
    assert group_links(one_node) == NVLINK and group_links(across) == NIC and group_links(both) == NIC | NVLINK
    assert group_links(alone) == 0 and group_links(alone, across) == NIC and group_links() == 0
    assert group_links(one_node, across) == NIC | NVLINK  # the mask of every group the collective spans


def test_overlapped_reduction_starts_as_late_as_its_last_ready_bucket_needs(gpt):
    """The buckets run back to back from a delay d: bucket j starts at d + (seconds of the buckets before it),
    never before its last unit's gradients are ready, and d is the least such delay."""
    s = gpt("parallel.grad_bucket_mb=1", nodes=2)
    tail, _ = _tail(s)
    units = len(tail.partition.stages[0])
    p = s.parallel
    grads = [unit_param_counts(u, p.tp, p.ep) for u in reversed(tail.partition.stages[0])]
    buckets = tail.traffic.buckets(grads)
    assert len(buckets) > 1
    for ready in ([0.0] * units, [1e-3 * i for i in range(units)], [0.0] * (units - 1) + [1.0]):
        delay, work = tail.reduction_work(0, ready)
        starts, before = [], 0.0
        for unit, secs in buckets:
            starts.append(delay + before)
            assert delay + before >= ready[unit] - 1e-15
            before += secs
        assert delay == 0.0 or any(st == pytest.approx(ready[u]) for st, (u, _) in zip(starts, buckets, strict=True))
        assert [t.seconds for t in work.tasks] == [secs for _, secs in buckets]
        assert {(t.name, t.part, t.stream, t.links, t.holds_sms) for t in work.tasks} == {
            ("grad_reduce_scatter", "tail", Stream.DP, tail.traffic.reduce_links, True)}  # ZeRO-1
    assert tail.reduction_work(0, [0.0] * (units - 1) + [1.0])[0] > 0.5
    assert tail.reduction_work(0, [0.0] * units) == tail.reduction_work(0, [0.0] * units)


def test_grad_sync_and_param_gather_works(gpt):
    s = gpt("parallel.zero_stage=1", nodes=2)
    tail, _ = _tail(s)
    (sync,) = tail.grad_sync_work(0).tasks
    assert (sync.name, sync.part, sync.stream, sync.seconds, sync.links, sync.holds_sms) == (
        "grad_reduce_scatter", "tail", Stream.DP, tail.grad_sync_seconds(0), tail.traffic.reduce_links, True)
    gather = tail.param_gather_work([0])
    assert gather.tasks and {(t.name, t.part, t.stream, t.links, t.holds_sms) for t in gather.tasks} == {
        ("param_all_gather", "tail", Stream.DP, tail.traffic.gather_links, True)}
    assert tail.param_gather_seconds([0]) == pytest.approx(tail.traffic.gather_seconds(tail.dense[0], 0.0))
    zero0 = _tail(gpt("parallel.zero_stage=0", nodes=2))[0]
    assert zero0.param_gather_seconds([0]) == 0.0  # ZeRO-0: nothing gathered
    assert zero0.grad_name == "grad_all_reduce"


def test_dp_collectives_by_hand(gpt, moe):
    """ZeRO-3 with hybrid sharding over 4 of 16 data-parallel ranks: gradients reduce-scatter in the shard group,
    then the shard (1/4) all-reduces across the 4 replicas; parameters all-gather in the shard group. A MoE job
    adds the routed experts' collectives over their own replicas (the experts' data-parallel group)."""
    s = gpt("parallel.zero_stage=3", "parallel.fsdp_shard_group=4", nodes=2)
    net = build_context(s).network
    dp = DpTraffic(s, net)
    g, w = dp.grad_b, dp.weight_b
    assert (dp.shard.size, dp.replicas.size) == (4, 4)
    c = net.collective_seconds
    assert dp.reduce_seconds(1e6, 0.0) == pytest.approx(c("reduce_scatter", 1e6 * g, dp.shard)
                                                        + c("all_reduce", 1e6 * g / 4, dp.replicas))
    assert dp.gather_seconds(1e6, 0.0) == pytest.approx(c("all_gather", 1e6 * w, dp.shard))
    m = moe("parallel.ep=2")  # 4 data-parallel ranks, EP 2: each expert shard on 2 replicas
    mnet = build_context(m).network
    mdp = DpTraffic(m, mnet)
    assert mdp.plan.zero_stage == 1 and mdp.experts.size > 1
    mc = mnet.collective_seconds
    assert mdp.reduce_seconds(1e6, 2e6) == pytest.approx(mc("reduce_scatter", 1e6 * mdp.grad_b, mdp.shard)
                                                         + mc("reduce_scatter", 2e6 * mdp.grad_b, mdp.experts))
    assert mdp.gather_seconds(1e6, 2e6) == pytest.approx(mc("all_gather", 1e6 * mdp.weight_b, mdp.shard)
                                                         + mc("all_gather", 2e6 * mdp.weight_b, mdp.experts))
    assert mdp.reduce_links == group_links(mdp.shard, mdp.replicas, mdp.experts)
    assert mdp.gather_links == group_links(mdp.shard, mdp.experts)


def test_dp_collective_efficiency_divides_every_data_parallel_collective(gpt):
    """``software.dp_collective_efficiency`` e: a stack reaching e of NCCL's bandwidth takes 1/e as long for each
    gather and reduction (ZeRO-3 with hybrid sharding exercises the reduce-scatter and the replicas' all-reduce)."""
    base = ("parallel.zero_stage=3", "parallel.fsdp_shard_group=4")
    s1 = gpt(*base, nodes=2)
    s4 = gpt(*base, "software.dp_collective_efficiency=0.25", nodes=2)
    dp1, dp4 = DpTraffic(s1, build_context(s1).network), DpTraffic(s4, build_context(s4).network)
    assert dp4.gather_seconds(1e6, 0.0) == pytest.approx(4 * dp1.gather_seconds(1e6, 0.0))
    assert dp4.reduce_seconds(1e6, 0.0) == pytest.approx(4 * dp1.reduce_seconds(1e6, 0.0))
    b1, b4 = dp1.buckets([(1e6, 0.0), (2e6, 0.0)]), dp4.buckets([(1e6, 0.0), (2e6, 0.0)])
    assert [t for _, t in b4] == pytest.approx([4 * t for _, t in b1])


def test_unit_parameter_counts_split_dense_by_tp_and_experts_by_ep(moe):
    ctx = build_context(moe())
    unit = next(u for st in ctx.partition.stages for u in st if u.moe)
    expert = sum(op.params for op in unit.ops if op.name.startswith("experts_"))
    dense = sum(op.params for op in unit.ops) - expert
    assert expert > 0 and dense > 0
    assert unit_param_counts(unit, 2, 4) == (dense / 2, expert / 4)


def test_the_tail_counts_each_stages_parameters_per_gpu(moe):
    """Dense parameters split by TP, routed experts by EP: the stage's units' own counts, summed; the optimizer
    shards over the dense shard group and the experts' replicas."""
    s = moe("parallel.ep=2")
    tail, _ = _tail(s)
    p = s.parallel
    for stage, units in enumerate(tail.partition.stages):
        counts = [unit_param_counts(u, p.tp, p.ep) for u in units]
        assert tail.dense[stage] == pytest.approx(sum(d for d, _ in counts))
        assert tail.expert[stage] == pytest.approx(sum(e for _, e in counts))
    assert any(tail.expert)
    assert (tail.shard_size, tail.expert_dp_size) == (tail.net.shard_group().size, tail.net.expert_dp_group().size)
    assert tail.expert_dp_size == 2 and tail.shard_size == s.dp
