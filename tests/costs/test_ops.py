"""Memory-bound kernels by software stack (sim.costs.ops.elementwise_kernels) and the attention path choice."""

from __future__ import annotations

import pytest

from sim.config import SoftwareSpec
from sim.costs.ops import elementwise_kernels
from sim.loading import load_scenario
from sim.model.ops import Op
from sim.step import simulate_step

GPT = load_scenario("gpt3_175b_a100.yaml").model  # LayerNorm, biases, GeLU
MEGATRON = SoftwareSpec(fused_kernels=True, hidden_dropout=0.1)
EAGER = SoftwareSpec(fused_kernels=False, hidden_dropout=0.1)


def total(kernels) -> float:
    return sum(per for _name, per in kernels)


def test_residual_chain_bytes_by_hand():
    res = Op("mlp_residual", "residual", "mlp", width=8)
    # Fused bias + dropout + add: read block output 2 + residual 2, write 2, mask 1 = 7 B (derived from
    # Megatron-Core megatron/core/fusions/fused_bias_dropout.py, BF16 2 B, mask 1 B).
    assert total(elementwise_kernels(res, "fwd", MEGATRON, GPT)) == 7
    # Unfused: bias add r2 w2, dropout r2 w2 + mask 1, add r2 r2 w2 = 15 B in three kernels.
    assert total(elementwise_kernels(res, "fwd", EAGER, GPT)) == 15
    assert len(elementwise_kernels(res, "fwd", EAGER, GPT)) == 3
    # Backward: the dropout mask multiply, r2 + mask 1 + w2; nothing without dropout.
    assert total(elementwise_kernels(res, "dgrad", EAGER, GPT)) == 5
    assert elementwise_kernels(res, "dgrad", SoftwareSpec(), GPT) == ()


def test_activation_and_norm_bytes_by_hand():
    act = Op("ffn_act", "elementwise", "mlp", width=8)
    assert total(elementwise_kernels(act, "fwd", MEGATRON, GPT)) == 4  # fused bias + GeLU: r2 w2
    assert total(elementwise_kernels(act, "fwd", EAGER, GPT)) == 8     # bias add, then GeLU
    llama = load_scenario("llama3_70b_h100.yaml").model                # RMSNorm, SwiGLU, no biases
    assert total(elementwise_kernels(act, "fwd", MEGATRON, llama)) == 3  # per input element of gate + up
    norm = Op("ffn_norm", "norm", "mlp", width=8)
    assert total(elementwise_kernels(norm, "fwd", MEGATRON, llama)) == 4
    assert total(elementwise_kernels(norm, "fwd", EAGER, llama)) == 10  # eager RMSNorm: three kernels
    assert total(elementwise_kernels(norm, "fwd", SoftwareSpec(fused_kernels=False, compile=True), llama)) == 4


def test_eager_fp32_norm_and_rope_bytes_by_hand():
    """Meta's Llama reference code (torchtitan): RMSNorm ``(x.float() * rsqrt(mean(x.float()^2) + eps))
    .type_as(x) * w``. Forward, per element: upcast r2 w4 = 6, square r4 w4 = 8, mean r4 = 4 (its [tokens, 1]
    output and the rsqrt on it are negligible), scale r4 w4 = 8, downcast r4 w2 = 6, weight r2 w2 = 4: 36 B in
    six kernels. Autograd's backward: g*w r2 w2 = 4 and sum(g*n) r2 r2 = 4, upcast of g 6, g*r r4 w4 = 8 and
    sum(g*x) r4 r4 = 8, the square's 2x*g' r4 w4 = 8, the two gradients added r4 r4 w4 = 12, downcast 6: 56 B
    in eight. RoPE through view_as_complex(x.float()): upcast 6, complex multiply r4 w4 = 8, downcast 6 = 20 B
    each way (the backward multiplies by the conjugate)."""
    llama = load_scenario("llama3_70b_h100.yaml").model
    eager32 = SoftwareSpec(fused_kernels=False, eager_fp32=True)
    norm = Op("attn_norm", "norm", "attn", width=8)
    assert total(elementwise_kernels(norm, "fwd", eager32, llama)) == 36
    assert len(elementwise_kernels(norm, "fwd", eager32, llama)) == 6
    assert total(elementwise_kernels(norm, "dgrad", eager32, llama)) == 56
    assert len(elementwise_kernels(norm, "dgrad", eager32, llama)) == 8
    rope = Op("rope", "elementwise", "attn", width=8)
    assert total(elementwise_kernels(rope, "fwd", eager32, llama)) == 20
    assert total(elementwise_kernels(rope, "dgrad", eager32, llama)) == 20
    assert total(elementwise_kernels(rope, "fwd", EAGER, llama)) == 4  # BF16 in and out
    assert total(elementwise_kernels(rope, "dgrad", EAGER, llama)) == 6
    # compile (or hand-fused kernels) fuses the chains: the upcasts stay in registers
    for fused in (SoftwareSpec(fused_kernels=False, eager_fp32=True, compile=True),
                  SoftwareSpec(fused_kernels=True, eager_fp32=True)):
        assert total(elementwise_kernels(norm, "fwd", fused, llama)) == 4
        assert total(elementwise_kernels(rope, "fwd", fused, llama)) == 4
    # LayerNorm models are not RMSNorm: the flag leaves them alone
    assert elementwise_kernels(norm, "fwd", eager32, GPT) == elementwise_kernels(norm, "fwd", EAGER, GPT)


def test_software_stacks_order_the_step_time():
    """Unfused attention with dropout and eager kernels costs more than FlashAttention with fused kernels, on the
    same job and hardware (each mechanism only adds memory traffic or kernels)."""
    base = "gpt3_175b_a100.yaml"
    fused = simulate_step(load_scenario(base, overrides=["software=megatron_core_2024"]), mode="fast").step_time_s
    old = simulate_step(load_scenario(base, overrides=["software=megatron_lm_2021"]), mode="fast").step_time_s
    eager = simulate_step(load_scenario(base, overrides=["software=megatron_lm_2021", "software.fused_kernels=false"]),
                          mode="fast").step_time_s
    assert fused < old < eager
    assert old / fused == pytest.approx(1.1, abs=0.1)  # attention is a few % of a 175B layer's work at 2K


def test_cross_entropy_bytes_per_logit_by_stack():
    """Per logit element. Megatron-LM's vocabulary-parallel loss as separate FP32 kernels: upcast r2 w4, max r4,
    subtract r4 w4, exp r4 w4, sum r4, normalize r4 w4 = 38 B in 6 kernels; backward softmax minus one-hot times
    the gradient r4 w4, back to BF16 r4 w2 = 14 B. torchtitan's .float() + F.cross_entropy: upcast 6 + log-softmax
    r4 w4 = 14 B; backward r4 r4 w4 + cast 6 = 18 B. Fused (or compiled): r2 forward, r2 w2 backward."""
    ce = Op("cross_entropy", "elementwise", "head", width=8)
    mega, torch32 = SoftwareSpec(cross_entropy="megatron_fp32"), SoftwareSpec(cross_entropy="torch_fp32")
    assert total(elementwise_kernels(ce, "fwd", mega, GPT)) == 38
    assert len(elementwise_kernels(ce, "fwd", mega, GPT)) == 6
    assert total(elementwise_kernels(ce, "dgrad", mega, GPT)) == 14
    assert total(elementwise_kernels(ce, "fwd", torch32, GPT)) == 14
    assert total(elementwise_kernels(ce, "dgrad", torch32, GPT)) == 18
    for fused in (SoftwareSpec(), SoftwareSpec(cross_entropy="torch_fp32", compile=True)):
        assert total(elementwise_kernels(ce, "fwd", fused, GPT)) == 2
        assert total(elementwise_kernels(ce, "dgrad", fused, GPT)) == 4


@pytest.mark.parametrize("scope, norm_b, loss_b", [("model", 4, 2), ("layers", 36, 14), ("layers_and_loss", 36, 2)])
def test_compile_scope_decides_which_kernels_fuse(scope, norm_b, loss_b):
    """torch.compile fuses only the ops it covers. Compiling each transformer layer on its own (torchtitan's
    apply_compile) leaves the final norm and the loss outside the layers eager: the final RMSNorm in FP32 as
    six kernels (36 B per element) and ``.float()`` + F.cross_entropy (14 B per logit), while a layer's norm
    fuses (4 B); compiling the loss too fuses it (2 B); compiling the whole model fuses everything."""
    llama = load_scenario("llama3_70b_h100.yaml").model
    sw = SoftwareSpec(fused_kernels=False, eager_fp32=True, cross_entropy="torch_fp32", compile=True,
                      compile_scope=scope)
    layer_norm = Op("attn_norm", "norm", "attn", width=8)
    final_norm = Op("final_norm", "norm", "head", width=8)
    ce = Op("cross_entropy", "elementwise", "head", width=8)
    assert total(elementwise_kernels(layer_norm, "fwd", sw, llama)) == 4
    assert total(elementwise_kernels(final_norm, "fwd", sw, llama)) == norm_b
    assert total(elementwise_kernels(ce, "fwd", sw, llama)) == loss_b
    assert sw.loss_compiled == (loss_b == 2)
    off = sw.model_copy(update={"compile": False})  # without compile the scope changes nothing
    assert not off.compiles("attn", "attn_norm") and not off.loss_compiled
    assert total(elementwise_kernels(layer_norm, "fwd", off, llama)) == 36


def test_eager_loss_under_layer_compile_slows_the_step():
    """The same job with the loss and final norm left eager (compile_scope layers) is slower than with the
    whole model compiled, by the eager loss's and norm's extra traffic only (the layers are unchanged)."""
    base = ["software=torchtitan_2024", "software.compile=true"]
    job = "llama3_70b_h100.yaml"
    whole = simulate_step(load_scenario(job, overrides=[*base, "software.compile_scope=model"]), mode="fast")
    layers = simulate_step(load_scenario(job, overrides=[*base, "software.compile_scope=layers"]), mode="fast")
    assert layers.step_time_s > whole.step_time_s
    assert layers.step_time_s / whole.step_time_s < 1.1  # the head is a small part of a 70B step


def test_the_loss_keeps_fp32_logits_unless_fused():
    """Korthikanti et al. 2022 (4.3) count 4 s b v / t bytes of FP32 logits; a fused loss keeps BF16 ones."""
    from sim.config import PrecisionSpec
    from sim.model.activations import unit_activation_bytes_per_token
    from sim.model.stages import model_units

    head = next(u for u in model_units(GPT) if u.kind == "head")
    ce_only = head.ops[-1]
    assert ce_only.name == "cross_entropy"
    base = unit_activation_bytes_per_token(head, "none", PrecisionSpec(), GPT, tp=8,
                                           software=SoftwareSpec(cross_entropy="fused"))
    fp32 = unit_activation_bytes_per_token(head, "none", PrecisionSpec(), GPT, tp=8,
                                           software=SoftwareSpec(cross_entropy="megatron_fp32"))
    assert fp32 - base == pytest.approx((4 - 2) * GPT.vocab_size / 8)  # split by TP: vocabulary-parallel
    # torch.compile keeps BF16 logits only when it covers the loss (compile_scope)
    for scope, kept in (("model", base), ("layers_and_loss", base), ("layers", fp32)):
        sw = SoftwareSpec(cross_entropy="torch_fp32", compile=True, compile_scope=scope)
        assert unit_activation_bytes_per_token(head, "none", PrecisionSpec(), GPT, tp=8, software=sw) == kept


LLAMA = load_scenario("llama3_70b_h100.yaml").model  # RMSNorm, SwiGLU, no biases
NO_DROP = SoftwareSpec(fused_kernels=False, hidden_dropout=0.0)


@pytest.mark.parametrize(("op", "pass_", "sw", "model", "kernels"), [
    # Eager RMSNorm: square-mean r2 (reduction in cache), rsqrt-scale r2 w2, weight multiply r2 w2; its backward
    # two kernels of r2 r2 w2. Fused (Apex/TE): one r2 w2 forward, one r2 r2 w2 backward.
    (Op("n", "norm", "attn", width=8), "fwd", EAGER, LLAMA, (("norm", 2.0), ("norm", 4.0), ("norm", 4.0))),
    (Op("n", "norm", "attn", width=8), "fwd", MEGATRON, LLAMA, (("norm", 4.0),)),
    (Op("n", "norm", "attn", width=8), "dgrad", EAGER, LLAMA, (("norm", 6.0), ("norm", 6.0))),
    (Op("n", "norm", "attn", width=8), "dgrad", MEGATRON, LLAMA, (("norm", 6.0),)),
    (Op("n", "norm", "attn", width=8), "dgrad", EAGER, GPT, (("norm", 6.0),)),  # LayerNorm: one kernel anyway
    # Residual: fused bias-dropout-add r2 r2 w2 (+ mask 1); eager bias add, dropout, add; backward the mask.
    (Op("r", "residual", "mlp", width=8), "fwd", MEGATRON, GPT, (("residual_add", 7.0),)),
    (Op("r", "residual", "mlp", width=8), "fwd", SoftwareSpec(fused_kernels=True), GPT, (("residual_add", 6.0),)),
    (Op("r", "residual", "mlp", width=8), "fwd", EAGER, GPT,
     (("bias_add", 4.0), ("dropout", 5.0), ("residual_add", 6.0))),
    (Op("r", "residual", "mlp", width=8), "fwd", NO_DROP, LLAMA, (("residual_add", 6.0),)),
    (Op("r", "residual", "mlp", width=8), "dgrad", EAGER, GPT, (("dropout", 5.0),)),
    # SwiGLU over gate + up (width): fused r2 w1 per input element, eager silu r1 w1 then multiply r2 w1;
    # backward fused r2 r1(grad) w2, eager that and the multiply's r2 w1.
    (Op("ffn_act", "elementwise", "mlp", width=8), "fwd", MEGATRON, LLAMA, (("swiglu", 3.0),)),
    (Op("ffn_act", "elementwise", "mlp", width=8), "fwd", EAGER, LLAMA, (("swiglu", 2.0), ("swiglu", 3.0))),
    (Op("ffn_act", "elementwise", "mlp", width=8), "dgrad", MEGATRON, LLAMA, (("swiglu", 5.0),)),
    (Op("ffn_act", "elementwise", "mlp", width=8), "dgrad", EAGER, LLAMA, (("swiglu", 5.0), ("swiglu", 3.0))),
    # GeLU: fused bias + GeLU r2 w2; eager with a bias first adds it (r2 w2); backward r2 r2 w2.
    (Op("ffn_act", "elementwise", "mlp", width=8), "fwd", MEGATRON, GPT, (("gelu", 4.0),)),
    (Op("ffn_act", "elementwise", "mlp", width=8), "fwd", EAGER, GPT, (("bias_add", 4.0), ("gelu", 4.0))),
    (Op("ffn_act", "elementwise", "mlp", width=8), "dgrad", EAGER, GPT, (("gelu", 6.0),)),
    # The loss per logit element (names as the calibration harness measures them): Megatron-LM's FP32 kernels,
    # torch's upcast + log-softmax, or one fused kernel.
    (Op("cross_entropy", "elementwise", "head", width=8), "fwd", SoftwareSpec(cross_entropy="megatron_fp32"), GPT,
     (("ce_cast", 6.0), ("ce_max", 4.0), ("ce_sub", 8.0), ("ce_exp", 8.0), ("ce_sum", 4.0), ("ce_softmax", 8.0))),
    (Op("cross_entropy", "elementwise", "head", width=8), "dgrad", SoftwareSpec(cross_entropy="megatron_fp32"), GPT,
     (("ce_grad", 8.0), ("ce_cast", 6.0))),
    (Op("cross_entropy", "elementwise", "head", width=8), "fwd", SoftwareSpec(cross_entropy="torch_fp32"), GPT,
     (("ce_cast", 6.0), ("log_softmax", 8.0))),
    (Op("cross_entropy", "elementwise", "head", width=8), "dgrad", SoftwareSpec(cross_entropy="torch_fp32"), GPT,
     (("log_softmax", 12.0), ("ce_cast", 6.0))),
    (Op("cross_entropy", "elementwise", "head", width=8), "fwd", SoftwareSpec(), GPT, (("cross_entropy", 2.0),)),
    (Op("cross_entropy", "elementwise", "head", width=8), "dgrad", SoftwareSpec(), GPT, (("cross_entropy", 4.0),)),
    # Any other memory-bound op (rope, casts): read and write each element forward, r2 r2 w2 backward.
    (Op("rope", "elementwise", "attn", width=8), "fwd", EAGER, GPT, (("rope", 4.0),)),
    (Op("rope", "elementwise", "attn", width=8), "dgrad", EAGER, GPT, (("rope", 6.0),)),
])
def test_kernel_names_and_bytes_by_branch(op, pass_, sw, model, kernels):
    """The names are what a calibration table's memory-bound entries are matched on (the harness measures
    ``norm``, ``swiglu``, ... under these names), so each branch's list is stated in full."""
    assert elementwise_kernels(op, pass_, sw, model) == kernels
