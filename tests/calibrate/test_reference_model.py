"""The PyTorch reference network: it trains, routes as DeepSeek-V3 does, and its FLOPs equal the analytic ones.

FLOP cross-check: FlopCounterMode over forward and backward against ``sim.model.counts`` for tiny MoE, GQA, MHA
and MLA variants, exactly (conventions in ``sim.calibrate.flops``).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from sim.calibrate.flops import flop_crosscheck  # noqa: E402
from sim.calibrate.reference import ReferenceModel, train_steps  # noqa: E402
from sim.calibrate.reference.moe import Router  # noqa: E402
from sim.config import ModelSpec  # noqa: E402
from sim.loading import load_model  # noqa: E402

TINY_MOE = load_model("tiny_moe")[0]
GQA = ModelSpec(name="tiny-gqa", n_layers=2, dim=64, n_heads=4, n_kv_heads=2, attention="gqa", inter_dim=96,
                vocab_size=128)
GPT = ModelSpec(name="tiny-gpt", n_layers=2, dim=64, n_heads=4, attention="mha", inter_dim=256, vocab_size=128,
                bias=True, norm="layernorm", ffn_activation="gelu", position_embedding="learned", max_seq_len=64,
                tie_word_embeddings=True)
MLA_V2_LITE = ModelSpec(name="tiny-v2-lite", n_layers=2, dim=64, n_heads=4, attention="mla", q_lora_rank=0,
                        kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, inter_dim=96,
                        vocab_size=128, n_routed_experts=4, n_activated_experts=2, moe_inter_dim=16,
                        n_shared_experts=2, n_dense_layers=1, score_func="softmax")


@pytest.mark.parametrize("spec", [TINY_MOE, GQA, GPT, MLA_V2_LITE], ids=lambda s: s.name)
def test_flop_counter_equals_analytic_flops(spec: ModelSpec) -> None:
    check = flop_crosscheck(spec, batch=2, seq_len=16)
    assert check.mismatches() == []
    assert check.counted_total == check.analytic_total > 0
    assert check.backward["attention"] == 2 * sum(v for (_, op), v in check.forward.items() if op == "attention")


def test_tiny_moe_trains_on_cpu() -> None:
    torch.manual_seed(0)
    model = ReferenceModel(TINY_MOE)
    tokens = torch.randint(0, TINY_MOE.vocab_size, (2, 32 + 1 + TINY_MOE.n_mtp_layers))
    with _threads(1):
        losses = train_steps(model, tokens, steps=8)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0]
    assert any(r.balance_bias.abs().sum() > 0 for r in model.routers())  # the balancing bias moved
    assert not torch.cuda.is_initialized()


@pytest.mark.parametrize("spec", [GQA, GPT, MLA_V2_LITE], ids=lambda s: s.name)
def test_dense_and_mla_variants_run_forward_and_backward(spec: ModelSpec) -> None:
    torch.manual_seed(0)
    model = ReferenceModel(spec)
    loss = model(torch.randint(0, spec.vocab_size, (2, 16 + 1 + spec.n_mtp_layers)))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.grad is not None)


def test_router_is_group_limited_with_sigmoid_weights() -> None:
    torch.manual_seed(0)
    router = Router(TINY_MOE)
    router.balance_bias.copy_(torch.linspace(-0.5, 0.5, TINY_MOE.n_routed_experts))
    weights, indices = router(torch.randn(64, TINY_MOE.dim))
    per_group = TINY_MOE.n_routed_experts // TINY_MOE.n_expert_groups
    groups = indices // per_group
    assert all(len(set(row.tolist())) <= TINY_MOE.n_limited_groups for row in groups)
    assert torch.allclose(weights.sum(-1), torch.full((64,), TINY_MOE.route_scale))
    load = router.last_load.clone()
    before = router.balance_bias.clone()
    router.update_bias(0.01)
    moved = router.balance_bias - before
    assert torch.all(moved[load > load.mean()] < 0) and torch.all(moved[load < load.mean()] > 0)


class _threads:
    def __init__(self, n: int) -> None:
        self.n, self.before = n, torch.get_num_threads()

    def __enter__(self) -> None:
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)
