"""What the bridge hands the pages: plain dataclasses and frames, no ``sim`` objects (cheap to cache).

Also the user-error type every page shows as a message naming the field, the values the Scenario page's
widgets start from (read off a scenario's fields), and DeepSeek-V3's published figures put beside the default.
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
