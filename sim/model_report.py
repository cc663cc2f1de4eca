"""The ``sim model`` report: parameters, FLOPs per token, KV cache and memory per GPU as one mapping.

Memory comes from :func:`sim.memory.memory_per_rank`, the same function ``sim run`` reports.
"""

from __future__ import annotations

from typing import Any

from sim.config import ModelSpec, Scenario
from sim.memory import memory_per_rank
from sim.model import counts
from sim.model.activations import POLICIES, kv_cache_bytes_per_token, unit_activation_bytes_per_token
from sim.model.stages import model_units, scenario_partition
from sim.schedules.generators import build_schedule


def _op_table(m: ModelSpec, seq_len: int) -> list[dict[str, Any]]:
    """FLOPs per token and pass, and bytes moved, for the ops of the first dense layer, the first MoE layer,
    the head and MTP."""
    picked, seen = [], set()
    for u in model_units(m):
        key: str = "moe" if u.moe else u.kind
        if u.kind == "layer" and not u.moe:
            key = "dense"
        if key in seen or u.kind == "embed":
            continue
        seen.add(key)
        for op in u.ops:
            f = counts.op_flops(op, seq_len, causal=True)
            act, weights = counts.op_bytes(op)
            picked.append({"unit": key, "op": op.name, "kind": op.kind, "params": op.params,
                           "fwd_flops_per_token": f.fwd, "dgrad_flops_per_token": f.dgrad,
                           "wgrad_flops_per_token": f.wgrad, "fwd_activation_bytes_per_token": act,
                           "fwd_weight_bytes": weights})
    return picked


def _activations(scenario: Scenario) -> dict[str, dict[str, float]]:
    """Bytes a layer keeps per token until its backward, by recompute policy and layer kind."""
    kinds: dict[str, object] = {}
    for u in model_units(scenario.model):
        if u.kind == "layer":
            kinds.setdefault("moe" if u.moe else "dense", u)
    p = scenario.parallel
    sp = p.sequence_parallel and p.tp > 1
    return {policy: {kind: unit_activation_bytes_per_token(u, policy, scenario.precision, scenario.model,  # type: ignore[arg-type]
                                                           p.tp, sp, scenario.software, scenario.training.seq_len)
                     for kind, u in kinds.items()} for policy in POLICIES}


def model_report(m: ModelSpec, scenario: Scenario | None, seq_len: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": m.name,
        "seq_len": seq_len,
        "params_total": counts.params_total(m),
        "params_active": counts.params_active(m),
        "params_active_with_embedding": counts.params_active(m, include_embedding=True),
        "params_mtp": counts.params_mtp(m),
        "params_routed_experts": counts.params_expert(m),
        "train_flops_per_token_causal": counts.train_flops_per_token(m, seq_len, causal=True),
        "train_flops_per_token_noncausal": counts.train_flops_per_token(m, seq_len, causal=False),
        "train_flops_per_token_mtp": counts.train_flops_per_token_mtp(m, seq_len, causal=True),
        "forward_flops_per_token_causal": counts.forward_flops_per_token(m, seq_len, causal=True),
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(m),
        "conventions": ("params_active excludes the input embedding table; train FLOPs = forward + input "
                        "gradient + weight gradient, attention core causal at S/2 keys per query, MTP and "
                        "recompute excluded"),
        "ops": _op_table(m, seq_len),
        "memory_per_gpu_bytes": None,
    }
    if scenario is None:
        out["memory_note"] = "a bare architecture file has no parallel layout; run on a job file for memory"
        return out
    p = scenario.parallel
    layout = scenario_partition(scenario)
    out["activation_bytes_per_token_per_layer"] = _activations(scenario)
    ranks = memory_per_rank(scenario, layout, build_schedule(p.schedule, p.pp, scenario.num_microbatches, p.vpp,
                                                             p.ep_overlap))
    worst = max(ranks, key=lambda r: r.total)
    out.update({
        "scenario": scenario.name,
        "layout": {"tp": p.tp, "cp": p.cp, "pp": p.pp, "dp": scenario.dp, "ep": p.ep, "schedule": p.schedule,
                   "num_stages": scenario.num_stages, "num_microbatches": scenario.num_microbatches,
                   "stage_layers": list(layout.layers_per_stage())},
        "stage_params": counts.stage_params(layout, m),
        "memory_per_gpu_bytes": worst.total,
        "memory_capacity_bytes": scenario.cluster.gpu.hbm_bytes,
        "memory_per_rank": [{"rank": r.rank, "weights_bytes": r.weights, "gradients_bytes": r.gradients,
                             "optimizer_bytes": r.optimizer, "activations_bytes": r.activations,
                             "total_bytes": r.total} for r in ranks],
    })
    return out
