"""A batch-size ramp: which batch sizes to simulate, and the exact integral of the interpolated step.

DeepSeek-V3 grows its batch from 3,072 to 15,360 sequences over the first 469B tokens and does not say how
(DeepSeek-V3 tech report, arXiv 2412.19437, 4.2). Two shapes are offered: the batch ``B`` linear in tokens consumed
(``linear_tokens``) or in steps taken (``linear_steps``).

A few batch sizes are simulated, equally spaced from the start to the end of the ramp (both ends exact, the
inner points rounded to the layout's batch granularity); any per-step quantity ``y`` (step time, busy time)
is interpolated linearly in ``B`` between them and that interpolant is integrated exactly over the ramp:

- ``linear_tokens``: ``B(x) = B0 + (B1 - B0) x / X`` over ``X`` tokens of ``S`` tokens per sequence, a step
  consumes ``S B`` tokens, so ``dn = dx / (S B)`` and ``dx = X / (B1 - B0) dB``. On a segment where
  ``y = a + b B``: ``integral y dn = X / (S (B1 - B0)) [a ln(Bb / Ba) + b (Bb - Ba)]``; with ``y = 1`` the ramp
  takes ``X ln(B1 / B0) / (S (B1 - B0))`` steps.
- ``linear_steps``: ``B(n) = B0 + (B1 - B0) n / N`` with ``N = 2 X / (S (B0 + B1))`` steps; the integral is the
  trapezoid rule on each segment, ``N / (B1 - B0) (ya + yb) / 2 (Bb - Ba)``, exact for a linear interpolant.

With ``B0 = B1`` both reduce to ``X / (S B0)`` steps of ``y(B0)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def ramp_batches(start: int, end: int, points: int, quantum: int) -> list[int]:
    """``points`` batch sizes from ``start`` to ``end``: ends exact, inner points rounded to ``quantum``."""
    if start == end:
        return [start]
    out = [start]
    for i in range(1, points - 1):
        b = start + (end - start) * i / (points - 1)
        q = max(1, quantum)
        b = min(end - 1, max(start + 1, round(b / q) * q))
        out.append(int(b))
    out.append(end)
    return sorted(set(out))


def ramp_steps(start: float, end: float, ramp_tokens: float, seq_len: int, shape: str) -> float:
    """Steps the ramp takes (fractional)."""
    return integrate([start, end], [1.0, 1.0], ramp_tokens, seq_len, shape)


def integrate(batches: Sequence[float], values: Sequence[float], ramp_tokens: float, seq_len: int,
              shape: str) -> float:
    """Exact integral over the ramp's steps of ``values`` interpolated linearly in batch size (module doc)."""
    if len(batches) != len(values) or not batches:
        raise ValueError("one value per batch size")
    b0, b1 = batches[0], batches[-1]
    if b1 == b0:
        return ramp_tokens / (seq_len * b0) * values[0]
    total = 0.0
    if shape == "linear_tokens":
        k = ramp_tokens / (seq_len * (b1 - b0))
        for (ba, ya), (bb, yb) in zip(zip(batches, values, strict=True), zip(batches[1:], values[1:], strict=True),
                                      strict=False):
            slope = (yb - ya) / (bb - ba)
            intercept = ya - slope * ba
            total += k * (intercept * math.log(bb / ba) + slope * (bb - ba))
        return total
    if shape == "linear_steps":
        n = 2.0 * ramp_tokens / (seq_len * (b0 + b1))
        for (ba, ya), (bb, yb) in zip(zip(batches, values, strict=True), zip(batches[1:], values[1:], strict=True),
                                      strict=False):
            total += n / (b1 - b0) * 0.5 * (ya + yb) * (bb - ba)
        return total
    raise ValueError(f"unknown ramp shape {shape!r}; allowed: linear_tokens, linear_steps")
