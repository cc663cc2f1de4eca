"""Fixtures for the sweep tests: the tiny MoE sweep spec (16-32 H100, fast simulations of a few ms)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sim.loading import workloads_dir
from sim.sweep import parse_spec
from sim.sweep.spec import SweepSpec

TINY_SPEC = workloads_dir() / "sweeps" / "tiny_moe_sweep.yml"


def tiny(**axes: Any) -> SweepSpec:
    """A small sweep of the tiny MoE job; ``axes`` replace the example spec's."""
    data = yaml.safe_load(TINY_SPEC.read_text())
    data["base"] = "tiny_moe_job.yaml"
    if axes:
        data["axes"] = axes
    return parse_spec(data)


@pytest.fixture
def small_spec() -> SweepSpec:
    """About 50 simulations: two pipeline depths, two schedules, two micro-batch sizes, two prices."""
    return tiny(pp=[2, 4], ep=[2, 4], schedule=["1f1b", "dualpipe"], micro_batch_size=[1, 2],
                recompute=["none", "full"], usd_per_gpu_hour=[2.0, 3.0])


def write_spec(tmp_path: Path, data: dict[str, Any]) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)
