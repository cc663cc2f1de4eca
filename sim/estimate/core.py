"""Simulate the points of every phase of a run: its batch sizes (the ramp's and the full one) and layouts.

A simulated phase is priced from a few step simulations (``sim.step.simulate_step``, ``mode`` fast by
default; the mode is a parameter so a faster analytic mode can replace it): one at the phase's batch size,
plus ``batch_ramp.points - 1`` across a ramp (``sim.estimate.ramp``), plus, for each point whose layout had to
be searched (``sim.estimate.layout``), one per TP/recompute group of the winning search tier and more up to
``max_search_simulations``. Identical scenarios are simulated once. DeepSeek-V3's default run costs 9: the
full batch, the ramp's middle, the ramp's start (2 searched), 32K (2 searched) and 128K (3 searched).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from pydantic import ValidationError

from sim.config import ParallelSpec, PhaseSpec, RunSpec, Scenario
from sim.errors import SimInputError, format_validation_error
from sim.estimate.layout import Choice, check, describe, layout_of, search
from sim.estimate.phases import phase_data, phase_field, run_spec, validate_phase
from sim.estimate.ramp import integrate, ramp_batches
from sim.step import Mode, simulate_step
from sim.units import GB

#: ``progress(label, done, planned)``: called after each step simulation.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Point:
    """One simulated batch size of a phase."""

    global_batch_size: int
    step_time_s: float
    busy_s: float  # compute-stream busy seconds per GPU and step, mean over pipeline ranks
    fixed_s: float  # bubble + optimizer + host: the part of a step that does not grow with micro-batches
    num_microbatches: int
    layout: dict[str, Any]
    reason: str | None
    peak_memory_bytes: float

    def scaled(self, f: float) -> Point:
        """The step with ``f`` times the micro-batches per pipeline (data parallelism shrunk by ``f``)."""
        return Point(self.global_batch_size, self.fixed_s + (self.step_time_s - self.fixed_s) * f,
                     self.busy_s * f, self.fixed_s, self.num_microbatches, self.layout, self.reason,
                     self.peak_memory_bytes)


@dataclass
class PhaseWork:
    """What the simulations say about a phase, before overheads and prices."""

    index: int
    spec: PhaseSpec
    seq_len: int | None = None
    global_batch_size: int | None = None
    points: list[Point] = field(default_factory=list)  # ascending batch size; the last is the main one

    @property
    def simulated(self) -> bool:
        return self.spec.gpu_hours is None

    @property
    def main(self) -> Point:
        return self.points[-1]

    @property
    def ramp_tokens(self) -> float:
        r = self.spec.batch_ramp
        return 0.0 if r is None else r.ramp_tokens

    def steps_and_seconds(self, points: list[Point] | None = None) -> tuple[float, float, float, float, float]:
        """(steps, training seconds, busy seconds per GPU, ramp steps, ramp seconds) over the phase."""
        pts = self.points if points is None else points
        spec, s, main = self.spec, self.seq_len or 1, pts[-1]
        b = main.global_batch_size
        if spec.steps is not None:
            return spec.steps, spec.steps * main.step_time_s, spec.steps * main.busy_s, 0.0, 0.0
        assert spec.tokens is not None
        ramp_steps = ramp_time = ramp_busy = 0.0
        if spec.batch_ramp is not None:
            r = spec.batch_ramp
            bs = [float(p.global_batch_size) for p in pts]
            ramp_steps = integrate(bs, [1.0] * len(pts), r.ramp_tokens, s, r.shape)
            ramp_time = integrate(bs, [p.step_time_s for p in pts], r.ramp_tokens, s, r.shape)
            ramp_busy = integrate(bs, [p.busy_s for p in pts], r.ramp_tokens, s, r.shape)
        rest = (spec.tokens - self.ramp_tokens) / (s * b)
        return (ramp_steps + rest, ramp_time + rest * main.step_time_s, ramp_busy + rest * main.busy_s,
                ramp_steps, ramp_time)

    @property
    def tokens(self) -> float | None:
        if self.spec.tokens is not None:
            return self.spec.tokens
        if self.spec.steps is not None and self.seq_len and self.global_batch_size:
            return float(self.spec.steps * self.seq_len * self.global_batch_size)
        return None


class Simulator:
    """Step simulations with a cache, a count and progress reporting."""

    def __init__(self, mode: str, progress: Progress | None) -> None:
        self.mode = mode
        self.progress = progress
        self.cache: dict[str, Any] = {}
        self.count = 0
        self.planned = 0
        self.label = ""
        self.warnings: set[str] = set()

    def __call__(self, s: Scenario) -> Any:
        key = s.model_dump_json()
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        # A job's own calibration table is set aside (with a warning) when --hardware moves it to another GPU.
        r = simulate_step(s, mode=cast(Mode, self.mode), strict_calibration=False)  # simulate_step checks it
        self.cache[key] = r
        self.count += 1
        self.planned = max(self.planned, self.count)
        self.warnings.update(r.warnings)
        if self.progress is not None:
            self.progress(self.label, self.count, self.planned)
        return r


def _point(choice: Choice) -> Point:
    s, r = choice.scenario, choice.result
    busy = sum(r.busy_per_rank_s) / len(r.busy_per_rank_s)
    fixed = sum(r.breakdown_s.get(k, 0.0) for k in ("bubble", "optimizer", "host"))
    return Point(s.training.global_batch_size, r.step_time_s, busy, fixed, s.num_microbatches, layout_of(s),
                 choice.reason, r.peak_memory_per_gpu_bytes)


def evaluate(scenario: Scenario, index: int, spec: PhaseSpec, seq_len: int, batch: int, sim: Simulator,
             max_search: int) -> Point:
    """The step at ``batch`` sequences of ``seq_len``: the job's layout (with the phase's overrides) when it is
    legal and fits, else the layout search's choice."""
    data = phase_data(scenario, spec, seq_len, batch)
    s, problem = validate_phase(data)
    if s is not None:
        problem = check(s)
        if problem is None:
            r = sim(s)
            if not r.oom:
                return _point(Choice(s, r))
            problem = (f"simulated peak memory {r.peak_memory_per_gpu_bytes / GB:.0f} GB per GPU exceeds "
                       f"{r.memory_capacity_bytes / GB:.0f} GB ({describe(s)})")
        problem = f"the job's layout does not fit at {batch} x {seq_len}: {problem}"
    else:
        problem = f"the job's layout is illegal at {batch} x {seq_len}: {problem}"
    where = phase_field(index, spec)
    if not spec.layout_search:
        raise SimInputError(f"{problem} (layout_search is off)", field=where)
    try:
        parallel = ParallelSpec.model_validate(data["parallel"])
    except ValidationError as e:
        raise SimInputError(format_validation_error(e, ParallelSpec, "parallel"), field=where) from None
    sim.planned += max_search
    choice = search(data, parallel, scenario.cluster.node.gpus_per_node, problem, sim, max_search)
    if choice is None:
        raise SimInputError(f"{problem}; the layout search found no legal layout that fits (schedule, "
                            "micro-batch size, PP, TP, full recompute)", field=where)
    return _point(choice)


def simulate_phases(scenario: Scenario, mode: str = "fast", progress: Progress | None = None,
                    max_search_simulations: int = 2) -> tuple[RunSpec, list[PhaseWork], Simulator]:
    """Every simulated point of every phase of the job's run."""
    spec = run_spec(scenario)
    sim = Simulator(mode, progress)
    sim.planned = sum(0 if p.gpu_hours is not None else (p.batch_ramp.points if p.batch_ramp else 1)
                      for p in spec.phases)
    works = []
    t = scenario.training
    for i, p in enumerate(spec.phases):
        work = PhaseWork(i, p)
        works.append(work)
        if not work.simulated:
            continue
        work.seq_len = seq = p.seq_len or t.seq_len
        work.global_batch_size = batch = p.global_batch_size or t.global_batch_size
        sim.label = p.name
        main = evaluate(scenario, i, p, seq, batch, sim, max_search_simulations)
        points = [main]
        if p.batch_ramp is not None:
            r = p.batch_ramp
            if r.start_global_batch_size > batch:
                raise SimInputError(f"{r.start_global_batch_size} exceeds the phase's global batch {batch}",
                                    field=phase_field(i, p, "batch_ramp.start_global_batch_size"))
            lay = main.layout
            quantum = lay["dp"] * lay["micro_batch_size"] * (2 if lay["schedule"] == "dualpipe" else 1)
            batches = ramp_batches(r.start_global_batch_size, batch, r.points, quantum)
            points = [evaluate(scenario, i, p, seq, b, sim, max_search_simulations) for b in batches[:-1]]
            points.append(main)
        work.points = points
    return spec, works, sim
