"""The training job: sequences, batch, tokens, and later phases."""

from __future__ import annotations

from pydantic import Field

from sim.config import limits as L
from sim.config.base import Frozen


class BatchRamp(Frozen):
    start_global_batch_size: int = Field(ge=1, le=L.GLOBAL_BATCH_MAX)
    ramp_tokens: float = Field(gt=0, le=L.TOKENS_MAX, description="tokens over which the batch grows to its full size")


class TrainingPhase(Frozen):
    name: str = Field(min_length=1, max_length=200)
    seq_len: int = Field(ge=1, le=L.SEQ_LEN_MAX)
    global_batch_size: int = Field(ge=1, le=L.GLOBAL_BATCH_MAX)
    steps: int = Field(ge=1, le=L.STEPS_MAX)


class TrainingSpec(Frozen):
    seq_len: int = Field(ge=1, le=L.SEQ_LEN_MAX, description="tokens per sequence; at most the model's "
                         "max_seq_len when the model states one (sim.guards)")
    global_batch_size: int = Field(ge=1, le=L.GLOBAL_BATCH_MAX, description="sequences per optimizer step")
    total_tokens: float = Field(gt=0, le=L.TOKENS_MAX)
    batch_ramp: BatchRamp | None = None
    phases: tuple[TrainingPhase, ...] = Field(default=(), description="later phases, e.g. long context")

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.global_batch_size

