"""Balancing dynamics over training steps: no balancing, DeepSeek-V3's bias update, an auxiliary loss, EPLB.

Per step and MoE layer the expected loads come from the mean-field router (``sim.experts.fluid``) on the
current popularity (``sim.experts.popularity``) and bias; the imbalance is max/mean of the tokens per GPU
(EP rank) under the current placement. Then the policy acts:

- ``none``: nothing; the bias stays 0.
- ``bias``: auxiliary-loss-free balancing (V3 tech report section 2.1.2): after each step every expert's bias
  moves by ``bias_update_speed`` (gamma, 0.001 in V3, section 4.2) towards balance,
  ``b_e += gamma * sign(mean load - load_e)``. Loads are the step's expected loads: a V3 step routes 62.9M tokens
  per layer, so the step's own sampling noise (~0.1% per expert) is negligible. Loads equal to the mean within
  1e-12 relative count as balanced (sign 0), so exactly balanced loads stay put.
- ``aux``: a sequence-wise auxiliary loss, modelled as reduced skew (``sim.experts.popularity``); no bias.
- ``eplb``: no bias; every ``eplb_interval_steps`` steps the experts are rearranged with ``num_redundant_experts``
  spare slots by DeepSeek's EPLB (``sim.experts.eplb``) from the mean load since the previous rearrangement
  (EPLB's README leaves load prediction to the user and suggests a moving average). Until the first
  rearrangement the placement knows no loads: contiguous, or with spare slots EPLB on uniform loads.

All layers advance together as numpy arrays [layer, expert]; each layer's result depends only on its own
seeded popularity, never on which other layers are simulated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from sim.config import Scenario
from sim.errors import SimInputError
from sim.experts.fluid import equal_shares, expected_selection
from sim.experts.placement import ExpertPlacement, contiguous, placement, redundant_experts
from sim.experts.popularity import PopularityWalk

FloatArray = NDArray[np.float64]

POLICIES = ("none", "bias", "aux", "eplb")


@dataclass(frozen=True)
class BalancingHistory:
    """What ``simulate_balancing`` records. Index ``t`` is the state at step t, before that step's update; the
    last entry (``t = steps``) is the state after ``steps`` updates, the one the engine simulates.

    Loads are expected routed experts per token (each row sums to top-k), so tokens per expert in a batch of
    ``T`` tokens are ``T * load``.
    """

    policy: str
    layers: tuple[int, ...]
    imbalance: FloatArray            # [steps + 1, layer] max/mean tokens per GPU
    bias: NDArray[np.float32] | None  # [steps + 1, layer, expert], when recorded
    final_bias: FloatArray           # [layer, expert]
    final_loads: FloatArray          # [layer, expert]
    final_placement: ExpertPlacement
    heatmap_layer: int
    heatmap_loads: FloatArray        # [steps + 1, expert] loads of ``heatmap_layer``
    imbalance_before: FloatArray     # [layer] final loads on the contiguous placement without spare slots
    imbalance_after: FloatArray      # [layer] final loads on the final placement

    @property
    def steps(self) -> int:
        return int(self.imbalance.shape[0]) - 1

    @property
    def imbalance_by_step(self) -> FloatArray:
        """Mean over layers of max/mean tokens per GPU, per step."""
        return self.imbalance.mean(axis=-1)

    @property
    def imbalance_max_by_step(self) -> FloatArray:
        """Worst layer's max/mean tokens per GPU, per step."""
        return self.imbalance.max(axis=-1)


def moe_layers(scenario: Scenario, include_mtp: bool = False) -> tuple[int, ...]:
    """Layer ids with routed experts: ``n_dense_layers .. n_layers - 1`` (58 for V3), plus MTP layers if asked."""
    m = scenario.model
    last = m.n_layers + (m.n_mtp_layers if include_mtp else 0)
    return tuple(i for i in range(last) if m.is_moe and i >= m.n_dense_layers)


def _imbalance(rank_loads: FloatArray) -> FloatArray:
    return rank_loads.max(axis=-1) / rank_loads.mean(axis=-1)


class _Dynamics:
    """The state advanced step by step: popularity, bias, thresholds, placement."""

    def __init__(self, scenario: Scenario, layers: Sequence[int]) -> None:
        spec, m = scenario.experts, scenario.model
        self.scenario, self.spec, self.k = scenario, spec, m.n_activated_experts
        self.walk = PopularityWalk(spec, self.k, layers, moe_layers(scenario, include_mtp=True),
                                   m.n_routed_experts)
        self.bias = np.zeros((len(layers), m.n_routed_experts))
        self.tau: FloatArray | None = None
        ep, gpn = scenario.parallel.ep, scenario.cluster.node.gpus_per_node
        self.base = contiguous(m, ep, gpn)
        self.placement = self.base
        self.redundant = redundant_experts(scenario)
        if self.redundant:
            self.placement = placement(m, ep, gpn, self.redundant)
        self._window = np.zeros_like(self.bias)
        self._window_steps = 0

    def loads(self) -> FloatArray:
        w = self.walk.shares(self.spec.policy)
        if self.spec.skew == "balanced" and self.spec.drift_per_step == 0 and not self.bias.any():
            return equal_shares(w.shape, self.k)
        p, self.tau = expected_selection(w, self.bias, self.k, self.scenario.model.score_func, self.tau)
        return p

    def update(self, loads: FloatArray, step: int) -> None:
        spec = self.spec
        if spec.policy == "bias" and spec.bias_update_speed > 0:
            mean = loads.mean(axis=-1, keepdims=True)
            gap = mean - loads
            self.bias = self.bias + spec.bias_update_speed * np.where(np.abs(gap) > 1e-12 * mean, np.sign(gap), 0)
        elif spec.policy == "eplb":
            self._window += loads
            self._window_steps += 1
            if (step + 1) % spec.eplb_interval_steps == 0:
                m, p = self.scenario.model, self.scenario.parallel
                self.placement = placement(m, p.ep, self.scenario.cluster.node.gpus_per_node,
                                           self.redundant, self._window / self._window_steps)
                self._window[:] = 0
                self._window_steps = 0
        self.walk.advance()


def simulate_balancing(scenario: Scenario, steps: int, layers: Sequence[int] | None = None, *,
                       record_bias: bool = True, heatmap_layer: int | None = None) -> BalancingHistory:
    """Run ``scenario.experts.policy`` for ``steps`` steps on ``layers`` (default: the model's MoE layers).

    Deterministic given ``scenario.experts.seed``. ``record_bias`` keeps the bias of every step (float32,
    (steps + 1) x layers x experts x 4 bytes: 59 MB for V3 over 1,000 steps).
    """
    if steps < 0:
        raise ValueError(f"steps: must be >= 0 (got {steps})")
    layers = tuple(moe_layers(scenario) if layers is None else layers)
    if not layers:
        raise SimInputError(f"{scenario.model.name} has no routed experts to balance", field="model.n_routed_experts")
    hm = layers.index(heatmap_layer) if heatmap_layer in layers else 0
    dyn = _Dynamics(scenario, layers)
    imbalance = np.empty((steps + 1, len(layers)))
    heat = np.empty((steps + 1, scenario.model.n_routed_experts))
    bias = np.empty((steps + 1, *dyn.bias.shape), dtype=np.float32) if record_bias else None
    loads = dyn.loads()
    for t in range(steps + 1):
        imbalance[t] = _imbalance(dyn.placement.rank_loads(loads))
        heat[t] = loads[hm]
        if bias is not None:
            bias[t] = dyn.bias
        if t == steps:
            break
        dyn.update(loads, t)
        loads = dyn.loads()
    return BalancingHistory(
        policy=scenario.experts.policy, layers=layers, imbalance=imbalance, bias=bias,
        final_bias=dyn.bias, final_loads=loads, final_placement=dyn.placement, heatmap_layer=layers[hm],
        heatmap_loads=heat, imbalance_before=_imbalance(dyn.base.rank_loads(loads)),
        imbalance_after=_imbalance(dyn.placement.rank_loads(loads)))
