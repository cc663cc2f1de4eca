"""What the bridge hands the pages: plain dataclasses and frames, no ``sim`` objects (cheap to cache).

Also the user-error type every page shows as a message naming the field, the values the Scenario page's
widgets start from (read off a scenario's fields), DeepSeek-V3's published figures put beside the default, a
whole run's estimate (Cost page) and validation results (Validation page).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_WORKLOAD = "deepseek_v3"
#: DeepSeek-V3 tech report (arXiv 2412.19437) section 1 and Table 1, for the default scenario: 180K H800
#: GPU-hours per trillion tokens on 2,048 H800; per 62.9M-token step that is about 19.9 s and 1,543 tokens/s/GPU.
PUBLISHED_V3: dict[str, Any] = {"name": "deepseek-v3-pretrain", "gpu_hours_per_trillion_tokens": 180e3,
                                "num_gpus": 2048, "source": "DeepSeek-V3 tech report, Table 1"}


class UserError(Exception):
    """A mistake in the user's input: ``field`` names it, ``message`` says what is allowed."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}" if field else message)


_FIELD = re.compile(r"^([A-Za-z_][\w.\-]*|--[\w-]+): (.*)$")


def split_field(line: str) -> tuple[str | None, str]:
    m = _FIELD.match(line.strip())
    return (m.group(1), m.group(2)) if m else (None, line)


@dataclass(frozen=True)
class Edits:
    """A job and what the dashboard changed in it. ``sets`` are dotted YAML keys of the job file (as
    ``sim run --set``); ``cluster`` and ``gpu`` are profile names, ``num_gpus`` a count."""

    workload: str = DEFAULT_WORKLOAD
    upload: str | None = None
    cluster: str | None = None
    gpu: str | None = None
    num_gpus: int | None = None
    sets: tuple[tuple[str, Any], ...] = ()


def describe(s: Any) -> dict[str, Any]:
    """The values the Scenario page's widgets start from."""
    p, pr = s.parallel, s.precision
    return {"name": s.name, "cluster": s.cluster.name, "gpu": s.cluster.gpu.name, "num_gpus": s.num_gpus,
            "gpus_per_node": s.cluster.node.gpus_per_node, "tp": p.tp, "pp": p.pp, "ep": p.ep, "dp": s.dp,
            "schedule": p.schedule, "vpp": p.vpp, "micro_batch_size": p.micro_batch_size,
            "num_microbatches": s.num_microbatches, "global_batch_size": s.training.global_batch_size,
            "seq_len": s.training.seq_len, "precision": pr.fprop, "comm_sms": p.comm_sms,
            "num_sms": s.cluster.gpu.num_sms, "recompute": p.recompute, "policy": s.experts.policy,
            "skew": s.experts.skew, "is_moe": s.model.is_moe, "model": s.model.name,
            "nic_gb_per_s": s.cluster.node.nic_achievable_gb_per_s,
            "nvlink_gb_per_s": s.cluster.node.nvlink_achievable_gb_per_s,
            "usd_per_gpu_hour": s.cluster.usd_per_gpu_hour}


def is_published_default(s: Any) -> bool:
    return s.name == PUBLISHED_V3["name"] and s.num_gpus == PUBLISHED_V3["num_gpus"]


def published_v3(s: Any) -> dict[str, float]:
    """DeepSeek-V3's published GPU-hours per trillion tokens and what it implies for this step."""
    gh = PUBLISHED_V3["gpu_hours_per_trillion_tokens"]
    tps = 1e12 / (gh * 3600)
    return {"gpu_hours_per_trillion_tokens": gh, "tokens_per_s_per_gpu": tps,
            "step_time_s": s.training.tokens_per_step / (tps * s.num_gpus)}


# ------------------------------------------------------------------------------------------------ simulation


@dataclass
class StepView:
    """What the pages show of one simulated step."""

    tier: str
    step_time_s: float
    mfu: dict[str, float | None]
    tokens_per_s_per_gpu: float
    gpu_hours_per_trillion_tokens: float
    peak_memory_bytes: float
    memory_capacity_bytes: float
    oom: bool
    breakdown_s: dict[str, float]
    wall_time_s: float
    memory: list[dict[str, float]]  # per rank: weights, gradients, optimizer, activations, total (bytes)
    per_rank: list[dict[str, float]]  # per rank: seconds by breakdown category
    warnings: list[str]
    notes: list[str]
    actions: pd.DataFrame | None = None
    bubbles: pd.DataFrame | None = None
    exposed: pd.DataFrame | None = None
    tasks: pd.DataFrame | None = None
    links: pd.DataFrame | None = None
    link_busy: pd.DataFrame | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Balancing:
    policy: str
    imbalance: pd.DataFrame   # step, mean, worst
    heatmap: pd.DataFrame     # step, expert (rank by initial load), relative load
    heatmap_layer: int
    final_imbalance: float


# ------------------------------------------------------------------------------------------------ whole runs


@dataclass
class RunView:
    """What the Cost page shows of a whole run's estimate (``sim estimate``).

    Dollars are GPU-hours x price (the library prices every phase so, overheads included), so the page re-prices
    with :meth:`usd` and :meth:`priced` without simulating again; ``usd_per_gpu_hour`` is the cluster's price.
    """

    name: str
    num_gpus: int
    gpu: str
    tier: str
    usd_per_gpu_hour: float
    phases: pd.DataFrame  # one row per phase: steps, tokens, step time, GPU-hours, days, MWh, t CO2, layout, why
    total: dict[str, Any]  # steps, tokens, gpu_hours, days, kwh, co2_kg (None when the job has no grid intensity)
    by_stage: pd.DataFrame  # stage, source ("sim estimate" | "published"), gpu_hours, error: the chart's bars
    published: pd.DataFrame | None  # per published stage: phases, predicted and published GPU-hours, error
    published_total: dict[str, Any] | None  # gpu_hours, measured_gpu_hours, error
    published_usd: dict[str, Any] | None  # usd_per_gpu_hour, usd, measured_usd, error (at the published price)
    source: str | None
    sensitivities: dict[str, Any]
    simulations: int
    wall_time_s: float
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def usd(self, price: float) -> float:
        """The whole run's dollars at ``price`` per GPU-hour."""
        return float(self.total["gpu_hours"]) * price

    def priced(self, price: float) -> pd.DataFrame:
        """The phase table with its dollars at ``price`` per GPU-hour."""
        df = self.phases.copy()
        df.insert(df.columns.get_loc("days") + 1, "USD", df["GPU-hours"] * price)
        return df

    def what_ifs(self, price: float) -> dict[str, dict[str, Any]]:
        """The estimate's sensitivities (10 % more GPUs, one more day) with dollars at ``price``."""
        out = {}
        for k in ("gpus_plus_10pct", "deadline_plus_1_day"):
            s = self.sensitivities.get(k)
            if s:
                out[k] = {**s, "usd": s["gpu_hours"] * price, "delta_usd": s["delta_gpu_hours"] * price}
        return out


# ------------------------------------------------------------------------------------------------ validation


@dataclass
class ValidationView:
    """Validation results of the selected cases: one row per case, and the statistics per family and overall
    (mean and max absolute error over the cases the simulator can express, and the worst of them)."""

    cases: pd.DataFrame  # case, family, metric, unit, predicted, measured, error, status, layout, reason
    families: pd.DataFrame  # family (and "overall"): cases, expressible, ..., mean |error|, max |error|, worst
    overall: dict[str, Any]


# ------------------------------------------------------------------------------------------------ plans


@dataclass(frozen=True)
class PlanRequest:
    """What a plan simulates (``sim plan``): the token budget, GPU counts, hardware (cluster profile names, or
    :data:`JOB_CLUSTER` for the edited job's own cluster) and the layout axes (name, values). The deadline and
    the budget are not part of it: they only classify the results, so changing them needs no new simulation."""

    tokens: float
    gpus: tuple[int, ...]
    hardware: tuple[str, ...]
    axes: tuple[tuple[str, tuple[Any, ...]], ...]

    @property
    def points(self) -> int:
        """Configurations in the space: the product of every axis."""
        n = len(self.gpus) * len(self.hardware)
        for _, values in self.axes:
            n *= len(values)
        return n


#: The hardware choice that stands for the edited job's own cluster (whatever the Scenario page made of it).
JOB_CLUSTER = "job"


@dataclass
class PlanRun:
    """A plan's sweep, before the deadline and the budget classify it: every point with its figures (``frame``:
    ``sim.sweep.frame``'s columns, the job's cluster labelled ``<name> (job)``, plus ``gpu``, the GPU type, and
    ``layout``, the parallel layout),
    the spec it ran (for ``sim.sweep.plan.recommend``) and what the sweep reported."""

    request: PlanRequest
    frame: pd.DataFrame
    spec: Any
    tier: str
    counts: dict[str, Any]
    simulations: int
    wall_time_s: float
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class PlanView:
    """A plan read against a deadline and a budget (both optional).

    ``recommended`` is the cheapest point that meets both (None when none does; ``binding`` then says which
    constraint no point meets), ``runners_up`` the next cheapest that also meet both. ``points`` is every point
    with a ``verdict`` (recommended, costlier, slower, over budget, oom, illegal, dominated, failed) and
    ``why``; ``best`` the best point per hardware and GPU count (what the chart's lines join, sorted by
    dollars), ``lost`` one row per verdict other than recommended: its count and its closest example.
    """

    tokens: float
    deadline_days: float | None
    budget_usd: float | None
    recommended: dict[str, Any] | None
    runners_up: list[dict[str, Any]]
    binding: str | None
    points: pd.DataFrame
    best: pd.DataFrame
    lost: pd.DataFrame
    tier: str
    counts: dict[str, Any]
    simulations: int
    wall_time_s: float
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
