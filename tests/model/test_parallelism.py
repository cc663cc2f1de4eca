"""Recompute policies as op sets (sim.model.parallelism): torchtitan's alternate-matmul policy by hand."""

from __future__ import annotations

import pytest

from sim.config import PrecisionSpec
from sim.costs.kernels import CostModel
from sim.costs.ops import OpCoster
from sim.loading import load_scenario
from sim.model.activations import unit_activation_bytes_per_token
from sim.model.parallelism import matmul_widths, recompute_fraction, recompute_spec
from sim.model.stages import model_units


@pytest.fixture(scope="module")
def llama():
    """Llama 3 70B: 64 query heads and 8 KV heads of 128, a SwiGLU MLP of 28,672."""
    return load_scenario("workloads/llama3_70b_h100.yaml")


def _layer(s):
    return next(u for u in model_units(s.model) if u.kind == "layer")


def test_fused_ops_stand_for_their_matmuls_in_execution_order(llama):
    ops = {op.name: op for op in _layer(llama).ops}
    assert matmul_widths(ops["qkv_proj"], llama.model) == (64 * 128, 8 * 128, 8 * 128)  # wq, wk, wv
    assert matmul_widths(ops["ffn_up"], llama.model) == (28672, 28672)  # w1, w3
    assert matmul_widths(ops["o_proj"], llama.model) == (8192,)


def test_every_second_matmul_of_a_layer_is_rerun(llama):
    """mm 1 wq, 2 wk, 3 wv, 4 wo, 5 w1, 6 w3, 7 w2: wk, wo and w3 are re-run (torchtitan's op-level AC), and
    the norms and SwiGLU (pointwise) are re-run whole."""
    spec = recompute_spec(llama.model, "alternate_matmuls")
    frac = {op.name: recompute_fraction(spec, op) for op in _layer(llama).ops}
    assert frac["qkv_proj"] == pytest.approx(1024 / (8192 + 1024 + 1024))
    assert frac["o_proj"] == 1.0
    assert frac["ffn_up"] == 0.5
    assert frac["ffn_down"] == 0.0
    assert frac["attn_norm"] == frac["ffn_norm"] == frac["ffn_act"] == 1.0
    assert frac["attention"] == 0.0  # the attention kernel's output is saved


def test_rerun_part_of_a_fused_op_costs_that_part_of_its_forward(llama):
    alt = load_scenario("workloads/llama3_70b_h100.yaml", overrides=["parallel.recompute=alternate_matmuls"])
    coster = OpCoster(alt, CostModel(alt.cluster.gpu, PrecisionSpec()))
    up = next(op for op in _layer(llama).ops if op.name == "ffn_up")
    tokens = 4096.0
    fwd = coster.seconds(up, "fwd", tokens)
    dgrad = coster._pass(up, "dgrad", tokens, ())
    assert coster.seconds(up, "input", tokens) == pytest.approx(dgrad + 0.5 * fwd)


def test_tensors_of_a_partly_rerun_producer_are_dropped_in_that_part(llama):
    """The attention's saved q, k, v come from qkv_proj (RoPE rotates them in place): the wk share (1/10 of the
    width here) is dropped, as torchtitan keeps wq's and wv's outputs; the SwiGLU input produced by ffn_up
    half; and the norm outputs the projections read (norms are re-run)."""
    unit, prec, m = _layer(llama), PrecisionSpec(), llama.model
    none = unit_activation_bytes_per_token(unit, "none", prec, m)
    alt = unit_activation_bytes_per_token(unit, "alternate_matmuls", prec, m)
    act = unit_activation_bytes_per_token(unit, "activations", prec, m)
    assert alt < act < none
    ops = {op.name: op for op in unit.ops}
    qkv_saved = sum(s.elems for s in ops["attention"].saves if s.tag == "up_proj_out") * 2  # BF16
    swiglu_in = sum(s.elems for s in ops["ffn_act"].saves) * 2
    x_norm = sum(s.elems for s in ops["qkv_proj"].saves) * 2 + sum(s.elems for s in ops["ffn_up"].saves) * 2
    frac_k = 1024 / (8192 + 2048)
    # against 'activations' (which re-runs SwiGLU: drops ffn_down's saved input), alternate also drops the norm
    # outputs the projections read, the wk share of q/k/v and half the SwiGLU input
    assert act - alt == pytest.approx(x_norm + frac_k * qkv_saved + 0.5 * swiglu_in)


def _head(s):
    return next(u for u in model_units(s.model) if u.kind == "head")


@pytest.mark.parametrize("policy", ["full", "selective", "alternate_matmuls"])
def test_no_policy_reruns_the_output_head_or_the_loss(llama, policy):
    """Stacks checkpoint transformer layers only: the final norm, the output projection and the loss run once."""
    spec = recompute_spec(llama.model, policy)
    assert {op.name: recompute_fraction(spec, op) for op in _head(llama).ops} == {
        "final_norm": 0.0, "head": 0.0, "cross_entropy": 0.0}
    core = next(op for op in _layer(llama).ops if op.name == ("attention" if policy != "alternate_matmuls"
                                                              else "o_proj"))
    assert recompute_fraction(spec, core) == 1.0  # while the policy does re-run part of each layer


def test_full_recompute_costs_the_head_input_gradient_without_a_forward(llama):
    full = load_scenario("workloads/llama3_70b_h100.yaml", overrides=["parallel.recompute=full"])
    coster = OpCoster(full, CostModel(full.cluster.gpu, PrecisionSpec()))
    head = next(op for op in _head(llama).ops if op.name == "head")
    assert coster.seconds(head, "input", 4096.0) == pytest.approx(coster._pass(head, "dgrad", 4096.0, ()))


def test_under_full_recompute_the_head_keeps_its_input_and_the_loss_its_fp32_logits(llama):
    """Llama 3 70B, vocabulary 128,256, hidden 8,192: per token the head keeps its BF16 input (2 x 8,192 B), the
    final norm its BF16 input (the same size) and an unfused loss the FP32 logits (4 x 128,256 B), however the
    layers are recomputed; a layer keeps only its BF16 input (2 x 8,192 B)."""
    prec, m, sw = PrecisionSpec(), llama.model, llama.software.model_copy(update={"compile": False,
                                                                                   "cross_entropy": "torch_fp32"})
    head = unit_activation_bytes_per_token(_head(llama), "full", prec, m, software=sw)
    assert head == 2 * 8192 + 2 * 8192 + 4 * 128256
    assert unit_activation_bytes_per_token(_head(llama), "none", prec, m, software=sw) == head
    assert unit_activation_bytes_per_token(_layer(llama), "full", prec, m, software=sw) == 2 * 8192


@pytest.mark.parametrize("name", ["head", "cross_entropy", "final_norm", "embed"])
def test_a_recompute_list_naming_the_head_or_the_embedding_is_refused(llama, name):
    from sim.errors import SimInputError

    with pytest.raises(SimInputError) as e:
        recompute_spec(llama.model, (name, "o_proj"))
    assert e.value.field == "parallel.recompute" and "never recompute" in str(e.value)
