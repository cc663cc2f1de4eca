"""Scenarios for the expert tests: DeepSeek-V3 pre-training and a small V3-shaped variant (fast dynamics)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sim.config import Scenario
from sim.loading import load_scenario

REPO = Path(__file__).resolve().parents[2]
V3_JOB = str(REPO / "workloads" / "deepseek_v3.yaml")

# 32 experts in 4 groups, top-4 over at most 2 groups, EP16 over 4 nodes of 4 GPUs: groups aligned with nodes.
SMALL = ("model.n_routed_experts=32", "model.n_activated_experts=4", "model.n_expert_groups=4",
         "model.n_limited_groups=2", "parallel.ep=16", "cluster.node.gpus_per_node=4")

ScenarioFactory = Callable[..., Scenario]


def make_v3(*overrides: str) -> Scenario:
    return load_scenario(V3_JOB, overrides=list(overrides))


def make_small(*overrides: str) -> Scenario:
    return load_scenario(V3_JOB, overrides=[*SMALL, *overrides])


@pytest.fixture
def v3() -> ScenarioFactory:
    return make_v3


@pytest.fixture
def small() -> ScenarioFactory:
    return make_small
