"""Piecewise-linear interpolation in log-log space, and the log distance between shape families.

Rates of GPU kernels grow with size roughly as a power law until they saturate (wave and tile quantization,
launch latency, then the roofline), so a table interpolates ``log(rate)`` linearly in ``log(size)``
(the efficiency-vs-size tables of Calculon, calculon-ai/calculon ``systems/*.json``, and XLA's measured table
``xla/service/gpu/model/matmul_interpolator_data.h``). Between two adjacent measured points the result lies
between their two rates (monotone), and at a measured point it is that point's rate exactly. Outside the
measured range nothing is extrapolated: the caller falls back to its defaults.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Iterable, Sequence

#: Two sizes closer than this (relative) are the same measured point.
SAME_POINT_RTOL = 1e-9


def merge_points(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sort ``(x, y)`` points by x; points at the same x (within ``SAME_POINT_RTOL``) become one, at the
    median of their y."""
    ordered = sorted((float(x), float(y)) for x, y in points)
    merged: list[tuple[float, list[float]]] = []
    for x, y in ordered:
        if merged and math.isclose(x, merged[-1][0], rel_tol=SAME_POINT_RTOL):
            merged[-1][1].append(y)
        else:
            merged.append((x, [y]))
    return [(x, statistics.median(ys)) for x, ys in merged]


def interp_loglog(points: Sequence[tuple[float, float]], x: float) -> tuple[float, bool] | None:
    """``y(x)`` from points sorted by x (positive, distinct; see :func:`merge_points`).

    Returns ``(y, at_measured_point)``, or None when x lies outside ``[x_first, x_last]``.
    """
    if not points or x <= 0 or not math.isfinite(x):
        return None
    xs = [p[0] for p in points]
    lo, hi = xs[0], xs[-1]
    if x < lo * (1 - SAME_POINT_RTOL) or x > hi * (1 + SAME_POINT_RTOL):
        return None
    i = bisect.bisect_left(xs, x)
    for j in (i - 1, i):
        if 0 <= j < len(xs) and math.isclose(xs[j], x, rel_tol=SAME_POINT_RTOL):
            return points[j][1], True
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0))), False


def log_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Euclidean distance between two size vectors in log space; ``inf`` when one has a zero where the other
    has not (equal zeros contribute nothing)."""
    total = 0.0
    for u, v in zip(a, b, strict=True):
        if u == v:
            continue
        if u <= 0 or v <= 0:
            return math.inf
        total += (math.log(u) - math.log(v)) ** 2
    return math.sqrt(total)
