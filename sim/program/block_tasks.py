"""The tasks of one block of a unit in one pass: its compute pieces with the tensor-parallel collectives around
them, the context-parallel exchanges of the attention core, and what full recompute re-sends (see
:mod:`sim.program.chunks` for the mechanisms and their sources; :mod:`sim.program.blocks` for the pieces).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from sim.config import Scenario
from sim.costs.ops import OpCoster
from sim.model.ops import Op
from sim.model.stages import Unit
from sim.network import Collective, Network
from sim.program.blocks import BlockPlan, Piece, region_pieces
from sim.program.builder import ChunkBuilder
from sim.program.moe import MoeLoad
from sim.program.tasks import NVLINK, Part
from sim.timeline import Stream
from sim.units import dtype_bytes


class BlockTasks:
    """Mixin of :class:`~sim.program.chunks.Program`: the tasks of a block, from its layout and costs."""

    s: Scenario
    coster: OpCoster
    net: Network
    tokens: float
    tp: int
    sp: bool
    tp_overlap: bool
    cp: int
    cp_mode: str
    kv_heads: int
    cp_links: int

    def _secs(self, unit: Unit, key: str, ops: tuple[Op, ...], part: Part, load: MoeLoad | None,
              div: int = 1) -> float:
        raise NotImplementedError

    def _a2a(self, b: ChunkBuilder, load: MoeLoad, payload: Literal["dispatch", "combine"], notify: bool
             ) -> tuple[float, int]:
        raise NotImplementedError

    def _tp_seconds(self, kind: Collective, width: int) -> float:
        """A tensor-parallel collective over the GPU's tokens x ``width`` in BF16 (the full, unsharded buffer)."""
        return self.net.collective_seconds(kind, self.tokens * width * dtype_bytes("bf16"), self.net.tp_group())

    def _kv_bytes(self, op: Op) -> float:
        """Keys and values of the GPU's tokens (one CP chunk pair), BF16, for the heads of one TP rank."""
        return self.tokens * self.kv_heads * (op.qk_dim + op.v_dim) * dtype_bytes("bf16")

    def _comm(self, b: ChunkBuilder, name: str, part: Part, seconds: float, layer: int) -> None:
        if seconds > 0:
            b.chain(name, part, Stream.COMM, seconds, layer, NVLINK, True)

    # --------------------------------------------------------------- tasks of one block
    def _uses_tp(self, plan: BlockPlan) -> bool:
        return self.tp > 1 and (plan.has_col or plan.has_row)

    def _pieces(self, plan: BlockPlan) -> tuple[Piece, ...]:
        return region_pieces(plan.region, self.cp > 1, self.tp_overlap and plan.has_col,
                             self.tp_overlap and plan.has_row)

    def _compute(self, b: ChunkBuilder, unit: Unit, name: str, key: str, ops: tuple[Op, ...], part: Part,
                 load: MoeLoad | None) -> None:
        secs = self._secs(unit, key, ops, part, load) if ops else 0.0
        if secs > 0:
            b.chain(name, part, Stream.COMPUTE, secs, unit.index)

    def _fwd_block(self, b: ChunkBuilder, unit: Unit, plan: BlockPlan, load: MoeLoad | None) -> None:
        name, layer = plan.name, unit.index
        tp = self._uses_tp(plan)
        if not tp and (self.cp == 1 or not plan.region):
            self._compute(b, unit, name, name, plan.ops, "F", load)
            return
        self._compute(b, unit, name, f"{name}.pre", plan.pre, "F", load)
        pieces = list(self._pieces(plan))
        if tp and self.sp and plan.has_col:
            secs = self._tp_seconds("all_gather", plan.gather_width)
            if self.tp_overlap and pieces and pieces[0].kind == "ops":
                self._gather_then(b, unit, name, f"{name}.0", pieces.pop(0).ops, "F", load, secs, f"tp_ag_{name}")
            else:
                self._comm(b, f"tp_ag_{name}", "F", secs, layer)
        last = pieces.pop() if tp and plan.has_row and self.tp_overlap and len(pieces) > 1 else None
        for i, piece in enumerate(pieces):
            if piece.kind == "core":
                self._core(b, unit, piece.ops[0], "F", load)
            else:
                self._compute(b, unit, name, f"{name}.{i + 1}", piece.ops, "F", load)
        if tp and plan.has_row:
            kind: Collective = "reduce_scatter" if self.sp else "all_reduce"
            secs = self._tp_seconds(kind, plan.reduce_width)
            if last is not None:
                self._then_scatter(b, unit, name, f"{name}.last", last.ops, "F", load, secs, f"tp_rs_{name}",
                                   plan.reduce_width)
            else:
                self._comm(b, f"tp_rs_{name}" if self.sp else f"tp_{name}", "F", secs, layer)
        self._compute(b, unit, name, f"{name}.post", plan.post, "F", load)

    def _bwd_block(self, b: ChunkBuilder, unit: Unit, plan: BlockPlan, load: MoeLoad | None,
                   emit_w: Callable[[int | None], None]) -> None:
        """The block's input-gradient tasks (recompute included), with its weight-gradient work emitted (by
        ``emit_w``, given the task re-gathering the region's input under sequence parallelism) once the region's
        input gradient is computed, beside the collective of that gradient (Megatron-LM runs the weight-gradient
        GEMM while the input gradient's all-reduce or reduce-scatter is in flight)."""
        name, layer = plan.name, unit.index
        tp = self._uses_tp(plan)
        if not tp and (self.cp == 1 or not plan.region):
            self._compute(b, unit, f"{name}_b", name, plan.ops, "I", load)
            emit_w(None)
            return
        self._compute(b, unit, f"{name}_b", f"{name}.post", plan.post, "I", load)
        pieces = list(self._pieces(plan))
        if tp and self.sp and plan.has_row:
            secs = self._tp_seconds("all_gather", plan.reduce_width)
            if self.tp_overlap and len(pieces) > 1 and pieces[-1].kind == "ops":
                self._gather_then(b, unit, f"{name}_b", f"{name}.last", pieces.pop().ops, "I", load, secs,
                                  f"tp_ag_{name}_b")
            else:
                self._comm(b, f"tp_ag_{name}_b", "I", secs, layer)
        remat = None
        if tp and self.sp and plan.has_col:
            secs = self._tp_seconds("all_gather", plan.gather_width)
            remat = b.add(f"tp_ag_{name}_input", "I", Stream.COMM, secs, (b.last,), layer, NVLINK, True)
        first = pieces.pop(0) if tp and plan.has_col and self.tp_overlap and len(pieces) > 1 else None
        for i in range(len(pieces) - 1, -1, -1):
            piece = pieces[i]
            if piece.kind == "core":
                self._core(b, unit, piece.ops[0], "I", load)
            else:
                self._compute(b, unit, f"{name}_b", f"{name}.{i + 1 + (first is not None)}", piece.ops, "I", load)
        if first is None:
            emit_w(remat)
        if tp and plan.has_col:
            kind: Collective = "reduce_scatter" if self.sp else "all_reduce"
            secs = self._tp_seconds(kind, plan.gather_width if self.sp else plan.reduce_width)
            if first is not None:
                self._then_scatter(b, unit, f"{name}_b", f"{name}.0", first.ops, "I", load, secs,
                                   f"tp_rs_{name}_b", 0, lambda: emit_w(remat))
            else:
                self._comm(b, f"tp_rs_{name}_b" if self.sp else f"tp_{name}_b", "I", secs, layer)
        elif first is not None:
            self._compute(b, unit, f"{name}_b", f"{name}.0", first.ops, "I", load)
            emit_w(remat)
        self._compute(b, unit, f"{name}_b", f"{name}.pre", plan.pre, "I", load)

    def _chunk_secs(self, unit: Unit, key: str, ops: tuple[Op, ...], part: Part, load: MoeLoad | None) -> float:
        """One of the ``tp`` chunks of a GEMM pipelined with a TP collective: 1/``tp`` of the whole GEMM, not a GEMM
        of 1/``tp`` of the rows on its own. Both overlap implementations issue the chunks on several streams
        (Transformer Engine's userbuffers round-robin over up to 3 compute streams, comm_gemm_overlap.h; PyTorch's
        symmetric-memory AsyncTP alternates 2, "greatly reducing quantization inefficiency"), so a chunk's last,
        partial wave of tiles shares the GPU with the next chunk's first."""
        return self._secs(unit, key, ops, part, load) / self.tp

    def _gather_then(self, b: ChunkBuilder, unit: Unit, name: str, key: str, ops: tuple[Op, ...], part: Part,
                     load: MoeLoad | None, comm_s: float, comm: str) -> None:
        """An all-gather pipelined with the GEMM reading it, ``tp`` chunks: the local chunk first, then each
        arriving chunk (ring exchange). Each chunk costs 1/``tp`` of the whole GEMM (:meth:`_chunk_secs`)."""
        n = self.tp
        g = self._chunk_secs(unit, key, ops, part, load)
        before, prev = b.last, None
        b.chain(name, part, Stream.COMPUTE, g, unit.index)
        for _ in range(1, n):
            gemm = b.last
            prev = b.add(comm, part, Stream.COMM, comm_s / (n - 1), (prev if prev is not None else before,),
                         unit.index, NVLINK, True)
            b.last = gemm
            b.chain(name, part, Stream.COMPUTE, g, unit.index, also=(prev,))

    def _then_scatter(self, b: ChunkBuilder, unit: Unit, name: str, key: str, ops: tuple[Op, ...], part: Part,
                      load: MoeLoad | None, comm_s: float, comm: str, sum_width: int,
                      after_compute: Callable[[], None] | None = None) -> None:
        """A GEMM pipelined with the reduce-scatter of its output, ``tp`` chunks (the first one stays local); each
        chunk costs 1/``tp`` of the whole GEMM (:meth:`_chunk_secs`).

        ``sum_width`` > 0 (the forward's row-parallel GEMM): the chunks leave unreduced and, once the last has
        left, one memory-bound kernel sums the ``tp`` partials this rank received (Transformer Engine's
        split_overlap_rs ends with ``torch::sum_out`` over them; PyTorch's fused_matmul_reduce_scatter sums
        the stacked partials): it reads the tokens x ``sum_width`` unreduced output and writes 1/``tp`` of it.
        Otherwise (the backward's input gradient, whose reduce-scatter TE overlaps in bulk with the weight
        gradients) ``after_compute`` adds the weight-gradient work beside the scatter's tail."""
        n = self.tp
        g = self._chunk_secs(unit, key, ops, part, load)
        b.chain(name, part, Stream.COMPUTE, g, unit.index)
        sends: list[int] = []
        for _ in range(1, n):
            gemm = b.chain(name, part, Stream.COMPUTE, g, unit.index)
            sends.append(b.add(comm, part, Stream.COMM, comm_s / (n - 1), (gemm, sends[-1] if sends else None),
                               unit.index, NVLINK, True))
        if after_compute is not None:
            after_compute()
        b.last = sends[-1]
        if sum_width > 0:
            partials = self.tokens * sum_width * dtype_bytes("bf16")
            reduce_s = self.coster.costs.memory_seconds(partials * (1 + 1 / n), "tp_reduce")
            b.last = b.add(name, part, Stream.COMPUTE, reduce_s, (sends[-1],), unit.index)

    def _core(self, b: ChunkBuilder, unit: Unit, op: Op, part: Part, load: MoeLoad | None) -> None:
        """The attention core over ``cp`` ring steps or after an all-gather of K and V (see the docstring)."""
        name = "attn" if part == "F" else "attn_b"
        secs = self._secs(unit, "core", (op,), part, load)
        kv = self._kv_bytes(op)
        if self.cp_mode == "pytorch":
            self._core_pytorch(b, unit, op, part, load, secs, kv)
            return
        if self.cp_mode == "all_gather":
            full = kv * self.cp
            gather = self.net.collective_seconds("all_gather", full, self.net.cp_group())
            b.chain("cp_kv_gather", part, Stream.COMM, gather, unit.index, self.cp_links, True)
            b.chain(name, part, Stream.COMPUTE, secs, unit.index)
            if part != "F":
                scatter = self.net.collective_seconds("reduce_scatter", full, self.net.cp_group())
                b.chain("cp_dkv_scatter", part, Stream.COMM, scatter, unit.index, self.cp_links, True)
            return
        # Ring: forward passes K, V blocks; backward passes them and their gradients (and, when the core is
        # recomputed, the forward's blocks once more).
        per_step = kv if part == "F" else kv * (2 + self.coster.is_recomputed(op))
        step_s = self.net.cp_ring_step_seconds(per_step)
        start, comm = b.last, None
        b.chain(name, part, Stream.COMPUTE, secs / self.cp, unit.index)
        for _ in range(1, self.cp):
            computed = b.last
            deps = (comm if comm is not None else start,) if part == "F" else (comm, computed)
            comm = b.add("cp_kv", part, Stream.COMM, step_s, deps, unit.index, self.cp_links, True)
            b.last = computed
            b.chain(name, part, Stream.COMPUTE, secs / self.cp, unit.index, also=(comm,))
        if part != "F":
            b.chain("cp_dkv", part, Stream.COMM, self.net.cp_ring_step_seconds(kv), unit.index, self.cp_links, True,
                    also=(comm,))

    def _core_pytorch(self, b: ChunkBuilder, unit: Unit, op: Op, part: Part, load: MoeLoad | None, secs: float,
                      kv: float) -> None:
        """PyTorch's context_parallel (torch 2.6 ``_templated_ring_attention`` and its backward, rotate_method
        allgather): each pass all-gathers K and V asynchronously and computes the diagonal step (its own block,
        1/``cp`` of the core) meanwhile; the other steps need the gathered blocks. The backward (after the
        recomputed forward, when the core is recomputed: a pass of its own) gathers them again, and after each
        step sends the accumulated K and V gradients, in FP32 (``convert_to_f32``), to the next rank; the
        compute stream waits for a send before the step after next, and for the last one at the end."""
        full = self.net.collective_seconds("all_gather", kv * self.cp, self.net.cp_group())
        name = "attn" if part == "F" else "attn_b"

        def forward_steps(seconds: float) -> None:
            gather = b.add("cp_kv_gather", part, Stream.COMM, full, (b.last,), unit.index, self.cp_links, True)
            b.chain(name, part, Stream.COMPUTE, seconds / self.cp, unit.index)
            for step in range(1, self.cp):
                b.chain(name, part, Stream.COMPUTE, seconds / self.cp, unit.index,
                        also=(gather,) if step == 1 else ())

        if part == "F":
            forward_steps(secs)
            return
        again = self.coster.recompute_fraction(op)
        fwd = again * self._secs(unit, "core", (op,), "F", load) if again > 0 else 0.0
        if fwd > 0:
            forward_steps(fwd)
        bwd = (secs - fwd) / self.cp
        gather = b.add("cp_kv_gather", part, Stream.COMM, full, (b.last,), unit.index, self.cp_links, True)
        send_s = self.net.cp_ring_step_seconds(2 * kv)  # the K and V gradients in FP32
        sends: list[int] = []
        for step in range(self.cp):
            waits = (gather,) if step == 1 else (sends[-2],) if step >= 2 else ()
            done = b.chain(name, part, Stream.COMPUTE, bwd, unit.index, also=waits)
            sends.append(b.add("cp_dkv", part, Stream.COMM, send_s, (done, *sends[-1:]), unit.index, self.cp_links,
                               True))
        b.gate = sends[-1]  # the gradients are home before the next kernel uses them

    def _recompute_comm(self, b: ChunkBuilder, unit: Unit, plan: BlockPlan, ep: bool, load: MoeLoad | None) -> None:
        """Full recompute re-runs a block's forward, its communication included: the TP collectives, or the
        expert dispatch and combine of a MoE block (context-parallel exchanges are costed in the core)."""
        if self._uses_tp(plan):
            if self.sp and plan.has_col:
                self._comm(b, f"tp_ag_{plan.name}_recompute", "I", self._tp_seconds("all_gather", plan.gather_width),
                           unit.index)
            if plan.has_row:
                kind: Collective = "reduce_scatter" if self.sp else "all_reduce"
                self._comm(b, f"tp_{plan.name}_recompute", "I", self._tp_seconds(kind, plan.reduce_width),
                           unit.index)
        if ep and load is not None and plan.name == "mlp":
            for which in ("dispatch", "combine"):
                secs, links = self._a2a(b, load, which, notify=which == "dispatch")  # type: ignore[arg-type]
                b.chain(f"{which}_recompute", "I", Stream.COMM, secs, unit.index, links, True)

