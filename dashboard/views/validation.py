"""Validation page (placeholder until ``sim.validate`` exists): predicted vs measured for published runs."""

from __future__ import annotations

from dashkit import state

TITLE = "Validation"
ORDER = 80
ICON = ":material/fact_check:"

state.placeholder(TITLE, [
    "every published run under workloads/published/: predicted against measured (step time, MFU, GPU-hours)",
    "the error of each prediction and the tolerance it is held to",
], "sim validate", "validate")
