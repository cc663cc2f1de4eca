"""Cost page (placeholder until ``sim.estimate`` exists): a whole run's GPU-hours, dollars and energy."""

from __future__ import annotations

from dashkit import state

TITLE = "Cost"
ORDER = 50
ICON = ":material/payments:"

state.placeholder(TITLE, [
    "GPU-hours by training phase (pre-training, context extension, post-training) beside DeepSeek-V3's Table 1 "
    "(2.788M H800 GPU-hours in all)",
    "dollars at the cluster's price per GPU-hour, and energy (kWh, with the facility's PUE)",
    "price sensitivity: total dollars against the price per GPU-hour",
], "sim estimate", "estimate")
