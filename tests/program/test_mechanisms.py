"""Each parallelism mechanism's traffic, work and memory on tiny shapes, derived by hand.

Sources of the expected numbers: Korthikanti et al. 2022 (activation bytes per layer under TP and SP, selective
recompute of the attention core), Megatron-LM context parallelism (KV blocks per ring step), ZeRO (Rajbhandari et
al. 2020 section 7) and PyTorch FSDP2 (gathers per micro-batch), Megatron-LM MoE (tokens split over TP).
"""

from __future__ import annotations

import pytest

from sim.assemble import Assembler, rank_plans
from sim.context import build_context
from sim.engine import isolated_run
from sim.errors import SimInputError
from sim.memory import memory_per_rank
from sim.model.activations import stage_activation_bytes, unit_activation_bytes_per_token
from sim.model.parallelism import recompute_fwd_flops_per_token, recompute_spec
from sim.model.stages import model_units
from sim.program.sharding import ShardingPlan
from sim.step import simulate_step
from sim.timeline import Stream

D, H, SEQ = 256, 4, 512  # the tiny GPT: hidden, heads (head size 64), sequence
#: A 7B-class width, where GEMMs and collectives are long enough for bandwidth (not launches) to dominate.
WIDE = ("model.dim=4096", "model.n_heads=32", "model.inter_dim=16384", "training.seq_len=4096")


def _layer(s):
    return next(u for u in model_units(s.model) if u.kind == "layer")


def _names(chunk, name):
    return [t for t in chunk.tasks if t.name == name]


# ------------------------------------------------------------------------------ context parallelism


def test_ring_attention_passes_one_kv_block_per_step(gpt):
    s = gpt("parallel.cp=2")
    ctx = build_context(s)
    prog, net = ctx.program, ctx.network
    tokens = SEQ // 2                             # each GPU holds half of every sequence
    kv = tokens * H * (64 + 64) * 2               # K and V of its 4 heads, BF16
    attention = next(op for op in _layer(s).ops if op.kind == "attention")
    assert prog._kv_bytes(attention) == kv
    f, b = prog.chunk(0, "F", 0), prog.chunk(0, "B", 0)
    assert len(_names(f, "cp_kv")) == 4 * (2 - 1)  # cp - 1 steps per layer
    assert all(t.seconds == net.cp_ring_step_seconds(kv) for t in _names(f, "cp_kv"))
    # Backward: the blocks and their gradients circulate (2 x), then the own block's gradient comes home.
    assert all(t.seconds == net.cp_ring_step_seconds(2 * kv) for t in _names(b, "cp_kv"))
    assert len(_names(b, "cp_dkv")) == 4
    four = build_context(gpt("parallel.cp=4")).program.chunk(0, "F", 0)
    assert len(_names(four, "cp_kv")) == 4 * 3


def test_ring_steps_after_the_diagonal_run_at_the_non_causal_rate(gpt):
    """With causal load balancing every ring step does the same work, but only the diagonal step is a causal
    kernel call; the others are whole blocks (``is_causal=False``). Their time is the causal step's times
    causal_frac x s / (s + causal_waste) of the stack's flash curve (the non-causal curve lacks both factors),
    by hand from the profile's fields; the unfused path masks in the softmax and keeps every step equal."""
    for mode in ("ring", "pytorch"):
        s = gpt("parallel.cp=2", f"parallel.cp_mode={mode}")
        ctx = build_context(s)
        curve = ctx.program.coster.costs.flash_kernel(s.software.flash_kernel).curve
        share = curve.causal_frac * SEQ / (SEQ + curve.causal_waste)
        attention = next(op for op in _layer(s).ops if op.kind == "attention")
        assert ctx.program.coster.offdiagonal_share(attention, "fwd") == pytest.approx(share, rel=1e-12)
        t = ctx.program.chunk(0, "F", 0).tasks
        if mode == "ring":
            send = next(i for i, x in enumerate(t) if x.name == "cp_kv")
            steps = [t[send - 1].seconds, t[send + 1].seconds]
        else:
            g = next(i for i, x in enumerate(t) if x.name == "cp_kv_gather")
            steps = [x.seconds for x in t[g + 1:g + 6] if x.name == "attn"]
        assert steps[1] == pytest.approx(steps[0] * share, rel=1e-9) and share < 1
    unfused = gpt("parallel.cp=2", "software.attention=unfused")
    op = next(o for o in _layer(unfused).ops if o.kind == "attention")
    assert build_context(unfused).program.coster.offdiagonal_share(op, "dgrad") == 1.0


def test_the_fitted_pytorch_ring_step_efficiency_slows_only_the_sdpa_steps_after_the_diagonal(gpt):
    """software.pytorch_cp_step_efficiency = e divides the time of each SDPA step after the diagonal by e, in the
    forward and the backward; the diagonal step, the bookkeeping kernels and the exchanges keep their times; ring
    mode (Megatron/TE) does not read it."""
    cp, e = 4, 0.5
    # with full recompute (as every published CP run) the backward re-runs the forward's steps: slowed once each
    for recompute, gathers_b in (("none", 4), ("full", 8)):
        _check_pytorch_step_efficiency(gpt, cp, e, recompute, gathers_b)
    ring = [gpt(f"parallel.cp={cp}", "parallel.cp_mode=ring", *extra)
            for extra in ((), (f"software.pytorch_cp_step_efficiency={e}",))]
    assert ([t.seconds for t in build_context(ring[0]).program.chunk(0, "B", 0).tasks]
            == [t.seconds for t in build_context(ring[1]).program.chunk(0, "B", 0).tasks])


def _check_pytorch_step_efficiency(gpt, cp: int, e: float, recompute: str, gathers_b: int) -> None:
    layout = (f"parallel.cp={cp}", "parallel.cp_mode=pytorch", f"parallel.recompute={recompute}")
    base = build_context(gpt(*layout)).program
    slow = build_context(gpt(*layout, f"software.pytorch_cp_step_efficiency={e}")).program
    for part, core in (("F", "attn"), ("B", "attn_b")):
        a, b = base.chunk(0, part, 0).tasks, slow.chunk(0, part, 0).tasks
        assert [x.name for x in a] == [x.name for x in b]
        # after each gather, the next cp SDPA calls of the core: the diagonal step, then the later ones
        later: set[int] = set()
        gathers = [i for i, x in enumerate(a) if x.name == "cp_kv_gather"]
        for g in gathers:
            calls = [i for i in range(g + 1, len(a)) if a[i].name == core][:cp]
            later.update(calls[1:])
        assert len(gathers) == (4 if part == "F" else gathers_b) and len(later) == len(gathers) * (cp - 1)
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert y.seconds == pytest.approx(x.seconds / e if i in later else x.seconds, rel=1e-12), (part, i)


def test_all_gather_context_parallelism_gathers_kv_once_per_layer(gpt):
    ctx = build_context(gpt("parallel.cp=2", "parallel.cp_mode=all_gather"))
    kv_all = SEQ * H * (64 + 64) * 2              # the whole sequence's K and V
    f, b = ctx.program.chunk(0, "F", 0), ctx.program.chunk(0, "B", 0)
    gathers = _names(f, "cp_kv_gather")
    assert len(gathers) == 4 and not _names(f, "cp_kv")
    assert gathers[0].seconds == ctx.network.collective_seconds("all_gather", kv_all, ctx.network.cp_group())
    assert len(_names(b, "cp_kv_gather")) == 4 and len(_names(b, "cp_dkv_scatter")) == 4


def test_pytorch_context_parallelism_gathers_beside_the_diagonal_step_and_passes_fp32_gradients(gpt):
    """``cp_mode: pytorch`` (torch 2.6 ``_templated_ring_attention`` with the all-gather rotater): per layer and
    pass one all-gather of the whole sequence's K and V (of the K/V concatenated just before), which only the
    second step waits for (the first is the rank's own diagonal block); each SDPA step is followed by the merge
    of its output, each step but the last preceded by a K/V concatenation. The backward gathers again for the
    recomputed forward and for itself; after each of its ``cp`` steps it adds the step's K and V gradients into
    the buffer the previous step sent (so that accumulation waits for that send) and sends them on in FP32
    (2 x the BF16 bytes); the K/V gradients' final cast waits for the last send."""
    cp = 4
    s = gpt(f"parallel.cp={cp}", "parallel.cp_mode=pytorch", "parallel.recompute=full")
    ctx = build_context(s)
    prog, net = ctx.program, ctx.network
    attention = next(op for op in _layer(s).ops if op.kind == "attention")
    kv = prog._kv_bytes(attention)
    assert kv == SEQ // cp * H * (64 + 64) * 2
    gather_s = net.collective_seconds("all_gather", kv * cp, net.cp_group())
    f, b = prog.chunk(0, "F", 0), prog.chunk(0, "B", 0)
    assert [t.seconds for t in _names(f, "cp_kv_gather")] == [gather_s] * 4
    assert len(_names(b, "cp_kv_gather")) == 2 * 4                 # recomputed forward, then the backward
    assert not _names(f, "cp_dkv") and len(_names(b, "cp_dkv")) == cp * 4
    assert all(t.seconds == net.cp_ring_step_seconds(2 * kv) for t in _names(b, "cp_dkv"))
    keep = prog._ring_bookkeeping(attention)
    t = f.tasks
    g = next(i for i, x in enumerate(t) if x.name == "cp_kv_gather")
    core = [i for i in range(g - 1, len(t)) if t[i].name in ("attn", "attn_ring")][:3 * cp + 0]
    # copies + cat, [gather], step 0, cast; cat, step 1, merge; cat, step 2, merge; step 3, merge; cast back
    assert [t[i].name for i in core] == ["attn_ring", "attn", "attn_ring", "attn_ring", "attn", "attn_ring",
                                         "attn_ring", "attn", "attn_ring", "attn", "attn_ring", "attn_ring"]
    assert [t[i].seconds for i in core if t[i].name == "attn_ring"] == [
        keep["fwd_entry"] + keep["kv_cat"], keep["fwd_first"], keep["kv_cat"], keep["fwd_merge"], keep["kv_cat"],
        keep["fwd_merge"], keep["fwd_merge"], keep["fwd_end"]]
    steps = [i for i in core if t[i].name == "attn"]
    assert t[g].deps == (core[0],)                                   # the gather sends the concatenation
    assert g not in t[steps[0]].deps and g in t[steps[1]].deps      # the diagonal step runs beside the gather
    t = b.tasks
    sends = [i for i, x in enumerate(t) if x.name == "cp_dkv"][:cp]
    acc = [i - 1 for i in sends]                                    # each send follows its accumulation
    assert all(t[i].name == "attn_ring_b" and i in t[j].deps for i, j in zip(acc, sends, strict=True))
    assert t[acc[0]].seconds == keep["bwd_first"] + keep["dkv_cat"]
    assert all(t[i].seconds == keep["bwd_accumulate"] + keep["dkv_cat"] for i in acc[1:])
    for k in range(1, cp):
        assert sends[k - 1] in t[acc[k]].deps and t[acc[k] - 1].name == "attn_b"
    end = next(i for i in range(sends[-1] + 1, len(t)) if t[i].seconds == keep["bwd_end_kv"])
    assert sends[-1] in t[end].deps and t[end - 1].seconds == keep["bwd_end_q"]
    # GQA with repeat_kv (torchtitan): K and V travel with the query heads' count.
    gqa = ("model.attention=gqa", "model.n_kv_heads=1", f"parallel.cp={cp}", "parallel.cp_mode=pytorch")
    few = build_context(gpt(*gqa)).program._kv_bytes(attention)
    many = build_context(gpt(*gqa, "software.repeat_kv=true")).program._kv_bytes(attention)
    assert few == kv / H and many == kv


def test_pytorch_ring_bookkeeping_bytes_by_hand():
    """The memory-bound kernels of torch 2.6's ring attention, per element, read plus write (BF16 2 B, FP32 4 B):
    forward merge of a step (the slowest rank merges the whole output): cast BF16 -> FP32 (2 + 4), ``out -
    block_out`` (4 + 4 + 4), the product with the sigmoid weights (4 + 4), ``out - ...`` (4 + 4 + 4): 38 B per
    output element; backward accumulation of a step: half of K and of V added into the received FP32 buffer
    (4 + 2 + 4 over half the elements) and the halves concatenated (4 + 4): 13 B per K/V element."""
    from sim.program.block_tasks import ring_bookkeeping_bytes

    o, q, kv, lse = 1000.0, 1000.0, 2000.0, 10.0
    b = ring_bookkeeping_bytes(o_el=o, q_el=q, kv_el=kv, lse_el=lse)
    assert sum(b["fwd_merge"]) == 38 * o + (12 + 8 + 12 + 8 + 12) * lse and len(b["fwd_merge"]) == 9
    assert sum(b["bwd_accumulate"]) == 13 * kv and len(b["bwd_accumulate"]) == 4
    assert b["kv_cat"] == (2 * kv + 2 * kv,)                 # read and write BF16 K and V
    assert b["dkv_cat"] == (4 * kv + 4 * kv,)                # the same in FP32
    assert b["dq_accumulate"] == (4 * q + 2 * q + 4 * q,)    # FP32 += BF16
    assert sum(b["fwd_entry"]) == sum(b["bwd_entry"]) - 4 * (q + kv) == 4 * kv  # contiguous() copies, r2 w2
    # step 0's K and V gradients added into the FP32 zeros (r4 + r2, w4), then flattened out of the transposed
    # strides the zeros took (r4 w4)
    assert sum(b["bwd_first"]) == 10 * kv + 8 * kv
    assert b["fwd_first"] == b["fwd_end"] == (6 * o,) and b["bwd_end_q"] == (6 * q,) and b["bwd_end_kv"] == (6 * kv,)


def test_pytorch_ring_bookkeeping_grows_with_the_ring(gpt):
    """The merge and accumulation kernels run once per non-diagonal step, so their time grows with the CP degree
    at a fixed number of tokens per GPU; at CP 1 there is no ring and none of them."""
    def ring_s(cp):
        s = gpt(f"parallel.cp={cp}", "parallel.cp_mode=pytorch", f"training.seq_len={SEQ * cp // 2}")
        prog = build_context(s).program
        return sum(t.seconds for kind in ("F", "B") for t in prog.chunk(0, kind, 0).tasks
                   if t.name.startswith("attn_ring"))

    two, four, eight = ring_s(2), ring_s(4), ring_s(8)
    assert ring_s(1) == 0 < two < four < eight
    assert four - two == pytest.approx((eight - four) / 2, rel=0.05)  # linear in the steps (4 more vs 2 more)


def test_context_parallelism_halves_activation_memory_and_attention_work(gpt):
    one, two = gpt(), gpt("parallel.cp=2")
    assert two.dp == one.dp // 2 and two.tokens_per_gpu == one.tokens_per_gpu // 2
    a1 = stage_activation_bytes(build_context(one).partition, one)
    a2 = stage_activation_bytes(build_context(two).partition, two)
    assert a2[0] == pytest.approx(a1[0] / 2)
    long = gpt("training.seq_len=32768", "model.max_seq_len=32768")
    coster = build_context(long).program.coster
    attention = next(op for op in _layer(long).ops if op.kind == "attention")
    # Zig-zag balanced causal attention: half the queries against the whole sequence's keys = half the FLOPs.
    assert coster.seconds(attention, "fwd", 16384) == pytest.approx(coster.seconds(attention, "fwd", 32768) / 2,
                                                                    rel=0.02)


# ------------------------------------------------------------------------------ tensor and sequence parallelism


def test_sequence_parallelism_gathers_before_and_scatters_after_each_tp_block(gpt):
    ctx = build_context(gpt("parallel.tp=2", "parallel.sequence_parallel=true"))
    net, prog = ctx.network, ctx.program
    full = (SEQ * D * 2)                          # the collectives' full buffer: tokens x hidden, BF16
    f, b = prog.chunk(0, "F", 0), prog.chunk(0, "B", 0)
    for name in ("attn", "mlp"):
        assert len(_names(f, f"tp_ag_{name}")) == 4 and len(_names(f, f"tp_rs_{name}")) == 4
        # Backward: gather the output gradient, re-gather the input for the weight gradients, scatter the input
        # gradient (Korthikanti et al. 2022 section 4.2.2).
        for task in (f"tp_ag_{name}_b", f"tp_ag_{name}_input", f"tp_rs_{name}_b"):
            assert len(_names(b, task)) == 4
    assert _names(f, "tp_ag_attn")[0].seconds == net.collective_seconds("all_gather", full, net.tp_group())
    assert _names(f, "tp_rs_mlp")[0].seconds == net.collective_seconds("reduce_scatter", full, net.tp_group())
    assert not _names(f, "tp_attn")              # no all-reduce with sequence parallelism


def test_tensor_parallelism_without_sp_all_reduces_once_per_block_and_pass(gpt):
    ctx = build_context(gpt("parallel.tp=2"))
    f, b = ctx.program.chunk(0, "F", 0), ctx.program.chunk(0, "B", 0)
    assert len(_names(f, "tp_attn")) == 4 and len(_names(f, "tp_mlp")) == 4
    assert len(_names(b, "tp_attn_b")) == 4 and len(_names(b, "tp_mlp_b")) == 4
    assert not [t for t in f.tasks if t.name.startswith("tp_ag")]


def test_korthikanti_activation_bytes_per_layer(gpt):
    """Korthikanti et al. 2022 Table 2 without the dropout masks (this model has no dropout) and with
    FlashAttention (no S x S tensors): 32 sbh plus the softmax statistics (4 bytes per head); without SP the
    norm inputs and the first GEMMs' inputs (8 sbh) stay whole on every TP rank."""
    s = gpt()
    unit, prec, m = _layer(s), s.precision, s.model
    lse = 4 * H
    assert unit_activation_bytes_per_token(unit, "none", prec, m) == 32 * D + lse
    assert unit_activation_bytes_per_token(unit, "none", prec, m, tp=2) == 8 * D + (24 * D + lse) / 2
    assert unit_activation_bytes_per_token(unit, "none", prec, m, tp=2, sp=True) == (32 * D + lse) / 2
    assert unit_activation_bytes_per_token(unit, "full", prec, m, tp=2) == 2 * D        # replicated checkpoint
    assert unit_activation_bytes_per_token(unit, "full", prec, m, tp=2, sp=True) == D
    # Selective (the attention core): its output and statistics are re-created; activations: the GeLU output.
    assert unit_activation_bytes_per_token(unit, "selective", prec, m) == 32 * D - 2 * D
    assert unit_activation_bytes_per_token(unit, "activations", prec, m) == 32 * D + lse - 8 * D


def test_tp_comm_overlap_hides_part_of_the_collectives_never_more(gpt):
    plain = build_context(gpt("parallel.tp=4", "parallel.sequence_parallel=true", *WIDE))
    over = build_context(gpt("parallel.tp=4", "parallel.sequence_parallel=true", *WIDE,
                             "parallel.tp_comm_overlap=true"))
    f0, f1 = plain.program.chunk(0, "F", 0), over.program.chunk(0, "F", 0)
    t0 = isolated_run(f0.work, 108, 0)[0]
    t1 = isolated_run(f1.work, 108, 0)[0]
    comm = f0.work.seconds_on(Stream.COMM)
    assert t1 < t0                                 # chunked GEMMs run beside the arriving chunks
    assert t0 - t1 <= comm                         # never hides more than the collectives take
    assert len([t for t in f1.tasks if t.name == "tp_ag_attn"]) == 4 * (4 - 1)  # tp - 1 ring steps per layer


def test_tp_overlap_chunks_together_cost_the_whole_gemm(gpt):
    """The chunk GEMMs of an overlapped gather run on several streams (TE: up to 3, AsyncTP: 2), so their partial
    waves fill each other: the tp chunks of the MLP's first GEMM add up to that GEMM unchunked, not to tp GEMMs of
    1/tp of the rows each (which pay wave quantization once per chunk)."""
    s = gpt("parallel.tp=8", "parallel.sequence_parallel=true", "parallel.tp_comm_overlap=true", *WIDE)
    ctx = build_context(s)
    prog = ctx.program
    f = prog.chunk(0, "F", 0)
    up = [op for op in _layer(s).ops if op.name == "ffn_up"]
    whole = sum(prog.coster.seconds(op, "fwd", prog.tokens) for op in up)
    alone = sum(prog.coster.seconds(op, "fwd", prog.tokens / 8) for op in up)
    assert alone * 8 > whole * 1.01  # the shape where it matters: 512-row chunks quantize worse
    mlp = [t.seconds for t in f.tasks if t.name == "mlp"]
    chunks = mlp[1:9]  # the first layer's MLP: its norm, then the 8 chunks of the up-projection
    assert chunks == pytest.approx([whole / 8] * 8, rel=1e-9)


def test_tp_overlap_forward_reduce_scatter_ends_with_a_sum_of_the_partials(gpt):
    """The forward's row-parallel GEMM sends each chunk of its output unreduced; both overlap implementations
    then sum the tp partials in one memory-bound kernel (TE's split_overlap_rs: torch::sum_out; PyTorch's
    fused_matmul_reduce_scatter): it reads the tokens x h unreduced output and writes 1/tp of it, once the last
    chunk has left, and what follows waits for it. NCCL reduces inside its kernel: no such task without overlap."""
    def after_last_send(chunk, send):
        last = max(i for i, t in enumerate(chunk.tasks) if t.name == send)
        return [i for i, t in enumerate(chunk.tasks) if t.deps == (last,) and t.stream == Stream.COMPUTE]

    ctx = build_context(gpt("parallel.tp=8", "parallel.sequence_parallel=true", "parallel.tp_comm_overlap=true",
                            *WIDE))
    f = ctx.program.chunk(0, "F", 0)
    (i,) = after_last_send(f, "tp_rs_attn")
    want = ctx.costs.memory_seconds(ctx.program.tokens * 4096 * 2 * (1 + 1 / 8), "tp_reduce")
    assert f.tasks[i].name == "attn" and f.tasks[i].seconds == pytest.approx(want)
    assert any(i in t.deps for t in f.tasks[i + 1:])  # the next piece waits for the sum
    # The chunks add up to the whole GEMMs, so the overlapped forward's compute exceeds the plain one's by exactly
    # the two sums (attention and MLP) of every layer on the stage.
    plain = build_context(gpt("parallel.tp=8", "parallel.sequence_parallel=true", *WIDE)).program.chunk(0, "F", 0)
    layers = sum(u.kind == "layer" for u in ctx.partition.stages[0])
    compute = lambda c: sum(t.seconds for t in c.tasks if t.stream == Stream.COMPUTE)  # noqa: E731
    assert compute(f) - compute(plain) == pytest.approx(2 * layers * want, rel=1e-6)


# ------------------------------------------------------------------------------ recompute


def test_selective_recompute_reruns_the_attention_core_flops(gpt):
    s = gpt()
    unit = _layer(s)
    keys = SEQ / 2                                 # causal: half the sequence per query on average
    core = 2 * H * (64 + 64) * keys                # Q K^T and P V forward, per query token
    assert recompute_fwd_flops_per_token(unit.ops, recompute_spec(s.model, "selective"), keys) == core
    assert recompute_fwd_flops_per_token(unit.ops, recompute_spec(s.model, "none"), keys) == 0
    assert recompute_fwd_flops_per_token(unit.ops, recompute_spec(s.model, "activations"), keys) == 0
    gemms = 2 * (3 * D * D + D * D + 2 * 4 * D * D)  # QKV, output projection, MLP up and down
    assert recompute_fwd_flops_per_token(unit.ops, recompute_spec(s.model, "full"), keys) == gemms + core
    assert recompute_fwd_flops_per_token(unit.ops, recompute_spec(s.model, ("core_attn", "mlp")), keys) == (
        core + 2 * 2 * 4 * D * D)
    coster = build_context(gpt("parallel.recompute=selective")).program.coster
    attention = next(op for op in unit.ops if op.kind == "attention")
    assert coster.seconds(attention, "input", SEQ) == pytest.approx(
        coster.seconds(attention, "fwd", SEQ) + build_context(s).program.coster.seconds(attention, "input", SEQ))


def test_unknown_recompute_names_are_refused(gpt):
    with pytest.raises(SimInputError, match=r"parallel\.recompute.*'attn_softmaxx'"):
        build_context(gpt("parallel.recompute=[core_attn, attn_softmaxx]"))


# ------------------------------------------------------------------------------ ZeRO and FSDP


@pytest.mark.parametrize(("zero", "pp", "reshard", "fwd", "bwd", "per_step", "every"), [
    (0, 1, True, False, False, False, False),      # DDP: one all-reduce per step
    (1, 1, True, False, False, True, False),       # reduce-scatter once, all-gather once
    (2, 1, True, False, False, True, True),        # sharded gradients: reduce every micro-batch
    (3, 1, True, True, True, False, True),         # FSDP: gather in forward and backward, reduce every mb
    (3, 1, False, True, False, False, True),       # kept gathered from forward to backward
    (3, 2, False, False, False, True, False),      # pipelining: gathered all step, reduced at the last backward
    (3, 2, True, True, True, False, False),
])
def test_zero_stage_traffic_pattern(zero, pp, reshard, fwd, bwd, per_step, every):
    plan = ShardingPlan(zero, pp, reshard, 1, 25e6)
    assert (plan.gather_forward, plan.gather_backward, plan.gather_per_step, plan.reduce_every_microbatch) == (
        fwd, bwd, per_step, every)


def test_fsdp_gathers_each_layer_group_per_micro_batch(gpt):
    ctx = build_context(gpt("parallel.zero_stage=3"))
    f, b = ctx.program.chunk(0, "F", 0), ctx.program.chunk(0, "B", 0)
    units = ctx.partition.stages[0]                # embedding, 4 layers, head
    assert len(_names(f, "fsdp_gather")) == len(units) == 6
    assert len(_names(b, "fsdp_gather")) == 6      # resharded after forward: gathered again
    embed = units[0]
    params = sum(op.params for op in embed.ops)
    net = ctx.network
    assert _names(f, "fsdp_gather")[0].seconds == net.collective_seconds("all_gather", params * 2, net.shard_group())
    kept = build_context(gpt("parallel.zero_stage=3", "parallel.fsdp_reshard_after_forward=false"))
    assert not _names(kept.program.chunk(0, "B", 0), "fsdp_gather")
    piped = build_context(gpt("parallel.zero_stage=3", "parallel.fsdp_reshard_after_forward=false",
                              "parallel.pp=2", "training.global_batch_size=32"))
    assert not _names(piped.program.chunk(0, "F", 0), "fsdp_gather")
    assert piped.tail.param_gather_seconds([0]) > 0  # once per step instead


def test_fsdp2_copies_gathered_parameters_out_and_gradients_in_on_the_compute_stream(gpt):
    """``software.fsdp_copies`` (FSDP2): after each unit's gather the compute stream copies the unsharded
    parameters out of the gather buffer (read and write, BF16: 4 B per parameter) before the unit computes; after
    its backward it copies the gradients into the reduce-scatter buffer (read BF16, write FP32: 6 B per
    parameter), which the reduction waits for. Flat-buffer stacks (the default) copy nothing; under a pipeline
    (one gather and one reduction per step) no chunk carries them."""
    s = gpt("parallel.zero_stage=3", "software.fsdp_copies=true", "precision.grad_reduce=fp32")
    ctx = build_context(s)
    f, b = ctx.program.chunk(0, "F", 0), ctx.program.chunk(0, "B", 0)
    layer = sum(op.params for op in _layer(s).ops)
    outs, ins = _names(f, "fsdp_copy_out"), _names(b, "fsdp_copy_in_w")
    assert len(outs) == len(_names(b, "fsdp_copy_out")) == len(ins) == 6    # embedding, 4 layers, head
    assert outs[1].seconds == pytest.approx(ctx.costs.memory_seconds(layer * 4, "fsdp_copy_out"))
    assert ins[1].seconds == pytest.approx(ctx.costs.memory_seconds(layer * 6, "fsdp_copy_in"))
    assert all(t.stream == Stream.COMPUTE for t in outs + ins) and all(t.part == "W" for t in ins)
    gathers = [i for i, t in enumerate(f.tasks) if t.name == "fsdp_gather"]
    copies = [i for i, t in enumerate(f.tasks) if t.name == "fsdp_copy_out"]
    for g, c in zip(gathers, copies, strict=True):
        assert g in f.tasks[c].deps                       # the copy waits for its gather
        assert c in f.tasks[c + 1].deps                   # and the unit's first kernel for the copy
    assert not _names(build_context(gpt("parallel.zero_stage=3")).program.chunk(0, "F", 0), "fsdp_copy_out")
    # Under a pipeline gradients sync once per step: each micro-batch adds its BF16 gradients into the FP32
    # accumulator instead (read 2 B, read and write 4 B: 10 B per parameter).
    piped = build_context(gpt("parallel.zero_stage=3", "software.fsdp_copies=true", "parallel.pp=2",
                              "parallel.fsdp_reshard_after_forward=false", "training.global_batch_size=32",
                              "precision.grad_reduce=fp32"))
    pb = piped.program.chunk(0, "B", 0)
    assert not _names(pb, "fsdp_copy_in_w")
    added = _names(pb, "fsdp_accumulate_w")
    assert len(added) == 3                                            # embedding and 2 layers on stage 0
    assert added[1].seconds == pytest.approx(piped.costs.memory_seconds(layer * 10, "fsdp_copy_accumulate"))
    base = simulate_step(gpt("parallel.zero_stage=3", "precision.grad_reduce=fp32"), mode="fast").step_time_s
    assert simulate_step(s, mode="fast").step_time_s > base


def test_fp8_weight_gathers_move_one_byte_per_parameter_and_need_fsdp_with_fp8(gpt):
    """``precision.fp8_weight_gather`` (torchao's FSDP float8 all-gather): ZeRO-3 gathers 1 B per parameter instead
    of BF16's 2, and FSDP2's copy-out moves FP8 too; refused outside ZeRO-3 with tensorwise FP8 GEMMs."""
    fp8 = ("parallel.zero_stage=3", "software.fsdp_copies=true", "precision.fprop=fp8", "precision.dgrad=fp8",
           "precision.wgrad=fp8", "precision.fp8_scaling=tensorwise")
    s = gpt(*fp8, "precision.fp8_weight_gather=true", "cluster=h100_ib_1024", "cluster.num_nodes=2", nodes=2)
    ctx = build_context(s)
    layer = sum(op.params for op in _layer(s).ops)
    net = ctx.network
    f = ctx.program.chunk(0, "F", 0)
    assert _names(f, "fsdp_gather")[1].seconds == net.collective_seconds("all_gather", layer * 1, net.shard_group())
    assert _names(f, "fsdp_copy_out")[1].seconds == pytest.approx(ctx.costs.memory_seconds(layer * 2,
                                                                                            "fsdp_copy_out"))
    for bad in (("parallel.zero_stage=1", "precision.fprop=fp8", "precision.fp8_scaling=tensorwise"),
                ("parallel.zero_stage=3", "precision.fp8_scaling=tensorwise"),
                ("parallel.zero_stage=3", "precision.fprop=fp8")):
        with pytest.raises(SimInputError, match=r"precision\.fp8_weight_gather"):
            gpt(*bad, "precision.fp8_weight_gather=true", "cluster=h100_ib_1024", "cluster.num_nodes=1")


def test_fsdp_prefetch_depth_sets_which_compute_a_gather_waits_for(gpt):
    for depth in (0, 1, 2):
        f = build_context(gpt("parallel.zero_stage=3", f"parallel.fsdp_prefetch={depth}")).program.chunk(0, "F", 0)
        gathers = [i for i, t in enumerate(f.tasks) if t.name == "fsdp_gather"]
        for k, g in enumerate(gathers):
            waited = f.tasks[g].deps
            if k <= depth:
                assert waited == ()               # nothing to wait for: the first ones start at once
            else:
                assert waited == (f.groups[k - 1 - depth][-1],)


def test_reductions_per_zero_stage_in_the_rank_plans(gpt):
    def reductions(*ov):
        ctx = build_context(gpt("training.global_batch_size=32", *ov))
        plan = rank_plans(ctx.inputs, fast=True)[0]
        return sum(len(a.starts) + len(a.triggers) for a in plan.actions) + len(plan.end_triggers)

    mbs = 32 // 8
    assert reductions("parallel.zero_stage=1") == 1
    assert reductions("parallel.zero_stage=2") == mbs
    assert reductions("parallel.zero_stage=3") == mbs
    assert reductions("parallel.zero_stage=1", "parallel.overlap_grad_reduce=false") == 1


def test_all_reduce_costs_about_a_reduce_scatter_plus_an_all_gather(gpt):
    ddp = build_context(gpt("parallel.zero_stage=0", *WIDE, nodes=4)).tail
    zero1 = build_context(gpt("parallel.zero_stage=1", *WIDE, nodes=4)).tail
    assert ddp.grad_name == "grad_all_reduce" and zero1.grad_name == "grad_reduce_scatter"
    assert ddp.param_gather_seconds([0]) == 0
    ring = zero1.grad_sync_seconds(0) + zero1.param_gather_seconds([0])
    assert ddp.grad_sync_seconds(0) == pytest.approx(ring, rel=0.25)


def test_hybrid_sharding_gathers_inside_the_group_and_reduces_across(gpt):
    full = build_context(gpt("parallel.zero_stage=3", nodes=4))
    hsdp = build_context(gpt("parallel.zero_stage=3", "parallel.fsdp_shard_group=8", nodes=4))
    assert hsdp.network.shard_group().size == 8 and hsdp.network.replica_group().size == 4
    assert hsdp.network.shard_group().num_nodes == 1  # a node's NVLink only
    g_full = _names(full.program.chunk(0, "F", 0), "fsdp_gather")[1].seconds
    g_hsdp = _names(hsdp.program.chunk(0, "F", 0), "fsdp_gather")[1].seconds
    assert g_hsdp < g_full
    m_full = memory_per_rank(full.scenario, full.partition, full.schedule)[0]
    m_hsdp = memory_per_rank(hsdp.scenario, hsdp.partition, hsdp.schedule)[0]
    assert m_hsdp.optimizer == pytest.approx(4 * m_full.optimizer)


# ------------------------------------------------------------------------------ MoE under TP, EPLB


def test_tensor_parallel_ranks_dispatch_their_share_of_the_tokens(moe):
    one = moe()
    two = moe("parallel.tp=2", "parallel.sequence_parallel=true")
    assert two.expert_tokens_per_gpu == one.expert_tokens_per_gpu // 2
    l1 = build_context(one).loads.balanced_load()
    l2 = build_context(two).loads.balanced_load()
    k = one.model.n_activated_experts
    assert sum(l1.rows_per_expert) == one.expert_tokens_per_gpu * k
    assert sum(l2.rows_per_expert) == two.expert_tokens_per_gpu * k
    assert l2.dispatch_ib_bytes + l2.dispatch_nvlink_bytes == pytest.approx(
        (l1.dispatch_ib_bytes + l1.dispatch_nvlink_bytes) / 2)


def test_eplb_spare_slots_hold_expert_weights_and_gradients(moe):
    base = build_context(moe("experts.skew=zipf"))
    eplb = build_context(moe("experts.skew=zipf", "experts.policy=eplb"))  # default: one spare slot per GPU
    m0 = memory_per_rank(base.scenario, base.partition, base.schedule)[1]
    m1 = memory_per_rank(eplb.scenario, eplb.partition, eplb.schedule)[1]
    assert m1.weights > m0.weights and m1.gradients > m0.gradients
    assert m1.optimizer == pytest.approx(m0.optimizer)  # ZeRO-1: optimizer states spread over all replicas


# ------------------------------------------------------------------------------ pipeline stages


def test_embedding_and_head_only_stages_are_costed(gpt):
    s = gpt("parallel.pp=4", "parallel.stage_layers=[0, 2, 2, 0]", "training.global_batch_size=64")
    ctx = build_context(s)
    assert [u.kind for u in ctx.partition.stages[0]] == ["embed"]
    assert [u.kind for u in ctx.partition.stages[3]] == ["head"]
    for mode in ("fast", "detailed"):
        r = simulate_step(s, mode=mode, record_trace=False)
        assert r.step_time_s > 0
    mem = memory_per_rank(s, ctx.partition, ctx.schedule)
    assert mem[0].weights > 0 and mem[3].weights > 0
    with pytest.raises(SimInputError, match=r"stage_layers: stage 1 would hold nothing"):
        gpt("parallel.pp=4", "parallel.stage_layers=[2, 0, 1, 1]", "training.global_batch_size=64")


def test_full_recompute_runs_with_merged_pairs_in_both_modes(moe):
    """Full recompute re-sends its forward's all-to-all inside the backward; the pair merge still finds a
    dependency-respecting order (DualPipe's F&B pairs), in the detailed and the fast mode."""
    for mode in ("fast", "detailed"):
        full = simulate_step(moe("parallel.recompute=full"), mode=mode, record_trace=False)
        light = simulate_step(moe("parallel.recompute=none"), mode=mode, record_trace=False)
        assert full.step_time_s > light.step_time_s
        assert full.breakdown_s["overlapped"] > 0


def test_ep_overlap_never_slows_unpipelined_1f1b(moe):
    ov = ("parallel.pp=1", "parallel.schedule=1f1b", "training.global_batch_size=128")
    plain = simulate_step(moe(*ov), mode="fast", record_trace=False)
    combined = simulate_step(moe(*ov, "parallel.ep_overlap=true"), mode="fast", record_trace=False)
    assert combined.step_time_s <= plain.step_time_s
    assert combined.breakdown_s["overlapped"] > 0


@pytest.mark.parametrize(("schedule", "extra"), [
    ("gpipe", ()), ("1f1b", ()), ("zb1p", ()), ("interleaved-1f1b", ("parallel.vpp=2",)),
])
def test_full_recompute_runs_with_every_pipeline_schedule(gpt, schedule, extra):
    ov = ("parallel.pp=2", f"parallel.schedule={schedule}", *extra, "training.global_batch_size=32")
    for mode in ("fast", "detailed"):
        full = simulate_step(gpt(*ov, "parallel.recompute=full"), mode=mode, record_trace=False)
        none = simulate_step(gpt(*ov), mode=mode, record_trace=False)
        assert full.step_time_s > none.step_time_s


def test_full_recompute_runs_with_dualpipev(moe):
    s = moe("parallel.schedule=dualpipev", "parallel.pp=2", "parallel.recompute=full")
    for mode in ("fast", "detailed"):
        assert simulate_step(s, mode=mode, record_trace=False).breakdown_s["overlapped"] > 0


def test_run_and_experts_share_one_default_of_redundant_experts(moe):
    from sim.experts.placement import redundant_experts
    from sim.step import with_policy

    s = moe()
    assert redundant_experts(s) == 0                       # not EPLB: no spare slots
    assert redundant_experts(with_policy(s, "eplb")) == s.parallel.ep  # one per GPU of the EP group
    assert redundant_experts(moe("experts.policy=eplb")) == s.parallel.ep
    assert redundant_experts(moe("experts.policy=eplb", "experts.num_redundant_experts=8")) == 8


# ------------------------------------------------------------------------------ gradient accumulation


def test_fp32_gradient_pass_after_every_weight_gradient_chunk(gpt):
    """``software.grad_accumulation: fp32_pass`` (DeepSpeed's BF16 optimizer): each chunk that produces weight
    gradients (B, W) ends with one memory-bound pass of 18 B per parameter of the stage (read the BF16 gradient,
    write and read its FP32 cast, read and write the FP32 accumulator); F and I chunks have none, and the
    default (fused accumulation) has none anywhere."""
    s = gpt("software.grad_accumulation=fp32_pass", "parallel.pp=2")
    ctx = build_context(s)
    prog = ctx.program
    layer = sum(op.params for op in _layer(s).ops)  # the tiny GPT: 4 layers, 2 per stage, no TP
    stage0 = 2 * layer + sum(op.params for op in model_units(s.model)[0].ops)  # + the embedding
    for kind in ("B", "W"):
        (task,) = _names(prog.chunk(0, kind, 0), "fp32_grads_w")
        assert task.stream == Stream.COMPUTE and task.part == "W"
        assert task.seconds == pytest.approx(ctx.costs.memory_seconds(stage0 * 18, "grad_accumulation"))
    for kind in ("F", "I"):
        assert not _names(prog.chunk(0, kind, 0), "fp32_grads_w")
    plain = build_context(gpt("parallel.pp=2")).program
    assert not _names(plain.chunk(0, "B", 0), "fp32_grads_w")
    assert simulate_step(s, mode="fast").step_time_s > simulate_step(gpt("parallel.pp=2"), mode="fast").step_time_s


# ------------------------------------------------------------------------------ pipeline sends


def test_scatter_gather_sends_a_tp_slice_and_regathers_it(gpt):
    """Megatron-LM's scatter/gather optimization (Narayanan et al. 2021 4.1): each TP rank sends 1/tp of the
    boundary activation, and the receiving TP group all-gathers the whole tensor over NVLink. With sequence
    parallelism the activation is already split: no regather. Off: every TP rank sends all of it."""
    base = ("parallel.tp=4", "parallel.pp=2")
    full = build_context(gpt(*base)).program
    sg_ctx = build_context(gpt(*base, "software.pp_scatter_gather=true"))
    sg = sg_ctx.program
    whole = sg.tokens * D * 2  # BF16
    assert full.p2p_bytes() == pytest.approx(whole)
    assert full.p2p_regather_seconds() == 0.0
    assert sg.p2p_bytes() == pytest.approx(whole / 4)
    net = sg_ctx.network
    assert sg.p2p_regather_seconds() == pytest.approx(net.collective_seconds("all_gather", whole, net.tp_group()))
    sp = build_context(gpt(*base, "parallel.sequence_parallel=true", "software.pp_scatter_gather=true")).program
    assert sp.p2p_bytes() == pytest.approx(whole / 4) and sp.p2p_regather_seconds() == 0.0
    asm_sg, asm_full = Assembler(sg_ctx.inputs), Assembler(build_context(gpt(*base)).inputs)
    assert asm_sg.send(0, 1)[0] == pytest.approx(net.p2p_seconds(whole / 4, net.same_node(0, 1))
                                                 + sg.p2p_regather_seconds())
    assert asm_full.send(0, 1)[0] == pytest.approx(net.p2p_seconds(whole, net.same_node(0, 1)))
