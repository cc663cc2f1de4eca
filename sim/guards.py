"""Guards around the simulation: inputs that validate field by field but not together, files the library would
read too late, and results that cannot be true.

- :func:`check_raw` refuses over-long strings in a job mapping before validation (a 5,000-character name would
  otherwise reach file names and messages).
- :func:`check_scenario`: a sequence longer than the model's maximum position (:func:`check_seq_len`), a
  recorded expert histogram that is not a table of finite non-negative numbers (:func:`check_histogram`), an
  attention kernel the GPU's architecture cannot run (``software.flash_kernel: fa3`` off Hopper).
- :func:`check_overrides_read`: an override of the GPU's default attention curve that the job never reads (its
  stack's kernel has a curve of its own, or its attention is unfused): a what-if that silently changes nothing.
- :func:`check_step_result`: model FLOPs faster than the GPU's fastest peak (the smallest causal MFU above
  100 %), a NaN, infinite or negative time or memory is a bug report (:class:`~sim.errors.SimBugError`, exit 1),
  never a result. The other MFU conventions may pass 100 % legitimately: non-causal counting credits attention
  with FLOPs a causal kernel never runs, and the BF16 MFU of an FP8 job divides by the slower peak.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sim.config import ModelSpec, Scenario
from sim.config.hardware import flash_kernel_problem
from sim.costs.attention import flash_curve
from sim.errors import SimBugError, SimInputError

#: Longest name (``name`` keys) and longest other string in a job, profile or override.
MAX_NAME_LENGTH = 200
MAX_TEXT_LENGTH = 10_000
#: A RoPE model that states no ``max_seq_len`` may run any sequence up to this (the longest context of any
#: published model is 10M tokens); a model that states one, or has a learned position table, is held to it.
MAX_SEQ_LEN_ANY = 2**24
#: Largest histogram file read (bytes); a V3 histogram is 58 x 256 numbers, about 100 KB.
MAX_HISTOGRAM_BYTES = 64 * 2**20
#: Slack on MFU <= 1 and other bounds (floating-point rounding).
TOLERANCE = 1e-9


#: The GPU profile's default FlashAttention curve (``efficiency.attention_*``, :class:`~sim.config.AttentionCurve`).
_DEFAULT_CURVE = "cluster.gpu.efficiency.attention_"


def check_overrides_read(scenario: Scenario, keys: Iterable[str]) -> None:
    """Refuse an override of the default attention curve (``cluster.gpu.efficiency.attention_fwd_frac`` ...) when
    the job reads another: its stack's ``flash_kernel`` takes a curve of ``efficiency.attention_kernels``, or its
    attention is unfused. The error names the field to set instead."""
    for key in keys:
        if not key.startswith(_DEFAULT_CURVE) or key.startswith(_DEFAULT_CURVE + "kernel"):
            continue  # attention_kernel (which curve is the default) and attention_kernels.* are read as set
        sw = scenario.software
        if sw.attention != "flash":
            raise SimInputError(f"not read: software.attention is {sw.attention} (no FlashAttention curve); the "
                                "unfused path is costed from the GEMM and memory-bound efficiencies", field=key)
        if not flash_curve(scenario.cluster.gpu, sw.flash_kernel).default:
            field = key[len(_DEFAULT_CURVE):]
            raise SimInputError(f"not read: software.flash_kernel {sw.flash_kernel} takes its own curve; set "
                                f"cluster.gpu.efficiency.attention_kernels.{sw.flash_kernel}.{field} instead",
                                field=key)


def check_raw(data: Any, path: str = "") -> None:
    """Refuse strings longer than :data:`MAX_NAME_LENGTH` (names) or :data:`MAX_TEXT_LENGTH` (anything)."""
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(key, str) and len(key) > MAX_NAME_LENGTH:
                raise SimInputError(f"a key of {len(key):,} characters; at most {MAX_NAME_LENGTH}", field=path or None)
            check_raw(value, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list | tuple):
        for i, value in enumerate(data):
            check_raw(value, f"{path}.{i}")
    elif isinstance(data, str):
        limit = MAX_NAME_LENGTH if path.rsplit(".", 1)[-1] == "name" else MAX_TEXT_LENGTH
        if len(data) > limit:
            raise SimInputError(f"{len(data):,} characters; at most {limit:,}", field=path or None)


def max_seq_len(model: ModelSpec) -> tuple[int, str]:
    """The longest sequence ``model`` takes and why: its ``max_seq_len`` when it states one or has a learned
    position table, else :data:`MAX_SEQ_LEN_ANY`."""
    if model.position_embedding == "learned" or "max_seq_len" in model.model_fields_set:
        return model.max_seq_len, f"the model's max_seq_len ({model.max_seq_len:,})"
    return MAX_SEQ_LEN_ANY, f"{MAX_SEQ_LEN_ANY:,} tokens (the model states no max_seq_len)"


def check_seq_len(model: ModelSpec, seq_len: int, field: str, override: str = "--set model.max_seq_len=N") -> None:
    limit, why = max_seq_len(model)
    if seq_len <= limit:
        return
    if limit == MAX_SEQ_LEN_ANY:
        raise SimInputError(f"{seq_len:,} exceeds the longest sequence the simulator takes, {why}", field=field)
    raise SimInputError(f"{seq_len:,} exceeds {why}; to simulate beyond the model's positions, raise it "
                        f"explicitly ({override}, at most {MAX_SEQ_LEN_ANY:,})", field=field)


def check_scenario(s: Scenario) -> None:
    """Cross-field rules that the field validators cannot see (see the module docstring)."""
    check_raw({"name": s.name, "notes": s.notes})
    check_seq_len(s.model, s.training.seq_len, "training.seq_len")
    for i, phase in enumerate(s.training.phases):
        check_seq_len(s.model, phase.seq_len, f"training.phases.{i}.seq_len")
    if s.run is not None:
        for i, spec in enumerate(s.run.phases):
            if spec.seq_len is not None:
                check_seq_len(s.model, spec.seq_len, f"run.phases.{i}.seq_len")
    if s.experts.skew == "histogram" and s.experts.histogram and s.model.is_moe:
        check_histogram(s.experts.histogram)
    problem = flash_kernel_problem(s.software.flash_kernel, s.cluster.gpu.arch)
    if problem and s.software.attention == "flash":
        raise SimInputError(f"{problem} ({s.cluster.gpu.name})", field="software.flash_kernel")


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def check_histogram(path: str, field: str = "experts.histogram") -> None:
    """A histogram CSV holds finite, non-negative numbers: a wide table (an optional header row, then one row
    of loads per MoE layer) or a long one (columns ``layer``, ``expert``, ``load``)."""
    file = Path(path)
    try:
        size = file.stat().st_size
    except OSError as e:
        raise SimInputError(f"cannot read {path}: {e.strerror or e}", field=field) from None
    if size > MAX_HISTOGRAM_BYTES:
        raise SimInputError(f"{path} is {size:,} bytes; a histogram has at most {MAX_HISTOGRAM_BYTES:,}", field=field)
    try:
        with file.open(newline="") as f:
            rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SimInputError(f"cannot read {path} as CSV: {e}", field=field) from None
    if not rows:
        raise SimInputError(f"{path} is empty", field=field)
    header = [c.strip() for c in rows[0]]
    if any(_number(c) is None for c in header):
        body, first = rows[1:], 2
        numeric = [i for i, c in enumerate(header) if c in ("layer", "expert", "load")] if "load" in header else None
    else:
        body, first, numeric = rows, 1, None
    if not body:
        raise SimInputError(f"{path} has a header and no data", field=field)
    for r, row in enumerate(body, start=first):
        for c, cell in enumerate(row):
            if numeric is not None and c not in numeric:
                continue
            x = _number(cell.strip())
            name = header[c] if first == 2 and c < len(header) else f"column {c + 1}"
            if x is None:
                raise SimInputError(f"{path}, row {r}, {name}: {cell.strip()[:40]!r} is not a number", field=field)
            if not math.isfinite(x) or x < 0:
                raise SimInputError(f"{path}, row {r}, {name}: {x!r} (loads are finite and >= 0)", field=field)


# ------------------------------------------------------------------------------------------------ results


def _bad(x: Any, low: float = 0.0) -> bool:
    return x is None or not isinstance(x, int | float) or not math.isfinite(x) or x < low - TOLERANCE


def result_problems(r: Any) -> list[str]:
    """What is impossible in a :class:`~sim.metrics.StepResult` (read from the result, never recomputed)."""
    out: list[str] = []
    if _bad(r.step_time_s) or r.step_time_s <= 0:
        out.append(f"step time {r.step_time_s!r} s")
    for key, value in r.mfu.items():
        if value is not None and _bad(value):
            out.append(f"MFU {key} = {value!r}")
    # Causal model FLOPs are the fewest a step runs; over the fastest peak (the smallest causal MFU) they cannot
    # pass 100 %. Non-causal counting and a slower peak's MFU can (see the module docstring).
    causal = {k: v for k, v in r.mfu.items() if k.endswith("_causal") and v is not None and not _bad(v)}
    if causal and min(causal.values()) > 1.0 + TOLERANCE:
        key = min(causal, key=causal.__getitem__)
        out.append(f"MFU {key} = {causal[key]:.4g}: model FLOPs faster than the GPU's fastest peak")
    for key, value in r.breakdown_s.items():
        if _bad(value):
            out.append(f"breakdown {key} = {value!r} s")
    for name in ("busy_per_rank_s", "finish_per_rank_s"):
        bad = [v for v in getattr(r, name) if _bad(v)]
        if bad:
            out.append(f"{name} has {bad[0]!r}")
    for key in ("tokens_per_s_per_gpu", "gpu_hours_per_trillion_tokens", "peak_memory_per_gpu_bytes"):
        if _bad(getattr(r, key)):
            out.append(f"{key} = {getattr(r, key)!r}")
    if _bad(r.imbalance, 1.0):
        out.append(f"expert imbalance {r.imbalance!r} (max/mean is at least 1)")
    if r.imbalance_cost_s is not None and (r.imbalance_cost_s != r.imbalance_cost_s or math.isinf(r.imbalance_cost_s)):
        out.append(f"imbalance cost {r.imbalance_cost_s!r} s")
    return out


def check_step_result(r: Any, context: str | None = None) -> None:
    problems = result_problems(r)
    if problems:
        raise SimBugError("; ".join(problems), context)


def check_numbers(values: Iterable[tuple[str, Any]], context: str | None = None, low: float = 0.0) -> None:
    """Each named value is a finite number >= ``low`` (None allowed), else a bug report."""
    problems = [f"{k} = {v!r}" for k, v in values if v is not None and _bad(v, low)]
    if problems:
        raise SimBugError("; ".join(problems), context)
