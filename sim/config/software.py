"""The software stack a job runs on: which libraries implement its communication (and, as they are modelled,
its kernels). Named stacks live in ``hardware_profiles/software/<name>.yaml``; a job names one or inlines the
fields."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sim.config.base import Frozen

A2aLibrary = Literal["deepep_v1", "deepep_v2", "nccl"]


class SoftwareSpec(Frozen):
    name: str = "default"
    a2a_library: A2aLibrary | None = Field(default=None, description="expert all-to-all: DeepEP (kernels on "
                                           "parallel.comm_sms SMs) or NCCL all-to-all; default: deepep_v1 when "
                                           "comm_sms > 0, else nccl")
    sm_partition: Literal["static", "dynamic"] | None = Field(
        default=None, description="static: parallel.comm_sms SMs are reserved for communication all step and "
        "compute kernels run on the rest (DeepEP with DeepGEMM: 112 of 132 SMs in DeepSeek's trace); dynamic: "
        "communication takes them only while it runs (NCCL); default: static with DeepEP, else dynamic")
    sources: dict[str, str] = Field(default_factory=dict)
