"""Per-micro-batch loads of every EP rank: routed rows, rows per local expert, IB and NVLink bytes.

What the engine consumes (``microbatch_loads``). Setting: each of the ``ep`` ranks of an EP group is a GPU that
routes its own ``T = scenario.expert_tokens_per_gpu`` tokens per micro-batch (the micro-batch's tokens, split by
context parallelism and, for the dispatch, by tensor parallelism: Megatron-Core's sequence-parallel MoE with
expert tensor parallelism 1); one all-to-all moves the ``ep * T`` tokens of the group (DeepSeek-V3: 64 x 4,096
= 262,144). Each token is counted top-k times
among the routed experts, plus once per shared expert on its own rank (no communication).

Rows. Expected loads per expert (routed experts per token, sum k) come from the balancing state after
``experts.balancing_steps + step`` steps under the scenario's policy (``sim.experts.balancing``). Skewed modes
draw the ``ep * T * k`` routed rows of each (layer, micro-batch) from a multinomial over experts with those
shares, seeded per layer; this ignores that one token's k experts are distinct (variance overstated by a
factor ~1 - (k-1)/(E-1), 3% for V3). ``balanced`` (without drift) gives every expert exactly its share
(rows split as evenly as integers allow), so every rank gets exactly ``T * k`` rows. Replicas split an expert's
rows evenly (``ExpertPlacement.slot_counts``).

Bytes (DeepSeek's path, tech report 3.2.2): a token travels over IB once per distinct remote node it reaches,
to the GPU with its own in-node index, which forwards it over NVLink to each other GPU of that node hosting
one of its experts; GPUs of its own node get it over NVLink directly. Combine runs the same path backwards
(partial sums reduced on the forwarding GPU), so combine's IB send of a rank is dispatch's IB receive and so
on, in the combine dtype. That is DeepEP's path; a plain all-to-all (``software.a2a_library: nccl``, as
Megatron-Core's all-to-all dispatcher permutes one row per token and expert) sends every routed row straight to
its expert's GPU, so a token reaching two experts on one remote node crosses IB twice (DeepSeek-V3 at EP64:
7 rows per token over IB against about 3.5 node copies). Bytes per token: ``dim`` x dispatch (combine) dtype
size, plus one fp32 scale per ``activation_tile`` values when that dtype is fp8.

Reach. The expected distinct nodes and GPUs per token come from ``sim.experts.fanout`` (exact under
node-limited uniform routing). Under skew a node (GPU) is reached by a fraction of tokens proportional to its
share of the rows: ``reach = min(1, rows per token x expected reach / k)``, i.e. the experts per reached node
are taken as in balanced routing (an approximation: skew packs slightly more experts per reached node).
Link bytes follow the drawn rows of each micro-batch, so they are consistent with them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import ceil

import numpy as np
from numpy.typing import NDArray

from sim import units
from sim.config import Scenario
from sim.errors import SimInputError
from sim.experts.balancing import BalancingHistory, moe_layers, simulate_balancing
from sim.experts.fanout import FanOut, fanout
from sim.experts.placement import ExpertPlacement, check_layout, redundant_experts
from sim.experts.popularity import layer_rng

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]

_PURPOSE_MICROBATCH = 3
LINKS = ("ib_send", "ib_recv", "nvlink_send", "nvlink_recv")


@dataclass(frozen=True)
class ExpertLoads:
    """Loads of one EP group, arrays shaped [layer, micro-batch, ep_rank] unless noted."""

    layers: tuple[int, ...]
    tokens_per_rank: int              # T: tokens of each rank's own micro-batch
    top_k: int
    shared_tokens_per_rank: int       # rows of the shared experts on each rank (local, never sent)
    rank_tokens: IntArray             # routed rows received (token-expert pairs on the rank's slots)
    local_expert_tokens: IntArray     # [layer, micro-batch, ep_rank, slot] rows per local expert slot
    dispatch_bytes: dict[str, FloatArray]   # LINKS -> bytes per rank
    combine_bytes: dict[str, FloatArray]
    fanout: FanOut
    placement: ExpertPlacement
    dispatch_token_bytes: float
    combine_token_bytes: float

    @property
    def max_rank_tokens(self) -> IntArray:
        """[layer, micro-batch]: rows on the busiest rank; it paces the expert GEMMs and the all-to-all."""
        return _per_microbatch(self.rank_tokens, lambda a: a.max(axis=-1))

    @property
    def mean_rank_tokens(self) -> FloatArray:
        return _per_microbatch(self.rank_tokens, lambda a: a.mean(axis=-1))

    @property
    def imbalance(self) -> FloatArray:
        """[layer, micro-batch]: max/mean routed rows per rank."""
        return self.max_rank_tokens / self.mean_rank_tokens

    @property
    def imbalance_overall(self) -> float:
        """Sum over layers and micro-batches of the busiest rank's rows over the sum of the mean rank's rows."""
        return float(self.max_rank_tokens.sum() / self.mean_rank_tokens.sum())

    def max_link_bytes(self, phase: str, link: str) -> FloatArray:
        """[layer, micro-batch]: bytes on the busiest rank's ``link`` ('ib' or 'nvlink', the larger direction)
        for ``phase`` ('dispatch' or 'combine')."""
        table = self.dispatch_bytes if phase == "dispatch" else self.combine_bytes
        send, recv = table[f"{link}_send"], table[f"{link}_recv"]
        if _is_broadcast(send) and _is_broadcast(recv):
            return _expand(np.maximum(send[:, :1], recv[:, :1]).max(axis=-1), send.shape[1])
        return np.maximum(send, recv).max(axis=-1)

    @property
    def remote_nodes_per_token(self) -> FloatArray:
        """[layer, micro-batch, ep_rank]: distinct remote nodes per token sent by each rank."""
        return self.dispatch_bytes["ib_send"] / (self.tokens_per_rank * self.dispatch_token_bytes)


def _is_broadcast(a: np.ndarray) -> bool:
    """Whether ``a`` ([layer, micro-batch, ...]) repeats one micro-batch (a broadcast view, see ``_compute``)."""
    return a.ndim >= 2 and a.shape[1] > 1 and a.strides[1] == 0


def _expand(a: np.ndarray, num_microbatches: int) -> np.ndarray:
    """``a`` ([layer, 1]) repeated over ``num_microbatches`` as a plain (contiguous) array."""
    return np.ascontiguousarray(np.broadcast_to(a, (a.shape[0], num_microbatches)))


def _per_microbatch(a: np.ndarray, reduce: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``reduce`` over the last axis of ``a`` ([layer, micro-batch, x]) as a [layer, micro-batch] array: once
    and repeated when ``a`` repeats one micro-batch (the same values, computed once)."""
    if _is_broadcast(a):
        return _expand(reduce(a[:, :1]), a.shape[1])
    return reduce(a)


def token_bytes(scenario: Scenario, phase: str) -> float:
    """Bytes of one token's hidden state in the dispatch or combine dtype (fp8: plus fp32 scales per tile)."""
    prec = scenario.precision
    dtype = prec.dispatch if phase == "dispatch" else prec.combine
    dim = scenario.model.dim
    scales = 4.0 * ceil(dim / prec.activation_tile) if dtype == "fp8" else 0.0
    return dim * units.dtype_bytes(dtype) + scales


def expert_rows(shares: FloatArray, rows: int, num_microbatches: int, scenario: Scenario,
                layers: Sequence[int], step: int) -> IntArray:
    """Routed rows per (layer, micro-batch, expert): exact shares when balanced, else a seeded multinomial."""
    spec = scenario.experts
    if spec.skew == "balanced" and spec.drift_per_step == 0:
        exact = shares / shares.sum(axis=-1, keepdims=True) * rows
        base = np.floor(exact).astype(np.int64)
        short = rows - base.sum(axis=-1, keepdims=True)
        order = np.argsort(-(exact - base), axis=-1, kind="stable")
        bump = np.zeros_like(base)
        np.put_along_axis(bump, order, (np.arange(base.shape[-1]) < short).astype(np.int64), axis=-1)
        return np.repeat((base + bump)[:, None, :], num_microbatches, axis=1)
    out = np.empty((len(layers), num_microbatches, shares.shape[-1]), dtype=np.int64)
    for i, layer in enumerate(layers):
        rng = layer_rng(spec.seed, layer, _PURPOSE_MICROBATCH, step)
        p = shares[i] / shares[i].sum()
        out[i] = rng.multinomial(rows, p, size=num_microbatches)
    return out


def link_bytes(rank_rows: IntArray, scenario: Scenario, reach: FanOut, token_b: float) -> dict[str, FloatArray]:
    """Dispatch bytes per rank and link from routed rows per rank [..., ep] (see the module docstring)."""
    p, node = scenario.parallel, scenario.cluster.node
    ep, t, k = p.ep, scenario.expert_tokens_per_gpu, scenario.model.n_activated_experts
    gpn = min(node.gpus_per_node, ep)
    num_nodes = ep // gpn
    per_token = rank_rows / (ep * t)
    if not scenario.a2a_library.startswith("deepep"):
        return _row_bytes(per_token, t, ep, gpn, token_b)
    hit = np.minimum(1.0, per_token * reach.gpus_per_token / k)
    node_rows = per_token.reshape(*per_token.shape[:-1], num_nodes, gpn).sum(axis=-1)
    touch = np.minimum(1.0, node_rows * reach.nodes_per_token / k)
    node_hits = hit.reshape(*hit.shape[:-1], num_nodes, gpn).sum(axis=-1)
    own_touch = np.repeat(touch, gpn, axis=-1)
    own_hits = np.repeat(node_hits, gpn, axis=-1)
    ib_send = t * (touch.sum(axis=-1, keepdims=True) - own_touch)
    ib_recv = (num_nodes - 1) * t * own_touch
    nvl_send = num_nodes * t * (own_hits - hit)
    nvl_recv = (gpn - 1) * num_nodes * t * hit
    return {"ib_send": ib_send * token_b, "ib_recv": ib_recv * token_b,
            "nvlink_send": nvl_send * token_b, "nvlink_recv": nvl_recv * token_b}


def _row_bytes(per_token: FloatArray, t: int, ep: int, gpn: int, token_b: float) -> dict[str, FloatArray]:
    """Dispatch bytes of a plain all-to-all (NCCL): every routed row travels from its token's GPU straight to
    its expert's GPU, over IB when that GPU is on another node, else over NVLink; no row is merged per node.
    ``per_token`` [..., ep]: rows per token landing on each rank; every rank sends its tokens' rows with that
    same spread."""
    num_nodes = ep // gpn
    node_rows = per_token.reshape(*per_token.shape[:-1], num_nodes, gpn).sum(axis=-1)
    own_rows = np.repeat(node_rows, gpn, axis=-1)  # rows per token that stay in the sender's node
    rows = per_token.sum(axis=-1, keepdims=True)  # k
    return {"ib_send": t * (rows - own_rows) * token_b, "ib_recv": (ep - gpn) * t * per_token * token_b,
            "nvlink_send": t * (own_rows - per_token) * token_b,
            "nvlink_recv": (gpn - 1) * t * per_token * token_b}


def _mirror(dispatch: dict[str, FloatArray], ratio: float) -> dict[str, FloatArray]:
    return {"ib_send": dispatch["ib_recv"] * ratio, "ib_recv": dispatch["ib_send"] * ratio,
            "nvlink_send": dispatch["nvlink_recv"] * ratio, "nvlink_recv": dispatch["nvlink_send"] * ratio}


def microbatch_loads(scenario: Scenario, layers: Sequence[int], num_microbatches: int,
                     step: int = 0) -> ExpertLoads:
    """Loads of every EP rank for MoE ``layers`` x ``num_microbatches`` micro-batches of one training step.

    The balancing state is the one after ``scenario.experts.balancing_steps + step`` steps of the scenario's
    policy; ``step`` also seeds the micro-batch draws. Deterministic given ``scenario.experts.seed``. The last
    few results are cached by the inputs they depend on (model, experts, EP layout, tokens, transfer dtypes), so
    scenarios that differ elsewhere (pipeline, hardware speeds) share them; the arrays are read-only.
    """
    layers = tuple(layers)
    key = _cache_key(scenario, layers, num_microbatches, step)
    if key is not None and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    loads = _compute(scenario, layers, num_microbatches, step)
    if key is not None:
        _CACHE[key] = loads
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return loads


_CACHE: OrderedDict[str, ExpertLoads] = OrderedDict()
_CACHE_SIZE = 8


def clear_caches() -> None:
    """Forget the cached loads and balancing runs (they are keyed by everything they depend on; this frees
    their memory)."""
    _CACHE.clear()
    _HISTORIES.clear()


_HISTORIES: OrderedDict[str, BalancingHistory] = OrderedDict()


def _balanced(scenario: Scenario, steps: int, layers: tuple[int, ...]) -> BalancingHistory:
    """The balancing run before the step, cached by what it depends on (model, experts, EP layout over the
    node, steps, layers): layouts that differ only in pipeline, tokens, precision or hardware speeds share it."""
    if scenario.experts.skew == "histogram":
        return simulate_balancing(scenario, steps, layers, record_bias=False)
    key = repr((scenario.model.model_dump_json(), scenario.experts.model_dump_json(), scenario.parallel.ep,
                scenario.cluster.node.gpus_per_node, redundant_experts(scenario), steps, layers))
    hit = _HISTORIES.get(key)
    if hit is None:
        hit = _HISTORIES[key] = simulate_balancing(scenario, steps, layers, record_bias=False)
        while len(_HISTORIES) > _CACHE_SIZE:
            _HISTORIES.popitem(last=False)
    else:
        _HISTORIES.move_to_end(key)
    return hit


def _cache_key(scenario: Scenario, layers: tuple[int, ...], num_microbatches: int, step: int) -> str | None:
    if scenario.experts.skew == "histogram":
        return None  # the file may change between calls
    prec = scenario.precision
    parts = (scenario.model.model_dump_json(), scenario.experts.model_dump_json(), scenario.parallel.ep,
             scenario.cluster.node.gpus_per_node, scenario.expert_tokens_per_gpu, prec.dispatch, prec.combine,
             prec.activation_tile, scenario.a2a_library.startswith("deepep"), layers, num_microbatches, step)
    return repr(parts)


def _compute(scenario: Scenario, layers: tuple[int, ...], num_microbatches: int, step: int) -> ExpertLoads:
    m, p = scenario.model, scenario.parallel
    allowed = set(moe_layers(scenario, include_mtp=True))
    bad = [layer for layer in layers if layer not in allowed]
    if bad or not layers:
        raise SimInputError(f"not MoE layers of {m.name}: {bad or 'none given'}", field="layers")
    if num_microbatches < 1:
        raise SimInputError(f"must be >= 1 (got {num_microbatches})", field="num_microbatches")
    gpn = scenario.cluster.node.gpus_per_node
    check_layout(m, p.ep, gpn, redundant_experts(scenario))
    history = _balanced(scenario, scenario.experts.balancing_steps + step, layers)
    t, k = scenario.expert_tokens_per_gpu, m.n_activated_experts
    # Balanced routing gives every micro-batch the same rows: compute one, then repeat it as read-only views
    # (memory flat in the number of micro-batches; every value as if each micro-batch were computed).
    spec = scenario.experts
    draws = 1 if spec.skew == "balanced" and spec.drift_per_step == 0 else num_microbatches
    rows = expert_rows(history.final_loads, p.ep * t * k, draws, scenario, layers, step)
    where = history.final_placement
    slots = where.slot_counts(rows)
    local = slots.reshape(len(layers), draws, p.ep, where.slots_per_rank)
    rank_rows = local.sum(axis=-1)
    reach = fanout(m, p.ep, gpn)
    bd, bc = token_bytes(scenario, "dispatch"), token_bytes(scenario, "combine")
    dispatch = link_bytes(rank_rows, scenario, reach, bd)
    combine = _mirror(dispatch, bc / bd)
    if draws != num_microbatches:
        def repeat(a: np.ndarray) -> np.ndarray:
            return np.broadcast_to(a, (a.shape[0], num_microbatches, *a.shape[2:]))

        rank_rows, local = repeat(rank_rows), repeat(local)
        dispatch = {name: repeat(a) for name, a in dispatch.items()}
        combine = {name: repeat(a) for name, a in combine.items()}
    for array in (rank_rows, local, *dispatch.values(), *combine.values()):
        array.setflags(write=False)
    return ExpertLoads(layers=layers, tokens_per_rank=t, top_k=k, shared_tokens_per_rank=t * m.n_shared_experts,
                       rank_tokens=rank_rows, local_expert_tokens=local, dispatch_bytes=dispatch,
                       combine_bytes=combine, fanout=reach, placement=where,
                       dispatch_token_bytes=bd, combine_token_bytes=bc)
