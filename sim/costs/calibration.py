"""Calibration that transfers by mechanism: measured efficiency relative to the cost model, as a function of
shape, applied wherever the shape, dtype, pass or GPU differ.

A calibration table (:mod:`sim.calibrate.table`) holds measured kernels. For each one this module computes the
correction ``kappa = modelled time / measured time`` on the GPU the table was measured on (whole-GPU
normalized: kernels that had fewer SMs are compared at their SM-scaled rate). A query's correction is a
Gaussian-weighted geometric mean of the corrections of measured kernels of the same kind and dtype, by
distance in log shape space (GEMM ``m, n, k``, with a penalty between passes; attention sequence, heads and
head sizes; memory-bound kernels bytes, with a penalty between kernel names), blended with that kind's
overall correction by a prior weight: exact at a measured shape, smooth between, and the overall correction
far from every measurement. The cost model divides its modelled time by the correction. So calibration keeps
the model's shape dependence and only rescales it where measurements say the model is off. GEMMs of a
training trace (``device.kind: trace``) are compared with the model of GEMMs inside a training step (its
in-training factors, :func:`sim.costs.gemm.in_training_factor`), a harness's isolated timings with the model of
isolated GEMMs; either way the correction applies to the in-training time the cost model uses.

A table measured on one GPU applies to another of the same compute silicon (``GpuSpec.silicon``: H800, H100
and H200 share GH100 with 132 SMs; H20's cut-down configuration does not): the correction is a ratio on the
compute side, and the bandwidth-bound parts (memory kernels, a GEMM's memory term) come from the target's
own profile through the model. A CPU table is pipeline validation only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from sim.calibrate.table import CalibrationTable, Entry, load_table
from sim.config import GpuSpec, Scenario
from sim.config.hardware import gpu_model_token
from sim.costs import gemm
from sim.costs.attention import flash_seconds
from sim.loading import find_gpu_profile
from sim.units import US

#: Width of the Gaussian weight in log shape space (a factor of 2 along one axis is one sigma).
SIGMA = math.log(2.0)
#: Weight of the kind's overall correction relative to a measurement at distance 0.
PRIOR_WEIGHT = 0.1
#: Log-space distance added between GEMMs of different passes, or memory kernels of different names.
PASS_PENALTY = 1.0
#: Pseudo-measurements at kappa = 1 that temper a kind's overall correction when it has few measurements.
PRIOR_COUNT = 4.0


@dataclass(frozen=True, slots=True)
class Correction:
    kappa: float
    distance: float  # log-space distance to the nearest measurement; inf when the kind has none


def memory_model_seconds(gpu: GpuSpec, bytes_: float) -> float:
    """A memory-bound kernel: bytes at the achievable HBM bandwidth of fused training kernels, plus launch."""
    eff = gpu.efficiency
    return bytes_ / (gpu.hbm_bandwidth_bytes_per_s * eff.hbm_frac) + eff.kernel_overhead_us * US




def attention_fwd_flops(seq: float, heads: float, qk_dim: float, v_dim: float, causal: bool, batch: float = 1.0
                        ) -> float:
    keys = seq / 2 if causal else seq
    return 2.0 * batch * heads * (qk_dim + v_dim) * seq * keys


@dataclass(frozen=True, slots=True)
class _Point:
    key: tuple[float, ...]  # log coordinates
    tag: str                # pass or kernel name
    log_kappa: float


class Calibration:
    """Corrections from one table, measured on ``source`` (the profile of the table's GPU)."""

    def __init__(self, table: CalibrationTable, source: GpuSpec) -> None:
        self.table = table
        self.source = source

    @cached_property
    def _points(self) -> dict[tuple[str, str], list[_Point]]:
        out: dict[tuple[str, str], list[_Point]] = {}
        for e in self.table.entries:
            point = self._point(e)
            if point is not None:
                family = "attention" if e.kind.startswith("attention") else e.kind
                group = "gemm" if e.kind in ("gemm", "grouped_gemm") else family
                out.setdefault((group, e.dtype if group != "memory" else "any"), []).append(point)
        return out

    def _point(self, e: Entry) -> _Point | None:
        measured = e.work / e.rate  # whole-GPU normalized seconds
        s = e.shape
        if e.kind in ("gemm", "grouped_gemm"):
            groups = int(s.get("groups", 1))
            rows = (s["m"] / groups,) * groups if groups > 1 else None
            # a training trace is compared with GEMMs in a training step, a harness's timings with isolated ones
            in_training = e.gemm_pass if self.table.device.kind == "trace" else None
            modelled = gemm.gemm_seconds(self.source, e.dtype, s["m"], s["n"], s["k"], rows, in_training)
            # keyed by one group's rows, as the cost model asks (a grouped GEMM's efficiency is its groups')
            return _Point((math.log(s["m"] / groups), math.log(s["n"]), math.log(s["k"])), e.gemm_pass or "",
                          math.log(modelled / measured))
        if e.kind in ("attention_fwd", "attention_bwd"):
            causal = bool(s.get("causal", 1.0))
            fwd = attention_fwd_flops(s["seq"], s["heads"], s["qk_dim"], s["v_dim"], causal, s.get("batch", 1.0))
            modelled = flash_seconds(self.source, e.dtype, fwd, s["seq"], causal, e.kind == "attention_bwd",
                                     head_dim=s["qk_dim"])
            return _Point((math.log(s["seq"]), math.log(s["heads"]), math.log(s["qk_dim"] + s["v_dim"])),
                          e.kind, math.log(modelled / measured))
        if e.kind == "memory":
            return _Point((math.log(s["bytes"]),), e.name, math.log(memory_model_seconds(self.source, s["bytes"])
                                                                    / measured))
        return None

    def _prior(self, points: list[_Point], tag: str | None) -> float:
        """The overall log correction of a kind (of one pass or kernel name when it has measurements)."""
        same = [p.log_kappa for p in points if p.tag == tag] if tag is not None else []
        chosen = same or [p.log_kappa for p in points]
        return sum(chosen) / (len(chosen) + PRIOR_COUNT)

    def _correct(self, group: str, dtype: str, key: tuple[float, ...], tag: str | None) -> Correction:
        points = self._points.get((group, dtype))
        if not points:
            return Correction(1.0, math.inf)
        weight_sum, acc, nearest = PRIOR_WEIGHT, PRIOR_WEIGHT * self._prior(points, tag), math.inf
        for p in points:
            d2 = sum((a - b) ** 2 for a, b in zip(key, p.key, strict=True))
            d = math.sqrt(d2) + (0.0 if tag is None or p.tag == tag else PASS_PENALTY)
            nearest = min(nearest, d)
            w = math.exp(-0.5 * (d / SIGMA) ** 2)
            weight_sum += w
            acc += w * p.log_kappa
        return Correction(math.exp(acc / weight_sum), nearest)

    def gemm(self, dtype: str, pass_: str | None, m: float, n: float, k: float) -> Correction:
        return self._correct("gemm", dtype, (math.log(m), math.log(n), math.log(k)), pass_)

    def attention(self, dtype: str, backward: bool, seq: float, heads: float, qk_dim: float, v_dim: float
                  ) -> Correction:
        kind = "attention_bwd" if backward else "attention_fwd"
        return self._correct("attention", dtype, (math.log(seq), math.log(heads), math.log(qk_dim + v_dim)), kind)

    def memory(self, name: str, bytes_: float) -> Correction:
        return self._correct("memory", "any", (math.log(bytes_),), name)


def same_silicon(a: GpuSpec, b: GpuSpec) -> bool:
    if a.silicon and b.silicon:
        return a.silicon == b.silicon
    return gpu_model_token(a.name) == gpu_model_token(b.name)


@dataclass(frozen=True)
class Resolved:
    """Which table a scenario's cost model uses: the table, the GPU it was measured on, and what to tell."""

    table: CalibrationTable | None = None
    source: GpuSpec | None = None
    warning: str | None = None
    note: str | None = None


def resolve_calibration(scenario: Scenario, *, allow_cpu: bool = False, strict: bool = True) -> Resolved:
    """The scenario's calibration table and the profile of the GPU it was measured on.

    A table of other compute silicon is refused when ``strict`` (the user named it); otherwise (a job file's
    own table under a what-if on other hardware) it is set aside with a warning and the profile is used. A CPU
    table is accepted only with ``allow_cpu`` (pipeline validation), with a warning."""
    if not scenario.calibration:
        return Resolved()
    table = load_table(scenario.calibration)
    target = scenario.cluster.gpu
    if not table.is_gpu:
        return Resolved(table, target, table.check_usable_for(target.name, allow_cpu=allow_cpu))
    source = find_gpu_profile(table.device.name) or target
    if same_silicon(source, target):
        note = None if gpu_model_token(source.name) == gpu_model_token(target.name) else (
            f"calibration measured on {table.device.name} applied to {target.name} (same compute silicon, "
            f"{target.silicon}); bandwidth-bound costs from {target.name}'s profile")
        return Resolved(table, source, None, note)
    if strict:
        table.check_usable_for(target.name)  # raises, naming both GPUs
    return Resolved(warning=f"the job's calibration ({table.device.name}) does not describe {target.name}: "
                    "profile efficiencies used")
