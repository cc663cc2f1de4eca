"""Overlapped forward/backward pairs (DualPipe's ``F&B``): two chunks' tasks merged into one work.

A pair interleaves a forward chunk and a backward chunk of different micro-batches layer by layer in
DeepSeek's order (the profile of deepseek-ai/profile-data, ``train.json``): compute ``attn(F), mlp(B), mlp(W),
mlp(F), attn(B), attn(W)``; communication ``combine(B), dispatch(F), dispatch(B), combine(F)``; so one chunk's
all-to-all runs while the other computes. The preferred order is kept wherever the two chunks' dependencies
allow it; where a chunk's extra tasks (full recompute re-runs its forward communication inside the backward)
make the preferred order deadlock, the merge falls back to a dependency-respecting order that still follows
the preference where it can. Each chunk always keeps its internal order.
"""

from __future__ import annotations

from sim.program.chunks import Chunk
from sim.program.tasks import Task, Work
from sim.timeline import Stream


def _shifted(chunk: Chunk, off: int, extra_deps: tuple[int, ...] = ()) -> tuple[Task, ...]:
    return tuple(Task(t.name, t.part, t.stream, t.seconds, tuple(d + off for d in t.deps) or extra_deps, t.layer,
                      t.links, t.holds_sms) for t in chunk.tasks)


def _interleave(first: list[int], second: list[int]) -> list[int]:
    out: list[int] = []
    for i in range(max(len(first), len(second))):
        out += first[i:i + 1] + second[i:i + 1]
    return out


def _runs_to_completion(tasks: tuple[Task, ...], orders: list[list[int]]) -> bool:
    """Whether streams running ``orders`` (each task after its deps and its stream predecessor) finish."""
    done = [False] * len(tasks)
    ptr = [0] * len(orders)
    progressed = True
    while progressed:
        progressed = False
        for s, order in enumerate(orders):
            while ptr[s] < len(order) and all(done[d] for d in tasks[order[ptr[s]]].deps):
                done[order[ptr[s]]] = True
                ptr[s] += 1
                progressed = True
    return all(done)


def _respecting(tasks: tuple[Task, ...], preferred: list[list[int]]) -> list[list[int]]:
    """Per-stream orders from one global order that respects every dependency: take the next preferred task
    of some stream when its dependencies are placed, else the lowest-index unplaced task (its dependencies and
    its chunk's earlier tasks all have lower indices, so it is always placeable)."""
    placed = [False] * len(tasks)
    heads = [0] * len(preferred)
    out: list[list[int]] = [[] for _ in preferred]
    left = len(tasks)
    while left:
        took = False
        for s, pref in enumerate(preferred):
            while heads[s] < len(pref) and placed[pref[heads[s]]]:
                heads[s] += 1
            if heads[s] < len(pref):
                i = pref[heads[s]]
                if all(placed[d] for d in tasks[i].deps) and _chunk_predecessors_placed(tasks, placed, i):
                    placed[i] = took = True
                    out[s].append(i)
                    left -= 1
        if not took:
            i = placed.index(False)
            placed[i] = True
            out[tasks[i].stream].append(i)
            left -= 1
    return out


def _chunk_predecessors_placed(tasks: tuple[Task, ...], placed: list[bool], i: int) -> bool:
    """Whether the tasks before ``i`` on its stream, in its own chunk's order, are placed (tasks of one chunk
    are contiguous and in chunk order; ``layer``-free check by stream and index)."""
    s = tasks[i].stream
    return all(placed[j] for j in range(i) if tasks[j].stream == s and _same_chunk(tasks, j, i))


def _same_chunk(tasks: tuple[Task, ...], j: int, i: int) -> bool:
    return _chunk_of(tasks, j) == _chunk_of(tasks, i)


def _chunk_of(tasks: tuple[Task, ...], i: int) -> int:
    return 0 if tasks[i].part == "F" else 1


def merge_pair(f: Chunk, b: Chunk) -> Work:
    """Overlap forward chunk ``f`` with backward chunk ``b`` (different micro-batches) layer by layer.

    Per pair of layer groups: compute ``F[0], B[0], B[1], F[1:], B[2:]``; communication alternating, starting
    from the backward side (see the module docstring). Unmatched groups run in their own order.
    """
    off = len(f.tasks)
    tasks = f.tasks + _shifted(b, off)
    compute: list[int] = []
    comm: list[int] = []
    for i in range(max(len(f.groups), len(b.groups))):
        fg = f.groups[i] if i < len(f.groups) else ()
        bg = tuple(j + off for j in b.groups[i]) if i < len(b.groups) else ()
        fc = [j for j in fg if tasks[j].stream == Stream.COMPUTE]
        bc = [j for j in bg if tasks[j].stream == Stream.COMPUTE]
        compute += fc[:1] + bc[:2] + fc[1:] + bc[2:]
        comm += _interleave([j for j in bg if tasks[j].stream == Stream.COMM],
                            [j for j in fg if tasks[j].stream == Stream.COMM])
    others = [[i for i, t in enumerate(tasks) if t.stream == s] for s in Stream if s > Stream.COMM]
    orders = [compute, comm, *others]
    if not _runs_to_completion(tasks, orders):
        orders = _respecting(tasks, orders)
    return Work(tasks, tuple(tuple(o) for o in orders))


def sequential_pair(f: Chunk, b: Chunk) -> Work:
    """Run a scheduled F&B pair's chunks one after the other, without overlap (a what-if baseline)."""
    off = len(f.tasks)
    tails = tuple(o[-1] for o in f.work.orders if o)
    return Work.of(f.tasks + _shifted(b, off, tails))
