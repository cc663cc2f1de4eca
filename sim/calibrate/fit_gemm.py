"""Fit the GEMM shape model (:mod:`sim.costs.gemm`) to published Hopper GEMM timings.

``python -m sim.calibrate.fit_gemm`` reads ``hardware_profiles/measurements/hopper_gemm.yaml`` (H100 and H800
rows with their sources), fits ``gemm_bf16_frac``, ``gemm_fp8_frac``, ``gemm_k_fill``, ``gemm_k_fill_fp8``,
``gemm_exposed_frac`` and ``gemm_hbm_frac`` on the rows marked ``fit`` (least squares on log time), and
prints the fitted values with the error on every row, the ``holdout`` rows separately. It also reports the
error on DeepSeek's own H800 trace (``hardware_profiles/calibrated/h800_deepseek_trace.yaml``), GEMMs that
ran on 112 of 132 SMs, compared at their whole-GPU normalized rate: a second held-out set.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np
import yaml
from scipy.optimize import least_squares

from sim.calibrate.table import load_table
from sim.config import GpuSpec
from sim.costs.gemm import gemm_seconds
from sim.loading import load_cluster, profiles_dir

PARAMS = ("gemm_bf16_frac", "gemm_fp8_frac", "gemm_k_fill", "gemm_k_fill_fp8", "gemm_exposed_frac",
          "gemm_hbm_frac")
BOUNDS = ((0.3, 0.3, 0.0, 0.0, 0.0, 0.5), (0.95, 0.95, 256.0, 2048.0, 1.0, 0.92))
#: Not fitted: the per-kernel launch cost from a measurement of its own (back-to-back tiny kernels on a
#: stream, te42kyfo/gpu-benches gpu-small-kernels: 2.4-2.6 us per kernel on A100 and H200).
KERNEL_OVERHEAD_US = 2.5
#: Output tiles of Hopper GEMM kernels: 128 x 256 (cuBLAS's sm90 warp-specialized BF16 kernels and DeepGEMM's
#: FP8 kernels use 128-row blocks with wide N blocks; the model also tries 64-row blocks for few rows).
TILE_N = 128


def _gpu(base: GpuSpec, x: np.ndarray) -> GpuSpec:
    update = dict(zip(PARAMS, (float(v) for v in x), strict=True))
    eff = base.efficiency.model_copy(update={**update, "kernel_overhead_us": KERNEL_OVERHEAD_US,
                                             "gemm_tile_n": TILE_N})
    return base.model_copy(update={"efficiency": eff})


def _rows() -> list[dict[str, Any]]:
    data = yaml.load((profiles_dir() / "measurements" / "hopper_gemm.yaml").read_text(), Loader=yaml.SafeLoader)
    return data["rows"]


def _predict_tflops(gpu: GpuSpec, row: dict[str, Any]) -> float:
    groups = int(row.get("groups", 1))
    m = row["m"] * groups
    rows = (float(row["m"]),) * groups if groups > 1 else None
    return 2.0 * m * row["n"] * row["k"] / gemm_seconds(gpu, row["dtype"], m, row["n"], row["k"], rows) / 1e12


def fit() -> tuple[GpuSpec, list[tuple[str, dict[str, Any], float]]]:
    base = load_cluster("h100_ib_1024").gpu
    rows = _rows()
    train = [r for r in rows if r["set"] == "fit"]

    def residuals(x: np.ndarray) -> list[float]:
        gpu = _gpu(base, x)
        return [math.log(_predict_tflops(gpu, r) / r["tflops"]) for r in train]

    x0 = np.array([0.8, 0.7, 128.0, 128.0, 0.5, 0.85])
    sol = least_squares(residuals, x0, bounds=BOUNDS)
    gpu = _gpu(base, sol.x)
    return gpu, [(r["set"], r, _predict_tflops(gpu, r) / r["tflops"] - 1) for r in rows]


def trace_errors(gpu: GpuSpec) -> list[tuple[str, float]]:
    table = load_table(profiles_dir() / "calibrated" / "h800_deepseek_trace.yaml")
    out = []
    for e in table.entries:
        if e.kind not in ("gemm", "grouped_gemm"):
            continue
        s = e.shape
        groups = int(s.get("groups", 1))
        rows = (s["m"] / groups,) * groups if groups > 1 else None
        t = gemm_seconds(gpu, e.dtype, s["m"], s["n"], s["k"], rows)
        out.append((f"{e.name} {e.gemm_pass} {e.dtype}", e.work / t / e.rate - 1))
    return out


def main() -> None:
    gpu, errors = fit()
    eff = gpu.efficiency
    print("fitted on the 'fit' rows of hardware_profiles/measurements/hopper_gemm.yaml:")
    for p in PARAMS:
        print(f"  {p:20s} {getattr(eff, p):.4g}")
    for which in ("fit", "holdout"):
        errs = [e for s, _r, e in errors if s == which]
        print(f"{which}: {len(errs)} rows, mean |error| {statistics.mean(abs(e) for e in errs):.1%}, "
              f"max {max(abs(e) for e in errs):.1%}")
        for s, r, e in errors:
            if s == which:
                g = f" x{r['groups']}" if r.get("groups") else ""
                print(f"    {r['dtype']} {r['m']}{g} x {r['n']} x {r['k']}: measured {r['tflops']:g} TFLOP/s, "
                      f"error {e:+.1%}")
    trace = trace_errors(gpu)
    print(f"DeepSeek H800 trace GEMMs (held out, 112-SM kernels normalized to 132): {len(trace)} kernels, "
          f"mean |error| {statistics.mean(abs(e) for _n, e in trace):.1%}, max {max(abs(e) for _n, e in trace):.1%}")
    for name, e in trace:
        print(f"    {name}: {e:+.1%}")


if __name__ == "__main__":
    main()
