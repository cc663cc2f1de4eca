"""Published bubble formulas: test oracles and a reference line in ``sim schedule``, never the model.

``PP`` counts pipeline *stages*, as in the DeepSeek-V3 report (arXiv 2412.19437, Table 2) and the
deepseek-ai/DualPipe README: ``pp`` ranks for DualPipe, ``2 pp`` for DualPipeV. F, B (full backward), W and
F&B are chunk durations; for interleaved 1F1B they are per model chunk (1/vpp of a rank's layers), so
Megatron's ``(p-1)(t_f+t_b)/v`` (Narayanan et al. 2021) reads ``(pp-1)(F+B)``.

Where the zero-latency list scheduler (:mod:`sim.schedules.listsched`) reproduces them, measured here
(see ``tests/schedules/test_oracles.py``); idle per rank:

- GPipe, 1F1B, interleaved 1F1B: ``(PP-1)(F+B)`` exactly, on every rank, for any number of micro-batches.
- ZB1P (ZB-H1): ``(PP-1)(F+B-2W)`` exactly when ``W <= F``, ``W <= B-W`` and there are at least PP
  micro-batches; otherwise the W passes no longer fill the cool-down gaps and the bubble is larger.
- DualPipe, DualPipeV: ``(PP/2-1)(F&B+B-3W)`` exactly when ``F&B = F+B``, ``W = B-F`` and ``W <= F``.
  Over F=1, B in [1.5, 2.5], W in [0, min(F, B/2)], F&B in [max(F, B), F+B], PP in {4..64}:
  ``-F <= simulated - formula <= (PP/2-1) max(0, W-(B-F))`` (at most 0.25 F per PP/2-1 there);
  the bubble does not depend on the number of micro-batches.
"""

from __future__ import annotations

from sim.pipeline import num_stages
from sim.schedules.listsched import Durations

FORMULAS: dict[str, str] = {
    "gpipe": "(PP-1)(F+B)",
    "1f1b": "(PP-1)(F+B)",
    "interleaved-1f1b": "(PP-1)(F+B) per chunk",
    "zb1p": "(PP-1)(F+B-2W)",
    "dualpipe": "(PP/2-1)(F&B+B-3W)",
    "dualpipev": "(PP/2-1)(F&B+B-3W)",
}


def published_bubble(schedule: str, pp: int, d: Durations, vpp: int = 1) -> float:
    """The published idle time per rank for ``pp`` ranks (converted to stages as the sources count them)."""
    stages = num_stages(schedule, pp, vpp)
    if schedule in ("dualpipe", "dualpipev"):
        return (stages // 2 - 1) * (d.fb + d.b - 3 * d.w)
    if schedule == "zb1p":
        return (stages - 1) * (d.f + d.b - 2 * d.w)
    return (pp - 1) * (d.f + d.b)
