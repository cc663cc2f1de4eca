"""The DeepSeek-V3 gate, token by token: affinities, balancing bias, node-limited top-k.

Follows ``Gate.forward`` of deepseek-ai/DeepSeek-V3 ``inference/model.py`` (commit 9b4e978) and the V3 tech
report (arXiv 2412.19437) sections 2.1.2 (auxiliary-loss-free balancing: the bias enters the selection only) and
3.2.2 (node-limited routing: at most M nodes per token):

1. Affinities: ``sigmoid(logits)`` (``score_func: sigmoid``, V3) or ``softmax(logits)`` (V2, Mixtral).
2. Selection scores: affinity + bias. The bias never enters the gating weights. For softmax gates the bias is
   added to the logits instead (softmax is monotone within a token, so this is the same ranking as biasing the
   probabilities by a per-expert factor); DeepSeek-V2 has no bias at all.
3. Group limit (``n_expert_groups`` > 1): experts form ``n_expert_groups`` contiguous groups. Group score: the
   sum of the group's two highest selection scores for sigmoid gates (V3's ``noaux_tc``; the tech report's
   "sum of the highest K_r/M affinity scores", K_r/M = 8/4 = 2 for V3; the code fixes 2) or the group's highest
   score for softmax gates (V2's group-limited greedy). The ``n_limited_groups`` best groups stay; the others are
   masked out.
4. The ``n_activated_experts`` highest selection scores among the remaining experts are the routed experts.
   The shared experts (``n_shared_experts``) take every token and are not routed.

With one group per node of the EP group (V3: 8 groups = 8 nodes of EP64) step 3 is what caps a token at M nodes.
This module is exact and per token; ``sim.experts.fluid`` is the fast mean-field used for expected loads.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sim.config import ModelSpec

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


def selection_scores(logits: ArrayLike, bias: ArrayLike | None, model: ModelSpec) -> FloatArray:
    """Scores the gate ranks: sigmoid affinity + bias, or logit + bias for softmax gates."""
    x = np.asarray(logits, dtype=np.float64)
    b = 0.0 if bias is None else np.asarray(bias, dtype=np.float64)
    if model.score_func == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x)) + b
    return x + b


def group_scores(scores: FloatArray, model: ModelSpec) -> FloatArray:
    """Per-token group scores [..., n_expert_groups] (see the module docstring, step 3)."""
    g = model.n_expert_groups
    per_group = model.n_routed_experts // g
    grouped = scores.reshape(*scores.shape[:-1], g, per_group)
    if model.score_func == "softmax":
        return grouped.max(axis=-1)
    top = min(2, per_group)
    return np.partition(grouped, per_group - top, axis=-1)[..., per_group - top:].sum(axis=-1)


def route(logits: ArrayLike, bias: ArrayLike | None, model: ModelSpec) -> IntArray:
    """Routed expert ids [..., k] for router logits [..., n_routed_experts], as DeepSeek-V3's gate picks them.

    ``bias`` [n_routed_experts] (or None) shifts the selection only. Ties break arbitrarily.
    """
    scores = selection_scores(logits, bias, model)
    lead = scores.shape[:-1]
    e = model.n_routed_experts
    if scores.shape[-1] != e:
        raise ValueError(f"logits: last axis must have the {e} routed experts (got {scores.shape[-1]})")
    flat = scores.reshape(-1, e)
    g, m = model.n_expert_groups, model.n_limited_groups
    if g > 1 and m < g:
        gs = group_scores(flat, model)
        keep = np.argpartition(-gs, m - 1, axis=-1)[:, :m]
        dropped = np.ones(gs.shape, dtype=bool)
        np.put_along_axis(dropped, keep, False, axis=-1)
        flat = np.where(np.repeat(dropped, e // g, axis=-1), -np.inf, flat)
    k = model.n_activated_experts
    top = np.argpartition(-flat, k - 1, axis=-1)[:, :k] if k < e else np.tile(np.arange(e), (len(flat), 1))
    return top.reshape(*lead, k).astype(np.int64)


def sample_logits(popularity: ArrayLike, num_tokens: int, rng: np.random.Generator) -> FloatArray:
    """Router logits [num_tokens, E] of the affinity model: ``log w + Gumbel`` (``sim.experts.popularity``)."""
    w = np.asarray(popularity, dtype=np.float64)
    return np.log(w) + rng.gumbel(size=(num_tokens, w.shape[-1]))


def distinct_per_token(owner_of_expert: ArrayLike, topk: IntArray) -> IntArray:
    """How many distinct owners (nodes, GPUs, groups) each token's routed experts reach."""
    owners = np.sort(np.asarray(owner_of_expert)[topk], axis=-1)
    return 1 + (np.diff(owners, axis=-1) != 0).sum(axis=-1)
