"""Plan page (placeholder until ``sim.plan``/``sim.sweep`` exist): days and dollars against GPU count."""

from __future__ import annotations

from dashkit import state

TITLE = "Plan"
ORDER = 60
ICON = ":material/event:"

state.placeholder(TITLE, [
    "days and dollars to train against the GPU count, for several GPU types",
    "deadline and budget lines, and the Pareto front of days against dollars",
    "the recommended configuration (GPU type, count, parallel layout, schedule)",
], "sim plan (sim sweep)", "plan")
