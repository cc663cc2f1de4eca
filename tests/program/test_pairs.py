"""Overlapped forward/backward pairs (sim.program.pairs): DualPipe's F&B merge keeps every task, each chunk's own
order and every dependency, and follows DeepSeek's per-layer order where it can."""

from __future__ import annotations

import pytest

from sim.context import build_context
from sim.program.pairs import merge_pair, sequential_pair
from sim.timeline import Stream


def _runs(work) -> bool:
    """Whether each stream running its order (a task after its dependencies and its stream predecessor)
    completes: the engine's rule."""
    done, ptr, progressed = [False] * len(work.tasks), [0] * len(work.orders), True
    while progressed:
        progressed = False
        for s, order in enumerate(work.orders):
            while ptr[s] < len(order) and all(done[d] for d in work.tasks[order[ptr[s]]].deps):
                done[order[ptr[s]]], ptr[s], progressed = True, ptr[s] + 1, True
    return all(done)


@pytest.mark.parametrize("overrides", [(), ("parallel.recompute=full",)], ids=["plain", "full_recompute"])
def test_a_merged_pair_keeps_every_task_its_chunk_order_and_dependencies(moe, overrides):
    ctx = build_context(moe(*overrides))
    f, b = ctx.program.chunk(1, "F", 0), ctx.program.chunk(1, "B", 1)
    work = merge_pair(f, b)
    off = len(f.tasks)
    assert work.tasks[:off] == f.tasks
    for t, u in zip(work.tasks[off:], b.tasks, strict=True):
        assert (t.name, t.part, t.stream, t.seconds, t.layer, t.links, t.holds_sms) == (
            u.name, u.part, u.stream, u.seconds, u.layer, u.links, u.holds_sms)
        assert t.deps == tuple(d + off for d in u.deps)
    for s in Stream:
        order = work.orders[s]
        assert sorted(order) == [i for i, t in enumerate(work.tasks) if t.stream == s]
        assert [i for i in order if i < off] == [i for i in range(off) if f.tasks[i].stream == s]
        assert [i - off for i in order if i >= off] == [i for i, t in enumerate(b.tasks) if t.stream == s]
    assert _runs(work)


def test_deepseeks_layer_order_when_nothing_blocks_it(moe):
    """Per pair of layer groups, compute F[0], B[0], B[1], F[1:], B[2:] (attn(F), mlp(B), mlp(W), mlp(F), ...)
    and communication alternating from the backward side (combine(B), dispatch(F), dispatch(B), combine(F))."""
    ctx = build_context(moe())
    f, b = ctx.program.chunk(1, "F", 0), ctx.program.chunk(1, "B", 1)
    work = merge_pair(f, b)
    off = len(f.tasks)
    fg, bg = f.groups[0], tuple(j + off for j in b.groups[0])
    fc = [j for j in fg if work.tasks[j].stream == Stream.COMPUTE]
    bc = [j for j in bg if work.tasks[j].stream == Stream.COMPUTE]
    n = len(fc) + len(bc)
    assert list(work.orders[Stream.COMPUTE][:n]) == fc[:1] + bc[:2] + fc[1:] + bc[2:]
    fm = [j for j in fg if work.tasks[j].stream == Stream.COMM]
    bm = [j for j in bg if work.tasks[j].stream == Stream.COMM]
    alternating = [x for pair in zip(bm, fm, strict=False) for x in pair]
    assert list(work.orders[Stream.COMM][:len(alternating)]) == alternating
    assert len(fm) >= 2 and len(bm) >= 2  # dispatch and combine each way: the interleave is exercised


def test_a_sequential_pair_runs_the_backward_after_the_forward(moe):
    ctx = build_context(moe())
    f, b = ctx.program.chunk(1, "F", 0), ctx.program.chunk(1, "B", 1)
    work = sequential_pair(f, b)
    off = len(f.tasks)
    tails = tuple(o[-1] for o in f.work.orders if o)
    for t, u in zip(work.tasks[off:], b.tasks, strict=True):
        assert t.deps == (tuple(d + off for d in u.deps) or tails)
    assert _runs(work)
