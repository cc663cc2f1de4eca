"""The sweep spec: a base job and the axes to sweep, validated like a job file (frozen pydantic, exit 2 naming
the field).

A spec (YAML; examples under ``workloads/sweeps/``, named ``.yml`` so that tools that read every
``workloads/**/*.yaml`` as a job leave them alone)::

    name: deepseek-v3-capacity
    base: deepseek_v3.yaml          # a job file: path relative to the spec, or a name under workloads/
    set: {experts.skew: zipf}       # --set-style overrides of the base, before the axes
    tokens: 14.8e12                 # the token budget priced per point (default: the base's total_tokens)
    objective: usd                  # usd | days | gpu_hours | mwh: ranks points for the detailed tier
    deadline_days: 90               # optional constraints: only points that meet them are ranked
    budget_usd: 6.0e6
    axes:                           # each a list, or a range {from, to, step} / {from, to, times}
      hardware: [h800, h100]        # cluster profiles, or a GPU name (the cluster profile named after it)
      gpus: [1024, 2048]
      tp: [1, 2, 4, 8]
      pp: {from: 4, to: 32, times: 2}
      schedule: [1f1b, dualpipe]
      precision: [fp8, bf16]        # recipes (fp8: DeepSeek-V3's, tech report 3.3; bf16), or mappings
      balancing: [bias, eplb]       # experts.policy
      usd_per_gpu_hour: [2.0, 2.5]
      set: {parallel.comm_sms: [0, 20]}   # any other job key
    evaluation: {tier: auto, top_k: 10}

Axes the library does not have yet (``cp``, ``fsdp_shard_group``, ``tp_comm_overlap``, ``ep_overlap``; recompute
policies it does not know) are skipped with a note rather than refused, so specs can be written ahead of them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, model_validator

from sim.config.base import Frozen
from sim.errors import SimInputError, format_validation_error
from sim.loading import read_yaml, workloads_dir

#: Ranking objectives: a column of the results, smaller is better.
OBJECTIVES = ("usd", "days", "gpu_hours", "mwh")
Objective = Literal["usd", "days", "gpu_hours", "mwh"]
Tier = Literal["auto", "analytic", "fast", "detailed"]

#: Named precision recipes. ``fp8``: DeepSeek-V3's (tech report 3.3: FP8 Fprop/Dgrad/Wgrad and dispatch,
#: BF16 attention and combine); ``bf16``: every pass and transfer in BF16. Other fields keep the base's.
PRECISION_RECIPES: dict[str, dict[str, str]] = {
    "fp8": {"fprop": "fp8", "dgrad": "fp8", "wgrad": "fp8", "attention": "bf16", "dispatch": "fp8",
            "combine": "bf16"},
    "bf16": {"fprop": "bf16", "dgrad": "bf16", "wgrad": "bf16", "attention": "bf16", "dispatch": "bf16",
             "combine": "bf16"},
}


class RangeSpec(Frozen):
    """``{from, to, step}`` (arithmetic, default step 1) or ``{from, to, times}`` (geometric); both ends kept
    when reached."""

    start: float = Field(alias="from")
    to: float
    step: float | None = Field(default=None, gt=0)
    times: float | None = Field(default=None, gt=1)

    @model_validator(mode="after")
    def _check(self) -> RangeSpec:
        if self.step is not None and self.times is not None:
            raise ValueError("give step or times, not both")
        if self.to < self.start:
            raise ValueError(f"to ({self.to:g}) must be >= from ({self.start:g})")
        if self.times is not None and self.start <= 0:
            raise ValueError("from: a geometric range (times) needs from > 0")
        if len(self.values()) > 100_000:
            raise ValueError("more than 100,000 values")
        return self

    def values(self) -> tuple[float, ...]:
        out: list[float] = []
        x, i = self.start, 0
        while x <= self.to * (1 + 1e-12) and len(out) <= 100_000:
            out.append(x)
            i += 1
            x = self.start * self.times**i if self.times is not None else self.start + i * (self.step or 1.0)
        return tuple(out)


def _expand_range(v: Any) -> Any:
    """A mapping is a range: expanded here, so an axis is always a tuple of values downstream."""
    if not isinstance(v, dict):
        return v
    try:
        r = RangeSpec.model_validate(v)
    except ValidationError as e:
        raise ValueError("a range: " + format_validation_error(e, RangeSpec).replace("\n", "; ")) from None
    return tuple(int(x) if float(x).is_integer() else x for x in r.values())


Range = BeforeValidator(_expand_range)
IntAxis = Annotated[tuple[int, ...] | None, Range]
#: Counts (GPUs, parallel degrees, micro-batches): whole numbers from 1.
CountAxis = Annotated[tuple[Annotated[int, Field(ge=1)], ...] | None, Range]
FloatAxis = Annotated[tuple[float, ...] | None, Range]
StrAxis = tuple[str, ...] | None
BoolAxis = tuple[bool, ...] | None


class AxesSpec(Frozen):
    """Values to sweep; an axis left out keeps the base job's value."""

    hardware: StrAxis = Field(default=None, description="cluster profile names or files, or GPU names")
    gpus: CountAxis = None
    tp: CountAxis = None
    pp: CountAxis = None
    dp: CountAxis = Field(default=None, description="normally derived: gpus / (tp x pp x cp)")
    ep: CountAxis = None
    cp: CountAxis = Field(default=None, description="context parallelism (parallel.cp)")
    schedule: StrAxis = None
    vpp: CountAxis = None
    micro_batch_size: CountAxis = None
    num_microbatches: CountAxis = Field(default=None, description="normally derived from the global batch")
    zero_stage: IntAxis = None
    fsdp_shard_group: CountAxis = None
    recompute: StrAxis = None
    sequence_parallel: BoolAxis = None
    tp_comm_overlap: BoolAxis = None
    ep_overlap: BoolAxis = None
    precision: tuple[str | dict[str, Any], ...] | None = None
    balancing: StrAxis = Field(default=None, description="experts.policy: none, bias, aux, eplb")
    usd_per_gpu_hour: FloatAxis = None
    set: dict[str, tuple[Any, ...]] = Field(default_factory=dict, description="other job keys (dotted)")

    @model_validator(mode="after")
    def _check(self) -> AxesSpec:
        for name in type(self).model_fields:
            v = getattr(self, name)
            if isinstance(v, tuple) and not v:
                raise ValueError(f"{name}: an axis needs at least one value")
        for key, v in self.set.items():
            if not v:
                raise ValueError(f"set.{key}: an axis needs at least one value")
            if "." not in key or key.split(".", 1)[0] not in ("parallel", "precision", "experts", "training",
                                                               "software", "cluster"):
                raise ValueError(f"set.{key}: a dotted job key under parallel, precision, experts, training, "
                                 "software or cluster")
        return self


class EvaluationSpec(Frozen):
    tier: Tier = Field(default="auto", description="ranking tier; auto: analytic when the library has it, "
                       "else fast")
    top_k: int = Field(default=10, ge=0, description="front-runners re-simulated in detailed mode")
    detail_tier: Literal["detailed", "fast"] = "detailed"
    batch_size: int | None = Field(default=None, ge=1, description="points per task (default: automatic)")
    dominance: bool = Field(default=True, description="prune points provably dominated in (days, usd)")


class SweepSpec(Frozen):
    name: str = ""
    base: str = Field(description="the job file every point starts from")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides of the base (--set keys)")
    tokens: float | None = Field(default=None, gt=0, description="token budget; default: base total_tokens")
    objective: Objective = "usd"
    deadline_days: float | None = Field(default=None, gt=0)
    budget_usd: float | None = Field(default=None, gt=0)
    axes: AxesSpec = AxesSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    max_points: int = Field(default=5_000_000, ge=1, description="refuse larger spaces")
    notes: str = ""

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        n = num_points(self.axes)
        if n > self.max_points:
            raise ValueError(f"axes: {n:,} points exceed max_points {self.max_points:,}")
        return self


def num_points(axes: AxesSpec) -> int:
    n = 1
    for name in type(axes).model_fields:
        v = getattr(axes, name)
        if name == "set":
            n *= math.prod(len(x) for x in v.values())
        elif v is not None:
            n *= len(v)
    return n


def parse_spec(data: dict[str, Any], where: str = "spec") -> SweepSpec:
    """A validated spec; problems raise SimInputError naming the field (``axes.tp.1: ...``)."""
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as e:
        raise SimInputError(format_validation_error(e, SweepSpec)) from None
    for key in spec.axes.set:
        if key.startswith("cluster.") and spec.axes.hardware is not None:
            raise SimInputError("cluster keys cannot be swept together with axes.hardware",
                                field=f"axes.set.{key}")
    return spec


def find_spec(ref: str | Path) -> Path:
    """A spec file, or the name of one under ``workloads/sweeps/`` (``deepseek_v3_capacity``)."""
    p = Path(ref)
    if p.is_file():
        return p
    for c in (workloads_dir() / "sweeps" / f"{ref}", *(workloads_dir() / "sweeps" / f"{ref}{x}"
                                                      for x in (".yml", ".yaml"))):
        if c.is_file():
            return c
    known = sorted(x.stem for x in (workloads_dir() / "sweeps").glob("*.y*ml"))
    raise SimInputError(f"no such file or example spec {str(ref)!r}; examples: {', '.join(known)}", field="SPEC")


def load_spec(path: str | Path) -> tuple[SweepSpec, Path]:
    """The spec in a YAML file (or an example's name) and the folder its relative paths start from."""
    p = find_spec(path)
    spec = parse_spec(read_yaml(p), str(p))
    if not spec.name:
        spec = spec.model_copy(update={"name": p.stem})
    return spec, p.resolve().parent


def dump_spec(spec: SweepSpec) -> dict[str, Any]:
    """The spec as YAML-ready data (``sim plan --spec-out``)."""
    data = spec.model_dump(by_alias=True, exclude_defaults=True, mode="json")
    return data
