"""Expert load and its balancing: routing skew, node-limited routing, bias balancing, redundant experts.

Sources: DeepSeek-V3 tech report (arXiv 2412.19437) section 2.1.2 (auxiliary-loss-free load balancing, bias
update speed gamma), 3.2.2 (node-limited routing, IB then NVLink dispatch), 4.2 (gamma = 0.001);
deepseek-ai/DeepSeek-V3 ``inference/model.py`` (the gate); deepseek-ai/EPLB (redundant experts).

Modules: ``popularity`` (the affinity model and skew), ``routing`` (the exact per-token gate), ``fluid``
(expected loads, mean field), ``placement`` and ``eplb`` (experts on GPUs), ``balancing`` (dynamics over steps),
``fanout`` (nodes and GPUs a token reaches), ``loads`` (per-rank rows and link bytes per micro-batch, what the
program consumes), ``plot``. Step time by policy is ``sim.step.step_time_by_policy``.
"""

from sim.experts.balancing import POLICIES, BalancingHistory, moe_layers, simulate_balancing
from sim.experts.eplb import balanced_packing, rebalance_experts, replicate_experts
from sim.experts.fanout import FanOut, fanout
from sim.experts.fluid import expected_selection
from sim.experts.loads import ExpertLoads, microbatch_loads, token_bytes
from sim.experts.placement import ExpertPlacement, placement
from sim.experts.routing import route

__all__ = [
    "POLICIES",
    "BalancingHistory",
    "ExpertLoads",
    "ExpertPlacement",
    "FanOut",
    "balanced_packing",
    "expected_selection",
    "fanout",
    "microbatch_loads",
    "moe_layers",
    "placement",
    "rebalance_experts",
    "replicate_experts",
    "route",
    "simulate_balancing",
    "token_bytes",
]
