"""Golden tests of the architecture arithmetic against published figures (sources cited per test)."""

from __future__ import annotations

import pytest

from sim.loading import load_model
from sim.model import counts
from sim.model.activations import kv_cache_bytes_per_token


def model(name: str):
    return load_model(name)[0]


def test_deepseek_v3_total_params():
    # DeepSeek-V3 tech report 4.2 and README_WEIGHTS.md: 671B total (main model, MTP apart).
    assert counts.params_total(model("deepseek_v3_671b")) == pytest.approx(671e9, rel=0.005)


def test_deepseek_v3_active_params_with_and_without_embedding():
    # Tech report: 37B activated. Derived from deepseek-ai/DeepSeek-V3 inference/configs/config_671B.json:
    # 36.63B without the embedding table, 37.55B with it. params_active excludes the table;
    # params_active(include_embedding=True) adds it.
    m = model("deepseek_v3_671b")
    assert counts.params_active(m) == pytest.approx(36.63e9, rel=0.003)
    assert counts.params_active(m, include_embedding=True) == pytest.approx(37.55e9, rel=0.003)


def test_deepseek_v3_mtp_unique_params():
    # README_WEIGHTS.md: the MTP module has 11.5B unique parameters (excluding shared embedding and head);
    # counting its eh_proj and norms gives 11.6B (derived from config_671B.json), within 1 %.
    assert counts.params_mtp(model("deepseek_v3_671b")) == pytest.approx(11.5e9, rel=0.01)


def test_deepseek_v3_training_flops_per_token():
    # ISCA'25 (arXiv 2505.09343) Table 2: 250 GFLOPs per token, causal attention at 4K, MTP excluded.
    m = model("deepseek_v3_671b")
    assert counts.train_flops_per_token(m, 4096, causal=True) == pytest.approx(250e9, rel=0.005)
    # Derived: the 250 GF hold 30.7 GF of causal attention at 4K; non-causal doubles that, about 281 GF.
    assert counts.train_flops_per_token(m, 4096, causal=False) == pytest.approx(281e9, rel=0.005)


def test_deepseek_v3_kv_cache_per_token():
    # ISCA'25 Table 1: 70.272 KB per token in BF16 = 61 layers x (512 + 64) x 2 B.
    assert kv_cache_bytes_per_token(model("deepseek_v3_671b")) == 70_272


def test_deepseek_v2_params_and_flops():
    # DeepSeek-V2 paper and ISCA'25 Table 2: 236B total, 21B activated, 155 GFLOPs per training token.
    m = model("deepseek_v2_236b")
    assert counts.params_total(m) == pytest.approx(236e9, rel=0.005)
    assert counts.params_active(m) == pytest.approx(21e9, rel=0.02)
    assert counts.train_flops_per_token(m, 4096) == pytest.approx(155e9, rel=0.01)


def test_gpt3_175b_params():
    # Narayanan et al. 2021 (arXiv 2104.04473): 12 l h^2 (1 + 13/12h + (V+s)/12lh) with V = 51,200 and
    # s = 2,048 gives 174.6B; our count adds the final LayerNorm (2h = 24,576 parameters).
    layers, h, v, s = 96, 12288, 51200, 2048
    formula = 12 * layers * h**2 * (1 + 13 / (12 * h) + (v + s) / (12 * layers * h))
    total = counts.params_total(model("gpt3_175b"))
    assert total == pytest.approx(174.6e9, rel=0.001)
    assert total - formula == pytest.approx(2 * h, abs=1)


def test_llama3_405b_and_flops_table():
    # Llama 3 paper: 405B parameters. ISCA'25 Table 2: LLaMA-405B 2,448 GFLOPs per token. The table does not
    # state its attention convention: 6 x 403.8B linear parameters give 2,422.5 GF, and our causal attention at
    # 4K adds 50.7 GF (2,473 GF, +1.0 %); the table's figure implies about half that attention term.
    m = model("llama3_405b")
    assert counts.params_total(m) == pytest.approx(405e9, rel=0.005)
    assert counts.train_flops_per_token(m, 4096) == pytest.approx(2448e9, rel=0.015)


def test_mixtral_params():
    # Mixtral paper (arXiv 2401.04088): 46.7B total, 12.9B active (with embeddings).
    m = model("mixtral_8x7b")
    assert counts.params_total(m) == pytest.approx(46.7e9, rel=0.005)
    assert counts.params_active(m, include_embedding=True) == pytest.approx(12.9e9, rel=0.01)
