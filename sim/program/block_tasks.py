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


def ring_bookkeeping_bytes(o_el: float, q_el: float, kv_el: float, lse_el: float) -> dict[str, tuple[float, ...]]:
    """Bytes of each memory-bound kernel torch 2.6's ring attention runs on the compute stream around its
    SDPA calls (``torch/distributed/tensor/experimental/_attention.py``, ``convert_to_f32`` on, causal load
    balancing on), per group of kernels: for ``o_el`` output, ``q_el`` query and ``kv_el`` key-plus-value
    elements and ``lse_el`` log-sum-exp values (the GPU's tokens, the heads of one TP rank). Bytes are reads
    plus writes; the outputs and K/V/Q gradients of the SDPA calls are BF16, the running results FP32.

    Forward (``_templated_ring_attention`` with ``_SDPAMerger``):

    - ``fwd_entry``: ``key.contiguous()`` and ``value.contiguous()`` on entry (the SDPA inputs are
      ``transpose(1, 2)`` views of [batch, sequence, heads, dim] tensors, so each is copied): 4 B per K/V
      element;
    - ``kv_cat``: ``torch.cat([key.flatten(), value.flatten()])`` before each step but the last (the
      all-gather rotater sends only the first, but the concatenation runs every step): 4 B per K/V element;
    - ``fwd_first``: step 0's output cast to FP32 (``out.to(float32)``): 6 B per output element;
    - ``fwd_merge``, each later step: the cast (6), ``out - block_out`` (12), the product with
      ``sigmoid(block_lse - lse)`` (8), ``out - ...`` (12): 38 B per output element, plus five kernels over
      the log-sum-exp (FP32, one value per token and head: two differences, a sigmoid, a log-sigmoid and the
      update, 12 + 8 + 12 + 8 + 12 B). The slowest rank sets the pace (the next layer's all-gather waits for
      every rank): the last rank, whose later steps all merge the whole output (the others merge half of it
      for some steps and concatenate the halves back, 27 B per element);
    - ``fwd_end``: the merged output cast back (``out.to(bf16)``): 6 B per output element.

    Backward (``_templated_ring_attention_backward``, the last rank again):

    - ``bwd_entry``: FP32 zeros for the Q, K and V gradients (4 B per element), then the K and V copies of
      ``contiguous()`` (4 B per element);
    - ``bwd_first``: step 0's K and V gradients added into the zeros (``grad_key += grad_key_``, 10 B per
      element); the zeros took the inputs' transposed strides (``zeros_like`` before ``contiguous()``), so
      ``grad_key.flatten()`` for the first send copies them (8 B per element);
    - ``bwd_accumulate``, each later step once the previous step's gradients have arrived: the step's K and
      V gradients (half the blocks: ``key.chunk(2)[0]``) added into the received FP32 buffer and the halves
      concatenated (``_partial_update``: 5 + 8 = 13 B per K/V element);
    - ``dkv_cat``, every step before its send: ``torch.cat([grad_key.flatten(), grad_value.flatten()])``
      in FP32, 8 B per K/V element;
    - ``dq_accumulate``, every step: ``grad_query += grad_query_`` (10 B per Q element);
    - ``bwd_end_q``, ``bwd_end_kv``: the Q gradient, then (once the last send is home) the K and V gradients
      cast to BF16 (6 B per element).
    """
    half = kv_el / 2  # K or V alone (the same head dimensions, or near enough: the bytes add up either way)
    return {
        "fwd_entry": (2 * kv_el, 2 * kv_el),
        "kv_cat": (4 * kv_el,),
        "fwd_first": (6 * o_el,),
        "fwd_merge": (6 * o_el, 12 * o_el, 8 * o_el, 12 * o_el, *(x * lse_el for x in (12, 8, 12, 8, 12))),
        "fwd_end": (6 * o_el,),
        "bwd_entry": (4 * q_el, 4 * half, 4 * half, 2 * kv_el, 2 * kv_el),
        "bwd_first": (10 * half, 10 * half, 8 * half, 8 * half),
        "bwd_accumulate": (5 * half, 8 * half) * 2,
        "dkv_cat": (8 * kv_el,),
        "dq_accumulate": (10 * q_el,),
        "bwd_end_q": (6 * q_el,),
        "bwd_end_kv": (6 * kv_el,),
    }


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
        # recomputed, the forward's blocks once more). The diagonal step is a causal block, the others whole
        # ones (:meth:`_offdiagonal_step`).
        per_step = kv if part == "F" else kv * (2 + self.coster.is_recomputed(op))
        step_s = self.net.cp_ring_step_seconds(per_step)
        off = self._offdiagonal_step(unit, op, part, load, secs)
        start, comm = b.last, None
        b.chain(name, part, Stream.COMPUTE, secs / self.cp, unit.index)
        for _ in range(1, self.cp):
            computed = b.last
            deps = (comm if comm is not None else start,) if part == "F" else (comm, computed)
            comm = b.add("cp_kv", part, Stream.COMM, step_s, deps, unit.index, self.cp_links, True)
            b.last = computed
            b.chain(name, part, Stream.COMPUTE, off, unit.index, also=(comm,))
        if part != "F":
            b.chain("cp_dkv", part, Stream.COMM, self.net.cp_ring_step_seconds(kv), unit.index, self.cp_links, True,
                    also=(comm,))

    def _offdiagonal_step(self, unit: Unit, op: Op, part: Part, load: MoeLoad | None, secs: float) -> float:
        """One ring step after the diagonal of ``part``'s core (``secs`` for all ``cp`` steps at the causal
        rate). With causal load balancing every step does the same work, but only the diagonal one is a causal
        call; the others are whole blocks (``is_causal=False``), at the non-causal rate
        (:meth:`~sim.costs.ops.OpCoster.offdiagonal_share`). A backward that re-runs the core's forward
        scales that forward at the forward's rate."""
        step = secs / self.cp
        if part == "F":
            return step * self.coster.offdiagonal_share(op, "fwd")
        fwd = self._recomputed_core(unit, op, load) / self.cp
        return (fwd * self.coster.offdiagonal_share(op, "fwd")
                + (step - fwd) * self.coster.offdiagonal_share(op, "dgrad"))

    def _recomputed_core(self, unit: Unit, op: Op, load: MoeLoad | None) -> float:
        """Seconds of the core's forward that the backward re-runs (0 when the policy keeps its output)."""
        again = self.coster.recompute_fraction(op)
        return again * self._secs(unit, "core", (op,), "F", load) if again > 0 else 0.0

    def _ring_bookkeeping(self, op: Op) -> dict[str, float]:
        """Seconds of each group of :func:`ring_bookkeeping_bytes` for ``op``'s shapes on this GPU."""
        heads = op.heads // self.tp
        sizes = ring_bookkeeping_bytes(o_el=self.tokens * heads * op.v_dim, q_el=self.tokens * heads * op.qk_dim,
                                       kv_el=self._kv_bytes(op) / dtype_bytes("bf16"), lse_el=self.tokens * heads)
        mem = self.coster.costs.memory_seconds
        return {key: sum(mem(x, "cp_ring") for x in kernels) for key, kernels in sizes.items()}

    def _core_pytorch(self, b: ChunkBuilder, unit: Unit, op: Op, part: Part, load: MoeLoad | None, secs: float,
                      kv: float) -> None:
        """PyTorch's context_parallel (torch 2.6 ``_templated_ring_attention`` and its backward, rotate_method
        allgather): each pass all-gathers K and V asynchronously and computes the diagonal step (its own block,
        1/``cp`` of the core) meanwhile; the other steps need the gathered blocks. The backward (after the
        recomputed forward, when the core is recomputed: a pass of its own) gathers them again, and after each
        step sends the accumulated K and V gradients, in FP32 (``convert_to_f32``), to the next rank; a step's
        accumulation waits for the previous step's send (``dkv_rotater.next_buffer()`` after the SDPA call), and
        the next kernel after the core for the last one. Around the SDPA calls run the memory-bound kernels of
        :meth:`_ring_bookkeeping` (merging each step's output into the FP32 result, accumulating gradients).
        Only the diagonal step is a causal call; the others are whole blocks at the non-causal rate, divided by
        the stack's ``software.pytorch_cp_step_efficiency`` (a fitted factor; see the software profile)."""
        full = self.net.collective_seconds("all_gather", kv * self.cp, self.net.cp_group())
        name = "attn" if part == "F" else "attn_b"
        ring = "attn_ring" if part == "F" else "attn_ring_b"  # the bookkeeping kernels beside the SDPA calls
        slow = 1.0 / self.s.software.pytorch_cp_step_efficiency  # the stack's fitted rate of the later steps
        keep = self._ring_bookkeeping(op)
        layer = unit.index

        def forward_steps(seconds: float) -> None:
            cat = b.chain(ring, part, Stream.COMPUTE, keep["fwd_entry"] + keep["kv_cat"], layer)
            gather = b.add("cp_kv_gather", part, Stream.COMM, full, (cat,), layer, self.cp_links, True)
            b.chain(name, part, Stream.COMPUTE, seconds / self.cp, layer)
            b.chain(ring, part, Stream.COMPUTE, keep["fwd_first"], layer)
            off = seconds / self.cp * self.coster.offdiagonal_share(op, "fwd") * slow  # whole blocks, after it
            for step in range(1, self.cp):
                waits = (gather,) if step == 1 else ()
                if step < self.cp - 1:  # the step's own concatenation, once the gathered blocks are there
                    b.chain(ring, part, Stream.COMPUTE, keep["kv_cat"], layer, also=waits)
                b.chain(name, part, Stream.COMPUTE, off, layer, also=waits)
                b.chain(ring, part, Stream.COMPUTE, keep["fwd_merge"], layer)
            b.chain(ring, part, Stream.COMPUTE, keep["fwd_end"], layer)

        if part == "F":
            forward_steps(secs)
            return
        fwd = self._recomputed_core(unit, op, load)
        if fwd > 0:
            forward_steps(fwd)
        bwd = (secs - fwd) / self.cp
        cat = b.chain(ring, part, Stream.COMPUTE, keep["bwd_entry"] + keep["kv_cat"], layer)
        gather = b.add("cp_kv_gather", part, Stream.COMM, full, (cat,), layer, self.cp_links, True)
        send_s = self.net.cp_ring_step_seconds(2 * kv)  # the K and V gradients in FP32
        sends: list[int] = []
        off = bwd * self.coster.offdiagonal_share(op, "dgrad") * slow
        for step in range(self.cp):
            waits = (gather,) if step == 1 else ()
            if 0 < step < self.cp - 1:
                b.chain(ring, part, Stream.COMPUTE, keep["kv_cat"], layer, also=waits)
            b.chain(name, part, Stream.COMPUTE, off if step else bwd, layer, also=waits)
            first = keep["bwd_first"] if step == 0 else keep["bwd_accumulate"]
            acc = b.chain(ring, part, Stream.COMPUTE, first + keep["dkv_cat"], layer,
                          also=tuple(sends[-1:]))
            sends.append(b.add("cp_dkv", part, Stream.COMM, send_s, (acc, *sends[-1:]), layer, self.cp_links,
                               True))
            b.chain(ring, part, Stream.COMPUTE, keep["dq_accumulate"], layer)
        b.chain(ring, part, Stream.COMPUTE, keep["bwd_end_q"], layer)
        b.chain(ring, part, Stream.COMPUTE, keep["bwd_end_kv"], layer, also=(sends[-1],))

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

