"""Per stage and micro-batch: each chunk as tasks on a GPU's compute and communication streams.

A chunk is one pipeline action's work on one stage: forward (F), backward-for-input (I), backward-for-
weights (W), or a full backward (B = I and W, interleaved per layer). Following DeepSeek-V3's decomposition
(tech report 3.2.1), a MoE layer's forward is ``attn -> dispatch -> mlp -> combine``; its backward is
``combine_b -> mlp_b -> dispatch_b -> attn_b`` with the weight gradients ``mlp_w`` and ``attn_w`` split off.
``dispatch_b`` moves the combine's payload backwards and ``combine_b`` the dispatch's (DeepSeek's trace runs
them with each other's kernels), so they take the combine and dispatch dtypes respectively. With tensor
parallelism each block ends in a collective on NVLink. Tasks carry their own dependencies (indices in the
chunk); the engine runs each stream's tasks in the chunk's order, a task starting when its dependencies and
its stream predecessor are done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sim.config import Scenario
from sim.costs.ops import OpCoster
from sim.model.ops import Op
from sim.model.stages import StagePartition, Unit
from sim.network import Collective, Network
from sim.program.moe import MoeLoad
from sim.program.tasks import NIC, NVLINK, Part, Task, Work
from sim.timeline import Stream
from sim.units import dtype_bytes

ChunkKind = Literal["F", "B", "I", "W"]
LoadFn = Callable[[Unit, int], MoeLoad]  # (MoE unit, micro-batch) -> load
#: The cost-model part of each chunk part: forward, input gradient (with recompute), weight gradient.
_COST_PART = {"F": "fwd", "I": "input", "W": "weight"}


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk's tasks, its per-layer groups of task indices (forward order for F, backward order for B/I/W)
    and the work the engine runs when the chunk is an action on its own."""

    kind: ChunkKind
    tasks: tuple[Task, ...]
    groups: tuple[tuple[int, ...], ...]
    work: Work


class _ChunkBuilder:
    """Accumulates tasks with dependencies; ``last`` is the task the next one on the chain depends on."""

    def __init__(self, kind: ChunkKind) -> None:
        self.kind = kind
        self.tasks: list[Task] = []
        self.groups: list[tuple[int, ...]] = []
        self.last: int | None = None
        self.last_compute_s = 0.0  # the compute task just before (sets the in-situ wait of an all-to-all)

    def add(self, name: str, part: Part, stream: Stream, seconds: float, deps: tuple[int | None, ...],
            layer: int, links: int = 0, holds_sms: bool = False) -> int:
        self.tasks.append(Task(name, part, stream, seconds, tuple(d for d in deps if d is not None), layer, links,
                               holds_sms))
        if stream == Stream.COMPUTE:
            self.last_compute_s = seconds
        return len(self.tasks) - 1

    def chain(self, name: str, part: Part, stream: Stream, seconds: float, layer: int, links: int = 0,
              holds_sms: bool = False) -> None:
        """Add a task that depends on the previous task of the chain and becomes its new end."""
        self.last = self.add(name, part, stream, seconds, (self.last,), layer, links, holds_sms)

    def build(self) -> Chunk:
        tasks = tuple(self.tasks)
        return Chunk(self.kind, tasks, tuple(self.groups), Work.of(tasks))


class Program:
    """Builds (and memoizes) the chunks of every stage for one scenario."""

    def __init__(self, scenario: Scenario, coster: OpCoster, network: Network, partition: StagePartition,
                 loads: LoadFn) -> None:
        self.s = scenario
        self.coster = coster
        self.net = network
        self.partition = partition
        self.loads = loads
        self.tokens = float(scenario.tokens_per_microbatch)
        self._memo: dict[tuple, Chunk] = {}
        self._block_memo: dict[str, list[tuple[str, tuple[Op, ...]]]] = {}
        self._secs_memo: dict[tuple, float] = {}
        p = scenario.parallel
        self.tp = p.tp > 1
        self.ep_comm = scenario.model.is_moe and p.ep > 1
        self.tp_kind: Collective = "reduce_scatter" if p.sequence_parallel else "all_reduce"
        self.full_recompute = p.recompute == "full"

    # --------------------------------------------------------------- public
    def chunk_key(self, stage: int, kind: ChunkKind, microbatch: int) -> tuple:
        """What a chunk depends on: its stage, its kind and the expert loads of its MoE layers (micro-batches
        with the same loads share one chunk)."""
        units = self.partition.stages[stage]
        return (stage, kind, tuple(self.loads(u, microbatch) if u.moe else None for u in units))

    def chunk_at(self, key: tuple) -> Chunk:
        hit = self._memo.get(key)
        if hit is None:
            stage, kind, loads = key
            hit = self._memo[key] = self._build(self.partition.stages[stage], kind, loads)
        return hit

    def chunk(self, stage: int, kind: ChunkKind, microbatch: int) -> Chunk:
        return self.chunk_at(self.chunk_key(stage, kind, microbatch))

    def p2p_bytes(self) -> float:
        """Activations (forward) or their gradients (backward) crossing a stage boundary, BF16."""
        sp = self.s.parallel.tp if self.s.parallel.sequence_parallel else 1
        return self.tokens * self.s.model.dim * dtype_bytes("bf16") / sp

    # --------------------------------------------------------------- building
    def _build(self, units: tuple[Unit, ...], kind: ChunkKind, loads: tuple[MoeLoad | None, ...]) -> Chunk:
        b = _ChunkBuilder(kind)
        order = range(len(units)) if kind == "F" else range(len(units) - 1, -1, -1)
        for i in order:
            start = len(b.tasks)
            if kind == "F":
                self._forward(b, units[i], loads[i])
            else:
                self._backward(b, units[i], loads[i], kind)
            b.groups.append(tuple(range(start, len(b.tasks))))
        return b.build()

    def _blocks(self, unit: Unit) -> list[tuple[str, tuple[Op, ...]]]:
        """The unit's ops in their blocks, in forward order: (block name, ops)."""
        hit = self._block_memo.get(unit.name)
        if hit is None:
            out: list[tuple[str, list[Op]]] = []
            for op in unit.ops:
                name = "mlp" if op.block == "mlp" else ("attn" if op.block in ("attn", "mtp") else op.block)
                if not out or out[-1][0] != name:
                    out.append((name, []))
                out[-1][1].append(op)
            hit = self._block_memo[unit.name] = [(name, tuple(ops)) for name, ops in out]
        return hit

    def _secs(self, unit: Unit, block: str, ops: tuple[Op, ...], part: Part, load: MoeLoad | None) -> float:
        """Seconds of a block's ops in one part; memoized, keyed by the load only where it matters (experts)."""
        rows = load.rows_per_expert if load is not None and block == "mlp" else ()
        key = (unit.name, block, part, rows)
        hit = self._secs_memo.get(key)
        if hit is None:
            cost_part = _COST_PART[part]
            hit = self._secs_memo[key] = sum(self.coster.seconds(op, cost_part, self.tokens, rows)  # type: ignore[arg-type]
                                             for op in ops)
        return hit

    def _tp_seconds(self) -> float:
        """One block's tensor-parallel collective over the full BF16 activation (all-reduce, or reduce-scatter
        with sequence parallelism, whose all-gather is its mirror in the other pass)."""
        return self.net.collective_seconds(self.tp_kind, self.tokens * self.s.model.dim * dtype_bytes("bf16"),
                                           self.net.tp_group())

    def _a2a(self, b: _ChunkBuilder, load: MoeLoad, payload: Literal["dispatch", "combine"], notify: bool
             ) -> tuple[float, int]:
        """An expert all-to-all moving the dispatch's or the combine's payload. ``notify``: a forward dispatch
        exchanges token counts first; the combine and both backward transfers reuse the layout (cached)."""
        ib = load.dispatch_ib_bytes if payload == "dispatch" else load.combine_ib_bytes
        nvl = load.dispatch_nvlink_bytes if payload == "dispatch" else load.combine_nvlink_bytes
        links = (NIC if ib > 0 else 0) | (NVLINK if nvl > 0 else 0)
        return self.net.alltoall_seconds(ib, nvl, notify=notify, preceding_compute_s=b.last_compute_s), links

    def _tp_after(self, name: str, ep: bool) -> bool:
        """Whether a block ends in a tensor-parallel collective: routed experts are not tensor-parallel, so a
        MoE block ends in the combine instead."""
        return self.tp and (name == "attn" or (name == "mlp" and not ep))

    def _forward(self, b: _ChunkBuilder, unit: Unit, load: MoeLoad | None) -> None:
        ep = unit.moe and self.ep_comm and load is not None
        for name, ops in self._blocks(unit):
            b.chain(name, "F", Stream.COMPUTE, self._secs(unit, name, ops, "F", load), unit.index)
            if self._tp_after(name, ep):
                b.chain(f"tp_{name}", "F", Stream.COMM, self._tp_seconds(), unit.index, NVLINK, True)
            if ep and load is not None and name in ("attn", "mlp"):
                which: Literal["dispatch", "combine"] = "dispatch" if name == "attn" else "combine"
                secs, links = self._a2a(b, load, which, notify=which == "dispatch")
                b.chain(which, "F", Stream.COMM, secs, unit.index, links, True)

    def _recompute_comm(self, b: _ChunkBuilder, unit: Unit, name: str, ep: bool, load: MoeLoad | None) -> None:
        """Full recompute re-runs a block's forward, its communication included: the TP collective that ends
        it, or the expert dispatch and combine of a MoE block."""
        if self._tp_after(name, ep):
            b.chain(f"tp_{name}_recompute", "I", Stream.COMM, self._tp_seconds(), unit.index, NVLINK, True)
        if ep and load is not None and name == "mlp":
            for which in ("dispatch", "combine"):
                secs, links = self._a2a(b, load, which, notify=which == "dispatch")  # type: ignore[arg-type]
                b.chain(f"{which}_recompute", "I", Stream.COMM, secs, unit.index, links, True)

    def _backward(self, b: _ChunkBuilder, unit: Unit, load: MoeLoad | None, kind: ChunkKind) -> None:
        ep = unit.moe and self.ep_comm and load is not None
        want_i, want_w = kind in ("B", "I"), kind in ("B", "W")
        for name, ops in reversed(self._blocks(unit)):
            if want_i and name == "mlp" and ep and load is not None:
                secs, links = self._a2a(b, load, "dispatch", notify=False)  # combine(B): the dispatch's payload
                b.chain("combine_b", "I", Stream.COMM, secs, unit.index, links, True)
            if want_i and self.full_recompute:
                self._recompute_comm(b, unit, name, ep, load)
            if want_i and name != "embed":
                b.chain(f"{name}_b", "I", Stream.COMPUTE, self._secs(unit, name, ops, "I", load), unit.index)
            if want_w:
                secs = self._secs(unit, name, ops, "W", load)
                if secs > 0:
                    b.add(f"{name}_w", "W", Stream.COMPUTE, secs, (b.last,) if want_i else (), unit.index)
            if want_i and name == "mlp" and ep and load is not None:
                secs, links = self._a2a(b, load, "combine", notify=False)  # dispatch(B): the combine's payload
                b.chain("dispatch_b", "I", Stream.COMM, secs, unit.index, links, True)
            elif want_i and self._tp_after(name, ep):
                b.chain(f"tp_{name}_b", "I", Stream.COMM, self._tp_seconds(), unit.index, NVLINK, True)
