"""The Pareto front of (days, dollars): no dominated point on it, none missing (brute force)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from sim.sweep import run_sweep
from sim.sweep.executors import LocalExecutor
from sim.sweep.pareto import pareto_mask


def brute_force(days, usd):
    n = len(days)
    out = []
    for i in range(n):
        if not (np.isfinite(days[i]) and np.isfinite(usd[i])):
            out.append(False)
            continue
        dominated = any(days[j] <= days[i] and usd[j] <= usd[i] and (days[j] < days[i] or usd[j] < usd[i])
                        for j in range(n) if np.isfinite(days[j]) and np.isfinite(usd[j]))
        out.append(not dominated)
    return np.array(out, dtype=bool)


values = st.one_of(st.integers(0, 6).map(float), st.just(float("nan")))


@given(st.lists(st.tuples(values, values), max_size=40))
def test_front_matches_brute_force(points):
    days = np.array([p[0] for p in points], dtype=float)
    usd = np.array([p[1] for p in points], dtype=float)
    assert (pareto_mask(days, usd) == brute_force(days, usd)).all()


def test_front_of_a_small_sweep(small_spec):
    r = run_sweep(small_spec, executor=LocalExecutor(1), top_k=0)
    f = r.frame
    ok = f["status"] == "ok"
    days = f["days"].where(ok).to_numpy(dtype=float)
    usd = f["usd"].where(ok).to_numpy(dtype=float)
    assert (f["pareto"].to_numpy() == brute_force(days, usd)).all()
    assert f["pareto"].sum() >= 1
    assert not f.loc[~ok, "pareto"].any()
