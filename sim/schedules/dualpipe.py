"""DualPipe and DualPipeV: bidirectional pipelines with overlapped forward/backward pairs.

Written from the per-rank 8-step structure of deepseek-ai/DualPipe (``dualpipe/dualpipe.py`` and
``dualpipe/dualpipev.py``, commit 3da1bbe: steps 1-8 of ``step``), and the DeepSeek-V3 technical report
(arXiv 2412.19437) §3.2.1.

Each rank holds two model chunks, called *phase 0* and *phase 1*. For DualPipe with P ranks, H = P/2 and
h = min(r, P-1-r); phase 0 is the chunk in the shallow half of its pipeline (stage h), phase 1 the deep
one (stage P-1-h); ranks r < H see direction 0 as phase 0, ranks r >= H direction 1. Each direction gets
N/2 micro-batches. DualPipeV runs the same template with H := P, h := r and N/2 := N on one direction
whose 2P stages fold into a V: rank r holds stage r (phase 0) and stage 2P-1-r (phase 1).

The eight steps on every rank (n = micro-batches per phase):

1. 2(H-h-1) x F0
2. (h+1) x F0, F1
3. (H-h-1) x I1, W, F1                       (zero bubble: W right after its I)
4. (n-2H+h+1) x F0&B1, F1&B0                 (the middle rank(s) run the first F0&B1 as F0 then B1)
5. (H-h-1) x B1, F1&B0
6. (h+1) x B1, B0                            (split into I from iteration (h+1)//2: B1 first if h is odd)
7. (H-h-1) x W, I0
8. (h+1) x W

Micro-batches are consumed first-in first-out per phase; each W performs the weight gradient of the oldest
pending I (DualPipe's ``WeightGradStore`` queue).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from sim.schedules.actions import Action, Phase, Schedule

ChunkRef = tuple[int, int]  # (direction, stage)


class _RankBuilder:
    """Emits one rank's actions for the 8-step template, tracking FIFO micro-batch ids per phase."""

    def __init__(self, chunks: tuple[ChunkRef, ChunkRef]) -> None:
        self.chunks = chunks
        self.next_f = [0, 0]
        self.next_b = [0, 0]
        self.pending: deque[Action] = deque()
        self.actions: list[Action] = []

    def f(self, phase: int) -> Action:
        d, s = self.chunks[phase]
        self.next_f[phase] += 1
        return Action(Phase.F, s, self.next_f[phase] - 1, d)

    def b(self, phase: int, zero_bubble: bool = False) -> Action:
        d, s = self.chunks[phase]
        self.next_b[phase] += 1
        a = Action(Phase.I if zero_bubble else Phase.B, s, self.next_b[phase] - 1, d)
        if zero_bubble:
            self.pending.append(a)
        return a

    def w(self) -> Action:
        i = self.pending.popleft()
        return Action(Phase.W, i.stage, i.microbatch, i.direction)

    def emit(self, *actions: Action) -> None:
        self.actions.extend(actions)


def _rank_actions(chunks: tuple[ChunkRef, ChunkRef], half: int, h: int, n: int, middle: bool) -> tuple[Action, ...]:
    """The 8-step template for one rank: ``half`` = H, ``h`` = half-rank, ``n`` = micro-batches per phase."""
    k = _RankBuilder(chunks)
    outer = half - h - 1
    for _ in range(2 * outer):                                   # 1: nF0
        k.emit(k.f(0))
    for _ in range(h + 1):                                       # 2: nF0F1
        k.emit(k.f(0), k.f(1))
    for _ in range(outer):                                       # 3: nB1W1F1
        i1 = k.b(1, zero_bubble=True)
        k.emit(i1, k.w(), k.f(1))
    for i in range(n - 2 * half + h + 1):                        # 4: nF0B1F1B0
        if i == 0 and middle:
            k.emit(k.f(0), k.b(1))
        else:
            k.emit(Action.pair(k.f(0), k.b(1)))
        k.emit(Action.pair(k.f(1), k.b(0)))
    for _ in range(outer):                                       # 5: nB1F1B0
        k.emit(k.b(1))
        k.emit(Action.pair(k.f(1), k.b(0)))
    zero_bubble = False
    for i in range(h + 1):                                       # 6: nB1B0
        if i == (h + 1) // 2 and h % 2 == 1:
            zero_bubble = True
        k.emit(k.b(1, zero_bubble))
        if i == (h + 1) // 2 and h % 2 == 0:
            zero_bubble = True
        k.emit(k.b(0, zero_bubble))
    for _ in range(outer):                                       # 7: nWB0
        w = k.w()
        k.emit(w, k.b(0, zero_bubble=True))
    for _ in range(h + 1):                                       # 8: nW
        k.emit(k.w())
    assert not k.pending and k.next_f == k.next_b == [n, n]
    return tuple(k.actions)


def _build(name: str, pp: int, n: int, half: int, folding: str, directions: int,
           chunks_of: Callable[[int], tuple[ChunkRef, ChunkRef]], h_of: Callable[[int], int]) -> Schedule:
    ranks = tuple(_rank_actions(chunks_of(r), half, h_of(r), n, h_of(r) == half - 1) for r in range(pp))
    stages = pp if folding == "mirror" else 2 * pp
    return Schedule(name, pp, stages, n * directions, directions, ranks, folding)  # type: ignore[arg-type]


def dualpipe(pp: int, num_microbatches: int) -> Schedule:
    """DualPipe on ``pp`` (even) ranks; rank r holds stage r of direction 0 and stage P-1-r of direction 1."""
    half = pp // 2

    def chunks(r: int) -> tuple[ChunkRef, ChunkRef]:
        fwd, rev = (0, r), (1, pp - 1 - r)
        return (fwd, rev) if r < half else (rev, fwd)

    return _build("dualpipe", pp, num_microbatches // 2, half, "mirror", 2, chunks,
                  lambda r: min(r, pp - 1 - r))


def dualpipev(pp: int, num_microbatches: int) -> Schedule:
    """DualPipeV ("cut-in-half" V shape) on ``pp`` ranks and 2 x pp stages; rank r holds stages r and 2P-1-r."""
    return _build("dualpipev", pp, num_microbatches, pp, "v", 1,
                  lambda r: ((0, r), (0, 2 * pp - 1 - r)), lambda r: r)
