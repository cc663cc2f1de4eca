"""What a what-if on the GPU changes while a calibration table is active.

The rule (``sim.costs.calibration``): a calibrated kernel takes ``modelled(this GPU) / kappa`` with
``kappa = modelled(the GPU the table was measured on, from its profile) / measured``, i.e. its measured time
scaled by ``modelled(this GPU) / modelled(the measured GPU)``. An override of a GPU field that the model reads
(``--set cluster.gpu.peak_tflops.bf16=1979``) therefore scales every calibrated kernel that depends on it, as a
scale on the measured rate: doubling a peak halves the compute time of the calibrated GEMMs of that dtype.
When the measured GPU has no profile (or the table is a CPU one) the profile and the target are one and the
same, so the table *pins* those kernels and the override has no effect on them; the report says so.

:func:`calibration_report` names the table, the kinds it corrects, and the GPU fields that differ from the
measured GPU's profile with what the rule does to each. Attention is corrected only on the GPU's default curve
(a table's attention was measured with the default kernel): not under ``software.attention: unfused``, nor
with a ``software.flash_kernel`` that has a curve of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sim.config import GpuSpec, Scenario
from sim.costs.attention import flash_curve
from sim.costs.calibration import resolve_calibration
from sim.costs.kernels import stack_gpu

_GEMM = ("efficiency.gemm_tile_m", "efficiency.gemm_tile_n", "efficiency.gemm_k_fill", "efficiency.gemm_exposed_frac",
         "efficiency.gemm_hbm_frac", "efficiency.kernel_overhead_us", "hbm_bandwidth_tb_per_s", "num_sms")
_ATTENTION = ("efficiency.attention_fwd_frac", "efficiency.attention_bwd_frac", "efficiency.attention_seq_half",
              "efficiency.attention_seq_half_bwd", "efficiency.attention_causal_waste",
              "efficiency.attention_causal_frac", "efficiency.attention_head_dim_fwd",
              "efficiency.attention_head_dim_bwd", "efficiency.kernel_overhead_us")
_MEMORY = ("hbm_bandwidth_tb_per_s", "efficiency.hbm_frac", "efficiency.kernel_overhead_us")


def corrected_fields(kind: str, dtype: str) -> tuple[str, ...]:
    """GPU fields (dotted, under ``cluster.gpu``) that the cost model reads for a calibrated ``kind``."""
    if kind in ("gemm", "grouped_gemm"):
        extra = ("efficiency.gemm_k_fill_fp8",) if dtype == "fp8" else ()
        return (f"peak_tflops.{dtype}", f"efficiency.gemm_{dtype}_frac", *_GEMM, *extra)
    if kind.startswith("attention"):
        return (f"peak_tflops.{dtype}", *_ATTENTION)
    if kind == "memory":
        return _MEMORY
    return ()


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def gpu_differences(a: GpuSpec, b: GpuSpec) -> dict[str, tuple[Any, Any]]:
    """Fields (dotted) whose values differ between two GPU profiles, sources and names left out."""
    fa = _flat(a.model_dump(exclude={"efficiency_sources", "name"}))
    fb = _flat(b.model_dump(exclude={"efficiency_sources", "name"}))
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def _field_of(flat: str, fields: dict[str, list[str]]) -> str | None:
    """The corrected field a flattened key belongs to: itself, or the dict field it is an entry of (a head-dim
    factor ``efficiency.attention_head_dim_fwd.64``)."""
    if flat in fields:
        return flat
    parent = flat.rsplit(".", 1)[0]
    return parent if parent in fields else None


def calibration_report(scenario: Scenario, base: Scenario | None = None) -> dict[str, Any] | None:
    """The active calibration and what it does to GPU overrides; None without an active table.

    ``base``: the scenario before ``--set`` overrides (to name the overrides when the table pins them)."""
    resolved = resolve_calibration(scenario, allow_cpu=True, strict=False)
    if resolved.table is None or resolved.source is None:
        return None
    table, source, target = resolved.table, resolved.source, stack_gpu(scenario)  # as the cost model reads it
    sw = scenario.software
    attention = sw.attention == "flash" and flash_curve(target, sw.flash_kernel).default
    kinds = sorted({(("gemm" if e.kind == "grouped_gemm" else e.kind), e.dtype) for e in table.entries
                    if corrected_fields(e.kind, e.dtype) and (attention or not e.kind.startswith("attention"))})
    label = {f"{k} {d}" if k != "memory" else "memory kernels" for k, d in kinds}
    fields: dict[str, list[str]] = {}
    for kind, dtype in kinds:
        for f in corrected_fields(kind, dtype):
            fields.setdefault(f, []).append("memory kernels" if kind == "memory" else f"{kind} {dtype}")
    pinned = source is target or source == target
    changed = gpu_differences(source, target)
    if pinned and base is not None:
        changed = gpu_differences(base.cluster.gpu, target)
    overridden = {f: {"from": old, "to": new, "corrects": sorted(set(fields[field])), "key": f"cluster.gpu.{f}"}
                  for f, (old, new) in changed.items() if (field := _field_of(f, fields)) is not None}
    if sw.kernel_launch_us is not None and "efficiency.kernel_overhead_us" in overridden:
        overridden["efficiency.kernel_overhead_us"]["key"] = "software.kernel_launch_us"  # stack_gpu's source
    rule = ("pinned: the table's measured times stand, whatever these fields say" if pinned else
            "scaled: a calibrated kernel takes its measured time x modelled(this GPU) / modelled(the measured "
            "GPU's profile), so an override acts as a scale on the measured rate")
    return {"table": str(scenario.calibration), "measured_on": table.device.name, "corrects": sorted(label),
            "overridden": overridden, "rule": "pinned" if pinned else "scaled", "rule_text": rule}


def calibration_lines(report: dict[str, Any] | None) -> list[str]:
    """Human notes for :func:`calibration_report`: the table and what it corrects, then each overridden field
    it corrects and, once, the rule applied to them."""
    if report is None:
        return []
    lines = [f"table {Path(report['table']).name} (measured on {report['measured_on']}) corrects "
             f"{', '.join(report['corrects'])}"]
    verb = "has no effect on" if report["rule"] == "pinned" else "scales"
    for change in report["overridden"].values():
        lines.append(f"{change['key']} = {_num(change['to'])} (measured GPU's profile: {_num(change['from'])}) "
                     f"{verb} the calibrated {', '.join(change['corrects'])}")
    if report["overridden"]:
        lines.append(report["rule_text"])
    return lines


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, int | float) and not isinstance(v, bool) else str(v)
