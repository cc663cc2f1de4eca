"""Expert loads as the program needs them: per MoE layer and micro-batch, what the busiest GPU sees.

Scale by symmetry: the simulated pipeline stands for every EP group of its stage, and the all-to-all of a
layer finishes only when its busiest rank has received, computed and returned its rows. So each MoE layer of
each micro-batch is simulated with the rows of the EP group's busiest rank (its rows per local expert set
the grouped-GEMM time) and, per link, the most bytes any rank moves (the larger direction). Loads come from
``sim.experts.microbatch_loads``: the balancing state after ``experts.balancing_steps`` steps of the
scenario's policy, micro-batches drawn from it. Balanced routing gives every rank the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from sim.config import Scenario, evolve
from sim.experts.loads import microbatch_loads
from sim.model.stages import StagePartition, Unit


@dataclass(frozen=True, slots=True)
class MoeLoad:
    """What one MoE layer's routing means for the slowest GPU of its EP group, for one micro-batch."""

    rows_per_expert: tuple[float, ...]
    dispatch_ib_bytes: float
    dispatch_nvlink_bytes: float
    combine_ib_bytes: float
    combine_nvlink_bytes: float
    imbalance: float = 1.0


def layer_id(unit: Unit, n_layers: int) -> int:
    """The expert-load layer id of a MoE unit: its layer index, or ``n_layers + i`` for MTP module ``i``."""
    return unit.index if unit.kind == "layer" else n_layers + unit.index


class LoadModel:
    """MoE loads of one scenario (``moe_load``) and the imbalance factor they carry."""

    def __init__(self, scenario: Scenario, partition: StagePartition) -> None:
        self.s = scenario
        m = scenario.model
        self.imbalance = 1.0
        self._index: dict[int, int] = {}
        if not m.is_moe:
            return
        layers = sorted({layer_id(u, m.n_layers) for stage in partition.stages for u in stage if u.moe})
        self.loads = microbatch_loads(scenario, layers, scenario.num_microbatches)
        self._index = {layer: i for i, layer in enumerate(self.loads.layers)}
        self.imbalance = self.loads.imbalance_overall
        lo = self.loads
        busiest = lo.rank_tokens.argmax(axis=-1)  # [layer, mb]
        self._rows = np.take_along_axis(lo.local_expert_tokens, busiest[..., None, None], axis=2)[:, :, 0, :]
        self._bytes = {(phase, link): lo.max_link_bytes(phase, link)
                       for phase in ("dispatch", "combine") for link in ("ib", "nvlink")}
        self._ratio = lo.imbalance
        self._make = cache(self._build)
        spec = scenario.experts
        self._uniform = self._make(0, 0) if spec.skew == "balanced" and spec.drift_per_step == 0 else None

    def moe_load(self, unit: Unit, microbatch: int) -> MoeLoad:
        if self._uniform is not None:  # balanced routing: every layer and micro-batch alike
            return self._uniform
        return self._make(self._index[layer_id(unit, self.s.model.n_layers)], microbatch)

    def _build(self, i: int, mb: int) -> MoeLoad:
        b = self._bytes
        return MoeLoad(tuple(float(r) for r in self._rows[i, mb]),
                       float(b["dispatch", "ib"][i, mb]), float(b["dispatch", "nvlink"][i, mb]),
                       float(b["combine", "ib"][i, mb]), float(b["combine", "nvlink"][i, mb]),
                       float(self._ratio[i, mb]))

    def balanced_load(self) -> MoeLoad:
        """The load of one layer and micro-batch under balanced routing (the calibration's setting)."""
        if self._uniform is not None:
            return self._uniform
        even = evolve(self.s, {"experts.skew": "balanced", "experts.drift_per_step": 0.0})
        lo = microbatch_loads(even, [self.loads.layers[0]], 1)
        return MoeLoad(tuple(float(r) for r in lo.local_expert_tokens[0, 0, 0]),
                       float(lo.max_link_bytes("dispatch", "ib")[0, 0]),
                       float(lo.max_link_bytes("dispatch", "nvlink")[0, 0]),
                       float(lo.max_link_bytes("combine", "ib")[0, 0]),
                       float(lo.max_link_bytes("combine", "nvlink")[0, 0]))
