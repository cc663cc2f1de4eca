"""A GEMM's time on one GPU from its shape: math at a shape-dependent efficiency, memory traffic, launch.

For ``[m, k] x [k, n]`` (``groups`` GEMMs of ``group_rows`` rows each sharing ``n`` and ``k`` when grouped):

- **math**: ``2 m n k / (peak(dtype) x eta)`` with ``eta = eta_max(dtype) x q x k / (k + k0)``:
  ``eta_max`` the best sustained fraction of the dense peak (MAMF, stas00/ml-engineering); ``q`` the tile and
  wave quantization of the output grid (NVIDIA, "Matrix Multiplication Background User's Guide" 3.1-3.2:
  ``ceil(m/tm) ceil(n/tn)`` tiles run in waves over the SMs, only ``mn / (padded area)`` of the work is useful
  and the last wave may be partial; grouped GEMMs pad each group to the tile, as DeepGEMM's contiguous layout
  does); ``k / (k + k0)`` the main loop's fill and drain, which costs about ``k0`` elements of K per tile;
- **memory**: operands read once and the output written once, ``(m k + groups n k) b_in + m n b_out`` bytes at
  the achievable HBM bandwidth;
- the two overlap except for a fraction ``gamma`` of the shorter (the epilogue that writes the output and the
  prologue that fills the pipeline are not hidden behind math): ``max + gamma x min``;
- plus ``kernel_overhead`` per kernel (launch and tail);
- inside a training step, divided by the pass's in-training factor (``GpuEfficiency.gemm_training_*``,
  measured on DeepSeek's H800 training trace: the same shapes run 10-36 % slower there than the model of
  isolated benchmarks says, weight gradients the most).

``eta_max``, ``k0``, ``gamma`` and the overhead are GPU-profile fields; for Hopper they are fitted to published
GEMM measurements by :mod:`sim.calibrate.fit_gemm` (which reports the error on held-out measurements).
"""

from __future__ import annotations

import math

from sim.config import GpuSpec
from sim.units import US, dtype_bytes


def _quantized(group_rows: tuple[float, ...], n: float, tm: int, tn: int, sms: int) -> float:
    n_tiles = math.ceil(n / tn)
    tiles = sum(math.ceil(r / tm) for r in group_rows if r > 0) * n_tiles
    if tiles == 0:
        return 1.0
    useful = sum(group_rows) * n / (tiles * tm * tn)
    waves = math.ceil(tiles / sms)
    return useful * tiles / (waves * sms)


def wave_efficiency(gpu: GpuSpec, group_rows: tuple[float, ...], n: float) -> float:
    """Useful fraction of the SM-time a tiled kernel occupies (tile padding x wave quantization), with the
    better of the profile's row tile and half of it, as GEMM libraries pick smaller tiles for few rows."""
    tm, tn, sms = gpu.efficiency.gemm_tile_m, gpu.efficiency.gemm_tile_n, gpu.num_sms
    return max(_quantized(group_rows, n, t, tn, sms) for t in {tm, max(1, tm // 2)})


def gemm_efficiency_cap(gpu: GpuSpec, dtype: str) -> float:
    """``eta_max``: the best sustained fraction of the dense peak for ``dtype``."""
    eff = gpu.efficiency
    if dtype == "fp8":
        if eff.gemm_fp8_frac is None:
            raise ValueError(f"{gpu.name} has no FP8 GEMM efficiency")
        return eff.gemm_fp8_frac
    return eff.gemm_bf16_frac


def gemm_math_seconds(gpu: GpuSpec, dtype: str, m: float, n: float, k: float,
                      group_rows: tuple[float, ...] | None = None) -> float:
    """The math part: FLOPs at the shape's efficiency."""
    rows = group_rows or (m,)
    eff = gpu.efficiency
    fill = eff.gemm_k_fill_fp8 if dtype == "fp8" and eff.gemm_k_fill_fp8 is not None else eff.gemm_k_fill
    eta = gemm_efficiency_cap(gpu, dtype) * wave_efficiency(gpu, rows, n) * k / (k + fill)
    return 2.0 * m * n * k / (gpu.peak_flops_per_s(dtype) * eta)


def gemm_bytes(dtype: str, m: float, n: float, k: float, groups: int = 1) -> float:
    """Operands read once, the output (BF16) written once."""
    b_in = dtype_bytes("fp8") if dtype == "fp8" else dtype_bytes("bf16")
    return (m * k + groups * n * k) * b_in + m * n * dtype_bytes("bf16")


def in_training_factor(gpu: GpuSpec, pass_: str | None) -> float:
    """The fraction of its isolated rate a GEMM of training pass ``pass_`` reaches inside a training step
    (``GpuEfficiency.gemm_training_*``); 1 for an isolated GEMM (``pass_`` None)."""
    if pass_ is None:
        return 1.0
    eff = gpu.efficiency
    return {"fwd": eff.gemm_training_fwd, "dgrad": eff.gemm_training_dgrad, "wgrad": eff.gemm_training_wgrad}[pass_]


def gemm_seconds(gpu: GpuSpec, dtype: str, m: float, n: float, k: float,
                 group_rows: tuple[float, ...] | None = None, pass_: str | None = None) -> float:
    """One (grouped) GEMM ``[m, k] x [k, n]`` by the shape model of the module docstring; as a GEMM of training
    pass ``pass_`` (``fwd``, ``dgrad``, ``wgrad``) inside a training step, or isolated when ``None``."""
    if m <= 0 or n <= 0 or k <= 0:
        return 0.0
    eff = gpu.efficiency
    groups = len(group_rows) if group_rows else 1
    t_math = gemm_math_seconds(gpu, dtype, m, n, k, group_rows)
    t_mem = gemm_bytes(dtype, m, n, k, groups) / (gpu.hbm_bandwidth_bytes_per_s * (eff.gemm_hbm_frac or eff.hbm_frac))
    hi, lo = max(t_math, t_mem), min(t_math, t_mem)
    return (hi + eff.gemm_exposed_frac * lo) / in_training_factor(gpu, pass_) + eff.kernel_overhead_us * US
