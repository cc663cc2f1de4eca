"""Expert loads as the program sees them (sim.program.moe): the busiest rank of each EP group, per MoE layer and
micro-batch, and the balanced load the calibration setting assumes."""

from __future__ import annotations

from sim.config import evolve
from sim.context import build_context
from sim.model.stages import Unit
from sim.program.moe import LoadModel, MoeLoad, layer_id


def test_layer_ids_put_mtp_modules_after_the_layers():
    assert layer_id(Unit("layer_3", "layer", 3, ()), 61) == 3
    assert layer_id(Unit("mtp_0", "mtp", 0, ()), 61) == 61 and layer_id(Unit("mtp_1", "mtp", 1, ()), 61) == 62


def test_balanced_routing_gives_every_local_expert_the_same_rows_by_hand(moe):
    """The tiny MoE: 256 tokens per GPU, EP 4, top-2 of 8 experts: the EP group's 4 x 256 x 2 = 2048 routed rows
    spread evenly are 256 per expert, two experts per rank; balanced routing is the same for every layer and
    micro-batch, and is what ``balanced_load`` returns."""
    s = moe()
    assert (s.tokens_per_gpu, s.parallel.ep, s.model.n_routed_experts) == (256, 4, 8)
    ctx = build_context(s)
    units = [u for stage in ctx.partition.stages for u in stage if u.moe]
    load = ctx.loads.moe_load(units[0], 0)
    assert load.rows_per_expert == (256.0, 256.0) and load.imbalance == 1.0
    assert all(ctx.loads.moe_load(u, mb) == load for u in units for mb in range(s.num_microbatches))
    assert ctx.loads.balanced_load() == load


def test_skewed_loads_are_the_busiest_ranks_and_balanced_load_ignores_the_skew(moe):
    s = moe("experts.skew=zipf")
    ctx = build_context(s)
    lm: LoadModel = ctx.loads
    lo = lm.loads
    units = [u for stage in ctx.partition.stages for u in stage if u.moe]
    seen_imbalance = []
    for u in units:
        i = lo.layers.index(layer_id(u, s.model.n_layers))
        for mb in range(s.num_microbatches):
            load = lm.moe_load(u, mb)
            busiest = int(lo.rank_tokens[i, mb].argmax())
            assert load.rows_per_expert == tuple(float(r) for r in lo.local_expert_tokens[i, mb, busiest])
            assert load == MoeLoad(load.rows_per_expert, float(lo.max_link_bytes("dispatch", "ib")[i, mb]),
                                   float(lo.max_link_bytes("dispatch", "nvlink")[i, mb]),
                                   float(lo.max_link_bytes("combine", "ib")[i, mb]),
                                   float(lo.max_link_bytes("combine", "nvlink")[i, mb]), float(lo.imbalance[i, mb]))
            seen_imbalance.append(load.imbalance)
    assert max(seen_imbalance) > 1.0  # the busiest rank gets more than the mean
    even = build_context(evolve(s, {"experts.skew": "balanced", "experts.drift_per_step": 0.0})).loads
    assert lm.balanced_load() == even.moe_load(units[0], 0)
