"""Activation memory (sim.model.activations): what repeated K/V keep, and the working set of one backward, by
hand for Llama 3 70B (hidden 8,192; 64 query and 8 KV heads of 128; vocabulary 128,256; SwiGLU 28,672)."""

from __future__ import annotations

import pytest

from sim.loading import load_scenario
from sim.model.activations import unit_activation_bytes_per_token, unit_workspace_bytes_per_token
from sim.model.stages import model_units

JOB = "workloads/llama3_70b_h100.yaml"
KV = 8 * 128  # elements of K (and of V) per token


def _scenario(*overrides):
    return load_scenario(JOB, overrides=["parallel.tp=1", "parallel.sequence_parallel=false", "parallel.cp=1",
                                         *overrides])


def _unit(s, kind):
    return next(u for u in model_units(s.model) if u.kind == kind)


def _kept(s, unit, policy):
    return unit_activation_bytes_per_token(unit, policy, s.precision, s.model, software=s.software,
                                           seq_len=s.training.seq_len)


def test_repeated_kv_heads_are_what_the_attention_kernel_keeps():
    """torchtitan repeats the 8 KV heads to 64 before SDPA, which saves the repeated K and V: 7 more copies
    of each, in BF16."""
    plain = _scenario("software.repeat_kv=false")
    rep = _scenario("software.repeat_kv=true")
    layer = _unit(plain, "layer")
    assert _kept(rep, layer, "none") - _kept(plain, layer, "none") == 2 * 7 * KV * 2
    assert _kept(rep, layer, "full") == _kept(plain, layer, "full")  # a checkpoint keeps only the layer input


@pytest.mark.parametrize("policy", ["full", "selective", "none"])
def test_a_layers_backward_holds_what_its_policy_dropped(policy):
    s = _scenario(f"parallel.recompute={policy}")
    layer = _unit(s, "layer")
    assert unit_workspace_bytes_per_token(layer, s) == pytest.approx(_kept(s, layer, "none") - _kept(s, layer, policy))


def test_the_loss_backward_holds_a_logits_gradient_as_large_as_its_logits():
    fp32 = _scenario("software.cross_entropy=torch_fp32", "software.compile=false")
    fused = _scenario("software.cross_entropy=fused")
    assert unit_workspace_bytes_per_token(_unit(fp32, "head"), fp32) == 4 * 128256
    assert unit_workspace_bytes_per_token(_unit(fused, "head"), fused) == 2 * 128256


@pytest.mark.parametrize("mode, repeat, gathered", [("ring", False, 0), ("all_gather", False, 4 * 2 * KV * 2),
                                                     ("pytorch", True, 4 * 2 * 8 * KV * 2)])
def test_context_parallel_gathers_hold_the_whole_sequences_k_and_v(mode, repeat, gathered):
    """CP 4: an all-gather holds the K and V (BF16) of all 4 ranks' tokens, per local token 4 x 2 x 1,024
    elements; repeated to the query heads, 8 times that. The ring holds one block at a time (left out)."""
    base = _scenario("parallel.recompute=full", "parallel.cp=1", f"software.repeat_kv={str(repeat).lower()}")
    s = _scenario("parallel.recompute=full", "parallel.cp=4", f"parallel.cp_mode={mode}",
                  f"software.repeat_kv={str(repeat).lower()}")
    layer = _unit(s, "layer")
    assert unit_workspace_bytes_per_token(layer, s) - unit_workspace_bytes_per_token(layer, base) == gathered
