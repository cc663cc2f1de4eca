"""The base of every configuration model: frozen, no unknown keys, finite numbers only.

``allow_inf_nan=False`` makes every float field reject NaN and infinities with a message naming the field
(``--set cluster.ib_latency_us=inf`` exits 2), so no impossible input reaches the cost model.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
