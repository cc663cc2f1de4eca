"""Which calibration table a scenario's cost model uses, and what the user must be told about it."""

from __future__ import annotations

from sim.calibrate.table import CalibrationTable, gpu_model_token, load_table
from sim.config import Scenario


def resolve_calibration(scenario: Scenario, *, allow_cpu: bool = False, strict: bool = True
                        ) -> tuple[CalibrationTable | None, str | None]:
    """The scenario's calibration table and a warning to show (a CPU table in pipeline-validation mode).

    A table measured on another GPU is refused when ``strict`` (the user named it); otherwise (a job file's
    own table under a what-if on other hardware) it is set aside with a warning and the profile is used."""
    if not scenario.calibration:
        return None, None
    table = load_table(scenario.calibration)
    gpu = scenario.cluster.gpu.name
    if not strict and table.is_gpu and gpu_model_token(table.device.name) != gpu_model_token(gpu):
        return None, (f"the job's calibration ({table.device.name}) does not describe {gpu}: "
                      "profile efficiencies used")
    return table, table.check_usable_for(gpu, allow_cpu=allow_cpu)
