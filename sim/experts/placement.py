"""Where experts live: physical expert slots on the GPUs (EP ranks) and nodes of one expert-parallel group.

EP rank ``r`` is GPU ``r % gpus_per_node`` of node ``r // gpus_per_node`` within the EP group; every rank holds
the same number of slots, ``(n_routed_experts + redundant) / ep``. The default placement is contiguous, as in
DeepSeek-V3 ("the routed experts will be uniformly deployed on 64 GPUs belonging to 8 nodes", tech report
3.2.2): expert ``e`` on rank ``e // (E / ep)``, so with ``n_expert_groups`` equal to the EP group's node count
each group sits on one node. Redundant slots and load-aware placements come from the EPLB port
(``sim.experts.eplb``). A logical expert with several replicas has its tokens split evenly among them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sim.config import ModelSpec, Scenario
from sim.errors import SimInputError
from sim.experts.eplb import rebalance_experts

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class ExpertPlacement:
    """Physical slots of each layer: ``slot_expert[layer, slot]`` is the logical expert of that slot.

    Slots are ordered by rank: rank ``r`` holds slots ``[r * slots_per_rank, (r + 1) * slots_per_rank)``.
    ``slot_expert`` has one row per layer, or a single row shared by every layer.
    """

    slot_expert: IntArray
    num_experts: int
    ep: int
    gpus_per_node: int

    @property
    def num_slots(self) -> int:
        return int(self.slot_expert.shape[-1])

    @property
    def slots_per_rank(self) -> int:
        return self.num_slots // self.ep

    @property
    def num_nodes(self) -> int:
        return max(1, self.ep // self.gpus_per_node)

    @property
    def rank_node(self) -> IntArray:
        return np.arange(self.ep) // min(self.gpus_per_node, self.ep)

    @property
    def slot_rank(self) -> IntArray:
        return np.arange(self.num_slots) // self.slots_per_rank

    @property
    def replicas(self) -> IntArray:
        """Replica count of each logical expert [layers, E]."""
        rows = self.slot_expert
        out = np.zeros((rows.shape[0], self.num_experts), dtype=np.int64)
        np.add.at(out, (np.arange(rows.shape[0])[:, None], rows), 1)
        return out

    @property
    def replica_index(self) -> IntArray:
        """0 for an expert's first slot, 1 for its second, ... [layers, slots]."""
        rows = self.slot_expert
        order = np.argsort(rows, axis=-1, kind="stable")
        sorted_rows = np.take_along_axis(rows, order, axis=-1)
        start = np.ones_like(sorted_rows, dtype=bool)
        start[:, 1:] = sorted_rows[:, 1:] != sorted_rows[:, :-1]
        pos = np.arange(rows.shape[1])[None, :].repeat(rows.shape[0], 0)
        first = np.maximum.accumulate(np.where(start, pos, 0), axis=-1)
        out = np.empty_like(rows)
        np.put_along_axis(out, order, pos - first, axis=-1)
        return out

    def slot_loads(self, expert_loads: ArrayLike) -> FloatArray:
        """Load of each slot [layers, ..., slots] from expert loads [layers, ..., E]: split evenly over replicas."""
        loads = np.asarray(expert_loads, dtype=np.float64)
        per_replica = loads / self._broadcast(self.replicas, loads.ndim)
        return np.take_along_axis(per_replica, self._broadcast(self.slot_expert, loads.ndim), axis=-1)

    def slot_counts(self, expert_counts: ArrayLike) -> IntArray:
        """Integer version of ``slot_loads``: replica j of an expert with count c and r replicas gets
        ``c // r + (j < c % r)``, so counts are conserved."""
        counts = np.asarray(expert_counts, dtype=np.int64)
        reps = self._broadcast(self.replicas, counts.ndim)
        idx = self._broadcast(self.slot_expert, counts.ndim)
        base = np.take_along_axis(counts // reps, idx, axis=-1)
        extra = np.take_along_axis(counts % reps, idx, axis=-1)
        return base + (self._broadcast(self.replica_index, counts.ndim) < extra)

    def rank_loads(self, expert_loads: ArrayLike) -> FloatArray:
        """Load of each EP rank [layers, ..., ep]."""
        slots = self.slot_loads(expert_loads)
        return slots.reshape(*slots.shape[:-1], self.ep, self.slots_per_rank).sum(axis=-1)

    def _broadcast(self, per_layer: NDArray[np.int64], ndim: int) -> NDArray[np.int64]:
        """[layers, n] -> [layers, 1, ..., 1, n] for arrays with ``ndim`` axes."""
        return per_layer.reshape(per_layer.shape[0], *([1] * (ndim - 2)), per_layer.shape[1])


def redundant_experts(scenario: Scenario) -> int:
    """Redundant expert slots of the EP group (:attr:`Scenario.redundant_experts`), the one default ``sim run``,
    ``sim experts`` and the memory model share."""
    return scenario.redundant_experts


def check_layout(model: ModelSpec, ep: int, gpus_per_node: int, redundant: int = 0) -> None:
    """Raise ``SimInputError`` naming the field when experts cannot be spread over the EP group."""
    if model.n_routed_experts % ep:
        raise SimInputError(f"must divide n_routed_experts {model.n_routed_experts} (got {ep})", field="parallel.ep")
    if ep > gpus_per_node and ep % gpus_per_node:
        raise SimInputError(f"an EP group larger than a node must span whole nodes of {gpus_per_node} GPUs "
                            f"(got {ep})", field="parallel.ep")
    if redundant % ep:
        raise SimInputError(f"must be a multiple of the EP size {ep} (every GPU gets the same number of slots; "
                            f"got {redundant})", field="experts.num_redundant_experts")


def contiguous(model: ModelSpec, ep: int, gpus_per_node: int) -> ExpertPlacement:
    """Expert e on rank e // (E / ep), no replicas."""
    check_layout(model, ep, gpus_per_node)
    slots = np.arange(model.n_routed_experts, dtype=np.int64)[None, :]
    return ExpertPlacement(slots, model.n_routed_experts, ep, gpus_per_node)


def placement(model: ModelSpec, ep: int, gpus_per_node: int, redundant: int = 0,
              loads: ArrayLike | None = None) -> ExpertPlacement:
    """Expert (and replica) slots on the EP group's GPUs.

    Without ``loads`` and without redundant slots: contiguous. Otherwise DeepSeek's EPLB
    (``sim.experts.eplb.rebalance_experts``) on ``loads`` [E] or [layers, E] (uniform loads when None):
    hierarchical when the expert groups divide evenly over the nodes, global otherwise. A layer whose EPLB
    result would load its busiest GPU more than the contiguous placement does keeps the contiguous placement
    (its spare slots then copy the GPU's own busiest experts, which changes no GPU's load): a planner would not
    deploy a worse arrangement, and EPLB's greedy packing alone does not guarantee this.
    """
    check_layout(model, ep, gpus_per_node, redundant)
    e = model.n_routed_experts
    if loads is None and redundant == 0:
        return contiguous(model, ep, gpus_per_node)
    weight = np.ones((1, e)) if loads is None else np.atleast_2d(np.asarray(loads, dtype=np.float64))
    num_nodes = max(1, ep // gpus_per_node)
    phy2log, _, _ = rebalance_experts(weight, e + redundant, model.n_expert_groups, num_nodes, ep)
    fallback = _self_replicated(weight, ep, redundant)
    candidate = ExpertPlacement(phy2log.astype(np.int64), e, ep, gpus_per_node)
    keep = ExpertPlacement(fallback, e, ep, gpus_per_node)
    worse = candidate.rank_loads(weight).max(axis=-1) > keep.rank_loads(weight).max(axis=-1) * (1 + 1e-12)
    slots = np.where(worse[:, None], fallback, candidate.slot_expert)
    return ExpertPlacement(slots, e, ep, gpus_per_node)


def _self_replicated(weight: FloatArray, ep: int, redundant: int) -> IntArray:
    """Contiguous placement whose spare slots copy each rank's own heaviest experts."""
    layers, e = weight.shape
    per_rank, spare = e // ep, redundant // ep
    own = np.arange(e, dtype=np.int64).reshape(ep, per_rank)
    rows = []
    for lay in range(layers):
        w = weight[lay].reshape(ep, per_rank)
        order = np.argsort(-w, axis=-1, kind="stable")
        copies = np.take_along_axis(own, order[:, np.arange(spare) % per_rank], axis=-1)
        rows.append(np.concatenate([own, copies], axis=-1).reshape(-1))
    return np.stack(rows)
