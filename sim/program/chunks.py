"""Per stage and micro-batch: each chunk as tasks on a GPU's compute, communication and data-parallel streams.

A chunk is one pipeline action's work on one stage: forward (F), backward-for-input (I), backward-for-
weights (W), or a full backward (B = I and W, interleaved per layer). Following DeepSeek-V3's decomposition
(tech report 3.2.1), a MoE layer's forward is ``attn -> dispatch -> mlp -> combine``; its backward is
``combine_b -> mlp_b -> dispatch_b -> attn_b`` with the weight gradients ``mlp_w`` and ``attn_w`` split off.
``dispatch_b`` moves the combine's payload backwards and ``combine_b`` the dispatch's (DeepSeek's trace runs
them with each other's kernels), so they take the combine and dispatch dtypes respectively.

Inside a block (:mod:`sim.program.blocks`), tensor parallelism adds its collectives on NVLink: an all-reduce
after the region in forward and one of the input gradient in backward, or with sequence parallelism an
all-gather on entry and a reduce-scatter on exit in each pass, plus the backward all-gather that
re-materialises the region's input for the weight gradients, beside the input-gradient compute (Korthikanti et
al. 2022 section 4.2.2). With ``tp_comm_overlap`` a gather and its first GEMM, and a last GEMM and its reduce-
scatter, run as ``tp`` chunks pipelined against each other (TE userbuffers' ring exchange; the chunk GEMMs overlap
each other on several streams, so together they cost the whole GEMM), so how much is hidden follows from the two
durations. Context parallelism splits the attention core into ``cp`` steps: ``ring`` passes key/value blocks
around the CP group beside the steps (backward: the blocks and their gradients), ``all_gather`` gathers K and V
before the core and reduce-scatters their gradients after it, exposed (Megatron-Core ``context_parallel.rst``;
Llama 3 section 3.3.2); ``pytorch`` gathers K and V once per pass beside the diagonal step and passes their FP32
gradients around the ring (torch 2.6 ``distributed/tensor/experimental/_attention.py``).

ZeRO-3 gathers each unit's parameters on the data-parallel stream, ``fsdp_prefetch`` units ahead of the one
computing (:mod:`sim.program.sharding`); as FSDP2 (``software.fsdp_copies``) the compute stream then copies them out
of the gather buffer before the unit computes, and copies each unit's gradients into the reduce-scatter buffer
once they are done. Under a pipeline FSDP2 syncs gradients only at a stage's last backward: each micro-batch adds
the unit's gradients into an FP32 accumulator instead, and the once-per-step gather and reduction copies (about
0.1 % of a pipelined step) are left out. A split backward (I) keeps beside its all-to-all and collectives the
weight-gradient work a full backward runs there (up to the communication's length), so deferring the rest (W)
never costs more than the full backward. Tasks carry their own dependencies (indices in the chunk); the engine
runs each stream's tasks in the chunk's order, a task starting when its dependencies and its stream predecessor
are done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from sim.config import Scenario
from sim.costs.ops import OpCoster
from sim.costs.ops import Part as CostPart
from sim.model.counts import stage_params_per_gpu
from sim.model.ops import Op
from sim.model.parallelism import NEVER_RECOMPUTED
from sim.model.stages import StagePartition, Unit
from sim.network import Network
from sim.program.block_tasks import BlockTasks
from sim.program.blocks import BlockPlan, plan_block
from sim.program.builder import Chunk, ChunkBuilder, ChunkKind
from sim.program.moe import MoeLoad
from sim.program.sharding import DpTraffic, ShardingPlan, group_links, unit_param_counts
from sim.program.tasks import NIC, NVLINK, Part, Task
from sim.timeline import Stream
from sim.units import dtype_bytes

__all__ = ["Chunk", "ChunkKind", "LoadFn", "Program"]

LoadFn = Callable[[Unit, int], MoeLoad]  # (MoE unit, micro-batch) -> load
#: The cost-model part of each chunk part: forward, input gradient (with recompute), weight gradient.
_COST_PART: dict[str, CostPart] = {"F": "fwd", "I": "input", "W": "weight"}


class Program(BlockTasks):
    """Builds (and memoizes) the chunks of every stage for one scenario."""

    def __init__(self, scenario: Scenario, coster: OpCoster, network: Network, partition: StagePartition,
                 loads: LoadFn) -> None:
        self.s = scenario
        self.coster = coster
        self.net = network
        self.partition = partition
        self.loads = loads
        self.tokens = float(scenario.tokens_per_gpu)
        self._memo: dict[tuple, Chunk] = {}
        self._block_memo: dict[int, list[tuple[str, tuple[Op, ...]]]] = {}
        self._plan_memo: dict[tuple[int, str], BlockPlan] = {}
        self._secs_memo: dict[tuple, float] = {}
        # Units with the same ops (every dense or MoE layer) share one id, so their costs are computed once.
        ids: dict[tuple[Op, ...], int] = {}
        self._ops_id = {u.name: ids.setdefault(u.ops, len(ids)) for st in partition.stages for u in st}
        # Stages whose units have the same ops (the middle stages of most layouts) build one chunk per kind and
        # loads: each stage's chunks are keyed on the first stage with its contents.
        first: dict[tuple[int, ...], int] = {}
        self._same_as = [first.setdefault(tuple(self._ops_id[u.name] for u in st), i)
                         for i, st in enumerate(partition.stages)]
        self._inline: dict[tuple, dict[tuple[str, str], float]] = {}
        p, m = scenario.parallel, scenario.model
        self.tp = p.tp
        self.sp = p.sequence_parallel and p.tp > 1
        self.tp_overlap = p.tp_comm_overlap and self.sp
        self.cp, self.cp_mode = p.cp, p.cp_mode
        self.ep_comm = m.is_moe and p.ep > 1
        self.full_recompute = coster.recompute[1]
        self.sharding = ShardingPlan.of(scenario)
        self.dp = DpTraffic(scenario, network)
        gpu = scenario.cluster.gpu
        self.comm_rate = (gpu.num_sms - p.comm_sms) / gpu.num_sms
        self.static = scenario.sm_partition == "static"
        kv_heads = m.n_heads if m.attention == "mla" or scenario.software.repeat_kv else m.kv_heads
        self.kv_heads = max(1, kv_heads // p.tp)
        self.cp_links = group_links(network.cp_group())
        self.grad_pass = scenario.software.grad_accumulation == "fp32_pass"
        self.fsdp_copies = scenario.software.fsdp_copies and self.sharding.zero_stage == 3
        dense, expert = stage_params_per_gpu(partition, m, p.tp, p.ep)
        self.stage_params = [d + e for d, e in zip(dense, expert, strict=True)]

    # --------------------------------------------------------------- public
    def chunk_key(self, stage: int, kind: ChunkKind, microbatch: int) -> tuple:
        """What a chunk depends on: its stage's contents (the first stage with the same ops stands for it), its
        kind and the expert loads of its MoE layers (micro-batches with the same loads share one chunk)."""
        units = self.partition.stages[stage]
        return (self._same_as[stage], kind, tuple(self.loads(u, microbatch) if u.moe else None for u in units))

    def chunk_at(self, key: tuple) -> Chunk:
        hit = self._memo.get(key)
        if hit is None:
            stage, kind, loads = key
            if kind == "W":
                self.chunk_at((stage, "I", loads))  # the weight-gradient work the I chunk keeps beside its comm
            hit = self._memo[key] = self._build(self.partition.stages[stage], kind, loads, (stage, loads))
        return hit

    def chunk(self, stage: int, kind: ChunkKind, microbatch: int) -> Chunk:
        return self.chunk_at(self.chunk_key(stage, kind, microbatch))

    def p2p_bytes(self) -> float:
        """Activations (forward) or their gradients (backward) crossing a stage boundary, BF16: the GPU's
        tokens (1/CP of each sequence), split by TP under sequence parallelism or the scatter/gather
        optimization (:meth:`p2p_regather_seconds`)."""
        split = self.sp or self.s.software.pp_scatter_gather
        return self.tokens * self.s.model.dim * dtype_bytes("bf16") / (self.tp if split else 1)

    def p2p_regather_seconds(self) -> float:
        """Scatter/gather without sequence parallelism: the receiving TP group all-gathers the slices it was
        sent over NVLink before using them (0 otherwise)."""
        if self.sp or not self.s.software.pp_scatter_gather or self.tp == 1:
            return 0.0
        return self.net.collective_seconds("all_gather", self.p2p_bytes() * self.tp, self.net.tp_group())

    # --------------------------------------------------------------- building
    def _build(self, units: tuple[Unit, ...], kind: ChunkKind, loads: tuple[MoeLoad | None, ...], key: tuple
               ) -> Chunk:
        b = ChunkBuilder(kind)
        inline = self._inline.setdefault(key, {})
        order = range(len(units)) if kind == "F" else range(len(units) - 1, -1, -1)
        for i in order:
            start = len(b.tasks)
            if kind == "F":
                self._forward(b, units[i], loads[i])
            else:
                self._backward(b, units[i], loads[i], kind, inline)
            b.groups.append(tuple(range(start, len(b.tasks))))
        if kind in ("B", "W") and self.grad_pass:
            self._accumulate_fp32(b, key[0], units[0].index)
        if kind == "I":
            for t, window in b.windows.items():
                task, wkey = b.tasks[t], b.window_keys[t]
                keep = inline[wkey] = min(inline[wkey], window * self.comm_rate)
                b.tasks[t] = Task(task.name, task.part, task.stream, keep, task.deps, task.layer)
        return b.build(self._ready_times(b) if kind in ("B", "W") else ())

    #: Bytes per parameter of DeepSpeed's update_hp_grads, ``hp.add_(lp.grad.to(fp32))``: read the BF16 gradient
    #: (2), write and read its FP32 copy (4 + 4), read and write the FP32 accumulator (4 + 4).
    FP32_PASS_BYTES = 18

    def _accumulate_fp32(self, b: ChunkBuilder, stage: int, layer: int) -> None:
        """``software.grad_accumulation: fp32_pass``: once the chunk's weight gradients are done, one memory-bound
        pass adds every gradient of the stage into its FP32 copy, before the chunk ends (and sends)."""
        bytes_ = self.stage_params[stage] * self.FP32_PASS_BYTES
        secs = self.coster.costs.memory_seconds(bytes_, "grad_accumulation")
        b.add("fp32_grads_w", "W", Stream.COMPUTE, secs, tuple(b.grads_done), layer)

    def _ready_times(self, b: ChunkBuilder) -> tuple[float, ...]:
        """Seconds into the chunk at which each unit's weight gradients are complete, from the compute stream's
        order alone (at the reduced rate when communication holds SMs all step)."""
        rate = self.comm_rate if self.static else 1.0
        done, elapsed, out = set(b.grads_done), 0.0, {}
        for i, t in enumerate(b.tasks):
            if t.stream == Stream.COMPUTE:
                elapsed += t.seconds / rate
            if i in done:
                out[i] = elapsed
        return tuple(out.get(i, elapsed) for i in b.grads_done)

    def _blocks(self, unit: Unit) -> list[tuple[str, tuple[Op, ...]]]:
        """The unit's ops in their blocks, in forward order: (block name, ops)."""
        uid = self._ops_id[unit.name]
        hit = self._block_memo.get(uid)
        if hit is None:
            out: list[tuple[str, list[Op]]] = []
            for op in unit.ops:
                name = "mlp" if op.block == "mlp" else ("attn" if op.block in ("attn", "mtp") else op.block)
                if not out or out[-1][0] != name:
                    out.append((name, []))
                out[-1][1].append(op)
            hit = self._block_memo[uid] = [(name, tuple(ops)) for name, ops in out]
        return hit

    def _plan(self, unit: Unit, name: str, ops: tuple[Op, ...]) -> BlockPlan:
        memo = (self._ops_id[unit.name], name)
        hit = self._plan_memo.get(memo)
        if hit is None:
            hit = self._plan_memo[memo] = plan_block(name, ops, self.s.model.dim)
        return hit

    def _secs(self, unit: Unit, key: str, ops: tuple[Op, ...], part: Part, load: MoeLoad | None,
              div: int = 1) -> float:
        """Seconds of some of a unit's ops in one part, over 1/``div`` of the tokens; memoized, keyed by the load
        only where it matters (expert GEMMs)."""
        grouped = load is not None and any(op.kind == "grouped_gemm" for op in ops)
        rows = load.rows_per_expert if grouped and load is not None else ()
        memo = (self._ops_id[unit.name], key, part, rows, div)
        hit = self._secs_memo.get(memo)
        if hit is None:
            cost_part = _COST_PART[part]
            rows_d = tuple(r / div for r in rows)
            hit = self._secs_memo[memo] = sum(self.coster.seconds(op, cost_part, self.tokens / div, rows_d)
                                              for op in ops)
        return hit

    # --------------------------------------------------------------- communication
    def _a2a(self, b: ChunkBuilder, load: MoeLoad, payload: Literal["dispatch", "combine"], notify: bool
             ) -> tuple[float, int]:
        """An expert all-to-all moving the dispatch's or the combine's payload. ``notify``: a forward dispatch
        exchanges token counts first; the combine and both backward transfers reuse the layout (cached)."""
        ib = load.dispatch_ib_bytes if payload == "dispatch" else load.combine_ib_bytes
        nvl = load.dispatch_nvlink_bytes if payload == "dispatch" else load.combine_nvlink_bytes
        links = (NIC if ib > 0 else 0) | (NVLINK if nvl > 0 else 0)
        return self.net.alltoall_seconds(ib, nvl, notify=notify, preceding_compute_s=b.last_compute_s), links

    def _gather(self, b: ChunkBuilder, unit: Unit, part: Part) -> None:
        """ZeRO-3: all-gather the unit's parameters once the unit ``fsdp_prefetch`` + 1 back has computed."""
        plan = self.sharding
        if not (plan.gather_forward if part == "F" else plan.gather_backward):
            return
        secs = self.dp.gather_seconds(*unit_param_counts(unit, self.tp, self.s.parallel.ep))
        if secs <= 0:
            return
        back = plan.prefetch + 1
        after = b.unit_ends[-back] if len(b.unit_ends) >= back else None
        b.gate = b.add("fsdp_gather", part, Stream.DP, secs, (after,), unit.index, self.dp.gather_links, True)
        if self.fsdp_copies:  # FSDP2's copy-out, in the unit's pre-forward (pre-backward) hook
            b.chain("fsdp_copy_out", part, Stream.COMPUTE, self._fsdp_copy_seconds(unit, "out"), unit.index)

    def _fsdp_copy_seconds(self, unit: Unit, which: Literal["out", "in", "accumulate"]) -> float:
        """``software.fsdp_copies``: FSDP2 copying one unit's gathered parameters out of the all-gather buffer
        (``out``: read and write them in the gathered dtype), its gradients into the reduce-scatter buffer
        (``in``: read them in ``precision.weights``, the unsharded parameters' dtype, write them in
        ``precision.grad_reduce``; torch ``_fsdp_collectives.py``: ``split_with_sizes_copy``, ``chunk_cat``), or,
        while gradient sync is off (a pipeline's micro-batches before a stage's last backward), adding them into
        the accumulated gradient in ``precision.grad_reduce`` (``accumulate``: read the gradient, read and write
        the accumulator; ``_fsdp_param.py``: ``unsharded_accumulated_grad += unsharded_param.grad``)."""
        params = sum(unit_param_counts(unit, self.tp, self.s.parallel.ep))
        gathered_b = self.dp.weight_b  # what the all-gather moved: FP8 with precision.fp8_weight_gather
        grad_b, reduce_b = dtype_bytes(self.s.precision.weights), dtype_bytes(self.s.precision.grad_reduce)
        per_param = {"out": 2 * gathered_b, "in": grad_b + reduce_b, "accumulate": grad_b + 2 * reduce_b}[which]
        return self.coster.costs.memory_seconds(params * per_param, f"fsdp_copy_{which}")

    # --------------------------------------------------------------- units
    def _forward(self, b: ChunkBuilder, unit: Unit, load: MoeLoad | None) -> None:
        ep = unit.moe and self.ep_comm and load is not None
        self._gather(b, unit, "F")
        for name, ops in self._blocks(unit):
            self._fwd_block(b, unit, self._plan(unit, name, ops), load)
            if ep and load is not None and name in ("attn", "mlp"):
                which: Literal["dispatch", "combine"] = "dispatch" if name == "attn" else "combine"
                secs, links = self._a2a(b, load, which, notify=which == "dispatch")
                b.chain(which, "F", Stream.COMM, secs, unit.index, links, True)
        b.unit_ends.append(b.last if b.last is not None else 0)

    def _backward(self, b: ChunkBuilder, unit: Unit, load: MoeLoad | None, kind: ChunkKind,
                  inline: dict[tuple[str, str], float]) -> None:
        ep = unit.moe and self.ep_comm and load is not None
        want_i = kind in ("B", "I")
        done: list[int] = []
        if want_i:
            self._gather(b, unit, "I")
        for name, ops in reversed(self._blocks(unit)):
            plan = self._plan(unit, name, ops)
            w = self._secs(unit, name, ops, "W", load)
            key = (f"{name}_w", unit.name)

            def emit_w(remat: int | None, w: float = w, key: tuple[str, str] = key) -> None:
                if kind == "I" and w > 0:
                    inline[key] = w  # trimmed to the communication beside it once the chunk is built
                    t = b.add(key[0], "W", Stream.COMPUTE, w, (b.last, remat), unit.index)
                    b.windows[t], b.window_keys[t], b.open_window = 0.0, key, t
                elif kind != "I":
                    left = w - inline.get(key, 0.0) if kind == "W" else w
                    if left > 0:
                        deps = (b.last, remat) if want_i else ()
                        done.append(b.add(key[0], "W", Stream.COMPUTE, left, deps, unit.index))

            if want_i and name == "mlp" and ep and load is not None:
                secs, links = self._a2a(b, load, "dispatch", notify=False)  # combine(B): the dispatch's payload
                b.chain("combine_b", "I", Stream.COMM, secs, unit.index, links, True)
            if want_i:
                if self.full_recompute and not all(op.block in NEVER_RECOMPUTED for op in plan.ops):
                    self._recompute_comm(b, unit, plan, ep, load)
                self._bwd_block(b, unit, plan, load, emit_w)
            else:
                emit_w(None)
            if want_i and name == "mlp" and ep and load is not None:
                secs, links = self._a2a(b, load, "combine", notify=False)  # dispatch(B): the combine's payload
                b.chain("dispatch_b", "I", Stream.COMM, secs, unit.index, links, True)
        b.unit_ends.append(b.last if b.last is not None else 0)
        if kind != "I":
            grads = done[-1] if done else (b.last if b.last is not None else 0)
            if self.fsdp_copies:  # FSDP2's post-backward: the reduce-scatter's copy-in, or the FP32 accumulation
                which: Literal["in", "accumulate"] = "in" if self.sharding.reduce_every_microbatch else "accumulate"
                name = "fsdp_copy_in_w" if which == "in" else "fsdp_accumulate_w"
                grads = b.add(name, "W", Stream.COMPUTE, self._fsdp_copy_seconds(unit, which), (grads,), unit.index)
            b.grads_done.append(grads)
