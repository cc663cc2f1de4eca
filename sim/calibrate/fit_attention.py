"""Fit the FlashAttention efficiency curve (:mod:`sim.costs.attention`) to the FlashAttention papers' figures.

``python -m sim.calibrate.fit_attention`` reads ``hardware_profiles/measurements/flash_attention.yaml``: FA3 on
H100 (forward causal and non-causal, backward non-causal; head dim 128) fits the Hopper profile's
``attention_fwd_frac``, ``attention_bwd_frac``, ``attention_seq_half`` and ``attention_causal_waste`` on the
rows up to 4K, and reports the error on the 8K and 16K rows (held out). FA2 on A100 (causal forward +
backward, head dim 64) fits the A100's forward fraction with the curve's shape and the backward/forward ratio
taken from the Hopper fit (FA2 reports only the combined figure), on the same split.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np
import yaml
from scipy.optimize import least_squares

from sim.config import GpuSpec
from sim.costs.attention import flash_seconds
from sim.loading import load_cluster, profiles_dir

HOLDOUT_SEQ = 8192  # rows at or above this sequence length are held out


def _rows() -> list[dict[str, Any]]:
    return yaml.safe_load((profiles_dir() / "measurements" / "flash_attention.yaml").read_text())["rows"]


def _with(gpu: GpuSpec, **update: float) -> GpuSpec:
    return gpu.model_copy(update={"efficiency": gpu.efficiency.model_copy(update=update)})


def _predict(gpu: GpuSpec, row: dict[str, Any]) -> float:
    """TFLOP/s in the papers' convention (backward 2.5 x forward FLOPs)."""
    seq, d, causal = row["seq"], row["d"], row["causal"]
    heads, batch = 2048 // d, 16384 // seq
    fwd = 4.0 * seq * seq * d * heads * batch * (0.5 if causal else 1.0)
    if row["pass"] == "fwd":
        return fwd / flash_seconds(gpu, "bf16", fwd, seq, causal, False) / 1e12
    if row["pass"] == "bwd":
        return 2.5 * fwd / flash_seconds(gpu, "bf16", fwd, seq, causal, True) / 1e12
    t = flash_seconds(gpu, "bf16", fwd, seq, causal, False) + flash_seconds(gpu, "bf16", fwd, seq, causal, True)
    return 3.5 * fwd / t / 1e12


def fit() -> tuple[GpuSpec, GpuSpec, list[tuple[dict[str, Any], float]]]:
    rows = _rows()
    hopper = load_cluster("h100_ib_1024").gpu
    ampere = load_cluster("a100_ib_3072").gpu
    h_rows = [r for r in rows if r["gpu"] == "hopper"]

    def h_gpu(x: np.ndarray) -> GpuSpec:
        return _with(hopper, attention_fwd_frac=float(x[0]), attention_bwd_frac=float(x[1]),
                     attention_seq_half=float(x[2]), attention_causal_waste=float(x[3]), kernel_overhead_us=0.0)

    def h_res(x: np.ndarray) -> list[float]:
        g = h_gpu(x)
        return [float(np.log(_predict(g, r) / r["tflops"])) for r in h_rows if r["seq"] < HOLDOUT_SEQ]

    hx = least_squares(h_res, np.array([0.65, 0.45, 200.0, 300.0]), bounds=((0.1, 0.1, 0, 0), (1, 1, 1e4, 1e4))).x
    hfit = h_gpu(hx)
    ratio = hx[1] / hx[0]
    a_rows = [r for r in rows if r["gpu"] == "ampere"]

    def a_gpu(x: np.ndarray) -> GpuSpec:
        return _with(ampere, attention_fwd_frac=float(x[0]), attention_bwd_frac=float(x[0] * ratio),
                     attention_seq_half=float(hx[2]), attention_causal_waste=float(hx[3]), kernel_overhead_us=0.0)

    def a_res(x: np.ndarray) -> list[float]:
        g = a_gpu(x)
        return [float(np.log(_predict(g, r) / r["tflops"])) for r in a_rows if r["seq"] < HOLDOUT_SEQ]

    ax = least_squares(a_res, np.array([0.6]), bounds=((0.1,), (1.0,))).x
    afit = a_gpu(ax)
    errors = [(r, _predict(hfit if r["gpu"] == "hopper" else afit, r) / r["tflops"] - 1) for r in rows]
    return hfit, afit, errors


def main() -> None:
    hfit, afit, errors = fit()
    for name, g in (("hopper (H100 SXM, FA3)", hfit), ("ampere (A100, FA2; shape from Hopper)", afit)):
        e = g.efficiency
        print(f"{name}: attention_fwd_frac {e.attention_fwd_frac:.3f}, attention_bwd_frac {e.attention_bwd_frac:.3f}, "
              f"attention_seq_half {e.attention_seq_half:.0f}, attention_causal_waste {e.attention_causal_waste:.0f}")
    for held in (False, True):
        errs = [err for r, err in errors if (r["seq"] >= HOLDOUT_SEQ) == held]
        print(f"{'held out (seq >= 8K)' if held else 'fitted (seq < 8K)'}: {len(errs)} rows, mean |error| "
              f"{statistics.mean(abs(x) for x in errs):.1%}, max {max(abs(x) for x in errs):.1%}")
    for r, err in errors:
        print(f"    {r['gpu']} {r['pass']} {'causal' if r['causal'] else 'full'} d{r['d']} s{r['seq']}: "
              f"{r['tflops']} TFLOP/s, error {err:+.1%}")


if __name__ == "__main__":
    main()
