"""Balancing dynamics (sim.experts.balancing): from a skewed start the bias update lowers max/mean over steps
for every seed tried; no balancing stays put; the auxiliary loss and EPLB lower it; results are deterministic
and a layer's result does not depend on the other layers simulated."""

from __future__ import annotations

import numpy as np
import pytest

from sim.experts.balancing import simulate_balancing
from sim.experts.popularity import base_popularity
from sim.experts.routing import route, sample_logits
from tests.experts.conftest import make_small, make_v3


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_bias_policy_lowers_imbalance_from_a_skewed_start(seed):
    s = make_v3("experts.skew=zipf", "experts.zipf_exponent=1.0", f"experts.seed={seed}", "experts.policy=bias")
    h = simulate_balancing(s, 300, layers=range(3, 11))
    curve = h.imbalance_by_step
    assert curve[0] > 4.0                                  # Zipf 1.0 over 256 experts: heavily skewed
    assert curve[100] < 0.8 * curve[0] and curve[-1] < 0.35 * curve[0]
    assert np.all(np.diff(curve[::25]) < 0)                # falls throughout (sampled every 25 steps)
    assert (h.imbalance[-1] < h.imbalance[0]).all()        # in every layer


def test_bias_policy_converges_near_balance_on_mild_skew():
    s = make_small("experts.skew=zipf", "experts.zipf_exponent=0.5", "experts.policy=bias")
    h = simulate_balancing(s, 600)
    assert h.imbalance_by_step[0] > 1.2
    assert h.imbalance_by_step[-1] < 1.05


def test_no_balancing_keeps_the_skew_and_aux_reduces_it():
    none = simulate_balancing(make_small("experts.skew=zipf", "experts.policy=none"), 50)
    aux = simulate_balancing(make_small("experts.skew=zipf", "experts.policy=aux"), 50)
    assert np.ptp(none.imbalance_by_step) == 0.0 and not none.final_bias.any()
    assert 1.0 < aux.imbalance_by_step[0] < none.imbalance_by_step[0]


def test_eplb_rearranges_and_replicates():
    s = make_small("experts.skew=zipf", "experts.policy=eplb", "experts.num_redundant_experts=16",
                   "experts.eplb_interval_steps=5")
    h = simulate_balancing(s, 20)
    assert h.imbalance_by_step[-1] < 0.6 * h.imbalance_by_step[0]
    assert (h.imbalance_after < h.imbalance_before).all()
    assert h.final_placement.num_slots == 32 + 16


def test_balanced_skew_stays_exactly_balanced():
    h = simulate_balancing(make_v3("experts.skew=balanced", "experts.policy=bias"), 20)
    assert (h.imbalance == 1.0).all() and not h.final_bias.any()


def test_deterministic_and_layer_independent():
    s = make_small("experts.skew=dirichlet", "experts.drift_per_step=0.05", "experts.seed=7")
    a = simulate_balancing(s, 30)
    b = simulate_balancing(s, 30)
    assert np.array_equal(a.imbalance, b.imbalance) and np.array_equal(a.final_bias, b.final_bias)
    sub = simulate_balancing(s, 30, layers=[a.layers[5], a.layers[2]])
    assert np.array_equal(sub.final_bias, a.final_bias[[5, 2]])
    other = simulate_balancing(make_small("experts.skew=dirichlet", "experts.drift_per_step=0.05",
                                          "experts.seed=8"), 30)
    assert not np.array_equal(other.final_bias, a.final_bias)


def test_bias_tracks_drifting_popularity():
    s = make_small("experts.skew=balanced", "experts.drift_per_step=0.05", "experts.policy=none")
    drifted = simulate_balancing(s, 400)
    tracked = simulate_balancing(make_small("experts.skew=balanced", "experts.drift_per_step=0.05",
                                            "experts.policy=bias"), 400)
    assert drifted.imbalance_by_step[-1] > 1.3
    assert tracked.imbalance_by_step[-1] < 0.8 * drifted.imbalance_by_step[-1]


@pytest.mark.parametrize("layout", ["wide", "long"])
def test_histogram_loads_are_reproduced_at_step_zero(tmp_path, layout):
    s0 = make_small()
    layers = list(range(s0.model.n_dense_layers, s0.model.n_layers + s0.model.n_mtp_layers))
    rng = np.random.default_rng(0)
    loads = rng.integers(100, 2000, size=(len(layers), 32))
    path = tmp_path / "hist.csv"
    if layout == "wide":
        path.write_text("\n".join(",".join(str(v) for v in row) for row in loads) + "\n")
    else:
        lines = ["layer,expert,load"] + [f"{lay},{e},{loads[i, e]}" for i, lay in enumerate(layers)
                                         for e in range(32)]
        path.write_text("\n".join(lines) + "\n")
    s = make_small("experts.skew=histogram", f"experts.histogram={path}", "experts.policy=none")
    h = simulate_balancing(s, 0)
    want = 4 * loads[: len(h.layers)] / loads[: len(h.layers)].sum(axis=-1, keepdims=True)
    assert np.allclose(h.final_loads, want, rtol=1e-6)


def test_mean_field_dynamics_track_the_exact_gate():
    # The bias dynamics run on the mean field; rerun them token by token through the exact node-limited gate
    # (8,000 sampled tokens, 32 experts, top-4 of 2 of 4 groups, gamma 0.004 to be quick) and compare.
    s = make_small("experts.skew=zipf", "experts.zipf_exponent=1.0", "experts.policy=bias",
                   "experts.bias_update_speed=0.004")
    h = simulate_balancing(s, 100, layers=[3], record_bias=False)
    logits = sample_logits(base_popularity(s.experts, 32, 3), 8000, np.random.default_rng(0))
    bias, exact = np.zeros(32), []
    for _ in range(101):
        loads = np.bincount(route(logits, bias, s.model).ravel(), minlength=32) / 8000
        per_gpu = loads.reshape(16, 2).sum(-1)
        exact.append(per_gpu.max() / per_gpu.mean())
        bias += 0.004 * np.sign(loads.mean() - loads)
    for step in (0, 25, 50):
        assert h.imbalance[step, 0] == pytest.approx(exact[step], rel=0.2)
    assert exact[0] > 2.5 and exact[100] < 1.1 and h.imbalance[100, 0] < 1.1
