"""Capacity planning: sweep a space of configurations, prune what cannot run, rank the rest with a cheap tier,
re-simulate the front-runners in detail, and price each point's token budget (``sim sweep``, ``sim plan``).

``run_sweep(load_spec(path))`` returns a :class:`SweepResult` whose ``frame`` is a pandas DataFrame of every
point (``sim.sweep.frame``) and ``front`` its (days, dollars) Pareto front. Modules: ``spec`` (the YAML
spec), ``space`` (axes and points), ``rules`` and ``memory`` and ``prune`` (pruning), ``evaluate`` (a point's
simulation and its price), ``executors`` (local processes, Dask), ``store`` (streaming Parquet, resume),
``frame`` and ``pareto`` (results), ``core`` (the whole), ``plan`` (``sim plan``).
"""

from sim.sweep.core import SweepResult, run_sweep
from sim.sweep.spec import SweepSpec, load_spec, parse_spec

__all__ = ["SweepResult", "SweepSpec", "load_spec", "parse_spec", "run_sweep"]
