"""Overlapped forward/backward pairs (sim.program.pairs): DualPipe's F&B merge keeps every task, each chunk's own
order and every dependency, and follows DeepSeek's per-layer order where it can."""

from __future__ import annotations

import pytest

from sim.context import build_context
from sim.program import pairs
from sim.program.pairs import merge_pair, sequential_pair
from sim.program.tasks import Task
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


def _t(part, stream, deps=()):
    return Task("t", part, stream, 1.0, deps)


def test_deadlock_check_and_fallback_order_by_hand():
    """Two chunks' tasks on two streams. Preferred: compute runs the backward's task 2 before the forward's 0,
    but 2 waits for 1 (comm), which waits for 0: a deadlock, detected; the fallback places, per stream, the
    preferred task whenever its dependencies and its own chunk's earlier tasks on that stream are placed, else
    the lowest unplaced task."""
    comp, comm = Stream.COMPUTE, Stream.COMM
    tasks = (_t("F", comp), _t("F", comm, (0,)), _t("I", comp, (1,)), _t("I", comp))
    preferred = [[2, 0, 3], [1]]
    assert not pairs._runs_to_completion(tasks, [*preferred, [], []])
    assert pairs._runs_to_completion(tasks, [[0, 2, 3], [1], [], []])
    assert pairs._runs_to_completion((), [[], []])
    # 2 waits for 1 (not placed), 0 is placeable, then 1 (comm), then 2 (now placeable) and 3.
    assert pairs._respecting(tasks, [*preferred, [], []]) == [[0, 2, 3], [1], [], []]
    # A chunk's own order holds: 3 (backward) cannot pass the backward's 2 on the compute stream.
    assert pairs._respecting(tasks, [[3, 0, 2], [1], [], []]) == [[0, 2, 3], [1], [], []]
    assert [pairs._chunk_of(tasks, i) for i in range(4)] == [0, 0, 1, 1]
    assert pairs._interleave([1, 2, 3], [4]) == [1, 4, 2, 3] and pairs._interleave([], [5, 6]) == [5, 6]
