"""Expert routing skew and its balancing policy (``sim.experts``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sim.config import limits as L
from sim.config.base import Frozen


class ExpertLoadSpec(Frozen):
    """How routed tokens spread over experts, and how that spread is balanced (``sim.experts``).

    ``balanced`` gives every expert the same load (DeepSeek's profile forced this). Skewed loads come from a
    Zipf law over expert popularity or a Dirichlet draw, optionally drifting over steps, or from a recorded
    histogram (CSV of loads per layer and expert). The policy acts on that skew: ``bias`` is DeepSeek-V3's
    auxiliary-loss-free bias update, ``aux`` a sequence-wise auxiliary loss, ``eplb`` redundant experts.
    """

    skew: Literal["balanced", "zipf", "dirichlet", "histogram"] = "balanced"
    zipf_exponent: float = Field(default=1.0, ge=0, le=100)
    dirichlet_concentration: float = Field(default=1.0, gt=0, le=1e6)
    drift_per_step: float = Field(default=0.0, ge=0, le=10, description="random-walk step of log popularity")
    histogram: str | None = Field(default=None, max_length=4096, description="CSV of loads per layer and expert")
    policy: Literal["none", "bias", "aux", "eplb"] = "bias"
    bias_update_speed: float = Field(default=0.001, ge=0, le=10, description="gamma (tech report 4.2: 0.001)")
    balancing_steps: int = Field(default=300, ge=0, le=L.BALANCING_STEPS_MAX, description="steps of balancing "
                                 "before the measured step")
    aux_loss_alpha: float = Field(default=0.0001, ge=0, le=10, description="sequence-wise balance loss weight")
    num_redundant_experts: int | None = Field(default=None, ge=0, le=L.EXPERTS_MAX, description="extra expert "
                                              "slots under policy eplb; default one per GPU of the EP group "
                                              "(DeepSeek's prefill deployment: EP32 with 32 redundant experts); "
                                              "none under other policies")
    seed: int = Field(default=0, ge=0, le=2**63 - 1, description="numpy seeds are non-negative")
    aux_skew_reduction: float = Field(default=0.5, ge=0, le=1, description="policy aux: fraction by which "
                                      "the auxiliary loss shrinks log-popularity towards uniform (assumption)")
    eplb_interval_steps: int = Field(default=10, ge=1, le=L.BALANCING_STEPS_MAX,
                                     description="policy eplb: steps between rearrangements, "
                                     "each from the mean load since the previous one")

    @model_validator(mode="after")
    def _check(self) -> ExpertLoadSpec:
        if self.skew == "histogram" and not self.histogram:
            raise ValueError("histogram: required when skew is 'histogram' (a CSV of loads per layer and expert)")
        return self

