"""Per stage and micro-batch: each chunk as phases on a GPU's compute and communication streams.

A chunk is one pipeline action's work on one stage: forward (F), backward-for-input (I), backward-for-
weights (W), or a full backward (B = I and W, interleaved per layer). Following DeepSeek-V3's decomposition
(tech report 3.2.1), a MoE layer's forward is ``attn -> dispatch -> mlp -> combine``; its backward is
``combine_b -> mlp_b -> dispatch_b -> attn_b`` with the weight gradients ``mlp_w`` and ``attn_w`` split off.
``dispatch_b`` moves the combine's payload backwards and ``combine_b`` the dispatch's (the trace runs them
with each other's kernels), so they take the combine and dispatch dtypes respectively. With tensor
parallelism each block ends in a collective on NVLink. Phases carry their own dependencies (indices in the
chunk); the engine runs each stream's phases in the chunk's order, a phase starting when its dependencies
and its stream predecessor are done.

An overlapped pair (``F&B``) interleaves two chunks layer by layer in DeepSeek's order (the profile in
``../shared/data``): compute ``attn(F), mlp(B), mlp(W), mlp(F), attn(B), attn(W)``; communication
``combine(B), dispatch(F), dispatch(B), combine(F)``. Each chunk keeps its internal order, so the merge never
deadlocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sim.config import Scenario
from sim.model.layout import StageLayout, Unit
from sim.network import Collective, Network
from sim.opcosts import OpCoster

COMPUTE, COMM = 0, 1
IB, NVLINK = 1, 2
ChunkKind = Literal["F", "B", "I", "W"]


@dataclass(frozen=True, slots=True)
class MoeLoad:
    """What one MoE layer's routing means for the slowest GPU of its EP group, for one micro-batch."""

    rows_per_expert: tuple[float, ...]
    dispatch_ib_bytes: float
    dispatch_nvlink_bytes: float
    combine_ib_bytes: float
    combine_nvlink_bytes: float
    imbalance: float = 1.0


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    part: Literal["F", "I", "W"]
    stream: int
    seconds: float
    deps: tuple[int, ...]
    layer: int = -1
    links: int = 0
    holds_sms: bool = False


def stream_orders(phases: tuple[Phase, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Phase indices on the compute and the communication stream, in list order."""
    return (tuple(i for i, p in enumerate(phases) if p.stream == COMPUTE),
            tuple(i for i, p in enumerate(phases) if p.stream == COMM))


@dataclass(frozen=True, slots=True)
class Chunk:
    kind: ChunkKind
    phases: tuple[Phase, ...]
    groups: tuple[tuple[int, ...], ...]
    orders: tuple[tuple[int, ...], tuple[int, ...]]


LoadFn = Callable[[Unit, int], MoeLoad]  # (MoE unit, micro-batch) -> load


class _ChunkBuilder:
    """Accumulates phases with dependencies; ``last`` is the phase the next group depends on."""

    def __init__(self, kind: ChunkKind) -> None:
        self.kind = kind
        self.phases: list[Phase] = []
        self.groups: list[tuple[int, ...]] = []
        self.last: int | None = None

    def add(self, name: str, part: Literal["F", "I", "W"], stream: int, seconds: float,
            deps: tuple[int | None, ...], layer: int, links: int = 0, holds: bool = False) -> int:
        self.phases.append(Phase(name, part, stream, seconds, tuple(d for d in deps if d is not None),
                                 layer, links, holds))
        return len(self.phases) - 1

    def build(self) -> Chunk:
        phases = tuple(self.phases)
        return Chunk(self.kind, phases, tuple(self.groups), stream_orders(phases))


class Program:
    """Builds (and memoizes) the chunks of every stage for one scenario."""

    def __init__(self, scenario: Scenario, coster: OpCoster, network: Network, layout: StageLayout,
                 loads: LoadFn) -> None:
        self.s = scenario
        self.coster = coster
        self.net = network
        self.layout = layout
        self.loads = loads
        self.tokens = float(scenario.tokens_per_microbatch)
        self._memo: dict[tuple, Chunk] = {}
        self._block_memo: dict[str, list[tuple[str, tuple]]] = {}
        self._secs_memo: dict[tuple, float] = {}
        p = scenario.parallel
        self.ep_comm = scenario.model.is_moe and p.ep > 1
        self.tp_kind: Collective = "reduce_scatter" if p.sequence_parallel else "all_reduce"
        self.full_recompute = p.recompute == "full"

    # --------------------------------------------------------------- public
    def chunk(self, stage: int, kind: ChunkKind, microbatch: int) -> Chunk:
        units = self.layout.stages[stage]
        loads = tuple(self.loads(u, microbatch) if u.moe else None for u in units)
        key = (stage, kind, loads)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = self._build(units, kind, loads)
        return hit

    def p2p_bytes(self) -> float:
        """Activations (forward) or their gradients (backward) crossing a stage boundary, BF16."""
        sp = self.s.parallel.tp if self.s.parallel.sequence_parallel else 1
        return self.tokens * self.s.model.dim * 2.0 / sp

    # --------------------------------------------------------------- building
    def _build(self, units: tuple[Unit, ...], kind: ChunkKind, loads: tuple[MoeLoad | None, ...]) -> Chunk:
        b = _ChunkBuilder(kind)
        order = range(len(units)) if kind == "F" else range(len(units) - 1, -1, -1)
        for i in order:
            start = len(b.phases)
            if kind == "F":
                self._forward(b, units[i], loads[i])
            else:
                self._backward(b, units[i], loads[i], kind)
            b.groups.append(tuple(range(start, len(b.phases))))
        return b.build()

    def _blocks(self, unit: Unit) -> list[tuple[str, tuple]]:
        """The unit's ops in their blocks, in forward order: (block name, ops)."""
        hit = self._block_memo.get(unit.name)
        if hit is None:
            out: list[tuple[str, list]] = []
            for op in unit.ops:
                name = "mlp" if op.block == "mlp" else ("attn" if op.block in ("attn", "mtp") else op.block)
                if not out or out[-1][0] != name:
                    out.append((name, []))
                out[-1][1].append(op)
            hit = self._block_memo[unit.name] = [(name, tuple(ops)) for name, ops in out]
        return hit

    def _secs(self, unit: Unit, block: str, ops: tuple, part: Literal["fwd", "input", "weight"],
              load: MoeLoad | None) -> float:
        """Seconds of a block's ops in one part; memoized, keyed by the load only where it matters (experts)."""
        rows = load.rows_per_expert if load is not None and block == "mlp" else ()
        key = (unit.name, block, part, rows)
        hit = self._secs_memo.get(key)
        if hit is None:
            hit = self._secs_memo[key] = sum(self.coster.seconds(op, part, self.tokens, rows) for op in ops)
        return hit

    def _tp_seconds(self) -> float:
        """One block's tensor-parallel collective over the full BF16 activation (all-reduce, or reduce-scatter
        with sequence parallelism, whose all-gather is its mirror in the other pass)."""
        return self.net.collective_seconds(self.tp_kind, self.tokens * self.s.model.dim * 2.0, self.net.tp_group())

    def _a2a(self, load: MoeLoad | None, which: Literal["dispatch", "combine"]) -> tuple[float, int]:
        if load is None:
            return 0.0, 0
        ib = load.dispatch_ib_bytes if which == "dispatch" else load.combine_ib_bytes
        nvl = load.dispatch_nvlink_bytes if which == "dispatch" else load.combine_nvlink_bytes
        links = (IB if ib > 0 else 0) | (NVLINK if nvl > 0 else 0)
        return self.net.alltoall_seconds(ib, nvl, which), links

    def _forward(self, b: _ChunkBuilder, unit: Unit, load: MoeLoad | None) -> None:
        tp = self.s.parallel.tp > 1
        ep = unit.moe and self.ep_comm and load is not None
        for name, ops in self._blocks(unit):
            b.last = b.add(name, "F", COMPUTE, self._secs(unit, name, ops, "fwd", load), (b.last,), unit.index)
            # Routed experts are not tensor-parallel: a MoE block ends in the combine, not a TP collective.
            if tp and (name == "attn" or (name == "mlp" and not ep)):
                b.last = b.add(f"tp_{name}", "F", COMM, self._tp_seconds(), (b.last,), unit.index, NVLINK, True)
            if ep and name in ("attn", "mlp"):
                secs, links = self._a2a(load, "dispatch" if name == "attn" else "combine")
                b.last = b.add("dispatch" if name == "attn" else "combine", "F", COMM, secs, (b.last,),
                               unit.index, links, True)

    def _recompute_comm(self, b: _ChunkBuilder, unit: Unit, name: str, ep: bool, load: MoeLoad | None) -> None:
        """Full recompute re-runs a block's forward, its communication included: the TP collective that ends
        it, or the expert dispatch and combine of a MoE block."""
        if self.s.parallel.tp > 1 and (name == "attn" or (name == "mlp" and not ep)):
            b.last = b.add(f"tp_{name}_recompute", "I", COMM, self._tp_seconds(), (b.last,), unit.index, NVLINK,
                           True)
        if ep and name == "mlp":
            for which in ("dispatch", "combine"):
                secs, links = self._a2a(load, which)  # type: ignore[arg-type]
                b.last = b.add(f"{which}_recompute", "I", COMM, secs, (b.last,), unit.index, links, True)

    def _backward(self, b: _ChunkBuilder, unit: Unit, load: MoeLoad | None, kind: ChunkKind) -> None:
        tp = self.s.parallel.tp > 1
        ep = unit.moe and self.ep_comm and load is not None
        want_i, want_w = kind in ("B", "I"), kind in ("B", "W")
        for name, ops in reversed(self._blocks(unit)):
            if want_i and name == "mlp" and ep:
                secs, links = self._a2a(load, "dispatch")  # combine(B) carries the dispatch's payload
                b.last = b.add("combine_b", "I", COMM, secs, (b.last,), unit.index, links, True)
            if want_i and self.full_recompute:
                self._recompute_comm(b, unit, name, ep, load)
            if want_i and name != "embed":
                secs = self._secs(unit, name, ops, "input", load)
                b.last = b.add(f"{name}_b", "I", COMPUTE, secs, (b.last,), unit.index)
            if want_w:
                secs = self._secs(unit, name, ops, "weight", load)
                if secs > 0:
                    b.add(f"{name}_w", "W", COMPUTE, secs, (b.last,) if want_i else (), unit.index)
            if want_i and name == "mlp" and ep:
                secs, links = self._a2a(load, "combine")  # dispatch(B) carries the combine's payload
                b.last = b.add("dispatch_b", "I", COMM, secs, (b.last,), unit.index, links, True)
            elif want_i and tp and (name == "attn" or (name == "mlp" and not ep)):
                b.last = b.add(f"tp_{name}_b", "I", COMM, self._tp_seconds(), (b.last,), unit.index, NVLINK, True)


@dataclass(frozen=True, slots=True)
class Work:
    """What a rank executes for one action: the phases and the order of each stream."""

    phases: tuple[Phase, ...]
    orders: tuple[tuple[int, ...], tuple[int, ...]]

    @classmethod
    def single(cls, chunk: Chunk) -> Work:
        return cls(chunk.phases, chunk.orders)


def _interleave(first: list[int], second: list[int]) -> list[int]:
    out: list[int] = []
    for i in range(max(len(first), len(second))):
        out += first[i:i + 1] + second[i:i + 1]
    return out


def merge_pair(f: Chunk, b: Chunk) -> Work:
    """Overlap forward chunk ``f`` with backward chunk ``b`` (different micro-batches) layer by layer.

    Per pair of layer groups: compute ``F[0], B[0], B[1], F[1:], B[2:]`` and communication alternating from
    the backward side (DeepSeek's order, see the module docstring); unmatched groups run in their own order.
    """
    off = len(f.phases)
    shifted = tuple(Phase(p.name, p.part, p.stream, p.seconds, tuple(d + off for d in p.deps), p.layer, p.links,
                          p.holds_sms) for p in b.phases)
    phases = f.phases + shifted
    compute: list[int] = []
    comm: list[int] = []
    for i in range(max(len(f.groups), len(b.groups))):
        fg = f.groups[i] if i < len(f.groups) else ()
        bg = tuple(j + off for j in b.groups[i]) if i < len(b.groups) else ()
        fc = [j for j in fg if phases[j].stream == COMPUTE]
        bc = [j for j in bg if phases[j].stream == COMPUTE]
        compute += fc[:1] + bc[:2] + fc[1:] + bc[2:]
        comm += _interleave([j for j in bg if phases[j].stream == COMM], [j for j in fg if phases[j].stream == COMM])
    return Work(phases, (tuple(compute), tuple(comm)))


def sequential_pair(f: Chunk, b: Chunk) -> Work:
    """Run a scheduled F&B pair's chunks one after the other, without overlap (a what-if baseline)."""
    off = len(f.phases)
    tails = tuple(i for i in (f.orders[0][-1:] + f.orders[1][-1:]))
    shifted = tuple(Phase(p.name, p.part, p.stream, p.seconds, tuple(d + off for d in p.deps) or tails, p.layer,
                          p.links, p.holds_sms) for p in b.phases)
    phases = f.phases + shifted
    return Work(phases, stream_orders(phases))
