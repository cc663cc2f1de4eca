"""The training job: sequences, batch, tokens, and later phases."""

from __future__ import annotations

from pydantic import Field

from sim.config.base import Frozen


class BatchRamp(Frozen):
    start_global_batch_size: int = Field(ge=1)
    ramp_tokens: float = Field(gt=0, description="tokens over which the batch grows to its full size")


class TrainingPhase(Frozen):
    name: str
    seq_len: int = Field(ge=1)
    global_batch_size: int = Field(ge=1)
    steps: int = Field(ge=1)


class TrainingSpec(Frozen):
    seq_len: int = Field(ge=1)
    global_batch_size: int = Field(ge=1, description="sequences per optimizer step")
    total_tokens: float = Field(gt=0)
    batch_ramp: BatchRamp | None = None
    phases: tuple[TrainingPhase, ...] = Field(default=(), description="later phases, e.g. long context")

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.global_batch_size

