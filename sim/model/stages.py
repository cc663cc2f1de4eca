"""Where each part of the model sits in the pipeline.

The model is a sequence of units: the embedding, the transformer layers, the final norm with the output head,
and the MTP modules. The embedding sits on the first stage; the head and the MTP modules on the last stage,
which lets MTP share the embedding and head with the main model when the first and last stage share a rank
(DeepSeek-V3 tech report 3.2.3; DualPipe puts stage 0 and stage P-1 on rank 0). Transformer layers are split
into contiguous runs, one per stage: given explicitly (``parallel.stage_layers``, MTP layers counted last;
zeros put the embedding or the output head on a stage of its own), uniformly by count (``stage_split:
uniform``, as Megatron-LM does), or balanced (``stage_split: balanced``, the default). Balancing works on
*ranks*: the stages a rank holds together (two under DualPipe and DualPipeV, ``vpp`` under interleaved 1F1B,
:func:`sim.pipeline.all_stages_of`) share its time. The split makes the least, in order, the heaviest stage's
training arithmetic (usually the indivisible head and MTP), the heaviest rank's (its stages summed; embedding,
head and MTP included), then the spread of the ranks' and the stages' loads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Literal

from sim.config import ModelSpec, Scenario
from sim.model.ops import Op, embedding_ops, head_ops, layer_ops, mtp_ops
from sim.pipeline import all_stages_of

UnitKind = Literal["embed", "layer", "head", "mtp"]


@dataclass(frozen=True, slots=True)
class Unit:
    name: str
    kind: UnitKind
    index: int
    ops: tuple[Op, ...]
    moe: bool = False


@dataclass(frozen=True, slots=True)
class StagePartition:
    stages: tuple[tuple[Unit, ...], ...]

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def layers_per_stage(self) -> tuple[int, ...]:
        """Transformer layers per stage, MTP modules counted as layers (the ``stage_layers`` convention)."""
        return tuple(sum(u.kind in ("layer", "mtp") for u in s) for s in self.stages)


@cache
def model_units(m: ModelSpec) -> tuple[Unit, ...]:
    """The model's units in order. Units of one kind share one ``ops`` tuple object (interned), so code that
    memoizes per unit shape can key on its identity instead of hashing every op."""
    interned: dict[tuple[Op, ...], tuple[Op, ...]] = {}

    def ops(x: list[Op]) -> tuple[Op, ...]:
        t = tuple(x)
        return interned.setdefault(t, t)

    units = [Unit("embed", "embed", 0, ops(embedding_ops(m)))]
    units += [Unit(f"layer{i}", "layer", i, ops(layer_ops(m, i)), m.is_moe_layer(i)) for i in range(m.n_layers)]
    units.append(Unit("head", "head", 0, ops(head_ops(m))))
    units += [Unit(f"mtp{i}", "mtp", i, ops(mtp_ops(m)), m.is_moe_layer(m.n_layers - 1))
              for i in range(m.n_mtp_layers)]
    return tuple(units)


def unit_train_flops(unit: Unit, keys_per_query: float) -> float:
    """Forward + backward model FLOPs per token of one unit (the balancing weight)."""
    total = 0.0
    for op in unit.ops:
        total += 3.0 * op.gemm_flops_per_token() + 3.0 * op.attention_fwd_flops_per_token(keys_per_query)
    return total


def _split_min_max(weights: Sequence[float], parts: int, first_extra: float, last_extra: float) -> list[int]:
    """Counts of a contiguous split of ``weights`` into ``parts`` runs minimizing the heaviest run, where the
    first run carries ``first_extra`` and the last ``last_extra`` beside its items. Runs may be empty.
    O(parts x n^2) in Python (tens of ms at 32 stages of 61 layers), so memoized by :func:`split_min_max`."""
    n = len(weights)
    prefix = [0.0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    inf = float("inf")
    # best[p][i]: the lightest possible heaviest run when the first i items fill p runs.
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for p in range(1, parts + 1):
        extra_first = first_extra if p == 1 else 0.0
        extra_last = last_extra if p == parts else 0.0
        for i in range(n + 1):
            for j in range(i + 1):
                if best[p - 1][j] == inf:
                    continue
                load = prefix[i] - prefix[j] + extra_first + extra_last
                cand = max(best[p - 1][j], load)
                if cand < best[p][i] - 1e-9:
                    best[p][i], cut[p][i] = cand, j
    counts, i = [], n
    for p in range(parts, 0, -1):
        j = cut[p][i]
        counts.append(i - j)
        i = j
    return counts[::-1]


@lru_cache(maxsize=64)
def split_min_max(weights: tuple[float, ...], parts: int, first_extra: float, last_extra: float) -> tuple[int, ...]:
    """:func:`_split_min_max`, memoized on its arguments (schedules of one stage count share the split before
    it is balanced over each schedule's ranks; cleared by :func:`sim.step.clear_caches`)."""
    return tuple(_split_min_max(weights, parts, first_extra, last_extra))


def _rank_balanced(weights: Sequence[float], counts: list[int], first_extra: float, last_extra: float,
                   groups: Sequence[Sequence[int]]) -> list[int]:
    """Improve a split while it lowers, in order: the heaviest stage, the heaviest rank (a rank's load: its
    stages' loads summed), the sum of squared rank loads and the sum of squared stage loads. A move takes one
    layer from a stage of the heaviest rank (or the heaviest stage) to any other stage, shifting the stages in
    between by one layer each (their counts unchanged). Inner stages keep at least one layer."""
    prefix = [0.0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    n = len(counts)
    scale = max(prefix[-1] + first_extra + last_extra, 1e-30)

    def loads(c: Sequence[int]) -> tuple[list[float], list[float]]:
        stage, i = [], 0
        for s, k in enumerate(c):
            stage.append((prefix[i + k] - prefix[i] + (first_extra if s == 0 else 0.0)
                          + (last_extra if s == n - 1 else 0.0)) / scale)
            i += k
        return stage, [sum(stage[s] for s in g) for g in groups]

    def key(c: Sequence[int]) -> tuple[float, ...]:
        stage, rank = loads(c)
        return (max(stage), max(rank), sum(x * x for x in rank), sum(x * x for x in stage))

    def better(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        for x, y in zip(a, b, strict=True):
            if x < y - 1e-12:
                return True
            if x > y + 1e-12:
                return False
        return False

    best = key(counts)
    for _ in range(64 * n):
        stage, rank = loads(counts)
        heavy = max(range(len(rank)), key=rank.__getitem__)
        sources = sorted({*groups[heavy], max(range(n), key=stage.__getitem__)}, key=lambda s: -stage[s])
        move = None
        for src in sources:
            if counts[src] <= (0 if src in (0, n - 1) else 1):
                continue
            for dst in sorted(range(n), key=stage.__getitem__):
                if dst == src:
                    continue
                trial = list(counts)
                trial[src] -= 1
                trial[dst] += 1
                k = key(trial)
                if better(k, best):
                    move = (trial, k)
                    break
            if move:
                break
        if move is None:
            break
        counts, best = move
    return counts


def uniform_counts(n_layers: int, parts: int) -> list[int]:
    base, rem = divmod(n_layers, parts)
    return [base + (1 if s < rem else 0) for s in range(parts)]


def scenario_partition(s: Scenario) -> StagePartition:
    """The stages of ``s``: its split, balanced over the stages each rank of its schedule holds."""
    p = s.parallel
    return partition(s.model, s.num_stages, p.stage_layers, p.stage_split, s.training.seq_len,
                     groups=all_stages_of(p.schedule, p.pp, p.vpp))


def partition(m: ModelSpec, num_stages: int, stage_layers: tuple[int, ...] | None = None,
              split: Literal["balanced", "uniform"] = "balanced", seq_len: int = 4096,
              weight: Callable[[Unit], float] | None = None,
              groups: Sequence[Sequence[int]] | None = None) -> StagePartition:
    """Assign the model's units to ``num_stages`` pipeline stages (see the module docstring); ``groups``: the
    stages each rank holds (default: one stage per rank)."""
    units = model_units(m)
    embed = units[0]
    layers = [u for u in units if u.kind == "layer"]
    head = next(u for u in units if u.kind == "head")
    mtps = [u for u in units if u.kind == "mtp"]
    if stage_layers is not None:
        counts = list(stage_layers)
        if counts and counts[-1] < len(mtps):
            raise ValueError(f"parallel.stage_layers: the last stage must hold the {len(mtps)} MTP layers")
        counts[-1] -= len(mtps)
    elif split == "uniform":
        counts = uniform_counts(len(layers), num_stages)
    else:
        wfn = weight or (lambda u: unit_train_flops(u, seq_len / 2))
        weights = [wfn(u) for u in layers]
        first, last = wfn(embed), wfn(head) + sum(wfn(u) for u in mtps)
        counts = list(split_min_max(tuple(weights), num_stages, first, last))
        if groups is not None and any(len(g) > 1 for g in groups):
            counts = _rank_balanced(weights, counts, first, last, groups)
    stages: list[tuple[Unit, ...]] = []
    start = 0
    for s, c in enumerate(counts):
        items: list[Unit] = [embed] if s == 0 else []
        items += layers[start:start + c]
        start += c
        if s == num_stages - 1:
            items += [head, *mtps]
        stages.append(tuple(items))
    return StagePartition(tuple(stages))
