"""What balancing buys in step time: the engine's step time under each balancing policy.

The engine (``sim.step.simulate_step``) turns the per-rank loads of ``sim.experts.loads`` into seconds: the
busiest rank paces each layer's expert GEMMs, dispatch and combine. Fast mode: same costs, per-action timing.
"""

from __future__ import annotations

from collections.abc import Sequence

from sim.config import Scenario


def with_policy(scenario: Scenario, policy: str) -> Scenario:
    """The scenario with another balancing policy (validated again). ``eplb`` without redundant experts gets
    one spare slot per GPU of the EP group, as ``sim experts --policy eplb`` does."""
    data = scenario.model_dump()
    data["experts"]["policy"] = policy
    if policy == "eplb" and not data["experts"]["num_redundant_experts"]:
        data["experts"]["num_redundant_experts"] = scenario.parallel.ep
    return Scenario.model_validate(data)


def step_time_by_policy(scenario: Scenario, policies: Sequence[str]) -> dict[str, float]:
    """Seconds per training step under each policy."""
    from sim.step import simulate_step  # the engine imports sim.experts: import it late

    return {p: float(simulate_step(with_policy(scenario, p), mode="fast").step_time_s) for p in policies}
