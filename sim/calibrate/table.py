"""Calibration tables: measured kernel rates the cost model reads (``sim run --calibration FILE``).

A table is YAML on disk (human-readable, committed under ``hardware_profiles/calibrated/``), produced by
``sim calibrate --device cpu|cuda`` (the timing harness) or ``sim calibrate --from-trace`` (a profiler trace).
It holds device metadata and, per op kind, measured shapes -> seconds and the achieved rate.

Conventions (the cost model relies on them):

- **GEMM shapes** are the GEMM as the kernel runs it: ``[m, k] x [k, n] -> [m, n]``, FLOPs ``2 m n k``. For a
  linear layer with weight ``[n_w, k_w]`` over ``T`` rows: forward ``(m, n, k) = (T, n_w, k_w)``, input gradient
  ``(T, k_w, n_w)``, weight gradient ``(n_w, k_w, T)``; ``gemm_pass`` says which (informational, and a filter).
  ``grouped_gemm`` is ``groups`` GEMMs in one kernel whose rows add up to ``m`` (all groups' rows; measured
  with equal rows per group), FLOPs ``2 m n k``. A grouped weight gradient (a contraction over each group's own
  rows) is recorded per group as a ``gemm`` of shape ``(n_w, k_w, rows per group)``.
- **Attention** FLOPs follow ``sim.model.counts``: ``2 batch heads (qk_dim + v_dim) seq keys`` with ``keys =
  seq / 2`` when causal; backward counts twice the forward (model FLOPs, no recomputation).
- **Rates are normalized to the whole GPU.** When a kernel ran on ``sms_used`` < ``num_sms`` SMs (DeepSeek's
  trace: GEMMs on 112 of 132 SMs while 20 serve communication), ``seconds`` is the raw measurement and the
  achieved rate is scaled by ``num_sms / sms_used`` (``sm_scaled: true``); the engine re-applies the SM share
  when communication runs concurrently.
- **Lookup** (:meth:`CalibrationTable.rate`): entries of one *family* (same kind, dtype and family key: ``(n,
  k, groups)`` for GEMMs, ``(heads, qk_dim, v_dim)`` for attention, ``(ranks,)`` for collectives, the kernel
  ``name`` for memory kinds) form a curve of rate over ``m`` (tokens; the sequence length for attention; bytes
  for memory and communication kinds), interpolated in log-log space (:mod:`sim.calibrate.interp`): exact at
  measured points, monotone between adjacent ones, None outside the measured range. Without an exact family,
  the nearest family whose Euclidean distance in log space of the family key is at most ``ln 2`` (a factor of
  2 along one axis, about 1.63 along two) and whose range covers ``m`` is used, marked ``exact=False``; farther
  families are never used.
- A table measured on a CPU is tagged ``device.kind: cpu`` and is never taken for GPU data
  (:meth:`CalibrationTable.check_usable_for`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sim.calibrate.interp import interp_loglog, log_distance, merge_points
from sim.config.hardware import gpu_model_token
from sim.errors import SimInputError, format_validation_error
from sim.loading import parse_yaml

SCHEMA_VERSION = 1
NEAREST_FAMILY_MAX_LOG_DISTANCE = math.log(2.0)
RATE_RTOL = 1e-3

Kind = Literal["gemm", "grouped_gemm", "attention_fwd", "attention_bwd", "memory", "optimizer",
               "allreduce", "alltoall", "p2p", "dispatch", "combine"]
CalDtype = Literal["fp8", "bf16", "fp16", "fp32", "tf32"]
GemmPass = Literal["fwd", "dgrad", "wgrad"]

GEMM_KINDS = ("gemm", "grouped_gemm")
ATTENTION_KINDS = ("attention_fwd", "attention_bwd")
COMPUTE_KINDS = GEMM_KINDS + ATTENTION_KINDS
COMM_KINDS = ("allreduce", "alltoall", "p2p", "dispatch", "combine")

REQUIRED_SHAPE: dict[str, tuple[str, ...]] = {
    "gemm": ("m", "n", "k"), "grouped_gemm": ("m", "n", "k", "groups"),
    "attention_fwd": ("seq", "heads", "qk_dim", "v_dim"), "attention_bwd": ("seq", "heads", "qk_dim", "v_dim"),
    "memory": ("bytes",), "optimizer": ("bytes",),
    **{k: ("bytes", "ranks") for k in COMM_KINDS},
}
#: The shape key a lookup's ``m`` stands for, per kind.
SIZE_KEY = {k: ("m" if k in GEMM_KINDS else "seq" if k in ATTENTION_KINDS else "bytes") for k in REQUIRED_SHAPE}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DeviceInfo(_Frozen):
    """Where and how the table was measured."""

    name: str = Field(description="device name as the driver reports it, e.g. 'NVIDIA H800'")
    kind: Literal["cuda", "cpu", "trace"] = Field(description="cuda: timed by the harness on a GPU; cpu: timed "
                                                  "on a CPU (pipeline validation only); trace: a GPU profiler trace")
    num_sms: int | None = Field(default=None, ge=1)
    sms_used: int | None = Field(default=None, ge=1, description="SMs the measured compute kernels were "
                                 "confined to, when fewer than num_sms")
    compute_capability: str | None = None
    clocks_mhz: dict[str, float] = Field(default_factory=dict)
    memory_bytes: float | None = Field(default=None, gt=0)
    torch_version: str | None = None
    cuda_version: str | None = None
    source: str = Field(description="the command or trace that produced the table")
    created: str = Field(description="ISO date of the measurement")
    settings: dict[str, str | int | float | bool] = Field(default_factory=dict, description="timing settings: "
                                                          "warm-up, repeats, L2 flush, TF32, threads")

    @model_validator(mode="after")
    def _check(self) -> DeviceInfo:
        if self.kind == "cpu" and self.num_sms is not None:
            raise ValueError("num_sms: a CPU table has no SMs")
        if self.sms_used is not None and (self.num_sms is None or self.sms_used > self.num_sms):
            raise ValueError("sms_used: needs num_sms and must not exceed it")
        return self


class Entry(_Frozen):
    """One measured (op kind, dtype, shape): the median time and the achieved rate."""

    kind: Kind
    dtype: CalDtype
    name: str = Field(description="kernel or op name (which norm, cast, activation, GEMM)")
    gemm_pass: GemmPass | None = None
    shape: dict[str, float]
    seconds: float = Field(gt=0, description="median of the samples, raw (not SM-normalized)")
    spread_s: tuple[float, float] | None = Field(default=None, description="(p20, p80) of the samples")
    samples: int = Field(ge=1)
    flops: float | None = Field(default=None, gt=0)
    bytes: float | None = Field(default=None, gt=0)
    achieved_flops_per_s: float | None = Field(default=None, gt=0, description="whole-GPU normalized")
    achieved_bytes_per_s: float | None = Field(default=None, gt=0, description="whole-GPU normalized")
    sms_used: int | None = Field(default=None, ge=1, description="SMs the kernel had")
    sm_scaled: bool = Field(default=False, description="achieved rate scaled by num_sms / sms_used")
    contended: bool = Field(default=False, description="ran concurrently with compute on another stream")
    includes_wait: bool = Field(default=False, description="duration includes waiting (an upper bound)")
    note: str = ""

    @property
    def size(self) -> float:
        """The lookup coordinate ``m`` of this entry (see :data:`SIZE_KEY`)."""
        return self.shape[SIZE_KEY[self.kind]]

    @property
    def rate(self) -> float:
        value = self.achieved_flops_per_s if self.kind in COMPUTE_KINDS else self.achieved_bytes_per_s
        assert value is not None  # guaranteed by the validator
        return value

    @property
    def work(self) -> float:
        value = self.flops if self.kind in COMPUTE_KINDS else self.bytes
        assert value is not None
        return value

    @model_validator(mode="after")
    def _check(self) -> Entry:
        missing = [k for k in REQUIRED_SHAPE[self.kind] if k not in self.shape]
        if missing:
            raise ValueError(f"shape: kind {self.kind!r} needs {', '.join(missing)} "
                             f"(required: {', '.join(REQUIRED_SHAPE[self.kind])})")
        for key, value in self.shape.items():
            if not math.isfinite(value) or value < 0 or (value == 0 and key != "causal"):
                raise ValueError(f"shape.{key}: must be a positive number (got {value})")
        if not math.isfinite(self.seconds):
            raise ValueError("seconds: must be finite")
        if self.spread_s is not None and not 0 < self.spread_s[0] <= self.spread_s[1]:
            raise ValueError("spread_s: expected (p20, p80) with 0 < p20 <= p80")
        compute = self.kind in COMPUTE_KINDS
        work, rate = (self.flops, self.achieved_flops_per_s) if compute else (self.bytes, self.achieved_bytes_per_s)
        unit = "flops" if compute else "bytes"
        if work is None or rate is None:
            raise ValueError(f"{unit}: kind {self.kind!r} needs {unit} and achieved_{unit}_per_s")
        if not compute and (self.flops is not None or self.achieved_flops_per_s is not None):
            raise ValueError(f"flops: kind {self.kind!r} is measured in bytes")
        if self.sm_scaled and self.sms_used is None:
            raise ValueError("sm_scaled: needs sms_used")
        if self.gemm_pass is not None and self.kind not in GEMM_KINDS:
            raise ValueError("gemm_pass: applies to gemm and grouped_gemm only")
        expected = _model_flops(self.kind, self.shape)
        if expected is not None and not math.isclose(work, expected, rel_tol=1e-6):
            raise ValueError(f"flops: {work:.6g} does not match the shape ({expected:.6g} expected)")
        return self


def _model_flops(kind: str, shape: dict[str, float]) -> float | None:
    if kind in GEMM_KINDS:
        return 2.0 * shape["m"] * shape["n"] * shape["k"]
    if kind in ATTENTION_KINDS:
        seq = shape["seq"]
        keys = seq / 2 if shape.get("causal", 1.0) else seq
        fwd = 2.0 * shape.get("batch", 1.0) * shape["heads"] * (shape["qk_dim"] + shape["v_dim"]) * seq * keys
        return fwd * (2.0 if kind == "attention_bwd" else 1.0)
    return None


@dataclass(frozen=True, slots=True)
class RateLookup:
    """A whole-GPU rate (FLOP/s or bytes/s) for an op, and where it came from."""

    rate: float
    exact: bool  # the family matched exactly (False: the nearest close family stood in)
    source: str
    at_measured_point: bool = False
    edge_m: float | None = None  # set by ``edge()``: the measured size whose rate this is


class CalibrationTable(_Frozen):
    schema_version: int
    device: DeviceInfo
    entries: tuple[Entry, ...]
    notes: str = ""

    @model_validator(mode="after")
    def _check(self) -> CalibrationTable:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"schema_version: this sim reads version {SCHEMA_VERSION} (got {self.schema_version})")
        if not self.entries:
            raise ValueError("entries: the table has no entries")
        for i, e in enumerate(self.entries):
            scale = 1.0
            if e.sm_scaled:
                if self.device.num_sms is None or e.sms_used is None or e.sms_used > self.device.num_sms:
                    raise ValueError(f"entries.{i}.sms_used: must be <= device.num_sms to scale a rate")
                scale = self.device.num_sms / e.sms_used
            expected = e.work / e.seconds * scale
            if not math.isclose(e.rate, expected, rel_tol=RATE_RTOL):
                raise ValueError(f"entries.{i}: achieved rate {e.rate:.6g} does not match work / seconds"
                                 f"{' x num_sms / sms_used' if e.sm_scaled else ''} = {expected:.6g}")
        return self

    @property
    def is_gpu(self) -> bool:
        return self.device.kind in ("cuda", "trace")

    @cached_property
    def _by_kind(self) -> dict[tuple[str, str], tuple[Entry, ...]]:
        out: dict[tuple[str, str], list[Entry]] = {}
        for e in self.entries:
            out.setdefault((e.kind, e.dtype), []).append(e)
        return {k: tuple(v) for k, v in out.items()}

    def rate(self, kind: str, dtype: str, *, m: float, n: float = 0, k: float = 0, groups: float = 1,
             name: str | None = None, gemm_pass: str | None = None, heads: float = 0, qk_dim: float = 0,
             v_dim: float = 0, ranks: float = 0, causal: bool | None = None) -> RateLookup | None:
        """The whole-GPU rate of an op of ``kind`` at size ``m`` (see the module docstring), or None when the
        table does not cover it (no close family, or ``m`` outside the measured range)."""
        query = _query_key(kind, n, k, groups, heads, qk_dim, v_dim, ranks)
        for dist, key, points in self._ranked(kind, dtype, name, gemm_pass, causal, query):
            if dist > NEAREST_FAMILY_MAX_LOG_DISTANCE:
                break
            hit = interp_loglog(points, m)
            if hit is None:
                if dist == 0:
                    return None  # the exact family does not cover m: fall back, never borrow another's
                continue
            value, at_point = hit
            return RateLookup(value, dist == 0, self._describe(kind, dtype, key, points, m, at_point, dist),
                              at_point)
        return None

    def edge(self, kind: str, dtype: str, *, m: float, n: float = 0, k: float = 0, groups: float = 1,
             gemm_pass: str | None = None) -> RateLookup | None:
        """For a GEMM outside its exact family's measured range: the rate at the nearest measured size, with
        that size in ``edge_m`` (callers join a model of their own there, continuously). None without an
        exact family, or when ``m`` lies inside the range (use :meth:`rate`)."""
        query = _query_key(kind, n, k, groups, 0, 0, 0, 0)
        for dist, key, points in self._ranked(kind, dtype, None, gemm_pass, None, query):
            if dist > 0:
                return None
            x, y = points[0] if m < points[0][0] else points[-1]
            if points[0][0] <= m <= points[-1][0]:
                return None
            return RateLookup(y, True, self._describe(kind, dtype, key, points, x, True, 0.0), True, x)
        return None

    def _ranked(self, kind: str, dtype: str, name: str | None, gemm_pass: str | None, causal: bool | None,
                query: tuple[float, ...]) -> list[tuple[float, tuple[float, ...], list[tuple[float, float]]]]:
        """The families matching the filters, nearest first: (log distance, family key, merged points).
        Memoized: a simulation asks the same few questions many times."""
        memo_key = (kind, dtype, name, gemm_pass, causal, query)
        hit = self._memo.get(memo_key)
        if hit is None:
            families = self._families(kind, dtype, name, gemm_pass, causal)
            hit = sorted(((log_distance(query, key), key, points) for key, points in families.items()),
                         key=lambda t: (t[0], t[1]))
            self._memo[memo_key] = hit
        return hit

    def _families(self, kind: str, dtype: str, name: str | None, gemm_pass: str | None, causal: bool | None
                  ) -> dict[tuple[float, ...], list[tuple[float, float]]]:
        families: dict[tuple[float, ...], list[Entry]] = {}
        for e in self._by_kind.get((kind, dtype), ()):
            if ((name is None or e.name == name) and (gemm_pass is None or e.gemm_pass == gemm_pass)
                    and (causal is None or bool(e.shape.get("causal", 1.0)) == causal)):
                families.setdefault(_family_key(e), []).append(e)
        return {key: merge_points((e.size, e.rate) for e in es) for key, es in families.items()}

    @cached_property
    def _memo(self) -> dict[tuple, list]:  # type: ignore[type-arg]
        return {}

    def _describe(self, kind: str, dtype: str, key: tuple[float, ...], points: list[tuple[float, float]],
                  m: float, at_point: bool, dist: float) -> str:
        fam = ",".join(f"{v:g}" for v in key) or "all"
        how = "measured" if at_point else f"interpolated in {len(points)} points {points[0][0]:g}..{points[-1][0]:g}"
        near = "" if dist == 0 else f", nearest family (log distance {dist:.2f})"
        return f"{self.device.name} [{self.device.kind}] {kind} {dtype} ({fam}) at {m:g}: {how}{near}"

    def check_usable_for(self, gpu_name: str, allow_cpu: bool = False) -> str | None:
        """Refuse a table that does not describe ``gpu_name``; returns a warning to print, or None.

        A CPU table is refused unless ``allow_cpu`` (pipeline-validation mode), where the warning says that
        the results validate the calibration pipeline only.
        """
        d = self.device
        if d.kind == "cpu":
            what = f"measured on a CPU ({d.name}, torch {d.torch_version or '?'})"
            if not allow_cpu:
                raise SimInputError(f"this table was {what}: CPU timings validate the calibration pipeline only "
                                    f"and are never GPU data for {gpu_name}. Use a table measured on that GPU "
                                    "(sim calibrate --device cuda, or --from-trace), or run explicitly in "
                                    "pipeline-validation mode", field="calibration")
            return (f"PIPELINE VALIDATION ONLY: the calibration table was {what}; its timings stand in for "
                    f"{gpu_name} and the results are not a performance prediction")
        if gpu_model_token(d.name) != gpu_model_token(gpu_name):
            raise SimInputError(f"this table was measured on {d.name} but the scenario's GPU is {gpu_name}; "
                                "calibrate on that GPU or drop the calibration", field="calibration")
        return None


def _family_key(e: Entry) -> tuple[float, ...]:
    s = e.shape
    return _query_key(e.kind, s.get("n", 0), s.get("k", 0), s.get("groups", 1), s.get("heads", 0),
                      s.get("qk_dim", 0), s.get("v_dim", 0), s.get("ranks", 0))


def _query_key(kind: str, n: float, k: float, groups: float, heads: float, qk_dim: float, v_dim: float,
               ranks: float) -> tuple[float, ...]:
    if kind in GEMM_KINDS:
        return (float(n), float(k), float(groups))
    if kind in ATTENTION_KINDS:
        return (float(heads), float(qk_dim), float(v_dim))
    if kind in COMM_KINDS:
        return (float(ranks),)
    return ()


# ------------------------------------------------------------------------------------------------ files


def load_table(path: str | Path) -> CalibrationTable:
    """Read and validate a calibration table; every problem is a :class:`SimInputError` naming the file.
    Tables are immutable: a file already read (same path, size and modification time) is not parsed again."""
    p = Path(path)
    try:
        text = p.read_text()
        stat = p.stat()
    except OSError as e:
        raise SimInputError(f"cannot read calibration file {p}: {e.strerror or e}", field="calibration") from None
    key = (str(p.resolve()), stat.st_size, stat.st_mtime_ns, hash(text))
    table = _LOADED.get(key)
    if table is None:
        table = _LOADED[key] = parse_table(text, str(p))
    return table


_LOADED: dict[tuple[str, int, int, int], CalibrationTable] = {}


def parse_table(text: str, label: str = "<text>") -> CalibrationTable:
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as e:
        raise SimInputError(f"{label} is not valid YAML (corrupt calibration file?): {e}",
                            field="calibration") from None
    if not isinstance(data, dict) or "entries" not in data or "device" not in data:
        raise SimInputError(f"{label} is not a calibration table (expected a mapping with schema_version, "
                            "device and entries; make one with `sim calibrate`)", field="calibration")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SimInputError(f"{label} has schema_version {version!r}; this sim reads version {SCHEMA_VERSION}. "
                            "Re-create it with `sim calibrate`", field="calibration")
    try:
        return CalibrationTable.model_validate(data)
    except ValidationError as e:
        raise SimInputError(f"{label} is not a valid calibration table:\n"
                            f"{format_validation_error(e, CalibrationTable)}", field="calibration") from None


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_presenter)


def table_to_yaml(table: CalibrationTable, header: str) -> str:
    """The table as YAML under a ``#`` comment saying how it was produced."""
    data: dict[str, Any] = table.model_dump(mode="json", exclude_defaults=True)
    data = {"schema_version": data.pop("schema_version"), **data}
    body = yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=118,
                     allow_unicode=True)
    head = "".join(f"# {line}".rstrip() + "\n" for line in header.strip().splitlines())
    return head + body
