"""A block's tensor-parallel region and its pieces (sim.program.blocks), by hand on Megatron-LM's layouts
(Korthikanti et al. 2022 section 4.2.2; Megatron-Core MLA)."""

from __future__ import annotations

from sim.model.ops import Op
from sim.program.blocks import BlockPlan, Piece, plan_block, region_pieces

D = 256
NORM = Op("attn_norm", "norm", "attn", width=D)
QKV = Op("qkv_proj", "gemm", "attn", n=3 * D, k=D)
CORE = Op("attention", "attention", "attn", heads=4, qk_dim=64, v_dim=64)
OUT = Op("o_proj", "gemm", "attn", n=D, k=D)
RES = Op("attn_residual", "residual", "attn", width=D)


def test_a_dense_attention_block_by_hand():
    """The norm runs before the region (on SP's sequence shard), the residual after it; the region opens with
    the column-parallel QKV (gather its input, D wide) and closes with the row-parallel output projection."""
    plan = plan_block("attn", (NORM, QKV, CORE, OUT, RES), D)
    assert plan == BlockPlan("attn", (NORM,), (QKV, CORE, OUT), (RES,), True, True, D, D)
    assert plan.ops == (NORM, QKV, CORE, OUT, RES)


def test_mla_gathers_the_compressed_latents():
    """MLA's down projections (q_a, kv_a) are replicated: q_a runs before the region on each GPU's own tokens,
    and the region gathers what the column-parallel up projections read, q_b's k + kv_b's k = 32 + 16."""
    q_a, q_a_norm = Op("q_a_proj", "gemm", "attn", n=32, k=64), Op("q_a_norm", "norm", "attn", width=32)
    q_b, kv_a = Op("q_b_proj", "gemm", "attn", n=64, k=32), Op("kv_a_proj", "gemm", "attn", n=24, k=64)
    kv_b, rope = Op("kv_b_proj", "gemm", "attn", n=64, k=16), Op("rope", "elementwise", "attn", width=16)
    o = Op("o_proj", "gemm", "attn", n=64, k=32)
    post = (Op("attn_residual", "residual", "attn", width=64), Op("router", "gemm", "moe", n=8, k=64))
    ops = (NORM, q_a, q_a_norm, q_b, kv_a, kv_b, rope, CORE, o, *post)
    plan = plan_block("attn", ops, 64)
    assert (plan.pre, plan.region, plan.post) == ((NORM, q_a, q_a_norm), (q_b, kv_a, kv_b, rope, CORE, o), post)
    assert (plan.has_col, plan.has_row, plan.gather_width, plan.reduce_width) == (True, True, 48, 64)


def test_the_head_region_takes_the_vocabulary_parallel_loss_and_the_embedding_reduces():
    """The head (column-parallel over the vocabulary) keeps the cross entropy in its region (vocabulary-parallel
    loss) and reduces nothing back; the vocabulary-parallel embedding reduces its output (D wide)."""
    head, ce = Op("head", "gemm", "head", n=1024, k=D), Op("cross_entropy", "elementwise", "head", width=1024)
    final = Op("final_norm", "norm", "head", width=D)
    assert plan_block("head", (final, head, ce), D) == BlockPlan("head", (final,), (head, ce), (), True, False, D, D)
    emb, pos = Op("embed", "embedding", "embed", width=D), Op("pos_embed", "embedding", "embed", width=D)
    assert plan_block("embed", (emb, pos), D) == BlockPlan("embed", (), (emb, pos), (), False, True, D, D)
    # Only the kernels right after the head extend the region: a residual after a row-parallel GEMM does not.
    down = Op("ffn_down", "gemm", "mlp", n=D, k=4 * D)
    act = Op("ffn_act", "elementwise", "mlp", width=4 * D)
    assert plan_block("mlp", (down, act), D).post == (act,)


def test_a_block_without_tp_work_is_all_before_the_region():
    router = Op("router", "gemm", "moe", n=8, k=D)
    ops = (Op("ffn_norm", "norm", "mlp", width=D), router, Op("router_topk", "elementwise", "moe", width=8))
    assert plan_block("mlp", ops, D) == BlockPlan("mlp", ops, (), (), False, False, 0, D)


def test_region_pieces_by_mechanism():
    region = (QKV, CORE, OUT)
    assert region_pieces((), True, True, True) == ()
    assert region_pieces(region, False, False, False) == (Piece("ops", region),)
    # TP overlap: the first GEMM apart (its input gather pipelined), the last row-parallel GEMM apart.
    assert region_pieces(region, False, True, True) == (Piece("ops", (QKV,)), Piece("ops", (CORE,)),
                                                        Piece("ops", (OUT,)))
    assert region_pieces(region, False, True, False) == (Piece("ops", (QKV,)), Piece("ops", (CORE, OUT)))
    assert region_pieces(region, False, False, True) == (Piece("ops", (QKV, CORE)), Piece("ops", (OUT,)))
    # Context parallelism: the core apart, the ops around it in runs.
    assert region_pieces(region, True, False, False) == (Piece("ops", (QKV,)), Piece("core", (CORE,)),
                                                         Piece("ops", (OUT,)))
    assert region_pieces((CORE,), True, True, True) == (Piece("core", (CORE,)),)
    assert region_pieces((CORE, OUT, RES), True, False, False) == (Piece("core", (CORE,)), Piece("ops", (OUT, RES)))
    # Nothing to split off a lone GEMM, a region that does not open with a GEMM or close with a row-parallel one.
    assert region_pieces((QKV,), False, True, True) == (Piece("ops", (QKV,)),)
    assert region_pieces((OUT,), False, True, True) == (Piece("ops", (OUT,)),)
    assert region_pieces((CORE, QKV), False, True, True) == (Piece("ops", (CORE, QKV)),)
    head, ce = Op("head", "gemm", "head", n=1024, k=D), Op("cross_entropy", "elementwise", "head", width=1024)
    assert region_pieces((head, ce), False, True, True) == (Piece("ops", (head,)), Piece("ops", (ce,)))
    assert region_pieces((ce, OUT), False, True, True) == (Piece("ops", (ce,)), Piece("ops", (OUT,)))
