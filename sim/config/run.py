"""A whole training run as phases (the job file's ``run:`` section), read by ``sim estimate``.

A run is an ordered list of phases. Each phase is simulated at its own sequence length and batch size (with an
optional batch-size ramp), may carry its own layout (``overrides``, the keys of ``--set``), or is given as
GPU-hours when it is not simulated (post-training in DeepSeek-V3's Table 1). Overheads (checkpoints, failures)
default to zero; energy needs a grid carbon intensity to give CO2. ``measured`` holds published figures to
compare with (DeepSeek-V3 tech report, arXiv 2412.19437, Table 1).

``run:`` supersedes ``training.batch_ramp`` and ``training.phases``: a job without ``run:`` is estimated as one
pre-training phase of ``training.total_tokens`` (with ``training.batch_ramp``) followed by ``training.phases``;
a job that has ``run:`` must leave those two empty (one place for the schedule of a run).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from sim.config import limits as L
from sim.config.base import Frozen

#: Scenario sections a phase may override (the layout, the dtypes, the routing); not the model or cluster.
OVERRIDABLE = ("parallel", "precision", "experts")


class RampSpec(Frozen):
    """Global batch growing from ``start_global_batch_size`` to the phase's batch over its first ``ramp_tokens``.

    ``shape``: ``linear_tokens``, the batch grows linearly with tokens consumed; ``linear_steps``, with steps
    taken (DeepSeek-V3 publishes only the end points: tech report, arXiv 2412.19437, 4.2). ``points``: batch
    sizes simulated
    across the ramp, both ends included; step time is interpolated linearly in batch size between them.
    """

    start_global_batch_size: int = Field(ge=1, le=L.GLOBAL_BATCH_MAX)
    ramp_tokens: float = Field(gt=0, le=L.TOKENS_MAX)
    shape: Literal["linear_tokens", "linear_steps"] = "linear_tokens"
    points: int = Field(default=3, ge=2, le=16)


class PhaseSpec(Frozen):
    """One phase of a run: simulated (``tokens`` or ``steps``) or given (``gpu_hours``)."""

    name: str = Field(min_length=1, max_length=200)
    kind: Literal["pre_training", "context_extension", "post_training", "other"] = "other"
    seq_len: int | None = Field(default=None, ge=1, le=L.SEQ_LEN_MAX, description="default: training.seq_len")
    global_batch_size: int | None = Field(default=None, ge=1, le=L.GLOBAL_BATCH_MAX,
                                          description="default: training.global_batch_size")
    tokens: float | None = Field(default=None, gt=0, le=L.TOKENS_MAX, description="tokens of the phase, ramp "
                                 "included")
    steps: int | None = Field(default=None, ge=1, le=L.STEPS_MAX)
    gpu_hours: float | None = Field(default=None, ge=0, le=L.GPU_HOURS_MAX, description="given, not simulated")
    utilization: float | None = Field(default=None, ge=0, le=1, description="GPU busy fraction of a given "
                                      "phase, for its energy; default: that of the simulated phases")
    batch_ramp: RampSpec | None = None
    overrides: dict[str, Any] = Field(default_factory=dict, description="scenario keys for this phase, e.g. "
                                      "parallel.schedule: 1f1b")
    layout_search: bool = Field(default=True, description="when the layout is illegal or does not fit here, "
                                "search a legal one (else: an error)")
    source: str = ""

    @model_validator(mode="after")
    def _check(self) -> PhaseSpec:
        given = [k for k in ("tokens", "steps", "gpu_hours") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of tokens, steps, gpu_hours"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.gpu_hours is not None:
            extra = [k for k in ("seq_len", "global_batch_size", "batch_ramp") if getattr(self, k) is not None]
            if extra or self.overrides:
                raise ValueError(f"gpu_hours: a given phase is not simulated; drop "
                                 f"{', '.join(extra + (['overrides'] if self.overrides else []))}")
        elif self.utilization is not None:
            raise ValueError("utilization: only for a phase given as gpu_hours (simulated phases measure it)")
        if self.batch_ramp is not None:
            if self.tokens is None:
                raise ValueError("batch_ramp: needs the phase's tokens (not steps)")
            if self.batch_ramp.ramp_tokens > self.tokens:
                raise ValueError(f"batch_ramp.ramp_tokens: {self.batch_ramp.ramp_tokens:g} exceeds the phase's "
                                 f"{self.tokens:g} tokens")
        for key in self.overrides:
            section = key.split(".", 1)[0]
            if section not in OVERRIDABLE or "." not in key:
                raise ValueError(f"overrides.{key}: a phase may override keys under {', '.join(OVERRIDABLE)} "
                                 "(seq_len and global_batch_size are phase fields)")
        return self


class OverheadSpec(Frozen):
    """Reliability overheads, all off by default (DeepSeek publishes none: the V3 tech report, arXiv 2412.19437,
    says only that training had no irrecoverable loss spikes or rollbacks).

    Checkpoints stall training ``checkpoint_write_s`` every ``checkpoint_interval_s`` of training. Nodes fail
    independently at ``1 / mtbf_node_hours`` each; a failure costs ``restart_s`` plus the work since the last
    checkpoint, half an interval on average.
    """

    checkpoint_interval_s: float = Field(default=0.0, ge=0, le=L.SECONDS_MAX, description="training seconds between "
                                         "checkpoints; 0: none")
    checkpoint_write_s: float = Field(default=0.0, ge=0, le=L.SECONDS_MAX, description="stall per checkpoint")
    mtbf_node_hours: float | None = Field(default=None, gt=0, le=L.GPU_HOURS_MAX,
                                          description="mean time between failures of one "
                                          "node; none: no failures")
    restart_s: float = Field(default=0.0, ge=0, le=L.SECONDS_MAX, description="from a failure to training again")

    @model_validator(mode="after")
    def _check(self) -> OverheadSpec:
        if self.checkpoint_write_s > 0 and self.checkpoint_interval_s == 0:
            raise ValueError("checkpoint_interval_s: set it (> 0) when checkpoint_write_s is set")
        if self.mtbf_node_hours is not None and self.checkpoint_interval_s == 0:
            raise ValueError("checkpoint_interval_s: failures need one (> 0); the work lost per failure is "
                             "half an interval")
        return self


class EnergySpec(Frozen):
    grid_kg_co2_per_kwh: float | None = Field(default=None, ge=0, le=10, description="grid carbon intensity; "
                                              "none: CO2 is not estimated")
    source: str = ""


class MeasuredStage(Frozen):
    """A published figure for one or more phases (Table 1 groups both context-extension phases)."""

    name: str = Field(min_length=1, max_length=200)
    phases: tuple[str, ...] = Field(min_length=1)
    gpu_hours: float = Field(ge=0, le=L.GPU_HOURS_MAX)


class MeasuredSpec(Frozen):
    source: str = Field(min_length=1)
    stages: tuple[MeasuredStage, ...] = ()
    total_gpu_hours: float | None = Field(default=None, ge=0, le=L.GPU_HOURS_MAX)
    total_usd: float | None = Field(default=None, ge=0, le=L.USD_MAX)
    usd_per_gpu_hour: float | None = Field(default=None, ge=0, le=L.USD_PER_GPU_HOUR_MAX,
                                           description="the price the published $ assume")


class RunSpec(Frozen):
    phases: tuple[PhaseSpec, ...] = Field(min_length=1)
    overheads: OverheadSpec = OverheadSpec()
    energy: EnergySpec = EnergySpec()
    measured: MeasuredSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> RunSpec:
        names = [p.name for p in self.phases]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"phases: names must be unique (repeated: {', '.join(dup)})")
        if self.measured is not None:
            for i, stage in enumerate(self.measured.stages):
                unknown = [n for n in stage.phases if n not in names]
                if unknown:
                    raise ValueError(f"measured.stages.{i}.phases: {', '.join(unknown)} not among the phases "
                                     f"({', '.join(names)})")
        return self
