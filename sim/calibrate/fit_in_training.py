"""Measure how much slower GEMMs run inside a training step than the model of isolated benchmarks says.

``python -m sim.calibrate.fit_in_training [TABLE]`` reads a calibration table imported from a training trace
(default: DeepSeek-V3's H800 trace, ``hardware_profiles/calibrated/h800_deepseek_trace.yaml``), compares every
GEMM with the shape model of an isolated GEMM (:func:`sim.costs.gemm.gemm_seconds` without a pass) on the
trace's GPU profile, and prints per training pass the geometric mean of ``modelled / measured`` over the
trace's GEMMs (FP8 and BF16 pooled) with its spread. These are ``GEMM_IN_TRAINING`` in
:mod:`sim.config.hardware`, the default in-training factors of every GPU profile.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from sim.calibrate.table import CalibrationTable, load_table
from sim.config import GpuSpec
from sim.costs.gemm import gemm_seconds
from sim.loading import find_gpu_profile, profiles_dir

PASSES = ("fwd", "dgrad", "wgrad")


def default_table() -> Path:
    return profiles_dir() / "calibrated" / "h800_deepseek_trace.yaml"


def in_training_ratios(table: CalibrationTable, gpu: GpuSpec) -> dict[str, list[float]]:
    """Per pass: ``modelled isolated / measured`` of each GEMM of the table (whole-GPU normalized rates)."""
    out: dict[str, list[float]] = {p: [] for p in PASSES}
    for e in table.entries:
        if e.kind not in ("gemm", "grouped_gemm") or e.gemm_pass not in out:
            continue
        s = e.shape
        groups = int(s.get("groups", 1))
        rows = (s["m"] / groups,) * groups if groups > 1 else None
        modelled = gemm_seconds(gpu, e.dtype, s["m"], s["n"], s["k"], rows)
        out[e.gemm_pass].append(modelled / (e.work / e.rate))
    return out


def geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def _profile(table: CalibrationTable) -> GpuSpec:
    gpu = find_gpu_profile(table.device.name)
    if gpu is None:
        raise SystemExit(f"no GPU profile matches the table's device {table.device.name!r}")
    return gpu


def fit(path: Path | None = None) -> dict[str, float]:
    """Per pass, the geometric mean of ``modelled isolated / measured`` (rounded to 3 places)."""
    table = load_table(path or default_table())
    return {p: round(geomean(v), 3) for p, v in in_training_ratios(table, _profile(table)).items() if v}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else default_table()
    table = load_table(path)
    gpu = _profile(table)
    print(f"{path.name}: GEMMs measured in training on {table.device.name} vs the isolated shape model of {gpu.name}")
    for p, v in in_training_ratios(table, gpu).items():
        if v:
            print(f"  {p:6} n={len(v):3}  geomean {geomean(v):.3f}  min {min(v):.3f}  max {max(v):.3f}")


if __name__ == "__main__":
    main()
