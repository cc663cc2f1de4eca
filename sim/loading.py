"""YAML loading: workload and hardware files -> a validated, frozen :class:`~sim.config.Scenario`.

A workload (job) file names its model, cluster and optional calibration table by path (relative to the file)
or by profile name (``hardware_profiles/clusters/<name>.yaml``, ``hardware_profiles/gpus/<name>.yaml``,
``hardware_profiles/nodes/<name>.yaml``, ``workloads/models/<name>.yaml``); each may also be inlined as a
mapping. Overrides (``--set parallel.pp=8``) apply to the resolved mapping before validation, so every
problem is reported by the same validators with the field's dotted path.

Guards (:mod:`sim.guards`): a key repeated in a YAML mapping is refused where it is (PyYAML would keep the last
one silently), strings are bounded before validation, references that no file system could hold are refused
as such, and a validated scenario passes :func:`sim.guards.check_scenario`; :func:`scenario_guard` lets a
command check every scenario it loads (``sim validate`` prices each case against the work budget).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sim.config import ClusterSpec, GpuSpec, ModelSpec, Scenario
from sim.config.hardware import gpu_model_token
from sim.errors import SimInputError, format_validation_error
from sim.guards import check_overrides_read, check_raw, check_scenario

DEFAULT_WORKLOAD = "deepseek_v3.yaml"
#: libyaml's C loader when PyYAML was built with it (about 6x faster than the pure-Python one), else Python's.
_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` with the C loader when available (same results: both build plain Python objects
    from the safe subset of YAML). Raises ``yaml.YAMLError`` on bad input."""
    return yaml.load(text, Loader=_SAFE_LOADER)  # a safe loader: plain Python objects only


def data_root() -> Path:
    """Where ``workloads/`` and ``hardware_profiles/`` live: installed with the package (``sim/data``; the
    repository's top-level ``workloads`` and ``hardware_profiles`` point there). ``SIM_HOME`` overrides."""
    env = os.environ.get("SIM_HOME")
    return Path(env) if env else Path(__file__).resolve().parent / "data"


def workloads_dir() -> Path:
    return data_root() / "workloads"


def profiles_dir() -> Path:
    return data_root() / "hardware_profiles"


class _UniqueKeyLoader(_SAFE_LOADER):  # type: ignore[misc,valid-type]
    """A safe loader (libyaml's C parser when available) that refuses a key repeated in one mapping, naming it
    and its lines."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        try:
            first = seen.setdefault(key, line)
        except TypeError:  # an unhashable key: the constructor below reports it
            continue
        if first != line:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (lines {first} and {line}); a key may appear once per mapping",
                key_node.start_mark)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SimInputError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise SimInputError(f"{path}: not valid YAML: {e}") from None
    except RecursionError:
        raise SimInputError(f"{path}: nested too deeply") from None
    if not isinstance(data, dict):
        raise SimInputError(f"{path}: expected a mapping at the top level")
    check_raw(data)
    return data


#: A reference (a profile name or a path) longer than this cannot name a file on any POSIX file system.
MAX_REF_LENGTH = 4096


def is_file(path: Path) -> bool:
    """``path.is_file()``, False (not an exception) for names no file system holds (too long, a NUL)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _check_ref(ref: str, kind: str) -> None:
    if len(ref) > MAX_REF_LENGTH or any(len(part.encode()) > 255 for part in Path(ref).parts) or "\x00" in ref:
        raise SimInputError(f"a reference of {len(ref):,} characters is neither a profile name nor a path a file "
                            "system can hold (names up to 255 bytes)", field=kind)


def _resolve_file(ref: str, base: Path, named_dir: Path, kind: str) -> Path:
    _check_ref(ref, kind)
    candidates = [base / ref, Path(ref), named_dir / ref, named_dir / f"{ref}.yaml"]
    for c in candidates:
        if is_file(c):
            return c.resolve()
    known = sorted(p.stem for p in named_dir.glob("*.yaml")) if named_dir.is_dir() else []
    raise SimInputError(f"{ref!r} is neither a file nor a known {kind}; known: {', '.join(known)}", field=kind)


def _load_ref(value: Any, base: Path, named_dir: Path, kind: str) -> tuple[dict[str, Any], Path]:
    """A mapping as is, or the YAML file a string names; returns the mapping and its directory."""
    if isinstance(value, dict):
        return copy.deepcopy(value), base
    if isinstance(value, str):
        path = _resolve_file(value, base, named_dir, kind)
        return read_yaml(path), path.parent
    raise SimInputError(f"expected a profile name, a path or a mapping (got {type(value).__name__})", field=kind)


def resolve_cluster(value: Any, base: Path) -> dict[str, Any]:
    data, cbase = _load_ref(value, base, profiles_dir() / "clusters", "cluster")
    for part, sub in (("gpu", "gpus"), ("node", "nodes")):
        if part not in data:
            raise SimInputError("missing", field=f"cluster.{part}")
        data[part], _ = _load_ref(data[part], cbase, profiles_dir() / sub, f"cluster.{part}")
    return data


def is_model_file(data: dict[str, Any]) -> bool:
    """A bare architecture file (``workloads/models/*.yaml``) rather than a training job."""
    return "n_layers" in data and "model" not in data


def resolve_workload(path: Path) -> dict[str, Any]:
    """Read a job file and inline everything it refers to (model, cluster, GPU, node)."""
    data = read_yaml(path)
    base = path.parent
    if "model" not in data:
        raise SimInputError("missing (a job file names its model)", field="model")
    data["model"], _ = _load_ref(data["model"], base, workloads_dir() / "models", "model")
    if "cluster" not in data:
        raise SimInputError("missing (a job file names its cluster)", field="cluster")
    data["cluster"] = resolve_cluster(data["cluster"], base)
    if isinstance(data.get("software"), str):
        data["software"], _ = _load_ref(data["software"], base, profiles_dir() / "software", "software")
    if isinstance(data.get("calibration"), str):
        cal = Path(data["calibration"])
        data["calibration"] = str(cal if cal.is_absolute() else (base / cal).resolve())
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``key.path=value`` with the value read as YAML (numbers, booleans, lists)."""
    if "=" not in text:
        raise SimInputError(f"expected key=value (got {text[:80]!r})", field="--set")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise SimInputError(f"empty key in {text[:80]!r}", field="--set")
    if len(key) > 200 or any(not part for part in key.split(".")):
        raise SimInputError(f"not a dotted field path: {key[:80]!r}", field="--set")
    try:
        value = yaml.load(raw, Loader=_UniqueKeyLoader) if raw.strip() else ""
    except (yaml.YAMLError, RecursionError):
        value = raw
    check_raw({key: value})
    return key, value


def apply_override(data: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key`` in ``data``: mapping keys (created when missing), and list entries by index
    (``run.phases.0.tokens``: the first phase's tokens)."""
    node: Any = data
    parts = key.split(".")
    for i, part in enumerate(parts):
        where, last = ".".join(parts[:i]), i == len(parts) - 1
        if isinstance(node, list):
            if not node:
                raise SimInputError(f"{where} is an empty list", field=key)
            if not part.isdigit() or int(part) >= len(node):
                raise SimInputError(f"{where} is a list of {len(node)}: index it 0-{len(node) - 1} (got {part!r})",
                                    field=key)
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise SimInputError(f"{where} is not a mapping", field=key)
        if last:
            node[part] = value
            return
        if node.get(part) is None:
            node[part] = {}
        node = node[part]


def validate(cls: type[BaseModel], data: dict[str, Any], prefix: str = "") -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise SimInputError(format_validation_error(e, cls, prefix)) from None


def find_workload(ref: str | None) -> Path:
    """A workload path, or a name under ``workloads/``; None means the default DeepSeek-V3 job."""
    ref = ref or DEFAULT_WORKLOAD
    _check_ref(ref, "WORKLOAD")
    for c in (Path(ref), workloads_dir() / ref, workloads_dir() / f"{ref}.yaml",
              workloads_dir() / "models" / ref, workloads_dir() / "models" / f"{ref}.yaml"):
        if is_file(c):
            return c.resolve()
    raise SimInputError(f"no such workload file or name: {ref!r}", field="WORKLOAD")


def load_scenario(ref: str | None = None, *, hardware: str | None = None, gpus: int | None = None,
                  overrides: tuple[str, ...] | list[str] = ()) -> Scenario:
    """The one entry point from files and command-line options to a validated Scenario."""
    path = find_workload(ref)
    raw = read_yaml(path)
    if is_model_file(raw):
        raise SimInputError(f"{path.name} describes a model architecture only; a training job file "
                            "(model + cluster + parallel + training) is needed here", field="WORKLOAD")
    if isinstance(raw, dict) and "measured" in raw and "family" in raw:
        raise SimInputError(f"{path.name} is a published case (a job with its measured result and variants); "
                            f"`sim validate {path.stem}` runs it, or copy one variant's settings into a job file",
                            field="WORKLOAD")
    data = resolve_workload(path)
    if hardware:
        data["cluster"] = resolve_cluster(hardware, Path.cwd())
    keys = []
    for text in overrides:
        key, value = parse_override(text)
        keys.append(key)
        if key == "software" and isinstance(value, str):  # a named stack replaces the job's
            value, _ = _load_ref(value, path.parent, profiles_dir() / "software", "software")
        elif key == "model" and isinstance(value, str):  # a named model replaces the job's
            value, _ = _load_ref(value, path.parent, workloads_dir() / "models", "model")
        elif key == "cluster" and isinstance(value, str):
            value = resolve_cluster(value, Path.cwd())
        apply_override(data, key, value)
    if gpus is not None:
        per_node = data["cluster"]["node"].get("gpus_per_node", 8)
        if gpus < 1 or gpus % per_node:
            raise SimInputError(f"must be a positive multiple of the {per_node} GPUs per node (got {gpus})",
                                field="--gpus")
        data["cluster"]["num_nodes"] = gpus // per_node
        data.setdefault("parallel", {})["dp"] = None
    scenario = validate(Scenario, data)
    check_scenario(scenario)
    check_overrides_read(scenario, keys)
    guard = _SCENARIO_GUARD.get()
    if guard is not None:
        guard(scenario)
    return scenario


_SCENARIO_GUARD: ContextVar[Callable[[Scenario], None] | None] = ContextVar("scenario_guard", default=None)


@contextmanager
def scenario_guard(check: Callable[[Scenario], None]) -> Iterator[None]:
    """Within the block, :func:`load_scenario` passes every scenario it returns to ``check`` (which raises a
    :class:`SimInputError` to refuse it)."""
    token = _SCENARIO_GUARD.set(check)
    try:
        yield
    finally:
        _SCENARIO_GUARD.reset(token)


def load_model(ref: str, overrides: tuple[str, ...] | list[str] = ()) -> tuple[ModelSpec, Scenario | None]:
    """A model from a bare architecture file, or a model plus its scenario from a job file. ``overrides``
    (``model.max_seq_len=131072``; on a bare model file the ``model.`` prefix is optional) apply first."""
    path = find_workload(ref)
    raw = read_yaml(path)
    if is_model_file(raw):
        for text in overrides:
            key, value = parse_override(text)
            apply_override(raw, key.removeprefix("model."), value)
        return validate(ModelSpec, raw), None
    scenario = load_scenario(str(path), overrides=overrides)
    return scenario.model, scenario


def load_cluster(ref: str) -> ClusterSpec:
    return validate(ClusterSpec, resolve_cluster(ref, Path.cwd()), "cluster")


def find_gpu_profile(device_name: str) -> GpuSpec | None:
    """The GPU profile whose model matches a device name as a driver reports it ('NVIDIA H800' -> the
    H800-SXM-80GB profile), or None."""
    paths = sorted((profiles_dir() / "gpus").glob("*.yaml"))
    stamp = tuple((str(p), p.stat().st_mtime_ns) for p in paths)
    return _find_gpu_profile(gpu_model_token(device_name), stamp)


@lru_cache(maxsize=32)
def _find_gpu_profile(token: str, stamp: tuple[tuple[str, int], ...]) -> GpuSpec | None:
    """Memoized by the profiles' paths and modification times (``stamp``): a changed file is read again."""
    for path, _ in stamp:
        data = read_yaml(Path(path))
        if gpu_model_token(str(data.get("name", ""))) == token:
            return validate(GpuSpec, data, "gpu")
    return None
