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
    # torchtitan's op-level AC re-runs the cheap repeat from the wk/wv outputs it keeps
    assert _kept(rep, layer, "alternate_matmuls") == _kept(plain, layer, "alternate_matmuls")


def test_a_layers_backward_under_full_recompute_holds_the_whole_layer_again():
    """Llama 3 70B, FlashAttention, no dropout, TP 1, per token in bytes: the layer's tensors without recompute
    are the two norm inputs and the two GEMM inputs they feed (4 x 2 x 8,192), Q (2 x 8,192), K and V
    (2 x 2 x 1,024), the softmax statistics (4 x 64), the attention output (2 x 8,192), the SwiGLU input
    (2 x 57,344) and the down projection's input (2 x 28,672): 274,688. Full recompute keeps the layer input
    (2 x 8,192) and re-creates the rest during the backward."""
    s = _scenario("parallel.recompute=full")
    layer = _unit(s, "layer")
    none = 4 * 2 * 8192 + 2 * 8192 + 2 * 2 * 1024 + 4 * 64 + 2 * 8192 + 2 * 57344 + 2 * 28672
    assert none == 274688 and _kept(s, layer, "none") == none
    assert unit_workspace_bytes_per_token(layer, s) == none - 2 * 8192
    assert unit_workspace_bytes_per_token(layer, _scenario("parallel.recompute=none")) == 0


@pytest.mark.parametrize("loss, compile_, per_logit", [("torch_fp32", False, 8), ("torch_fp32", True, 2),
                                                       ("megatron_fp32", False, 2), ("fused", False, 2)])
def test_the_loss_backward_holds_its_gradient(loss, compile_, per_logit):
    """PyTorch's eager FP32 loss holds NLL's and log-softmax's FP32 gradients at once (8 B per logit);
    Megatron-LM's turns its saved softmax into the gradient in place and casts it (2 B); fused or compiled
    losses write a BF16 gradient (2 B). Under TP 8 the vocabulary is split (1/8 of each)."""
    s = _scenario(f"software.cross_entropy={loss}", f"software.compile={str(compile_).lower()}")
    assert unit_workspace_bytes_per_token(_unit(s, "head"), s) == per_logit * 128256
    tp = load_scenario(JOB, overrides=["parallel.tp=8", f"software.cross_entropy={loss}",
                                       f"software.compile={str(compile_).lower()}"])
    assert unit_workspace_bytes_per_token(_unit(tp, "head"), tp) == per_logit * 128256 / 8
    if compile_ and loss == "torch_fp32":  # compiling only the layers leaves the eager loss's 8 B
        eager = _scenario(f"software.cross_entropy={loss}", "software.compile=true", "software.compile_scope=layers")
        assert unit_workspace_bytes_per_token(_unit(eager, "head"), eager) == 8 * 128256


def test_an_mtp_module_holds_its_loss_gradient_or_its_layer_not_both():
    """DeepSeek-V3's multi-token-prediction module runs its loss's backward, frees that gradient, then its
    layer's: the working set is the larger of the two."""
    s = load_scenario("workloads/deepseek_v3.yaml", overrides=["parallel.recompute=full"])
    units = model_units(s.model)
    mtp = next(u for u in units if u.kind == "mtp")
    head = next(u for u in units if u.kind == "head")
    layer = next(u for u in units if u.kind == "layer" and u.moe)
    loss = unit_workspace_bytes_per_token(head, s)
    rerun = _kept(s, mtp, "none") - _kept(s, mtp, "full")  # the MTP layer's tensors the backward re-creates
    assert loss > 0 and rerun > 0
    assert unit_workspace_bytes_per_token(mtp, s) == max(rerun, loss)
    assert unit_workspace_bytes_per_token(layer, s) > 0


@pytest.mark.parametrize("mode, repeat, gathered", [
    ("ring", False, 0),
    ("all_gather", False, 2 * 4 * 2 * KV * 2),
    # the gathered K and V, repeated to the query heads, plus FP32 gradients: the query's (64 heads x 128) and
    # three K/V-sized buffers (64 heads x 256)
    ("pytorch", True, 4 * 2 * 8 * KV * 2 + (64 * 128 + 3 * 2 * 8 * KV) * 4)])
def test_context_parallel_gathers_hold_the_whole_sequences_k_and_v(mode, repeat, gathered):
    """CP 4: an all-gather holds the K and V (BF16) of all 4 ranks' tokens, per local token 4 x 2 x 1,024
    elements, and Llama 3's all-gather CP their gradients too (twice that); PyTorch's, repeated to the query
    heads, 8 times the K and V, and its backward's FP32 gradient buffers (``convert_to_f32``). The ring holds
    one block at a time (left out)."""
    base = _scenario("parallel.recompute=full", "parallel.cp=1", f"software.repeat_kv={str(repeat).lower()}")
    s = _scenario("parallel.recompute=full", "parallel.cp=4", f"parallel.cp_mode={mode}",
                  f"software.repeat_kv={str(repeat).lower()}")
    layer = _unit(s, "layer")
    assert unit_workspace_bytes_per_token(layer, s) - unit_workspace_bytes_per_token(layer, base) == gathered


def test_a_tp_rank_gathers_the_kv_heads_it_holds_at_least_one():
    """TP 8 over Llama 3 70B's 8 KV heads: one head each (K and V of 128), 1/8 of the TP-1 gather; repeated to
    the 64 query heads, 8 heads each. PyTorch's backward adds its FP32 gradients: the query's (8 heads x 128)
    and three K/V-sized buffers of the heads held."""
    def gathered(tp, repeat):
        over = ["parallel.recompute=full", f"parallel.tp={tp}", f"software.repeat_kv={str(repeat).lower()}",
                "parallel.cp_mode=pytorch"]
        one = load_scenario(JOB, overrides=[*over, "parallel.cp=1"])
        four = load_scenario(JOB, overrides=[*over, "parallel.cp=4"])
        layer = _unit(one, "layer")
        return unit_workspace_bytes_per_token(layer, four) - unit_workspace_bytes_per_token(layer, one)

    assert gathered(8, False) == 4 * 2 * 128 * 2 + (8 * 128 + 3 * 2 * 128) * 4
    assert gathered(8, True) == 4 * 2 * 8 * 128 * 2 + (8 * 128 + 3 * 2 * 8 * 128) * 4


@pytest.mark.parametrize("policy, rerun", [
    ("none", 0),
    ("selective", 2 * 8192),  # the core's output, o_proj's input
    ("full", 2 * (3 * 8192 + 28672)),  # the inputs of qkv_proj, o_proj, ffn_up (8,192 each) and ffn_down (28,672)
])
def test_a_split_backward_keeps_the_gemm_inputs_recompute_recreated_for_its_w(policy, rerun):
    """Per token of Llama 3 70B's layer in BF16: what the I re-creates and the deferred W still multiplies."""
    from sim.model.activations import unit_rerun_bytes_per_token

    s = _scenario(f"parallel.recompute={policy}")
    assert unit_rerun_bytes_per_token(_unit(s, "layer"), s) == rerun
    assert unit_rerun_bytes_per_token(_unit(s, "head"), s) == 0  # never recomputed
