"""Seconds for each operator on one GPU: a roofline with shape-dependent efficiency, calibration first.

A GEMM of ``m x n x k`` (output ``m x n``, contraction ``k``) takes
``max(2mnk / (peak(dtype) * eta), bytes / (hbm * hbm_frac)) + overhead``, where ``eta`` is the profile's
achievable fraction for the dtype (MAMF, stas00/ml-engineering) times the tile and wave quantization of the
output grid (NVIDIA, "Matrix Multiplication Background User's Guide" 3.1-3.2: ``ceil(m/tm) ceil(n/tn)`` tiles
run in waves over the SMs; only ``mn / (padded area)`` of the work is useful and the last wave may be
partial). Grouped expert GEMMs pad each group to the tile (DeepGEMM's contiguous layout). When a calibration
table measured the op family, its achieved rate (interpolated in log space between measured sizes) replaces
the roofline; outside the measured range of a measured family the profile's shape is used, joined continuously
to the nearest measurement (no jump in efficiency at the edge), and the fallback is recorded in ``notes``.

Attention is costed in model FLOPs: forward ``4 B H S_q S_k D`` (``D`` the mean of the query/key and value
head sizes) halved for causal masks, backward twice the forward. FlashAttention's backward also recomputes
the scores (2.5x in hardware FLOPs); the achievable fractions and calibrated rates are stated in the same
model-FLOP convention, so that work is in the rate, not the count. Norms, activations, casts and the
optimizer are memory-bound: bytes over achievable HBM bandwidth.

FP8 (DeepSeek-V3 tech report 3.3): activations are quantized in 1 x 128 tiles before each FP8 GEMM (read
BF16, write FP8 plus scales), the output gradient likewise before Dgrad, and Wgrad needs both operands
transposed into 128 x 1 tiles (read, write again). These casts are memory-bound kernels of their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from sim.config import GpuSpec, PrecisionSpec
from sim.units import US

Pass = Literal["fwd", "dgrad", "wgrad"]


@dataclass
class CostModel:
    """Cost functions for one GPU type under one precision recipe, optionally with a calibration table."""

    gpu: GpuSpec
    precision: PrecisionSpec
    table: Any | None = None  # sim.calibrate.table.CalibrationTable (duck-typed: only .rate() is used)
    notes: set[str] = field(default_factory=set)  # calibration fallbacks
    warnings: set[str] = field(default_factory=set)  # what a reader of the results must see
    _cache: dict[tuple, float] = field(default_factory=dict)

    # ------------------------------------------------------------------ dtypes
    def gemm_dtype(self, pass_: Pass, precision_class: str) -> str:
        if precision_class != "linear":
            return "bf16"
        return {"fwd": self.precision.fprop, "dgrad": self.precision.dgrad, "wgrad": self.precision.wgrad}[pass_]

    def _frac(self, dtype: str) -> float:
        eff = self.gpu.efficiency
        if dtype == "fp8":
            if eff.gemm_fp8_frac is None:
                raise ValueError(f"{self.gpu.name} has no FP8 efficiency")
            return eff.gemm_fp8_frac
        return eff.gemm_bf16_frac

    # ------------------------------------------------------------------ GEMMs
    def wave_efficiency(self, group_rows: tuple[float, ...], n: int) -> float:
        """Useful fraction of the SM-time a tiled kernel occupies (tile padding x wave quantization)."""
        tm, tn, sms = self.gpu.efficiency.gemm_tile_m, self.gpu.efficiency.gemm_tile_n, self.gpu.num_sms
        n_tiles = math.ceil(n / tn)
        tiles = sum(math.ceil(r / tm) for r in group_rows if r > 0) * n_tiles
        if tiles == 0:
            return 1.0
        useful = sum(group_rows) * n / (tiles * tm * tn)
        waves = math.ceil(tiles / sms)
        return useful * tiles / (waves * sms)

    def gemm_seconds(self, m: float, n: int, k: int, dtype: str, group_rows: tuple[float, ...] | None = None,
                     pass_: Pass | None = None) -> float:
        """One (grouped) GEMM ``[m, k] x [k, n]``: ``m`` rows in total (``group_rows`` per group if grouped).
        ``pass_`` selects calibration entries of that pass when the table has them."""
        if m <= 0:
            return 0.0
        groups = len(group_rows) if group_rows else 1
        key = ("gemm", round(m, 3), n, k, dtype, group_rows, pass_)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        flops = 2.0 * m * n * k
        kind = "grouped_gemm" if groups > 1 else "gemm"
        rate = self._gemm_rate(kind, dtype, m, n, k, groups, pass_)
        if rate is not None:
            secs = flops / rate
        else:
            secs = self._roofline_gemm(m, n, k, dtype, group_rows or (m,))
            edge = self.table.edge(kind, dtype, m=m, n=n, k=k, groups=groups, gemm_pass=pass_) if self.table else None
            if edge is not None and edge.edge_m:
                # Outside the measured sizes of a measured family: the profile's shape, joined continuously
                # to the measurement at the nearest measured size (no jump in efficiency at the edge).
                scale = edge.edge_m / m
                at_edge = self._roofline_gemm(edge.edge_m, n, k, dtype, tuple(r * scale for r in group_rows or (m,)))
                secs *= (2.0 * edge.edge_m * n * k / edge.rate) / at_edge
        self._cache[key] = secs
        return secs

    def _roofline_gemm(self, m: float, n: int, k: int, dtype: str, group_rows: tuple[float, ...]) -> float:
        eff = self._frac(dtype) * self.wave_efficiency(group_rows, n)
        in_b = 1.0 if dtype == "fp8" else 2.0
        bytes_ = (m * k + len(group_rows) * n * k) * in_b + m * n * 2.0
        secs = max(2.0 * m * n * k / (self.gpu.peak_flops_per_s(dtype) * eff), self.memory_seconds_raw(bytes_))
        return secs + self.gpu.efficiency.kernel_overhead_us * US

    def gemm_pass_seconds(self, pass_: Pass, m: float, n: int, k: int, precision_class: str,
                          group_rows: tuple[float, ...] | None = None) -> float:
        """A linear layer's pass with weight ``[n, k]`` over ``m`` rows, FP8 casts included.

        fwd: ``m x n x k``; dgrad: ``m x k x n``; wgrad: ``n x k x m`` (contraction over the rows).
        """
        dtype = self.gemm_dtype(pass_, precision_class)
        if pass_ == "fwd":
            t = self.gemm_seconds(m, n, k, dtype, group_rows, "fwd")
            cast = 3.0 * m * k
        elif pass_ == "dgrad":
            t = self.gemm_seconds(m, k, n, dtype, group_rows, "dgrad")
            cast = 3.0 * m * n
        else:
            t = self._wgrad_seconds(m, n, k, dtype, group_rows)
            cast = 2.0 * m * k + 3.0 * m * n
        if dtype == "fp8":
            t += self.memory_seconds(cast, "fp8_cast")
        return t

    def _wgrad_seconds(self, m: float, n: int, k: int, dtype: str, group_rows: tuple[float, ...] | None) -> float:
        if not group_rows or len(group_rows) == 1:
            return self.gemm_seconds(n, k, round(m) or 1, dtype, None, "wgrad")
        # One n x k weight gradient per expert, contracting over that expert's rows.
        return sum(self.gemm_seconds(n, k, round(r), dtype, None, "wgrad") for r in group_rows if r > 0)

    # ------------------------------------------------------------------ attention
    def attention_seconds(self, pass_: Pass, tokens: float, seq_len: int, heads: int, qk_dim: int, v_dim: int,
                          causal: bool = True) -> float:
        """FlashAttention over ``tokens`` query tokens in sequences of ``seq_len`` (heads already per GPU)."""
        if pass_ == "wgrad" or tokens <= 0:
            return 0.0
        keys = seq_len / 2 if causal else seq_len
        fwd_flops = 2.0 * heads * (qk_dim + v_dim) * keys * tokens
        kind = "attention_fwd" if pass_ == "fwd" else "attention_bwd"
        flops = fwd_flops if pass_ == "fwd" else 2.0 * fwd_flops
        rate = self._attention_rate(kind, seq_len, heads, qk_dim, v_dim)
        if rate is None:
            eff = self.gpu.efficiency
            frac = eff.attention_fwd_frac if pass_ == "fwd" else eff.attention_bwd_frac
            rate = self.gpu.peak_flops_per_s(self.precision.attention) * frac
        return flops / rate + self.gpu.efficiency.kernel_overhead_us * US

    # ------------------------------------------------------------------ memory-bound
    def memory_seconds_raw(self, bytes_: float) -> float:
        return bytes_ / (self.gpu.hbm_bandwidth_bytes_per_s * self.gpu.efficiency.hbm_frac)

    def memory_seconds(self, bytes_: float, name: str = "elementwise") -> float:
        """A memory-bound kernel moving ``bytes_`` (reads plus writes)."""
        if bytes_ <= 0:
            return 0.0
        rate = self._memory_rate(name, bytes_)
        if rate is not None:
            return bytes_ / rate
        return self.memory_seconds_raw(bytes_) + self.gpu.efficiency.kernel_overhead_us * US

    # ------------------------------------------------------------------ calibration
    def _note(self, what: str) -> None:
        self.notes.add(f"no calibration for {what}; profile efficiency used")

    def _gemm_rate(self, kind: str, dtype: str, m: float, n: int, k: int, groups: int, pass_: Pass | None
                   ) -> float | None:
        if self.table is None:
            return None
        look = self.table.rate(kind, dtype, m=m, n=n, k=k, groups=groups, gemm_pass=pass_)
        if look is None and pass_ is not None:  # tables timed as plain GEMMs carry no pass
            look = self.table.rate(kind, dtype, m=m, n=n, k=k, groups=groups)
        if look is None:
            self._note(f"{kind} {dtype} [{n} x {k}]" + (f" x{groups}" if groups > 1 else ""))
            return None
        return float(look.rate)

    def _attention_rate(self, kind: str, seq_len: int, heads: int, qk_dim: int, v_dim: int) -> float | None:
        if self.table is None:
            return None
        look = self.table.rate(kind, self.precision.attention, m=seq_len, heads=heads, qk_dim=qk_dim, v_dim=v_dim)
        if look is None:
            self._note(f"{kind} at sequence {seq_len} with {heads} heads")
            return None
        return float(look.rate)

    def alltoall_measured(self, kind: str, dtype: str, logical_bytes: float, ranks: int
                          ) -> tuple[float, float | None, float | None] | None:
        """An expert all-to-all (``dispatch`` or ``combine``) the table measured at this logical payload
        (tokens x top-k x bytes per token) over ``ranks`` EP ranks: its seconds and the per-GPU NIC and NVLink
        bandwidths (bytes/s) of the cluster it ran on, when recorded; None when not measured."""
        if self.table is None:
            return None
        look = self.table.rate(kind, dtype, m=logical_bytes, ranks=ranks)
        if look is None:
            return None
        shape: dict[str, float] = next((e.shape for e in self.table.entries
                                        if e.kind == kind and e.shape.get("ranks") == ranks), {})
        nic, nvl = shape.get("nic_gb_per_s"), shape.get("nvlink_gb_per_s")
        return logical_bytes / float(look.rate), nic and nic * 1e9, nvl and nvl * 1e9

    def _memory_rate(self, name: str, bytes_: float) -> float | None:
        """The kernel's own measured family, else memory-bound kernels of that size pooled."""
        if self.table is None:
            return None
        look = self.table.rate("memory", "bf16", m=bytes_, name=name) or self.table.rate("memory", "bf16", m=bytes_)
        if look is None:
            self._note(f"memory-bound {name} at some sizes")
            return None
        return float(look.rate)
