"""Shared pieces of the subcommands: JSON output, atomic file writes, human formatting, and the options every
command that does work shares (``--max-memory``, ``--quiet``)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import click

from sim.budget import Budget, Estimate, check
from sim.outputs import write_atomic
from sim.progress import Progress

__all__ = ["budget_check", "echo_json", "human_bytes", "human_count", "new_progress", "work_options",
           "write_atomic"]


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # numpy scalars
        return x.item()
    return x


def echo_json(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(_jsonable(obj), indent=2, sort_keys=False))


def human_count(x: float) -> str:
    for unit, f in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= f:
            return f"{x / f:.3f}{unit}"
    return f"{x:.0f}"


def human_bytes(x: float) -> str:
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(x) >= f:
            return f"{x / f:.2f} {unit}"
    return f"{x:.0f} B"


def work_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--max-memory`` and ``--max-time`` (the work budget) and ``--quiet`` (no progress)."""
    f = click.option("--quiet", "-q", is_flag=True, help="no progress on stderr")(f)
    f = click.option("--max-time", "max_time", metavar="SECONDS", default=None,
                     help="refuse work estimated (roughly) to run longer: 90, 15m, 2h; 0 for no limit "
                     "[default: $SIM_MAX_TIME, else 1 hour]")(f)
    return click.option("--max-memory", "max_memory", metavar="SIZE", default=None,
                        help="refuse work estimated to need more memory: 4G, 4GiB, 512M or 30% of the RAM "
                        "[default: $SIM_MAX_MEMORY, else 25% of the RAM, at most half of what is free]")(f)


def budget_check(est: Estimate, max_memory: str | None, max_time: str | None, hint: str = "") -> Budget:
    """The budget of ``--max-memory`` and ``--max-time``; refuses ``est`` (exit 2) when it does not fit."""
    budget = Budget.from_option(max_memory, max_time)
    check(est, budget, hint)
    return budget


def new_progress(label: str, total: float, quiet: bool, unit: str = "") -> Progress:
    return Progress(label, total, unit=unit, quiet=quiet)
