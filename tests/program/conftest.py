"""Tiny jobs for the mechanism tests: a 4-layer GPT on one 8-GPU A100 node (dense) and the tiny MoE job."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sim.config import Scenario
from sim.loading import load_scenario

REPO = Path(__file__).resolve().parents[2]
TINY_MOE_JOB = str(REPO / "workloads" / "tiny_moe_job.yaml")

TINY_GPT = """\
name: tiny-gpt-job
model: {name: tiny-gpt, n_layers: 4, dim: 256, n_heads: 4, inter_dim: 1024, ffn_activation: gelu,
        vocab_size: 1024, norm: layernorm, position_embedding: learned, max_seq_len: 4096, attention: mha}
cluster: a100_ib_3072
parallel: {tp: 1, pp: 1, micro_batch_size: 1, zero_stage: 1}
precision: {fprop: bf16, dgrad: bf16, wgrad: bf16, grads: bf16, grad_reduce: bf16}
training: {seq_len: 512, global_batch_size: 16, total_tokens: 1.0e9}
"""


@pytest.fixture(scope="session")
def gpt_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("jobs") / "tiny_gpt.yaml"
    path.write_text(TINY_GPT)
    return str(path)


@pytest.fixture(scope="session")
def gpt(gpt_file: str) -> Callable[..., Scenario]:
    """The tiny GPT on ``nodes`` 8-GPU nodes with ``overrides``."""

    def make(*overrides: str, nodes: int = 1) -> Scenario:
        return load_scenario(gpt_file, overrides=[f"cluster.num_nodes={nodes}",
                                                 f"training.global_batch_size={16 * nodes}", *overrides])

    return make


@pytest.fixture(scope="session")
def moe() -> Callable[..., Scenario]:
    def make(*overrides: str) -> Scenario:
        return load_scenario(TINY_MOE_JOB, overrides=list(overrides))

    return make
