"""Invariants of every chunk a program builds, over the mechanisms that reshape a block's tasks (tensor and
sequence parallelism with and without communication overlap, context parallelism, full recompute, ZeRO-3):

- conservation: the compute tasks of a pass add up to the op costs of that pass (OpCoster) over the stage's
  units, however the block is cut into pieces; pipelining a collective with its GEMM (TE's ring exchange) moves
  the same bytes in ``tp - 1`` slices, so the slices add up to the unpipelined collective;
- parts: a forward chunk is all ``F``; a backward's input-gradient work (recompute and its communication
  included) is ``I`` and the weight-gradient tasks ``W`` (what the schedules' split backward moves);
- streams and links: collectives hold the communication SMs on their links, compute does not;
- each chunk is a DAG in list order (the engine runs each stream in list order) and each layer's group holds
  that layer's tasks.
"""

from __future__ import annotations

import pytest

from sim.context import build_context
from sim.program.tasks import NIC, NVLINK
from sim.timeline import Stream

TP2 = ("parallel.tp=2",)
SP = (*TP2, "parallel.sequence_parallel=true")
OVERLAP = (*SP, "parallel.tp_comm_overlap=true")
TP4_OVERLAP = ("parallel.tp=4", "parallel.sequence_parallel=true", "parallel.tp_comm_overlap=true")
LAYOUTS = {
    "tp": TP2, "sp": SP, "sp_overlap": OVERLAP, "tp4_overlap": TP4_OVERLAP,
    "cp_ring": ("parallel.cp=2",), "cp_gather": ("parallel.cp=2", "parallel.cp_mode=all_gather"),
    "cp_pytorch": ("parallel.cp=4", "parallel.cp_mode=pytorch", "parallel.recompute=full"),
    "tp_cp_ring": (*SP, "parallel.cp=2"),
    "sp_full_recompute": (*SP, "parallel.recompute=full"),
    "sp_overlap_full_recompute": (*OVERLAP, "parallel.recompute=full"),
    "zero3": ("parallel.zero_stage=3",),
}


def _ctx(gpt, name):
    return build_context(gpt(*LAYOUTS[name]))


def _compute(chunk, part=None):
    return sum(t.seconds for t in chunk.tasks if t.stream == Stream.COMPUTE and (part is None or t.part == part))


def _expected(ctx, stage, cost_part):
    """The op costs of the stage's units in one part. Under ring context parallelism the attention core's
    ``cp`` steps share its cost, the steps after the diagonal one at the non-causal rate (their share of the
    causal step's time, ``offdiagonal_share``; a backward's re-run forward at the forward's share)."""
    coster, tokens, cp = ctx.program.coster, ctx.program.tokens, ctx.scenario.parallel.cp
    total = 0.0
    for u in ctx.partition.stages[stage]:
        for op in u.ops:
            t = coster.seconds(op, cost_part, tokens)
            if op.kind == "attention" and cp > 1 and ctx.scenario.parallel.cp_mode == "ring" and t > 0:
                fwd = coster.seconds(op, "fwd", tokens) * coster.recompute_fraction(op) if cost_part == "input" else 0
                rest = t - fwd if cost_part == "input" else t
                f_share = coster.offdiagonal_share(op, "fwd")
                b_share = coster.offdiagonal_share(op, "fwd" if cost_part == "fwd" else "dgrad")
                t = (fwd + rest) / cp + (cp - 1) / cp * (fwd * f_share + rest * b_share)
            total += t
    return total


@pytest.mark.parametrize("layout", ["tp", "sp", "cp_ring", "cp_gather", "tp_cp_ring", "sp_full_recompute", "zero3"])
def test_compute_tasks_add_up_to_the_op_costs_of_their_pass(gpt, layout):
    ctx = _ctx(gpt, layout)
    for stage in range(len(ctx.partition.stages)):
        f, b = ctx.program.chunk(stage, "F", 0), ctx.program.chunk(stage, "B", 0)
        assert _compute(f) == pytest.approx(_expected(ctx, stage, "fwd"), rel=1e-9)
        assert _compute(b, "I") == pytest.approx(_expected(ctx, stage, "input"), rel=1e-9)
        assert _compute(b, "W") == pytest.approx(_expected(ctx, stage, "weight"), rel=1e-9)
        # The split backward: I keeps some weight-gradient work beside its communication, W the rest.
        i, w = ctx.program.chunk(stage, "I", 0), ctx.program.chunk(stage, "W", 0)
        assert _compute(i, "I") == pytest.approx(_expected(ctx, stage, "input"), rel=1e-9)
        assert _compute(i, "W") + _compute(w) == pytest.approx(_expected(ctx, stage, "weight"), rel=1e-9)


@pytest.mark.parametrize(("piped", "plain"), [("sp_overlap", "sp"), ("tp4_overlap", None),
                                              ("sp_overlap_full_recompute", "sp_full_recompute")])
def test_pipelined_collectives_move_the_same_bytes_in_tp_minus_one_slices(gpt, piped, plain):
    """Each pipelined collective is ``tp - 1`` slices (the local chunk needs no transfer) that add up to the
    collective it replaces; the chunks together cost the whole GEMM and the reduce-scatter's sum of partials
    adds to it, so compute never shrinks."""
    overlap = _ctx(gpt, piped)
    base = build_context(gpt(*[o for o in LAYOUTS[piped] if "overlap" not in o])) if plain is None else _ctx(gpt,
                                                                                                             plain)
    tp = overlap.program.tp
    for kind in ("F", "B"):
        a, b = overlap.program.chunk(0, kind, 0), base.program.chunk(0, kind, 0)
        names = {t.name for t in b.tasks if t.name.startswith("tp_")}
        assert names == {t.name for t in a.tasks if t.name.startswith("tp_")}
        for name in names:
            total = sum(t.seconds for t in a.tasks if t.name == name)
            assert total == pytest.approx(sum(t.seconds for t in b.tasks if t.name == name), rel=1e-9), name
        sliced = [n for n in names if sum(t.name == n for t in a.tasks) > sum(t.name == n for t in b.tasks)]
        # Forward: the entry gather into the first GEMM, the exit GEMM into its scatter, per block and layer.
        want = {"tp_ag_attn", "tp_rs_attn", "tp_ag_mlp", "tp_rs_mlp"} if kind == "F" else {
            "tp_ag_attn_b", "tp_rs_attn_b", "tp_ag_mlp_b", "tp_rs_mlp_b"}
        # (and the head's entry gather); TP 2: one slice, as many tasks as unpipelined.
        assert want <= set(sliced) if tp > 2 else not sliced
        assert all(n.startswith(("tp_ag_", "tp_rs_")) for n in sliced)
        for name in want:
            assert sum(t.name == name for t in a.tasks) == (tp - 1) * sum(t.name == name for t in b.tasks)
        # Each pipelined GEMM runs as tp chunks (one before the first slice arrives / after the last leaves).
        count = lambda c: sum(t.stream == Stream.COMPUTE and t.part != "W" for t in c.tasks)  # noqa: E731
        assert count(a) > count(b)
        assert _compute(a) >= _compute(b) * (1 - 1e-12)


MOE_LAYOUTS = {"moe": (), "moe_full_recompute": ("parallel.recompute=full",),
               "moe_tp2_sp": ("parallel.tp=2", "parallel.sequence_parallel=true")}


@pytest.mark.parametrize("layout", [*LAYOUTS, *MOE_LAYOUTS])
def test_parts_streams_links_and_order(gpt, moe, layout):
    ctx = _ctx(gpt, layout) if layout in LAYOUTS else build_context(moe(*MOE_LAYOUTS[layout]))
    prog = ctx.program
    for stage, units in enumerate(ctx.partition.stages):
        for kind in ("F", "B", "I", "W"):
            chunk = prog.chunk(stage, kind, 0)
            parts = {t.part for t in chunk.tasks}
            allowed = {"F": {"F"}, "B": {"I", "W"}, "I": {"I", "W"}, "W": {"W"}}[kind]
            assert parts <= allowed, (kind, parts)
            if kind in ("F", "B", "I"):
                assert parts >= ({"F"} if kind == "F" else {"I"})
            for i, t in enumerate(chunk.tasks):
                assert all(0 <= d < i for d in t.deps), (kind, i, t)
                if t.part == "W":
                    assert t.stream == Stream.COMPUTE and t.name.endswith("_w"), t
                if t.stream == Stream.COMPUTE:
                    assert t.links == 0 and not t.holds_sms, t
                else:
                    assert t.holds_sms and t.links in (NIC, NVLINK, NIC | NVLINK), t
                if t.name.startswith("tp_"):
                    assert t.stream == Stream.COMM and t.links == NVLINK, t  # TP stays inside the node
                if kind != "F" and t.stream == Stream.COMPUTE and t.part == "I":
                    assert t.name.endswith("_b"), t  # input-gradient compute: the block's name + _b
            # Each layer's group holds that layer's tasks (forward order for F, backward order otherwise).
            order = units if kind == "F" else tuple(reversed(units))
            assert len(chunk.groups) == len(order)
            for unit, group in zip(order, chunk.groups, strict=True):
                assert all(chunk.tasks[i].layer == unit.index for i in group)
            assert [i for g in chunk.groups for i in g] == list(range(len(chunk.tasks)))


def _pipelines(chunk, layer, comm):
    """Indices of the slices named ``comm`` in ``layer`` and of the GEMM chunks they pipeline with."""
    return [i for i, t in enumerate(chunk.tasks) if t.layer == layer and t.name == comm]


def test_ring_exchange_pipelines_by_hand(gpt):
    """TE's ring exchange with TP 4. Gather then GEMM: the local quarter's GEMM and the first slice both start
    after the task before (``before``); each later GEMM chunk waits for the previous chunk and its slice, each
    slice for the previous one. GEMM then reduce-scatter: the GEMM chunks run back to back, slice k leaves after
    GEMM chunk k + 1 and slice k - 1; what follows waits for the last slice. In backward the weight gradients run
    after the last GEMM chunk of the input gradient and the re-gathered input, beside the scatter's tail
    (Megatron-LM). Slices are a third of the collective each, the GEMM chunks a quarter of the tokens each."""
    ctx = build_context(gpt(*TP4_OVERLAP))
    prog, net = ctx.program, ctx.network
    ag = net.collective_seconds("all_gather", prog.tokens * 256 * 2, net.tp_group()) / 3
    rs = net.collective_seconds("reduce_scatter", prog.tokens * 256 * 2, net.tp_group()) / 3
    for kind, suffix in (("F", ""), ("B", "_b")):
        chunk = prog.chunk(0, kind, 0)
        t = chunk.tasks
        for unit in ctx.partition.stages[0]:
            if unit.kind != "layer":
                continue
            for block in ("attn", "mlp"):
                slices = _pipelines(chunk, unit.index, f"tp_ag_{block}{suffix}")
                gemms = [slices[0] - 1] + [s + 1 for s in slices]
                (before,) = t[gemms[0]].deps
                assert t[slices[0]].deps == (before,)
                for k in range(1, 4):
                    assert t[gemms[k]].deps == (gemms[k - 1], slices[k - 1])
                    assert t[slices[k - 1]].deps == ((slices[k - 2],) if k > 1 else (before,))
                assert [t[s].seconds for s in slices] == pytest.approx([ag] * 3)
                assert len({t[g].seconds for g in gemms}) == 1 and {t[g].stream for g in gemms} == {Stream.COMPUTE}
                sends = _pipelines(chunk, unit.index, f"tp_rs_{block}{suffix}")
                gemms = [sends[0] - 2, sends[0] - 1] + [s + 1 for s in sends[:-1]]
                for k in range(1, 4):
                    assert t[gemms[k]].deps == (gemms[k - 1],)
                    assert t[sends[k - 1]].deps == (gemms[k], *((sends[k - 2],) if k > 1 else ()))
                assert [t[s].seconds for s in sends] == pytest.approx([rs] * 3)
                after = sends[-1] + 1
                if kind == "B":
                    (remat,) = [i for i, x in enumerate(t) if x.layer == unit.index
                                and x.name == f"tp_ag_{block}_input"]
                    assert t[after].name == f"{block}_w" and t[after].deps == (gemms[-1], remat)
                    after += 1
                assert t[after].deps == (sends[-1],)


def test_context_parallel_ring_by_hand(gpt):
    """Ring attention over CP 4: the core runs as 4 steps of a quarter of its work. Forward: the first K/V block
    leaves when the core starts (after the task before it), each next one after the previous send; step k waits
    for step k - 1 and block k. Backward: block k (K, V and their gradients, 2 x the bytes; 3 x when the core is
    recomputed, its forward blocks once more) leaves after the previous send and the step that computed it; the
    own block's gradient comes home last. The diagonal step costs a quarter of the op (a causal call), the
    three after it the same at the non-causal rate (equal to each other)."""
    for recompute, per in (("none", 2), ("selective", 3)):
        ctx = build_context(gpt("parallel.cp=4", f"parallel.recompute={recompute}"))
        prog, net = ctx.program, ctx.network
        core = next(op for u in ctx.partition.stages[0] for op in u.ops if op.kind == "attention")
        kv = prog._kv_bytes(core)
        for kind, part, cost, step_bytes in (("F", "F", "fwd", kv), ("B", "I", "input", per * kv)):
            chunk = prog.chunk(0, kind, 0)
            t = chunk.tasks
            name = "attn" if kind == "F" else "attn_b"
            layer = next(u.index for u in ctx.partition.stages[0] if u.kind == "layer")
            sends = [i for i, x in enumerate(t) if x.layer == layer and x.name == "cp_kv"]
            steps = [sends[0] - 1] + [s + 1 for s in sends]
            assert all(t[i].name == name for i in steps)
            assert t[steps[0]].seconds == pytest.approx(prog.coster.seconds(core, cost, prog.tokens) / 4)
            assert len({t[i].seconds for i in steps[1:]}) == 1 and t[steps[1]].seconds < t[steps[0]].seconds
            assert [t[s].seconds for s in sends] == [net.cp_ring_step_seconds(step_bytes)] * 3
            assert {(t[s].part, t[s].stream, t[s].links, t[s].holds_sms) for s in sends} == {
                (part, Stream.COMM, prog.cp_links, True)}
            (start,) = t[steps[0]].deps
            for k in range(1, 4):
                assert t[steps[k]].deps == (steps[k - 1], sends[k - 1])
                if kind == "F":
                    assert t[sends[k - 1]].deps == ((sends[k - 2],) if k > 1 else (start,))
                else:
                    assert t[sends[k - 1]].deps == (*((sends[k - 2],) if k > 1 else ()), steps[k - 1])
            if kind == "B":
                home = steps[-1] + 1
                assert t[home].name == "cp_dkv" and t[home].deps == (steps[-1], sends[-1])
                assert t[home].seconds == net.cp_ring_step_seconds(kv)
    # All-gather CP: K and V of the whole sequence gathered before the core, their gradients scattered after.
    ctx = build_context(gpt("parallel.cp=4", "parallel.cp_mode=all_gather"))
    prog, net = ctx.program, ctx.network
    core = next(op for u in ctx.partition.stages[0] for op in u.ops if op.kind == "attention")
    full = prog._kv_bytes(core) * 4
    b = prog.chunk(0, "B", 0).tasks
    g = next(i for i, x in enumerate(b) if x.name == "cp_kv_gather")
    assert b[g].seconds == net.collective_seconds("all_gather", full, net.cp_group()) and b[g].part == "I"
    assert b[g + 1].name == "attn_b" and b[g + 1].deps == (g,)
    assert b[g + 2].name == "cp_dkv_scatter" and b[g + 2].deps == (g + 1,)
    assert b[g + 2].seconds == net.collective_seconds("reduce_scatter", full, net.cp_group())
    assert not [x for x in prog.chunk(0, "F", 0).tasks if x.name == "cp_dkv_scatter"]


@pytest.mark.parametrize("sp", [True, False])
def test_full_recompute_resends_each_blocks_tp_collectives_first(gpt, sp):
    """Full recompute re-runs each block's forward inside the backward, its communication included (Korthikanti
    et al. 2022 section 5): with SP the entry all-gather and the exit reduce-scatter, without SP the all-reduce;
    both before the block's input-gradient work, as part of it (I). Selective recompute re-sends nothing."""
    layout = (*(SP if sp else TP2), "parallel.recompute=full")
    ctx = build_context(gpt(*layout))
    prog, net = ctx.program, ctx.network
    full = prog.tokens * 256 * 2  # tokens x hidden, BF16 (the tiny GPT's gather and reduce widths are D)
    b = prog.chunk(0, "B", 0).tasks
    for unit in ctx.partition.stages[0]:
        if unit.kind != "layer":
            continue
        for block in ("attn", "mlp"):
            mine = [(i, t) for i, t in enumerate(b) if t.layer == unit.index]
            first_b = min(i for i, t in mine if t.name == f"{block}_b")
            gathers = [(i, t) for i, t in mine if t.name == f"tp_ag_{block}_recompute"]
            exits = [(i, t) for i, t in mine if t.name == f"tp_{block}_recompute"]
            assert len(exits) == 1 and len(gathers) == (1 if sp else 0)
            (i, t), = exits
            kind = "reduce_scatter" if sp else "all_reduce"
            assert t.seconds == net.collective_seconds(kind, full, net.tp_group()) and i < first_b
            assert (t.part, t.stream, t.links, t.holds_sms) == ("I", Stream.COMM, NVLINK, True)
            for i, t in gathers:
                assert t.seconds == net.collective_seconds("all_gather", full, net.tp_group()) and i < first_b
    selective = build_context(gpt(*layout[:-1], "parallel.recompute=selective")).program.chunk(0, "B", 0)
    assert not [t for t in selective.tasks if t.name.endswith("_recompute")]


@pytest.mark.parametrize("sp", [True, False])
def test_full_recompute_resends_nothing_for_the_output_head(gpt, sp):
    """The output head (vocabulary-parallel GEMM and loss) runs once: its TP collectives are not re-sent in the
    backward, the layers' are."""
    ctx = build_context(gpt(*(SP if sp else TP2), "parallel.recompute=full", "parallel.pp=1"))
    resent = {t.name for t in ctx.program.chunk(0, "B", 0).tasks if t.name.endswith("_recompute")}
    assert resent == ({"tp_ag_attn_recompute", "tp_ag_mlp_recompute"} if sp else set()) | {
        "tp_attn_recompute", "tp_mlp_recompute"}  # no tp_*head_recompute
