"""What kernels one op turns into on one GPU (sim.costs.ops.OpCoster): the Megatron-LM tensor-parallel split of
each GEMM, the tokens of replicated and routed-expert GEMMs, the memory-bound kernels' widths, recompute.

The cost model is replaced by a recorder that answers 1 s per call (a memory-bound kernel: its bytes) and keeps
the arguments, so each test states the kernel shapes the op must produce."""

from __future__ import annotations

import pytest

from sim.costs.ops import OpCoster, elementwise_kernels
from sim.loading import load_scenario
from sim.model.ops import Op

TP = 8  # gpt3_175b_a100: TP 8, full recompute, FlashAttention, sequence length 2048


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def gemm_pass_seconds(self, pass_, m, n, k, precision_class, group_rows=None):
        self.calls.append(("gemm", pass_, m, n, k, precision_class, group_rows))
        return 1.0

    def memory_seconds(self, bytes_, name="elementwise"):
        self.calls.append(("memory", bytes_, name))
        return float(bytes_)  # the bytes, so a test can tell which kernel a pass returned

    def attention_seconds(self, pass_, tokens, seq_len, heads, qk_dim, v_dim, causal=True, kernel="default"):
        self.calls.append(("flash", pass_, tokens, seq_len, heads, qk_dim, v_dim, kernel))
        return 1.0

    def unfused_attention_seconds(self, pass_, tokens, seq_len, heads, qk_dim, v_dim, dropout, fused_softmax):
        self.calls.append(("unfused", pass_, tokens, seq_len, heads, qk_dim, v_dim, dropout, fused_softmax))
        return 1.0


def coster(*overrides: str) -> tuple[OpCoster, Recorder]:
    rec = Recorder()
    return OpCoster(load_scenario("gpt3_175b_a100.yaml", overrides=list(overrides)), rec), rec  # type: ignore[arg-type]


SP = ("parallel.sequence_parallel=true",)
NO_RECOMPUTE = ("parallel.recompute=none",)


def test_column_and_row_parallel_gemms_split_n_and_k():
    """Megatron-LM: a column-parallel projection keeps 1/TP of the output features (n), a row-parallel one 1/TP
    of the input features (k); both see all the tokens; the op's precision class reaches the cost model."""
    c, rec = coster(*NO_RECOMPUTE)
    up = Op("ffn_up", "gemm", "mlp", n=4096, k=1024, rows_per_token=2.0, precision_class="high")
    down = Op("ffn_down", "gemm", "mlp", n=1024, k=4096)
    assert c.seconds(up, "fwd", 100.0) == 1.0
    c.seconds(down, "weight", 100.0)
    assert rec.calls == [("gemm", "fwd", 200.0, 4096 // TP, 1024, "high", None),
                         ("gemm", "wgrad", 100.0, 1024, 4096 // TP, "linear", None)]


def test_replicated_gemms_run_whole_on_the_sequence_parallel_share_of_tokens():
    """A replicated GEMM (router, MLA down projections) is not split; under sequence parallelism each TP rank
    runs it on its 1/TP of the tokens, without SP on all of them."""
    router = Op("router", "gemm", "moe", n=64, k=1024, precision_class="high")
    for overrides, rows in ((SP, 800.0 / TP), ((), 800.0)):
        c, rec = coster(*overrides, *NO_RECOMPUTE)
        c.seconds(router, "fwd", 800.0)
        assert rec.calls == [("gemm", "fwd", rows, 64, 1024, "high", None)]


def test_routed_experts_run_each_tp_ranks_share_per_expert():
    """Routed experts (expert TP 1): each TP rank dispatches 1/TP of the tokens; a grouped GEMM runs over the rows
    each local expert receives when the expert load says so, else over all of them as one group."""
    c, rec = coster(*NO_RECOMPUTE)
    experts = Op("experts_up", "grouped_gemm", "moe", n=512, k=1024, rows_per_token=2.0)
    c.seconds(experts, "fwd", 800.0)
    c.seconds(experts, "fwd", 800.0, (30.0, 0.0, 10.0))
    assert rec.calls == [("gemm", "fwd", 200.0, 512, 1024, "linear", (200.0,)),
                         ("gemm", "fwd", 40.0, 512, 1024, "linear", (30.0, 0.0, 10.0))]
    shared = Op("shared_up", "grouped_gemm", "moe", n=512, k=1024)  # not routed: all the tokens, unsplit
    rec.calls.clear()
    c.seconds(shared, "input", 800.0, (5.0, 5.0))
    assert rec.calls == [("gemm", "dgrad", 10.0, 512, 1024, "linear", (5.0, 5.0))]


def test_the_input_gradient_reruns_the_recomputed_forward():
    """``input``: the input gradient, plus the forward again when recompute re-runs the op (full recompute
    re-runs every op; without recompute, nothing)."""
    op = Op("qkv_proj", "gemm", "attn", n=3072, k=1024)
    full, rec = coster()
    assert full.seconds(op, "input", 64.0, (1.0,)) == 2.0
    assert [call[1] for call in rec.calls] == ["dgrad", "fwd"]
    none, rec = coster(*NO_RECOMPUTE)
    assert none.seconds(op, "input", 64.0) == 1.0 and [call[1] for call in rec.calls] == ["dgrad"]


def test_attention_heads_split_by_tp_on_the_chosen_kernel():
    att = Op("attention", "attention", "attn", heads=96, qk_dim=128, v_dim=128)
    c, rec = coster(*NO_RECOMPUTE, "software.flash_kernel=fa2")
    c.seconds(att, "fwd", 2048.0)
    assert rec.calls == [("flash", "fwd", 2048.0, 2048, 96 // TP, 128, 128, "fa2")]
    u, rec = coster(*NO_RECOMPUTE, "software.attention=unfused", "software.attention_dropout=0.1",
                    "software.fused_kernels=false")
    u.seconds(att, "input", 2048.0)
    assert rec.calls == [("unfused", "dgrad", 2048.0, 2048, 96 // TP, 128, 128, True, False)]


def test_memory_bound_ops_move_their_width_times_tokens():
    """Width x tokens elements, times each kernel's bytes per element; the width split by TP inside the TP region,
    the tokens by TP outside it under SP (Korthikanti et al. 2022); nothing in the weight-gradient pass; the
    embedding gathers rows forward (r2 w2) and scatter-adds them into FP32 gradients (r2 w4, 6 B) for wgrad."""
    norm = Op("attn_norm", "norm", "attn", width=1024)
    sp, rec = coster(*SP, *NO_RECOMPUTE)
    sw, model = sp.s.software, sp.s.model
    sp.seconds(norm, "fwd", 800.0)
    want = [("memory", per * 800.0 * 1024 / TP, name) for name, per in elementwise_kernels(norm, "fwd", sw, model)]
    assert rec.calls == want
    rec.calls.clear()
    assert sp.seconds(norm, "weight", 800.0) == 0.0 and rec.calls == []
    no_sp, rec = coster(*NO_RECOMPUTE)
    no_sp.seconds(norm, "fwd", 800.0)
    assert rec.calls == [(k, b * TP, name) for k, b, name in want]  # the whole width on every TP rank
    emb = Op("embedding", "embedding", "embed", width=1024)
    e, rec = coster(*NO_RECOMPUTE)
    assert e.seconds(emb, "input", 10.0) == 0.0
    assert e.seconds(emb, "fwd", 10.0) == 4.0 * 10 * 1024
    assert e.seconds(emb, "weight", 10.0) == 6.0 * 10 * 1024
    assert {name for _k, _b, name in rec.calls} == {"embedding"}


@pytest.mark.parametrize("name", ["ffn_act"])
def test_an_activation_inside_the_tp_region_splits_its_width(name):
    act = Op(name, "elementwise", "mlp", width=4096)
    c, rec = coster(*NO_RECOMPUTE)
    c.seconds(act, "fwd", 10.0)
    assert sum(b for _k, b, _n in rec.calls) == pytest.approx(
        sum(per for _n, per in elementwise_kernels(act, "fwd", c.s.software, c.s.model)) * 10 * 4096 / TP)


def test_expert_rows_reach_every_pass_and_shards_are_whole_features():
    """Under full recompute the input-gradient pass re-runs the forward over the same expert rows; the weight
    gradient runs over them too. A row-parallel GEMM's shard is a whole number of input features (k // TP), a
    column-parallel one's of output features."""
    c, rec = coster()  # full recompute
    experts = Op("experts_down", "grouped_gemm", "moe", n=1024, k=512)
    rows = (30.0, 10.0)
    c.seconds(experts, "input", 800.0, rows)
    c.seconds(experts, "weight", 800.0, rows)
    assert [(call[1], call[6]) for call in rec.calls] == [("dgrad", rows), ("fwd", rows), ("wgrad", rows)]
    rec.calls.clear()
    c.seconds(Op("o_proj", "gemm", "attn", n=1024, k=4100), "fwd", 10.0)
    c.seconds(Op("qkv_proj", "gemm", "attn", n=4100, k=1024), "fwd", 10.0)
    assert [call[3:5] for call in rec.calls] == [(1024, 512), (512, 1024)]
    assert all(isinstance(x, int) for call in rec.calls for x in call[3:5])


def test_sequence_parallelism_needs_more_than_one_tp_rank():
    """TP 2 with SP: a replicated GEMM runs on half the tokens."""
    router = Op("router", "gemm", "moe", n=64, k=1024, precision_class="high")
    c, rec = coster("parallel.tp=2", "parallel.sequence_parallel=true", *NO_RECOMPUTE)
    c.seconds(router, "fwd", 800.0)
    assert rec.calls == [("gemm", "fwd", 400.0, 64, 1024, "high", None)]
