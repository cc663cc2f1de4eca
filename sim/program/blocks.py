"""A block's ops in the pieces its communication separates: outside the tensor-parallel region, inside it, and
the attention core that context parallelism splits into steps.

A block (``attn``: everything before the MoE dispatch; ``mlp``: the experts or the dense FFN; ``head``;
``embed``) runs ``pre`` ops, then its TP region, then ``post`` ops (Megatron-LM, Korthikanti et al. 2022 section
4.2.2): the region starts at the first TP-split GEMM or attention core and ends after the last one (a row-
parallel GEMM, or the vocabulary-parallel cross entropy). With sequence parallelism, the region's input is
all-gathered on entry when the region opens with column-parallel GEMMs (``has_col``), and its output reduce-
scattered on exit when it closes with a row-parallel GEMM (``has_row``); without it, the output is all-reduced
in forward and the input gradient in backward. The vocabulary-parallel embedding reduces its output (``has_row``).
MLA's down projections are replicated and run before the gather on each GPU's own tokens, so the region
gathers the compressed latents (Megatron-Core MLA), not the hidden state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sim.model.ops import Op
from sim.model.parallelism import REPLICATED, ROW_PARALLEL, is_core

PieceKind = Literal["ops", "core"]


@dataclass(frozen=True, slots=True)
class Piece:
    """Consecutive ops of a block run as one compute task (``ops``), or the attention core (``core``), which
    context parallelism splits into steps."""

    kind: PieceKind
    ops: tuple[Op, ...]


@dataclass(frozen=True, slots=True)
class BlockPlan:
    name: str
    pre: tuple[Op, ...]
    region: tuple[Op, ...]
    post: tuple[Op, ...]
    has_col: bool
    has_row: bool
    gather_width: int   # elements per token all-gathered on entry under sequence parallelism
    reduce_width: int   # elements per token reduced on exit (the hidden size)

    @property
    def ops(self) -> tuple[Op, ...]:
        return self.pre + self.region + self.post


def _tp_op(op: Op) -> bool:
    """An op whose work is split by TP and needs the whole sequence's input: a TP-split GEMM, the core."""
    return (op.kind == "gemm" and op.name not in REPLICATED) or is_core(op) or op.kind == "embedding"


def plan_block(name: str, ops: tuple[Op, ...], dim: int) -> BlockPlan:
    idx = [i for i, op in enumerate(ops) if _tp_op(op)]
    if not idx:
        return BlockPlan(name, ops, (), (), False, False, 0, dim)
    first, last = idx[0], idx[-1]
    # The region extends over the memory-bound kernels that follow its last TP op (the vocabulary-parallel
    # cross entropy after the head).
    while last + 1 < len(ops) and ops[last + 1].kind == "elementwise" and ops[last].name == "head":
        last += 1
    region = ops[first:last + 1]
    has_row = any(op.name in ROW_PARALLEL or op.kind == "embedding" for op in region)
    cols = [op for op in region if op.kind == "gemm" and op.name not in REPLICATED and op.name not in ROW_PARALLEL]
    has_col = bool(cols)
    core_at = next((i for i, op in enumerate(region) if is_core(op)), len(region))
    gathered = [op.k for op in cols if region.index(op) < core_at] or [dim]
    return BlockPlan(name, ops[:first], region, ops[last + 1:], has_col, has_row, sum(gathered), dim)


def region_pieces(region: tuple[Op, ...], split_core: bool, split_first: bool, split_last: bool
                  ) -> tuple[Piece, ...]:
    """The region as pieces: the first GEMM apart (TP overlap of the entry gather), the last row-parallel GEMM
    apart (TP overlap of the exit reduce-scatter), the attention core apart (context parallelism)."""
    if not region:
        return ()
    ops = list(region)
    head: list[Piece] = []
    tail: list[Piece] = []
    if split_first and ops[0].kind == "gemm" and len(ops) > 1:
        head.append(Piece("ops", (ops.pop(0),)))
    if split_last and ops and ops[-1].name in ROW_PARALLEL and len(ops) > 1:
        tail.append(Piece("ops", (ops.pop(),)))
    middle: list[Piece] = []
    if split_core:
        run: list[Op] = []
        for op in ops:
            if is_core(op):
                if run:
                    middle.append(Piece("ops", tuple(run)))
                    run = []
                middle.append(Piece("core", (op,)))
            else:
                run.append(op)
        if run:
            middle.append(Piece("ops", tuple(run)))
    elif ops:
        middle.append(Piece("ops", tuple(ops)))
    return (*head, *middle, *tail)
