"""The phases of a run and the scenario of each simulated point (``sim.config.run``).

A job's ``run:`` section lists its phases. A job without one is read as one pre-training phase of
``training.total_tokens`` (ramped by ``training.batch_ramp``) followed by ``training.phases``, the shorthand that
``run:`` supersedes; a job with both is refused, so the run is described in one place.

The scenario of a phase at a batch size is derived as the brief for this module asks: the job is dumped to a
mapping, the phase's sequence length, batch size and overrides are written into it, and it is validated again
(never ``model_copy(update=...)``), so every rule of :class:`~sim.config.Scenario` applies to every phase.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from sim.config import PhaseSpec, RampSpec, RunSpec, Scenario
from sim.errors import SimInputError, format_validation_error


def run_spec(scenario: Scenario) -> RunSpec:
    """The job's ``run:`` section, or the run its ``training:`` shorthand describes."""
    t = scenario.training
    if scenario.run is not None:
        if t.batch_ramp is not None or t.phases:
            raise SimInputError("give the batch ramp and later phases in run: only (training.batch_ramp and "
                                "training.phases are the shorthand for a job without run:)", field="run")
        return scenario.run
    ramp = None
    if t.batch_ramp is not None:
        ramp = RampSpec(start_global_batch_size=t.batch_ramp.start_global_batch_size,
                        ramp_tokens=min(t.batch_ramp.ramp_tokens, t.total_tokens))
    phases = [PhaseSpec(name="pre-training", kind="pre_training", tokens=t.total_tokens, batch_ramp=ramp,
                        source="training.total_tokens")]
    phases += [PhaseSpec(name=p.name, seq_len=p.seq_len, global_batch_size=p.global_batch_size, steps=p.steps,
                         source="training.phases") for p in t.phases]
    try:
        return RunSpec(phases=tuple(phases))
    except ValidationError as e:  # e.g. a later phase named "pre-training"
        raise SimInputError(format_validation_error(e, RunSpec).replace("\n", "; "), field="training.phases") from None


def phase_field(index: int, spec: PhaseSpec, key: str = "") -> str:
    """The dotted name of a phase's field in messages: ``run.phases.2 (context-128k).batch_ramp``."""
    return f"run.phases.{index} ({spec.name})" + (f".{key}" if key else "")


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def phase_data(scenario: Scenario, spec: PhaseSpec, seq_len: int, global_batch_size: int) -> dict[str, Any]:
    """The job as a mapping with the phase's sequence length, batch size and overrides written in."""
    data = scenario.model_dump()
    data["run"] = None
    data["training"].update(seq_len=seq_len, global_batch_size=global_batch_size, batch_ramp=None, phases=())
    for key, value in spec.overrides.items():
        set_dotted(data, key, value)
    return data


def validate_phase(data: dict[str, Any]) -> tuple[Scenario | None, str | None]:
    """The validated scenario, or the validation message (field: problem) when the layout is illegal here."""
    try:
        return Scenario.model_validate(data), None
    except ValidationError as e:
        return None, format_validation_error(e, Scenario).replace("\n", "; ")
