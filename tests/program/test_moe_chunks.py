"""A MoE stage's chunks (sim.program.chunks): DeepSeek-V3's attn -> dispatch -> mlp -> combine per layer, the
all-to-all payloads and links each transfer takes, the expert rows reaching the grouped GEMMs, and when each
unit's weight gradients are ready under a static SM partition."""

from __future__ import annotations

import pytest

from sim.context import build_context
from sim.loading import load_scenario
from sim.program.tasks import NIC, NVLINK
from sim.timeline import Stream


def _stage(ctx):
    """A stage with MoE layers, and its MoE units."""
    for i, units in enumerate(ctx.partition.stages):
        moe_units = [u for u in units if u.moe]
        if moe_units:
            return i, moe_units
    raise AssertionError("no MoE stage")


def _before(chunk, i):
    """The compute task just before task ``i`` (none at the chunk's start): the all-to-all's in-situ wait
    follows it."""
    return next((t.seconds for t in reversed(chunk.tasks[:i]) if t.stream == Stream.COMPUTE), 0.0)


def test_forward_dispatch_after_attention_and_combine_after_the_experts(moe):
    """EP 4 inside one node: only NVLink carries the all-to-all (no NIC bit); the dispatch exchanges the layout
    first (notify), the combine reuses it; each waits on the compute just before it (in-situ wait)."""
    ctx = build_context(moe())
    net, prog = ctx.network, ctx.program
    stage, units = _stage(ctx)
    f = prog.chunk(stage, "F", 0)
    names = [t.name for t in f.tasks]
    assert names.count("dispatch") == names.count("combine") == len(units)
    for unit in units:
        load = ctx.loads.moe_load(unit, 0)
        assert load.dispatch_ib_bytes == 0 and load.dispatch_nvlink_bytes > 0
        idx = [i for i, t in enumerate(f.tasks) if t.layer == unit.index]
        d = next(i for i in idx if f.tasks[i].name == "dispatch")
        c = next(i for i in idx if f.tasks[i].name == "combine")
        assert d < c
        assert f.tasks[d - 1].name.startswith("attn") and f.tasks[c - 1].name.startswith("mlp")
        assert f.tasks[d].seconds == net.alltoall_seconds(load.dispatch_ib_bytes, load.dispatch_nvlink_bytes,
                                                          notify=True, preceding_compute_s=_before(f, d))
        assert f.tasks[c].seconds == net.alltoall_seconds(load.combine_ib_bytes, load.combine_nvlink_bytes,
                                                          notify=False, preceding_compute_s=_before(f, c))
        assert f.tasks[d].links == f.tasks[c].links == NVLINK and f.tasks[d].holds_sms


def test_backward_moves_each_others_payloads_and_recompute_resends_both(moe):
    """combine(B) moves the dispatch's payload, dispatch(B) the combine's, both with the cached layout; full
    recompute re-runs the forward's dispatch and combine inside the backward."""
    ctx = build_context(moe("parallel.recompute=full"))
    net, prog = ctx.network, ctx.program
    stage, units = _stage(ctx)
    b = prog.chunk(stage, "B", 0)
    for unit in units:
        load = ctx.loads.moe_load(unit, 0)
        idx = {b.tasks[i].name: i for i in range(len(b.tasks)) if b.tasks[i].layer == unit.index}
        assert idx["combine_b"] < idx["dispatch_b"]
        for name, ib, nvl in (("combine_b", load.dispatch_ib_bytes, load.dispatch_nvlink_bytes),
                              ("dispatch_b", load.combine_ib_bytes, load.combine_nvlink_bytes)):
            i = idx[name]
            assert b.tasks[i].part == "I"
            assert b.tasks[i].seconds == net.alltoall_seconds(ib, nvl, notify=False,
                                                              preceding_compute_s=_before(b, i))
        for name in ("dispatch_recompute", "combine_recompute"):
            assert b.tasks[idx[name]].part == "I" and b.tasks[idx[name]].stream == Stream.COMM
    plain = build_context(moe()).program.chunk(stage, "B", 0)
    assert not [t for t in plain.tasks if t.name.endswith("_recompute")]


@pytest.mark.parametrize("tp", [(), ("parallel.tp=2", "parallel.sequence_parallel=true")], ids=["tp1", "tp2_sp"])
def test_expert_rows_reach_the_grouped_gemms(moe, tp):
    """The compute of a MoE stage's forward adds up to its ops' costs with each MoE layer's rows per local
    expert (the busiest rank's, skewed routing here), other layers' ops without; under TP the experts run
    before the MoE block's TP region (its shared experts), with the same rows."""
    ctx = build_context(moe("experts.skew=zipf", *tp))
    prog, coster = ctx.program, ctx.program.coster
    stage, _ = _stage(ctx)
    for mb in (0, 1):
        want = {"F": 0.0, "I": 0.0, "W": 0.0}
        for u in ctx.partition.stages[stage]:
            rows = ctx.loads.moe_load(u, mb).rows_per_expert if u.moe else ()
            for part, cost in (("F", "fwd"), ("I", "input"), ("W", "weight")):
                want[part] += sum(coster.seconds(op, cost, prog.tokens, rows) for op in u.ops)
        f, b = prog.chunk(stage, "F", mb), prog.chunk(stage, "B", mb)
        got_f = sum(t.seconds for t in f.tasks if t.stream == Stream.COMPUTE)
        assert got_f == pytest.approx(want["F"], rel=1e-9)
        for part in ("I", "W"):
            got = sum(t.seconds for t in b.tasks if t.stream == Stream.COMPUTE and t.part == part)
            assert got == pytest.approx(want[part], rel=1e-9)


def test_weight_gradients_ready_times_under_a_static_sm_partition(moe):
    """DeepEP holds 20 of the H100's 132 SMs all step (static partition): compute runs at 112/132 of its rate, so
    each unit's weight gradients are ready at the compute before them divided by that rate, in backward order."""
    s = moe()
    ctx = build_context(s)
    assert s.sm_partition == "static" and (s.parallel.comm_sms, s.cluster.gpu.num_sms) == (20, 132)
    prog = ctx.program
    assert prog.comm_rate == pytest.approx(112 / 132)
    stage, _ = _stage(ctx)
    b = prog.chunk(stage, "B", 0)
    prefix, sums = 0.0, []
    for t in b.tasks:
        if t.stream == Stream.COMPUTE:
            prefix += t.seconds
            sums.append(prefix / (112 / 132))
    ready = b.grads_ready_s
    assert len(ready) == len(ctx.partition.stages[stage]) and list(ready) == sorted(ready)
    assert all(any(r == pytest.approx(x) for x in sums) for r in ready)
    assert ready[-1] == pytest.approx(sums[-1])
    assert prog.chunk(stage, "F", 0).grads_ready_s == () and prog.chunk(stage, "I", 0).grads_ready_s == ()
    assert len(prog.chunk(stage, "W", 0).grads_ready_s) == len(ready)


def test_gqa_context_parallel_ring_passes_the_kv_heads_of_one_tp_rank(gpt):
    """GQA with 2 KV heads under TP 2: each GPU holds 1 KV head; CP 2 halves its tokens (256 of 512): the ring
    passes 256 x 1 x (64 + 64) x 2 B per step."""
    ctx = build_context(gpt("model.attention=gqa", "model.n_kv_heads=2", "parallel.cp=2", "parallel.tp=2"))
    prog = ctx.program
    attention = next(op for u in ctx.partition.stages[0] for op in u.ops if op.kind == "attention")
    assert prog.kv_heads == 1 and prog._kv_bytes(attention) == 256 * 1 * 128 * 2
    kv = [t for t in prog.chunk(0, "F", 0).tasks if t.name == "cp_kv"]
    assert kv and all(t.seconds == ctx.network.cp_ring_step_seconds(256 * 128 * 2) for t in kv)


def test_a_split_backward_keeps_weight_gradients_beside_its_communication(moe):
    """Zero-bubble split (I then W): the I chunk keeps of each block's weight gradients what fits beside the
    communication chained after it (at the compute rate left by the SMs DeepEP holds), the W chunk runs the
    rest; together the block's whole weight gradient, once."""
    ctx = build_context(moe())
    prog, coster = ctx.program, ctx.program.coster
    stage, _ = _stage(ctx)
    units = {u.index: u for u in ctx.partition.stages[stage]}
    i_chunk, w_chunk = prog.chunk(stage, "I", 0), prog.chunk(stage, "W", 0)
    kept_any = False
    for k, t in enumerate(i_chunk.tasks):
        if t.part != "W":
            continue
        unit = units[t.layer]
        block = t.name.removesuffix("_w")
        rows = ctx.loads.moe_load(unit, 0).rows_per_expert if unit.moe else ()
        ops = [op for name, ops in prog._blocks(unit) if name == block for op in ops]
        full = sum(coster.seconds(op, "weight", prog.tokens, rows) for op in ops)
        window = 0.0
        for later in i_chunk.tasks[k + 1:]:
            if later.stream == Stream.COMPUTE:
                break
            window += later.seconds
        assert t.seconds == pytest.approx(min(full, window * prog.comm_rate))
        kept_any = kept_any or 0 < t.seconds < full
        rest = [x for x in w_chunk.tasks if x.layer == t.layer and x.name == t.name]
        assert sum(x.seconds for x in rest) == pytest.approx(full - t.seconds)
        assert all(x.part == "W" and x.deps == () for x in rest)  # nothing left to wait for inside W
    assert kept_any


def test_without_expert_parallelism_there_is_no_all_to_all(moe):
    """EP 1: every rank holds every expert, tokens stay on their GPU; the experts' rows are still the routed
    ones."""
    ctx = build_context(moe("parallel.ep=1", "parallel.recompute=full"))
    stage, units = _stage(ctx)
    for kind in ("F", "B", "I"):
        names = {t.name for t in ctx.program.chunk(stage, kind, 0).tasks}
        assert not names & {"dispatch", "combine", "dispatch_b", "combine_b", "dispatch_recompute",
                            "combine_recompute"}, kind
    assert ctx.loads.moe_load(units[0], 0).rows_per_expert


def test_deepseek_v3_all_to_all_crosses_nodes_with_each_payloads_bytes():
    """DeepSeek-V3's EP 64 spans 8 nodes: each transfer uses the NIC and NVLink, and moves its own payload's
    bytes on each (the combine's BF16 payload is larger than the dispatch's FP8 one)."""
    ctx = build_context(load_scenario("workloads/deepseek_v3.yaml"))
    net, prog = ctx.network, ctx.program
    stage, units = _stage(ctx)
    load = ctx.loads.moe_load(units[0], 0)
    assert 0 < load.dispatch_ib_bytes < load.combine_ib_bytes
    assert 0 < load.dispatch_nvlink_bytes < load.combine_nvlink_bytes
    f, b = prog.chunk(stage, "F", 0), prog.chunk(stage, "B", 0)
    for chunk, name, payload, notify in ((f, "dispatch", "dispatch", True), (f, "combine", "combine", False),
                                         (b, "combine_b", "dispatch", False), (b, "dispatch_b", "combine", False)):
        i = next(i for i, t in enumerate(chunk.tasks) if t.name == name and t.layer == units[0].index)
        ib, nvl = getattr(load, f"{payload}_ib_bytes"), getattr(load, f"{payload}_nvlink_bytes")
        assert chunk.tasks[i].seconds == net.alltoall_seconds(ib, nvl, notify=notify,
                                                              preceding_compute_s=_before(chunk, i)), name
        assert chunk.tasks[i].links == NIC | NVLINK


def test_pipeline_sends_carry_the_hidden_state_of_the_gpus_tokens(gpt):
    """A stage boundary passes tokens x hidden in BF16: 512 x 256 x 2 B; under sequence parallelism each TP rank
    holds (and sends) 1/TP of the sequence."""
    assert build_context(gpt()).program.p2p_bytes() == 512 * 256 * 2
    assert build_context(gpt("parallel.tp=2", "parallel.sequence_parallel=true")).program.p2p_bytes() == 512 * 256
    assert build_context(gpt("parallel.tp=2")).program.p2p_bytes() == 512 * 256 * 2
