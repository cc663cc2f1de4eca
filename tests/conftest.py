"""Shared fixtures: the repository root, an optional data folder beside it (a copy of DeepSeek's trace), a CLI
runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import settings

# Deterministic property tests in CI: the same examples on every run, no flaky first-time failures.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("ci")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def default_detailed():
    """The default DeepSeek-V3 step in detailed mode, simulated once per test run."""
    from sim.loading import load_scenario
    from sim.step import simulate_step

    return simulate_step(load_scenario(), mode="detailed")


@pytest.fixture(scope="session")
def default_fast():
    """The default DeepSeek-V3 step in fast mode, simulated once per test run."""
    from sim.loading import load_scenario
    from sim.step import simulate_step

    return simulate_step(load_scenario(), mode="fast")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def repo() -> Path:
    return REPO
