"""Case files of ``workloads/published/``: their schema, and their expansion into one case per variant.

A case file is a training job file (``model``, ``cluster``, ``parallel``, ``precision``, ``training``, ... exactly as
in ``workloads/*.yaml``, validated by the simulator) plus these case keys, validated here:

- ``family`` (required): the group the case is summarised in, e.g. ``ptdp_weak_a100``;
- ``title`` (required): one line naming the run and its source;
- ``measured``: ``value``, ``unit``, ``metric`` (``sim.validation.metrics.METRICS``), ``accounting`` (in words,
  what the source's number counts), ``source`` (paper + table, or repo + path + commit), and ``peak_tflops``
  (the source's per-GPU peak, for ``metric: mfu``). Variants inherit every field they do not set;
- ``variants``: rows that differ only in GPUs, batch, model size or layout, each with a ``name``, ``set`` (a list
  of ``--set``-style ``key=value`` overrides of the job) and its own ``measured`` block (at least ``value``), and
  an optional ``note``. A file without variants is one case named after the file;
- ``set``: overrides applied to every variant, before the variant's own (e.g. the node count of a named cluster);
- ``job``: a path (relative to the case file) of an existing job file to validate as is, instead of job keys
  in the case file (the DeepSeek-V3 default job is referenced this way, not copied).

Case names are ``<file stem>/<variant name>``. Problems in the case keys raise ``SimInputError`` naming the file
and the field; whether the job itself is expressible is for the simulator to say when the case runs.
"""

from __future__ import annotations

import copy
import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from sim.config.base import Frozen
from sim.errors import SimInputError
from sim.loading import workloads_dir
from sim.validation.metrics import UNITS, MetricName


def published_dir() -> Path:
    """The published cases installed with the package (``workloads/published``; ``SIM_HOME`` overrides)."""
    return workloads_dir() / "published"


CASE_KEYS = ("family", "title", "job", "set", "measured", "variants")
_FIELD_MSG_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*): ")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class MeasuredPatch(Frozen):
    """A ``measured:`` block as written: a variant sets ``value`` and inherits the rest from the file."""

    value: float | None = Field(default=None, gt=0)
    unit: str | None = None
    metric: MetricName | None = None
    accounting: str | None = Field(default=None, min_length=1)
    source: str | None = Field(default=None, min_length=1)
    peak_tflops: float | None = Field(default=None, gt=0, description="the source's per-GPU peak (metric mfu)")


class Measured(Frozen):
    """A published number and how to compare with it."""

    value: float = Field(gt=0)
    unit: str
    metric: MetricName
    accounting: str = Field(min_length=1)
    source: str = Field(min_length=1)
    peak_tflops: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> Measured:
        want = UNITS[self.metric]
        if self.unit != want:
            raise ValueError(f"unit: metric {self.metric!r} is measured in {want!r} (got {self.unit!r})")
        if self.metric == "mfu":
            if self.peak_tflops is None:
                raise ValueError("peak_tflops: required for metric 'mfu' (the peak the source divides by)")
            if self.value > 1:
                raise ValueError(f"value: an MFU is a fraction in (0, 1] (got {self.value})")
        return self


class Variant(Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
    set: tuple[str, ...] = ()
    measured: MeasuredPatch
    note: str = ""


class CaseHeader(Frozen):
    family: str = Field(pattern=r"^[a-z0-9][a-z0-9_]*$")
    title: str = Field(min_length=1)
    job: str | None = None
    set: tuple[str, ...] = ()
    measured: MeasuredPatch = MeasuredPatch()
    variants: tuple[Variant, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> CaseHeader:
        names = [v.name for v in self.variants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"variants: names must be unique (repeated: {', '.join(dup)})")
        return self


@dataclass(frozen=True)
class Case:
    """One published number to reproduce: a job (with overrides) and what was measured."""

    name: str
    family: str
    title: str
    path: Path
    measured: Measured
    overrides: tuple[str, ...]
    body: dict[str, Any] | None = field(default=None, compare=False)  # job keys, references made absolute
    job_path: Path | None = None  # a referenced job file instead of a body
    note: str = ""


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _schema_error(path: Path, err: ValidationError, prefix: str = "") -> SimInputError:
    lines = []
    for e in err.errors():
        where = _loc(tuple(e.get("loc", ())))
        where = f"{prefix}.{where}" if prefix and where else (prefix or where)
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        named = _FIELD_MSG_RE.match(msg)
        if e.get("type") == "value_error" and named:  # a cross-field rule names its field first
            where = f"{where}.{named.group(1)}" if where else named.group(1)
            msg = msg[named.end():]
        if e.get("type") == "extra_forbidden":
            msg = "unknown key"
        elif e.get("type") == "literal_error":
            msg = f"got {e.get('input')!r}; allowed: {e.get('ctx', {}).get('expected')}"
        lines.append(f"{path}: {where}: {msg}" if where else f"{path}: {msg}")
    return SimInputError("\n".join(lines))


def parse_override(text: Any, path: Path, where: str) -> tuple[str, Any]:
    """A ``key.path=value`` override; the value is read as YAML, as ``sim run --set`` does."""
    if not isinstance(text, str) or "=" not in text:
        raise SimInputError(f"{path}: {where}: expected 'key.path=value' (got {text!r})")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not _KEY_RE.match(key):
        raise SimInputError(f"{path}: {where}: {key!r} is not a dotted key path (in {text!r})")
    if key.split(".")[0] in CASE_KEYS:
        raise SimInputError(f"{path}: {where}: {key!r} is a case key, not a job field; overrides change the job")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise SimInputError(f"{path}: {where}: the value of {key!r} is not valid YAML ({e})") from None
    return key, value


def _absolute_refs(body: dict[str, Any], base: Path) -> dict[str, Any]:
    """Profile and model references that name files beside the case become absolute paths, so the job can be
    handed to the simulator from anywhere; names of shared profiles are left for the simulator to find."""
    out = copy.deepcopy(body)

    def fix(value: Any) -> Any:
        if isinstance(value, str) and (base / value).is_file():
            return str((base / value).resolve())
        return value

    if "model" in out:
        out["model"] = fix(out["model"])
    if isinstance(out.get("cluster"), dict):
        for part in ("gpu", "node"):
            if part in out["cluster"]:
                out["cluster"][part] = fix(out["cluster"][part])
    elif "cluster" in out:
        out["cluster"] = fix(out["cluster"])
    cal = out.get("calibration")
    if isinstance(cal, str) and not Path(cal).is_absolute():
        out["calibration"] = str((base / cal).resolve())
    return out


def read_case_file(path: Path) -> list[Case]:
    """The cases of one file, one per variant; ``SimInputError`` names the file and field of any problem."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SimInputError(f"{path}: cannot read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise SimInputError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SimInputError(f"{path}: expected a mapping at the top level")
    header_raw = {k: raw[k] for k in CASE_KEYS if k in raw}
    body = {k: v for k, v in raw.items() if k not in CASE_KEYS}
    try:
        header = CaseHeader.model_validate(header_raw)
    except ValidationError as e:
        raise _schema_error(path, e) from None
    job_path = None
    if header.job is not None:
        if body:
            raise SimInputError(f"{path}: job: a case that references a job file carries no job keys of its own "
                                f"(found: {', '.join(sorted(body))}); change the job with set: overrides")
        job_path = (path.parent / header.job).resolve()
        if not job_path.is_file():
            raise SimInputError(f"{path}: job: no such job file {header.job!r}")
    elif not body:
        raise SimInputError(f"{path}: a case file needs job keys (model, cluster, parallel, training, ...) "
                            "or a job: reference")
    for i, text in enumerate(header.set):
        parse_override(text, path, f"set[{i}]")
    stem = path.stem
    variants = header.variants or (Variant(name=stem, measured=MeasuredPatch()),)
    cases = []
    for i, v in enumerate(variants):
        where = f"variants[{i}]" if header.variants else "measured"
        for j, text in enumerate(v.set):
            parse_override(text, path, f"{where}.set[{j}]")
        merged = {**header.measured.model_dump(exclude_none=True), **v.measured.model_dump(exclude_none=True)}
        try:
            measured = Measured.model_validate(merged)
        except ValidationError as e:
            prefix = f"{where}.measured" if header.variants else "measured"
            raise _schema_error(path, e, prefix) from None
        name = f"{stem}/{v.name}" if header.variants else stem
        cases.append(Case(name=name, family=header.family, title=header.title, path=path, measured=measured,
                          overrides=(*header.set, *v.set),
                          body=_absolute_refs(body, path.parent) if job_path is None else None,
                          job_path=job_path, note=v.note))
    return cases


def load_cases(folder: Path) -> list[Case]:
    """Every case of every ``*.yaml`` file directly in ``folder`` (``models/`` below it holds architectures)."""
    if not folder.is_dir():
        raise SimInputError(f"{folder}: no such folder of case files", field="--dir")
    cases: list[Case] = []
    for path in sorted(folder.glob("*.yaml")):
        cases.extend(read_case_file(path))
    return cases


def select(cases: list[Case], patterns: tuple[str, ...] | list[str]) -> list[Case]:
    """Cases by family, file stem, case name or glob on the case name (``ptdp_weak_a100/1*``); a pattern that is
    a file path loads that file. No pattern selects everything. Order: as listed, without repeats."""
    if not patterns:
        return list(cases)
    chosen: list[Case] = []
    seen: set[str] = set()
    for pattern in patterns:
        p = Path(pattern)
        if p.suffix in (".yaml", ".yml") and p.is_file():
            found = read_case_file(p.resolve())
        else:
            found = [c for c in cases if pattern in (c.name, c.family, c.path.stem)
                     or fnmatch.fnmatchcase(c.name, pattern)]
        if not found:
            families = sorted({c.family for c in cases})
            raise SimInputError(f"no case matches {pattern!r}; families: {', '.join(families)}; or a case name "
                                "such as " + (cases[0].name if cases else "FILE/VARIANT") + ", a glob, or a file",
                                field="CASES")
        for c in found:
            key = f"{c.path}:{c.name}"
            if key not in seen:
                seen.add(key)
                chosen.append(c)
    return chosen
