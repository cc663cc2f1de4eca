"""Whole training runs, priced phase by phase (``sim estimate``): GPU-hours, days, dollars, energy, CO2.

``estimate_run(scenario)`` simulates a few steps per phase (``sim.estimate.core``), integrates a batch ramp
(``sim.estimate.ramp``), adds overheads and prices (``sim.estimate.accounting``, ``sim.estimate.energy``),
compares with published figures and reports what more GPUs, a longer deadline or another price change
(``sim.estimate.report``).
"""

from sim.estimate.report import RunEstimate, estimate_run

__all__ = ["RunEstimate", "estimate_run"]
