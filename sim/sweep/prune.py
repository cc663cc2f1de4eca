"""Pruning before simulating: every point of the space gets a verdict, cheapest test first.

1. The rules (``sim.sweep.rules``: hardware, layout, batch, schedule), once per *outer* point: the inner axes
   (``sim.sweep.space.INNER``: ZeRO stage, recompute, balancing, price) change no rule, so a verdict covers
   the whole inner block.
2. Memory per GPU (``sim.sweep.memory``, the library's memory model): for each legal outer point, the peak of
   every (ZeRO stage, recompute) pair at once, as model states per rank plus activations per rank. A point
   whose peak exceeds the GPU's memory is pruned with both numbers: "needs 93.1 GB per GPU of 80 GB".
3. Dominance (``sim.sweep.core``, between waves of evaluation, for usd and days objectives): a point whose
   best case, the whole step's model FLOPs at the GPU's peak rate, is already beaten in both days and dollars
   by an evaluated point cannot be on the (days, dollars) front nor be the cheapest within any deadline and
   budget. The bound is checked against the first wave's simulations; if any simulated step beats its bound
   the pruning is switched off with a note.

Points sharing everything but the price share one simulation (the price only scales dollars), so the
simulation of a point is keyed ``index // number of prices``: the price is the innermost axis.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim.model import counts
from sim.sweep.memory import MemoryModel
from sim.sweep.rules import NOT_A_CONFIGURATION, PREFIX, Rules
from sim.sweep.space import INNER, Space
from sim.units import GB

CANDIDATE, RULE, MEMORY, DOMINATED = 0, 1, 2, 3


@dataclass
class Verdicts:
    """Per point (arrays of the space's size): what pruning decided and what it knew."""

    status: np.ndarray  # CANDIDATE, RULE, MEMORY (DOMINATED is set later)
    rule: np.ndarray  # object: rule name or None
    reason: np.ndarray  # object: why, or None
    memory_bytes: np.ndarray  # peak per GPU by the memory model (NaN when illegal)
    capacity_bytes: np.ndarray
    dp: np.ndarray  # derived data parallelism (-1 when illegal before it is known)
    num_microbatches: np.ndarray
    lower_bound_s: np.ndarray  # step time at peak FLOP/s (NaN when illegal)
    outer_points: dict[int, tuple[Any, ...]] = field(default_factory=dict)  # legal outer index -> point
    clusters: dict[int, Any] = field(default_factory=dict)  # outer index -> ClusterSpec
    inner_size: int = 1
    num_prices: int = 1


def inner_shape(space: Space) -> tuple[int, ...]:
    return tuple(len(space.axes[space.index[n]].values) if n in space.index else 1 for n in INNER)


def prune(space: Space, progress: Callable[[int, int], None] | None = None) -> Verdicts:
    """Rules and memory for every point of ``space`` (module docstring)."""
    rules, mem = Rules(space), MemoryModel(space)
    shape = inner_shape(space)
    inner = math.prod(shape)
    n = space.size
    n_outer = n // inner
    n_inner_axes = sum(1 for a in space.axes if a.name in INNER)
    outer_axes = space.axes[:len(space.axes) - n_inner_axes]
    k = 0
    while k < len(outer_axes) and outer_axes[k].name in PREFIX:
        k += 1
    prefix_axes, suffix_axes = outer_axes[:k], outer_axes[k:]
    n_suffix = math.prod(len(a.values) for a in suffix_axes)
    first_suffix = tuple(a.values[0] for a in suffix_axes)
    first_inner = tuple(a.values[0] for a in space.axes[len(outer_axes):])
    v = Verdicts(np.full(n, CANDIDATE, dtype=np.int8), np.full(n, None, dtype=object),
                 np.full(n, None, dtype=object), np.full(n, np.nan), np.full(n, np.nan),
                 np.full(n_outer, -1, dtype=np.int64), np.full(n_outer, -1, dtype=np.int64), np.full(n_outer, np.nan),
                 inner_size=inner, num_prices=shape[-1])
    flops: dict[int, float] = {}
    for pi, pre in enumerate(itertools.product(*(a.values for a in prefix_axes))):
        o0 = pi * n_suffix
        verdict, cluster = rules.prefix(pre + first_suffix + first_inner)
        if verdict is not None:
            block = slice(o0 * inner, (o0 + n_suffix) * inner)
            v.status[block], v.rule[block], v.reason[block] = RULE, verdict[0], verdict[1]
            continue
        assert cluster is not None
        for si, suf in enumerate(itertools.product(*(a.values for a in suffix_axes))):
            _outer(space, v, rules, mem, o0 + si, pre + suf + first_inner, cluster, shape, flops)
        if progress is not None:
            progress(o0 + n_suffix, n_outer)
    v.lower_bound_s = np.repeat(v.lower_bound_s, inner)
    _mark_not_configurations(space, rules, v)
    if progress is not None:
        progress(n_outer, n_outer)
    return v


def _mark_not_configurations(space: Space, rules: Rules, v: Verdicts) -> None:
    """Label every point whose (schedule, vpp) pair is no configuration (``Rules.not_a_configuration``) with
    that rule, whatever rule or memory check it met first: such points are left out of a plan's counts."""
    si, vi = space.index.get("schedule"), space.index.get("vpp")
    if vi is None:
        return
    schedules = space.axes[si].values if si is not None else (rules.par["schedule"],)
    vpps = space.axes[vi].values
    reasons = {(a, b): rules.not_a_configuration(s, x) for a, s in enumerate(schedules) for b, x in enumerate(vpps)}
    if all(r is None for r in reasons.values()):
        return
    table = np.full((len(schedules), len(vpps)), -1, dtype=np.int64)  # index into texts, -1: a configuration
    texts: list[str] = []
    for (a, b), r in reasons.items():
        if r is not None:
            table[a, b] = len(texts)
            texts.append(r)
    shape = [len(a.values) for a in space.axes]

    def along(axis: int) -> np.ndarray:  # an axis's value index, shaped to broadcast over the product
        return np.arange(shape[axis]).reshape([-1 if k == axis else 1 for k in range(len(shape))])

    code = np.broadcast_to(table[along(si) if si is not None else 0, along(vi)], shape).reshape(-1)
    idx = np.flatnonzero(code >= 0)
    v.status[idx], v.rule[idx], v.memory_bytes[idx] = RULE, NOT_A_CONFIGURATION, np.nan
    v.reason[idx] = [texts[c] for c in code[idx]]


def _outer(space: Space, v: Verdicts, rules: Rules, mem: MemoryModel, o: int, point: tuple[Any, ...],
           cluster: Any, shape: tuple[int, ...], flops: dict[int, float]) -> None:
    """Verdicts for the inner block of outer point ``o`` (its prefix rules passed)."""
    inner = v.inner_size
    sl = slice(o * inner, (o + 1) * inner)
    cluster = rules.cluster(point)  # swept cluster keys (axes.set.cluster.*) may change it past the prefix
    if isinstance(cluster, str):
        v.status[sl], v.rule[sl], v.reason[sl] = RULE, "hardware", cluster
        return
    lay = rules.layout(point, cluster.num_gpus)
    v.dp[o], v.num_microbatches[o] = lay.dp, lay.num_microbatches
    verdict = rules.rest(point, lay, cluster)
    if verdict is not None:
        v.status[sl], v.rule[sl], v.reason[sl] = RULE, verdict[0], verdict[1]
        return
    v.outer_points[o] = point
    v.clusters[o] = cluster
    cap = cluster.gpu.hbm_bytes
    v.capacity_bytes[sl] = cap
    table = mem.peaks(point, lay)  # (zero stages, recompute policies, balancing policies)
    block = np.broadcast_to(table[:, :, :, None], shape).reshape(-1)
    v.memory_bytes[sl] = block
    over = block > cap
    if over.any():
        idx = np.flatnonzero(over) + o * inner
        v.status[idx], v.rule[idx] = MEMORY, "memory"
        v.reason[idx] = [f"needs {m / GB:.1f} GB per GPU of {cap / GB:.0f} GB" for m in v.memory_bytes[idx]]
    if lay.seq_len not in flops:
        flops[lay.seq_len] = _flops_per_token(space, lay.seq_len)
    peak = _peak_flops(cluster, rules, point)
    v.lower_bound_s[o] = lay.global_batch_size * lay.seq_len * flops[lay.seq_len] / (lay.gpus * peak)


def _flops_per_token(space: Space, seq: int) -> float:
    """Model training FLOPs per token (main model and MTP, causal attention: the smaller count)."""
    s = space.base_scenario
    return counts.train_flops_per_token(s.model, seq, True) + counts.train_flops_per_token_mtp(s.model, seq, True)


def _peak_flops(cluster: Any, rules: Rules, point: tuple[Any, ...]) -> float:
    """The fastest tensor-core rate the point may use: FP8 when it computes in FP8, else BF16."""
    gpu = cluster.gpu
    fp8 = gpu.supports_fp8 and rules.uses_fp8(point)
    return gpu.peak_flops_per_s("fp8" if fp8 else "bf16")


def counts_by_rule(v: Verdicts) -> dict[str, int]:
    out: dict[str, int] = {}
    for r, c in zip(*np.unique(v.rule[v.rule != None].astype(str), return_counts=True), strict=True):  # noqa: E711
        out[str(r)] = int(c)
    return out
