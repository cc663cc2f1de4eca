"""How a job is laid out on the cluster (parallelism, schedule, recompute) and which dtypes it uses."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sim.config.base import Frozen
from sim.pipeline import ScheduleName


class ParallelSpec(Frozen):
    """How the job is laid out. ``pp`` counts pipeline ranks (devices); stages may be more (interleaved)."""

    tp: int = Field(default=1, ge=1)
    pp: int = Field(default=1, ge=1)
    dp: int | None = Field(default=None, ge=1, description="derived from the GPU count when omitted")
    ep: int = Field(default=1, ge=1, description="expert parallel size, spanning data-parallel ranks")
    sequence_parallel: bool = False
    schedule: ScheduleName = "1f1b"
    vpp: int = Field(default=1, ge=1, description="virtual stages per rank (interleaved-1f1b)")
    micro_batch_size: int = Field(default=1, ge=1, description="sequences per micro-batch")
    num_microbatches: int | None = Field(default=None, ge=1, description="per pipeline and step; "
                                         "derived from the global batch when omitted")
    zero_stage: Literal[0, 1, 2, 3] = 1
    recompute: Literal["none", "selective", "full", "norm_and_up_proj"] = "none"
    comm_sms: int = Field(default=0, ge=0, description="SMs held by communication kernels")
    stage_layers: tuple[int, ...] | None = Field(default=None, description="transformer layers per "
                                                 "stage (MTP layers last); overrides stage_split")
    stage_split: Literal["balanced", "uniform"] = Field(default="balanced", description="balanced: "
                                                        "least arithmetic on the heaviest stage; uniform: "
                                                        "equal layer counts (Megatron-LM)")
    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = True
    overlap_pairs: bool = Field(default=True, description="run a schedule's F&B pairs interleaved (DualPipe); "
                                "false runs each pair's chunks one after the other")


class PrecisionSpec(Frozen):
    """Which dtype each pass, state and transfer uses (DeepSeek-V3 tech report section 3.3)."""

    fprop: Literal["fp8", "bf16"] = "bf16"
    dgrad: Literal["fp8", "bf16"] = "bf16"
    wgrad: Literal["fp8", "bf16"] = "bf16"
    attention: Literal["bf16", "fp8"] = "bf16"
    weights: Literal["bf16", "fp32"] = "bf16"
    master_weights: Literal["fp32", "bf16"] = "fp32"
    grads: Literal["fp32", "bf16"] = "fp32"
    grad_reduce: Literal["fp32", "bf16"] = "fp32"
    optimizer_states: Literal["fp32", "bf16"] = "fp32"
    dispatch: Literal["fp8", "bf16"] = "bf16"
    combine: Literal["bf16", "fp8"] = "bf16"
    activation_tile: int = Field(default=128, ge=1, description="1 x N activation quantization tile")
    weight_block: int = Field(default=128, ge=1, description="N x N weight quantization block")

    @property
    def uses_fp8(self) -> bool:
        return "fp8" in (self.fprop, self.dgrad, self.wgrad, self.attention, self.dispatch, self.combine)

