"""Fit the FlashAttention-class efficiency curves (:mod:`sim.costs.attention`) to the FlashAttention papers'
figures, one curve per (GPU architecture, kernel).

``python -m sim.calibrate.fit_attention`` reads ``hardware_profiles/measurements/flash_attention.yaml``. Each
Hopper kernel (H100 SXM, BF16: ``fa3``, ``fa2``, ``cudnn``; forward causal and non-causal, backward
non-causal) fits the six parameters of one curve (forward and backward fractions, ``seq_half``,
``seq_half_bwd``, ``causal_waste``, ``causal_frac``) on its head-dim-128 rows shorter than 8K, and reports the
error on the 8K and 16K rows (held out). ``fa3`` is the Hopper profiles' default curve (``attention_*``
fields); ``fa2`` and ``cudnn`` are their ``attention_kernels``.

Head dim: the rows at head dims 64 and 256 (FA2, cuDNN; the papers give none for FA3) fit no monotonic term
(FA2 is fastest at 128 and about 10 % slower at both 64 and 256; cuDNN is about 30 % slower at 64 and a few
per cent at 256), so each pass gets one factor per measured head dim, the geometric mean of measured / the
head-dim-128 curve over that head dim's rows shorter than 8K (``head_dim_fwd``, ``head_dim_bwd``; the forward
pools causal and non-causal rows); 8K and 16K are held out again. Where a head dim has no backward rows (256)
its backward factor is ASSUMED the forward's. The cost model interpolates the factors linearly in log2(head dim)
and holds them flat beyond 64 and 256.

FA2 on A100 (causal forward + backward, head dim 64) fits the A100's forward fraction with the curve's shape,
the backward/forward ratio and the head-dim factors taken from the same kernel's Hopper fit (FA2 reports only
the combined figure, at head dim 64 only), on the same split.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml
from scipy.optimize import least_squares

from sim.config import AttentionCurve, GpuSpec
from sim.config.hardware import FITTED_HEAD_DIM
from sim.costs.attention import flash_seconds
from sim.loading import load_cluster, profiles_dir

HOLDOUT_SEQ = 8192  # rows at or above this sequence length are held out
FIT_HEAD_DIM = FITTED_HEAD_DIM  # the curve's own head dim; other head dims get factors
HOPPER_KERNELS = ("fa3", "fa2", "cudnn")


def _rows() -> list[dict[str, Any]]:
    return yaml.safe_load((profiles_dir() / "measurements" / "flash_attention.yaml").read_text())["rows"]


def _with(gpu: GpuSpec, **update: float) -> GpuSpec:
    return gpu.model_copy(update={"efficiency": gpu.efficiency.model_copy(update=update)})


def _curve(x: np.ndarray) -> AttentionCurve:
    return AttentionCurve(fwd_frac=float(x[0]), bwd_frac=float(x[1]), seq_half=float(x[2]),
                          causal_waste=float(x[3]), causal_frac=float(x[4]), seq_half_bwd=float(x[5]))


def _predict(gpu: GpuSpec, row: dict[str, Any], curve: AttentionCurve | None = None) -> float:
    """TFLOP/s in the papers' convention (backward 2.5 x forward FLOPs), on ``curve`` (default: the GPU's)."""
    seq, d, causal = row["seq"], row["d"], row["causal"]
    heads, batch = 2048 // d, 16384 // seq
    fwd = 4.0 * seq * seq * d * heads * batch * (0.5 if causal else 1.0)
    if row["pass"] == "fwd":
        return fwd / flash_seconds(gpu, "bf16", fwd, seq, causal, False, curve, d) / 1e12
    if row["pass"] == "bwd":
        return 2.5 * fwd / flash_seconds(gpu, "bf16", fwd, seq, causal, True, curve, d) / 1e12
    t = (flash_seconds(gpu, "bf16", fwd, seq, causal, False, curve, d)
         + flash_seconds(gpu, "bf16", fwd, seq, causal, True, curve, d))
    return 3.5 * fwd / t / 1e12


@dataclass(frozen=True)
class KernelFit:
    """One (architecture, kernel) curve and its errors (``predicted / measured - 1``) per row."""

    arch: str
    kernel: str
    label: str
    curve: AttentionCurve
    errors: list[tuple[dict[str, Any], float]]

    def split(self, part: str, other_d: bool = False) -> list[float]:
        """Errors of the ``fitted`` rows (seq < 8K) or the ``held_out`` ones (seq >= 8K), at the curve's head
        dim (128; all of the A100's rows), or with ``other_d`` at the head dims fitted by a factor."""
        out = []
        for r, err in self.errors:
            at_curve = self.arch != "hopper" or r["d"] == FIT_HEAD_DIM
            if at_curve == other_d:
                continue
            if ("held_out" if r["seq"] >= HOLDOUT_SEQ else "fitted") == part:
                out.append(err)
        return out


def fit() -> list[KernelFit]:
    """The curves: Hopper fa3, fa2 and cuDNN, then Ampere FA2 (shape from Hopper fa2)."""
    rows = _rows()
    hopper = _with(load_cluster("h100_ib_1024").gpu, kernel_overhead_us=0.0)
    ampere = _with(load_cluster("a100_ib_3072").gpu, kernel_overhead_us=0.0)
    fits = []
    for kernel in HOPPER_KERNELS:
        k_rows = [r for r in rows if r["gpu"] == "hopper" and r["kernel"] == kernel]
        train = [r for r in k_rows if r["d"] == FIT_HEAD_DIM and r["seq"] < HOLDOUT_SEQ]

        def res(x: np.ndarray, train: list[dict[str, Any]] = train) -> list[float]:
            c = _curve(x)
            return [float(np.log(_predict(hopper, r, c) / r["tflops"])) for r in train]

        x = least_squares(res, np.array([0.65, 0.45, 200.0, 300.0, 0.9, 200.0]),
                          bounds=((0.1, 0.1, 0, 0, 0.5, 0), (1, 1, 1e4, 1e4, 1, 1e4))).x
        curve = _with_head_dims(hopper, _curve(x), k_rows)
        fits.append(KernelFit("hopper", kernel, f"hopper (H100 SXM) {kernel}", curve,
                              [(r, _predict(hopper, r, curve) / r["tflops"] - 1) for r in k_rows]))
    shape = fits[1].curve  # the same kernel (FA2) on Hopper
    ratio = shape.bwd_frac / shape.fwd_frac
    a_rows = [r for r in rows if r["gpu"] == "ampere"]

    def a_curve(x: np.ndarray) -> AttentionCurve:
        return _curve(np.array([x[0], x[0] * ratio, shape.seq_half, shape.causal_waste, shape.causal_frac,
                                shape.seq_half_bwd])).model_copy(update={"head_dim_fwd": shape.head_dim_fwd,
                                                                         "head_dim_bwd": shape.head_dim_bwd})

    def a_res(x: np.ndarray) -> list[float]:
        c = a_curve(x)
        return [float(np.log(_predict(ampere, r, c) / r["tflops"])) for r in a_rows if r["seq"] < HOLDOUT_SEQ]

    ax = least_squares(a_res, np.array([0.6]), bounds=((0.1,), (1.0,))).x
    curve = a_curve(ax)
    fits.append(KernelFit("ampere", "fa2", "ampere (A100) fa2, shape from Hopper fa2", curve,
                          [(r, _predict(ampere, r, curve) / r["tflops"] - 1) for r in a_rows]))
    return fits


def _with_head_dims(gpu: GpuSpec, curve: AttentionCurve, rows: list[dict[str, Any]]) -> AttentionCurve:
    """``curve`` with a factor per pass and measured head dim other than 128: the geometric mean of measured /
    predicted over that head dim's rows shorter than 8K; a head dim with forward rows only takes the forward's
    factor for the backward (assumed)."""
    factors: dict[str, dict[int, float]] = {"fwd": {}, "bwd": {}}
    for d in sorted({r["d"] for r in rows} - {FIT_HEAD_DIM}):
        for pass_ in ("fwd", "bwd"):
            train = [r for r in rows if r["d"] == d and r["pass"] == pass_ and r["seq"] < HOLDOUT_SEQ]
            if train:
                logs = [np.log(r["tflops"] / _predict(gpu, r, curve)) for r in train]
                factors[pass_][d] = round(float(np.exp(np.mean(logs))), 3)
        if d in factors["fwd"] and d not in factors["bwd"]:
            factors["bwd"][d] = factors["fwd"][d]
    return curve.model_copy(update={"head_dim_fwd": factors["fwd"], "head_dim_bwd": factors["bwd"]})


def _summary(errs: list[float]) -> str:
    if not errs:
        return "no rows"
    return (f"{len(errs)} rows, mean |error| {statistics.mean(abs(x) for x in errs):.1%}, "
            f"max {max(abs(x) for x in errs):.1%}")


def main() -> None:
    fits = fit()
    for f in fits:
        c = f.curve
        print(f"{f.label}: fwd_frac {c.fwd_frac:.3f}, bwd_frac {c.bwd_frac:.3f}, seq_half {c.seq_half:.0f}, "
              f"seq_half_bwd {c.seq_half_bwd:.0f}, causal_waste {c.causal_waste:.0f}, "
              f"causal_frac {c.causal_frac:.3f}")
        print(f"    fitted (seq < 8K): {_summary(f.split('fitted'))}")
        print(f"    held out (seq >= 8K): {_summary(f.split('held_out'))}")
        if c.head_dim_fwd or c.head_dim_bwd:
            print(f"    head-dim factors: forward {c.head_dim_fwd}, backward {c.head_dim_bwd}")
        if f.split("fitted", other_d=True):
            print(f"    other head dims, fitted (seq < 8K): {_summary(f.split('fitted', other_d=True))}")
            print(f"    other head dims, held out (seq >= 8K): {_summary(f.split('held_out', other_d=True))}")
    for f in fits:
        for r, err in f.errors:
            print(f"    {r['gpu']} {r['kernel']} {r['pass']} {'causal' if r['causal'] else 'full'} d{r['d']} "
                  f"s{r['seq']}: {r['tflops']} TFLOP/s, error {err:+.1%}")


if __name__ == "__main__":
    main()
