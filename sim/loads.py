"""Expert loads as the program needs them: per MoE layer and micro-batch, a MoeLoad of the slowest GPU.

PROVISIONAL: balanced routing only, until sim.experts lands.
"""

from __future__ import annotations

from sim.config import Scenario
from sim.model.layout import StageLayout
from sim.program import MoeLoad


class LoadModel:
    def __init__(self, scenario: Scenario, layout: StageLayout) -> None:
        self.s = scenario
        m = scenario.model
        p = scenario.parallel
        self.imbalance = 1.0
        self._load: MoeLoad | None = None
        if not m.is_moe:
            return
        t = scenario.tokens_per_microbatch
        local = m.n_routed_experts // p.ep
        rows = t * m.n_activated_experts / local
        gpn = scenario.cluster.node.gpus_per_node
        nodes = max(1, p.ep // gpn)
        d_b = m.dim * (1 + 4 / 128) if scenario.precision.dispatch == "fp8" else m.dim * 2
        c_b = m.dim * 2
        mlim = min(m.n_limited_groups, nodes)
        remote = mlim * (1 - 1 / nodes) if nodes > 1 else 0
        nvl = t * mlim * 1.7 if nodes > 1 else t * m.n_activated_experts * (gpn - 1) / gpn
        self._load = MoeLoad((rows,) * local, t * remote * d_b, nvl * d_b, t * remote * c_b, nvl * c_b)

    def balanced_load(self) -> MoeLoad:
        assert self._load is not None
        return self._load

    def moe_load(self, layer: int, microbatch: int) -> MoeLoad:
        assert self._load is not None
        return self._load
