"""The work budget: what a command will allocate and how long it will run, estimated before any work.

Every command that can grow without bound (``sim run``, ``model``, ``schedule``, ``experts``, ``estimate``,
``validate``) first turns its validated inputs into an :class:`Estimate`: named parts, each with its bytes, the
input field that drives it and a rough time. :func:`check` refuses (exit 2, naming that field and the figures)
an estimate above the memory budget (``--max-memory``; default :func:`default_max_memory`), or whose rough
time exceeds the time budget (``--max-time``, default one hour, ``0`` for none).

The formulas count what the code allocates, per unit that scales (constants measured on CPython 3.11 with the
default workloads and rounded up; the estimate is meant to be at or above the real peak, within about 2x):

- schedule chunks ``P = passes x stages x micro-batches`` (passes: 3 for zb1p's F, I, W; else 2), one
  :class:`~sim.schedules.actions.Action` each, ``SCHEDULE_PART_BYTES``;
- step simulation: ``P x ACTION_BYTES`` (plans, engine state, action events); in detailed mode with a trace,
  tasks ``P x ceil(layers / stages) x TASKS_PER_LAYER`` at ``TASK_BYTES`` each;
- MoE loads: ``moe_layers x micro-batches x (16 x expert slots + 128 x ep)`` bytes (rows per expert and slot,
  rows and link bytes per EP rank, int64/float64 with their temporaries), plus the balancing run before the step,
  ``(balancing_steps + 1) x (moe_layers + experts) x 8``;
- the list scheduler of ``sim schedule``: ``LISTSCHED_BYTES`` per action, ``PLOT_BYTES`` per drawn action;
- ``sim experts``: ``(steps + 1) x (moe_layers + experts) x 8`` for the history, the JSON series and, with
  ``--plot``, the heatmap's image (``(steps + 1) x experts x 48``).

An expert-load result is cached (8 entries, :mod:`sim.experts.loads`), so commands that simulate several
scenarios hold up to eight of them at once. Times are rough (one core of a 2020s server) and only inform.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from sim.config import Scenario, evolve
from sim.errors import SimInputError

GiB = 2**30

#: Bytes per schedule chunk (an Action, its tuple slot and the generator's lists).
SCHEDULE_PART_BYTES = 200
#: Bytes per chunk of a step simulation: rank plans, compiled works, engine events, ActionEvent, schedule.
ACTION_BYTES = 1_400
#: Bytes per recorded task (TaskEvent), transfers and link intervals included.
TASK_BYTES = 260
#: Tasks per transformer layer and chunk in detailed mode (measured 5 on V3 and Llama 3 70B).
TASKS_PER_LAYER = 6
#: Bytes per action of ``sim.schedules.listsched.simulate`` (columns, start and end times, tuples).
LISTSCHED_BYTES = 420
#: Bytes per action drawn by a Gantt chart (matplotlib paths and rendering).
PLOT_BYTES = 600
#: Bytes per event of a Chrome/Perfetto trace while it is written (dicts and the JSON text).
TRACE_EVENT_BYTES = 700
#: Memory a simulation needs beyond the scaling parts (cost tables, program caches, numpy temporaries).
STEP_BASE_BYTES = 64 * 2**20

# Rough rates for the time estimates.
ACTIONS_PER_S = 20_000        # fast mode, whole actions
TASKS_PER_S = 60_000          # detailed mode
LOAD_CELLS_PER_S = 20e6       # (layer, micro-batch, expert) cells of the expert loads
BALANCING_S_PER_STEP = 3e-4   # plus BALANCING_S_PER_LAYER_STEP per MoE layer
BALANCING_S_PER_LAYER_STEP = 3e-5
LISTSCHED_ACTIONS_PER_S = 120_000
SKEWED_CHUNK_S = 5e-3         # skewed routing: each (stage, micro-batch) chunk costed on its own loads
LOADS_CACHE = 8
#: The field of a part no input sizes.
FIXED = "(fixed)"


@dataclass(frozen=True)
class Part:
    """One thing that grows with the input: what it is, its bytes and seconds, and the field that sizes it."""

    what: str
    bytes: float
    field: str
    seconds: float = 0.0


@dataclass
class Estimate:
    """The work of one command: its parts, the actions and events it will simulate."""

    command: str
    parts: list[Part] = field(default_factory=list)
    actions: int = 0
    events: int = 0

    def add(self, what: str, nbytes: float, field_: str, seconds: float = 0.0) -> None:
        self.parts.append(Part(what, float(nbytes), field_, float(seconds)))

    def extend(self, other: Estimate) -> None:
        self.parts.extend(other.parts)
        self.actions += other.actions
        self.events += other.events

    @property
    def bytes(self) -> float:
        return sum(p.bytes for p in self.parts)

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.parts)

    @property
    def dominant(self) -> Part:
        """The largest part that an input sizes (a fixed part names no field to reduce)."""
        scaling = [p for p in self.parts if p.field != FIXED] or self.parts
        return max(scaling, key=lambda p: p.bytes)

    def describe(self, limit: int = 3) -> str:
        parts = sorted(self.parts, key=lambda p: -p.bytes)[:limit]
        return "; ".join(f"{p.what}: {human(p.bytes)}" for p in parts if p.bytes > 0)


def human(nbytes: float) -> str:
    for unit, f in (("TiB", 2**40), ("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(nbytes) >= f:
            return f"{nbytes / f:.1f} {unit}"
    return f"{nbytes:.0f} B"


def human_seconds(s: float) -> str:
    if s >= 7200:
        return f"{s / 3600:.1f} h"
    if s >= 120:
        return f"{s / 60:.0f} min"
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


# ------------------------------------------------------------------------------------------------ the budget


def total_ram_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 * GiB


def available_ram_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


#: The default budget: this fraction of the machine's RAM, and at most half of what is available now.
DEFAULT_RAM_FRACTION = 0.25
ENV_VAR = "SIM_MAX_MEMORY"


def default_max_memory() -> tuple[int, str]:
    """The default budget and how it was chosen: ``$SIM_MAX_MEMORY`` if set, else 25 % of the RAM, at most
    half of the memory available when the command starts."""
    env = os.environ.get(ENV_VAR)
    if env:
        return parse_size(env, ENV_VAR), f"${ENV_VAR}"
    total = total_ram_bytes()
    budget = int(total * DEFAULT_RAM_FRACTION)
    why = f"default: 25% of this machine's {human(total)} RAM"
    avail = available_ram_bytes()
    if avail is not None and avail // 2 < budget:
        budget, why = avail // 2, f"default: half of the {human(avail)} available now"
    return budget, why


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kmgt]i?b?|b|%)?\s*$", re.IGNORECASE)


def parse_size(text: str, field_: str = "--max-memory") -> int:
    """``8G``, ``8GB`` (10**9), ``8GiB`` (2**30), ``512M``, ``2e9`` (bytes) or ``30%`` of the RAM."""
    m = _SIZE.match(str(text))
    if not m:
        raise SimInputError(f"expected a size such as 4G, 4GiB, 512M, 2e9 or 30% (got {text!r})", field=field_)
    value, unit = float(m.group(1)), (m.group(2) or "").lower()
    if unit == "%":
        if not 0 < value <= 100:
            raise SimInputError(f"a percentage of the RAM must be in (0, 100] (got {text!r})", field=field_)
        return int(total_ram_bytes() * value / 100)
    base = 2**10 if "i" in unit else 1000
    power = "bkmgt".index(unit[0]) if unit else 0
    out = value * (base**power if unit[:1] != "b" else 1)
    if not math.isfinite(out) or out < 1:
        raise SimInputError(f"must be at least 1 byte (got {text!r})", field=field_)
    return int(out)


#: The default time budget (seconds of estimated work; the rates above are rough and on the slow side).
DEFAULT_MAX_SECONDS = 3600.0
TIME_ENV_VAR = "SIM_MAX_TIME"


def parse_seconds(text: str, field_: str = "--max-time") -> float | None:
    """``90``, ``90s``, ``15m``, ``2h``; ``0`` or ``none`` for no limit."""
    raw = str(text).strip().lower()
    if raw in ("0", "none", "inf", "unlimited"):
        return None
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(s|m|min|h)?", raw)
    if not m:
        raise SimInputError(f"expected seconds such as 90, 90s, 15m, 2h, or 0 for no limit (got {text!r})",
                            field=field_)
    value = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600}[m.group(2) or ""]
    if not math.isfinite(value):
        raise SimInputError(f"must be finite (got {text!r})", field=field_)
    return value


@dataclass(frozen=True)
class Budget:
    max_bytes: int
    source: str  # how it was chosen, for messages
    max_seconds: float | None = DEFAULT_MAX_SECONDS
    time_source: str = f"default {DEFAULT_MAX_SECONDS:.0f} s"

    @classmethod
    def from_option(cls, text: str | None, max_time: str | None = None) -> Budget:
        if text is None:
            limit, why = default_max_memory()
        else:
            limit, why = parse_size(text), "--max-memory"
        env = os.environ.get(TIME_ENV_VAR)
        if max_time is not None:
            seconds, twhy = parse_seconds(max_time), "--max-time"
        elif env:
            seconds, twhy = parse_seconds(env, TIME_ENV_VAR), f"${TIME_ENV_VAR}"
        else:
            seconds, twhy = DEFAULT_MAX_SECONDS, f"default: {human_seconds(DEFAULT_MAX_SECONDS)}"
        return cls(limit, why, seconds, twhy)

    def fits(self, est: Estimate) -> bool:
        return est.bytes <= self.max_bytes and (self.max_seconds is None or est.seconds <= self.max_seconds)


def check(est: Estimate, budget: Budget, hint: str = "") -> None:
    """Refuse ``est`` (SimInputError, exit 2) when it exceeds ``budget``; the message names the field that
    drives the largest part, the estimate and the budget."""
    tail = f" {hint}" if hint else ""
    if est.bytes > budget.max_bytes:
        top = est.dominant
        raise SimInputError(
            f"`sim {est.command}` would need an estimated {human(est.bytes)} of memory ({est.describe()}), over "
            f"the budget of {human(budget.max_bytes)} ({budget.source}).{tail} Reduce {top.field}, or raise the "
            f"budget with --max-memory (or ${ENV_VAR}) if this machine has the memory.", field=top.field)
    if budget.max_seconds is not None and est.seconds > budget.max_seconds:
        top = max(est.parts, key=lambda p: p.seconds)
        raise SimInputError(
            f"`sim {est.command}` would run for an estimated {human_seconds(est.seconds)} (rough; {top.what}: "
            f"{human_seconds(top.seconds)}), over the time budget of {human_seconds(budget.max_seconds)} "
            f"({budget.time_source}).{tail} Reduce {top.field}, or allow it with --max-time (0: no limit).",
            field=top.field)


# --------------------------------------------------------------------------------------------- the estimates


def schedule_parts(name: str, pp: int, num_microbatches: int, vpp: int = 1) -> int:
    """Chunks (stage, micro-batch, pass) of a schedule: its actions, pairs counted as two."""
    stages = pp * (vpp if name == "interleaved-1f1b" else 2 if name == "dualpipev" else 1)
    passes = 3 if name == "zb1p" else 2
    extra = 2 * pp * pp if name in ("dualpipe", "dualpipev") else 0  # DualPipe's split backward passes
    return passes * stages * num_microbatches + extra


def _mb_field(s: Scenario) -> str:
    return "parallel.num_microbatches" if s.parallel.num_microbatches is not None else "training.global_batch_size"


def moe_layers(s: Scenario) -> int:
    m = s.model
    return (m.n_layers - m.n_dense_layers + m.n_mtp_layers) if m.is_moe else 0


def loads_estimate(s: Scenario, n: int | None = None) -> Estimate:
    """The expert loads of one step (and the balancing run before it)."""
    est = Estimate("run")
    m = s.model
    if not m.is_moe:
        return est
    n = s.num_microbatches if n is None else n
    layers, ep = moe_layers(s), s.parallel.ep
    slots = m.n_routed_experts + s.redundant_experts
    cells = layers * n * (16 * slots + 128 * ep)
    mtp = " (MTP included)" if m.n_mtp_layers else ""
    est.add(f"expert loads ({layers} MoE layers{mtp} x {n:,} micro-batches x {slots} expert slots)", cells,
            _mb_field(s), layers * n * slots / LOAD_CELLS_PER_S)
    steps = s.experts.balancing_steps
    est.add(f"expert balancing ({steps:,} steps before the step)", (steps + 1) * (layers + m.n_routed_experts) * 8,
            "experts.balancing_steps", steps * (BALANCING_S_PER_STEP + BALANCING_S_PER_LAYER_STEP * layers))
    return est


def step_estimate(s: Scenario, mode: str, *, record_trace: bool = False, trace_events: bool = False,
                  gantt: bool = False, n: int | None = None) -> Estimate:
    """One ``simulate_step`` of ``s`` in ``mode`` (``n`` micro-batches instead of the scenario's)."""
    p, m = s.parallel, s.model
    n = s.num_microbatches if n is None else n
    parts = schedule_parts(p.schedule, p.pp, n, p.vpp)
    per_stage = math.ceil((m.n_layers + m.n_mtp_layers) / s.num_stages)
    tasks = parts * per_stage * TASKS_PER_LAYER if mode == "detailed" else 0
    est = Estimate("run", actions=parts, events=parts + tasks)
    f = _mb_field(s)
    seconds = parts / ACTIONS_PER_S if mode != "detailed" else tasks / TASKS_PER_S
    e = s.experts
    skewed = m.is_moe and (e.skew != "balanced" or e.drift_per_step > 0)
    if mode == "analytic":
        est.add("schedule", parts * SCHEDULE_PART_BYTES, f, parts / ACTIONS_PER_S / 10)
    else:
        est.add(f"{parts:,} schedule actions ({n:,} micro-batches x {s.num_stages} stages)",
                parts * (ACTION_BYTES + SCHEDULE_PART_BYTES), f, seconds)
    if tasks and record_trace:
        est.add(f"{tasks:,} recorded tasks (for --trace/--gantt)", tasks * TASK_BYTES, f)
    if trace_events:
        est.add("the trace file's events", (parts + (tasks if mode == "detailed" else 0)) * TRACE_EVENT_BYTES, f)
    if gantt:
        est.add("the Gantt chart", parts * PLOT_BYTES, f)
    est.add("cost tables and caches", STEP_BASE_BYTES, FIXED)
    if skewed:  # every micro-batch's chunks are costed on their own loads before the first action runs
        est.add("costing each micro-batch's chunks (skewed routing)", 0.0, f, parts * SKEWED_CHUNK_S)
    est.extend(loads_estimate(s, n))
    return est


def run_estimate(s: Scenario, mode: str, *, record_trace: bool, trace_out: bool, gantt_out: bool,
                 imbalance_cost: bool) -> Estimate:
    """``sim run``: the step, and the same step with balanced routing when routing is skewed."""
    est = step_estimate(s, mode, record_trace=record_trace, trace_events=trace_out, gantt=gantt_out)
    e = s.experts
    if imbalance_cost and s.model.is_moe and (e.skew != "balanced" or e.drift_per_step > 0):
        again = step_estimate(evolve(s, {"experts.skew": "balanced", "experts.drift_per_step": 0.0}), mode)
        for part in again.parts:  # the first run's result and its loads stay while the second runs
            est.add(f"balanced-routing comparison: {part.what}", part.bytes, part.field, part.seconds)
    return est


def model_estimate(s: Scenario) -> Estimate:
    """``sim model``: the schedule whose order gives the activation peak."""
    p = s.parallel
    parts = schedule_parts(p.schedule, p.pp, s.num_microbatches, p.vpp)
    est = Estimate("model", actions=parts)
    est.add(f"{parts:,} schedule actions", parts * SCHEDULE_PART_BYTES * 2, _mb_field(s), parts / 1e6)
    return est


def schedule_estimate(name: str, pp: int, n: int, vpp: int, *, plot: bool, text: bool) -> Estimate:
    """``sim schedule``: build, list-schedule and draw ``P`` actions."""
    parts = schedule_parts(name, pp, n, vpp)
    field_ = "--microbatches" if n >= pp else "--pp"
    est = Estimate("schedule", actions=parts, events=parts)
    est.add(f"{parts:,} actions in the list scheduler", parts * (LISTSCHED_BYTES + SCHEDULE_PART_BYTES), field_,
            parts / LISTSCHED_ACTIONS_PER_S)
    if plot:
        est.add("the Gantt chart", parts * PLOT_BYTES, field_, parts / 50_000)
    if text:
        est.add("the text listing", parts * 24, field_)
    return est


def experts_estimate(s: Scenario, steps: int, *, plot: bool, step_time: bool,
                     policies: Iterable[Scenario] = ()) -> Estimate:
    """``sim experts``: the balancing history over ``steps``, its report and plot, and one fast step per
    policy (their expert loads stay cached together)."""
    m = s.model
    layers = m.n_layers - m.n_dense_layers if m.is_moe else 0  # MTP layers are not balanced here
    est = Estimate("experts")
    per_step = (layers + m.n_routed_experts) * 8 + 2 * 60  # arrays, then two JSON series (floats and text)
    est.add(f"balancing history ({steps:,} steps x {layers} MoE layers x {m.n_routed_experts} experts)",
            (steps + 1) * per_step, "--steps",
            steps * (BALANCING_S_PER_STEP + BALANCING_S_PER_LAYER_STEP * layers))
    if plot:
        est.add("the load heatmap", (steps + 1) * m.n_routed_experts * 48, "--steps")
    if step_time:
        sims = [step_estimate(q, "fast") for q in policies]
        if sims:
            worst = max(sims, key=lambda e: e.bytes)
            loads = sum(sum(p.bytes for p in e.parts if p.what.startswith("expert")) for e in sims)
            est.add("step time under each policy (expert loads of every policy)", loads, worst.dominant.field,
                    sum(e.seconds for e in sims))
            est.add("step time under each policy (one simulation)", worst.bytes - max(
                sum(p.bytes for p in e.parts if p.what.startswith("expert")) for e in sims), worst.dominant.field)
    return est


def many_steps_estimate(command: str, sims: list[Estimate]) -> Estimate:
    """Several step simulations one after another (``sim estimate``, ``sim validate``): the largest one, the
    results of the others (kept for the report: their schedule actions) and the expert loads that the cache
    keeps of up to seven others; times add up."""
    est = Estimate(command)
    if not sims:
        return est
    worst = max(sims, key=lambda e: e.bytes)
    est.extend(worst)
    others = [e for e in sims if e is not worst]
    field_ = worst.dominant.field
    if others:
        kept = sum(p.bytes for e in others for p in e.parts if "schedule actions" in p.what)
        est.add(f"results of {len(others)} other simulations", kept, field_, sum(e.seconds for e in others))
        loads = sorted((sum(p.bytes for p in e.parts if p.what.startswith("expert loads")) for e in others),
                       reverse=True)[: LOADS_CACHE - 1]
        if any(loads):
            est.add(f"expert loads cached from {len(loads)} other simulations", sum(loads), field_)
    return est
