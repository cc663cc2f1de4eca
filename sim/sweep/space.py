"""The space a spec spans: its axes resolved against the base job, the points in a fixed order, and each point
as a scenario.

A point is a tuple of axis values, numbered by its position in the product of the axes (the order of
:data:`AXIS_ORDER`, then the ``set`` keys, then the :data:`INNER` axes): the number is stable for a given
spec, which is what ``--resume`` relies on. Axes a spec leaves out keep the base's value, except ``dp`` and
``num_microbatches``, which are derived per point (GPUs and layout change under them). Without a ``gpus``
axis every hardware runs the base's GPU count. Under ``balancing: eplb`` a base without redundant experts
gets one spare slot per GPU of the EP group, as ``sim experts --policy eplb`` does (``sim.step.with_policy``).

The space is what workers receive: plain data (the base scenario and the clusters as mappings), picklable.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from sim.config import ClusterSpec, ExpertLoadSpec, ParallelSpec, PrecisionSpec, Scenario
from sim.errors import SimInputError, format_validation_error
from sim.loading import find_workload, load_scenario, profiles_dir, resolve_cluster
from sim.pipeline import num_stages
from sim.sweep.spec import PRECISION_RECIPES, SweepSpec

#: Column order of the axes; ``set`` keys follow.
AXIS_ORDER = ("hardware", "gpus", "tp", "pp", "dp", "ep", "cp", "schedule", "vpp", "micro_batch_size",
              "num_microbatches", "zero_stage", "fsdp_shard_group", "recompute", "sequence_parallel",
              "tp_comm_overlap", "ep_overlap", "precision", "balancing", "usd_per_gpu_hour")
PARALLEL_AXES = ("tp", "pp", "dp", "ep", "cp", "schedule", "vpp", "micro_batch_size", "num_microbatches",
                 "zero_stage", "fsdp_shard_group", "recompute", "sequence_parallel", "tp_comm_overlap",
                 "ep_overlap")
#: Axes enumerated innermost: they change neither legality nor the stage layout, only model states
#: (zero_stage), activations (recompute), routing (balancing) or the price; see ``sim.sweep.prune``.
INNER = ("zero_stage", "recompute", "balancing", "usd_per_gpu_hour")


@dataclass(frozen=True)
class Axis:
    """One swept quantity: its column name and values (hashable; a precision axis maps each value, the
    recipe's name, to the precision fields it sets)."""

    name: str
    values: tuple[Any, ...]
    changes: dict[Any, dict[str, Any]] | None = None


def hardware_profile(value: str) -> str:
    """A cluster profile for a hardware value: the value itself when it names a profile or file, else the
    cluster profile named after the GPU (``h100`` -> ``h100_ib_1024``: profiles whose name has the word, those
    starting with it first, then by name)."""
    clusters = sorted(p.stem for p in (profiles_dir() / "clusters").glob("*.yaml"))
    if value in clusters or Path(value).is_file():
        return value
    token = value.lower()
    named = [c for c in clusters if token in c.split("_")]
    named.sort(key=lambda c: (not c.startswith(token + "_"), c))
    return named[0] if named else value


@dataclass
class Space:
    """The resolved axes and base of a sweep (see the module docstring)."""

    spec: SweepSpec
    base: dict[str, Any]  # the base scenario, model_dump()
    axes: tuple[Axis, ...]
    clusters: dict[str, dict[str, Any]]  # hardware label -> cluster mapping
    tokens: float
    notes: list[str] = field(default_factory=list)

    @cached_property
    def index(self) -> dict[str, int]:
        return {a.name: i for i, a in enumerate(self.axes)}

    @cached_property
    def base_scenario(self) -> Scenario:
        return Scenario.model_validate(self.base)

    @property
    def size(self) -> int:
        n = 1
        for a in self.axes:
            n *= len(a.values)
        return n

    def points(self) -> Iterator[tuple[Any, ...]]:
        """Every point, in index order."""
        return itertools.product(*(a.values for a in self.axes))

    def value(self, point: tuple[Any, ...], name: str, default: Any = None) -> Any:
        i = self.index.get(name)
        return point[i] if i is not None else default

    def price(self, point: tuple[Any, ...], cluster: ClusterSpec) -> float:
        return self.value(point, "usd_per_gpu_hour", cluster.usd_per_gpu_hour)

    def sim_key(self, point: tuple[Any, ...]) -> tuple[Any, ...]:
        """The point without its price: points that share it share one simulation."""
        i = self.index.get("usd_per_gpu_hour")
        return point if i is None else point[:i] + point[i + 1:]

    def hardware_of(self, point: tuple[Any, ...]) -> str:
        return self.value(point, "hardware", "")

    def num_gpus(self, point: tuple[Any, ...]) -> int:
        hw = self.hardware_of(point)
        default = self.base["cluster"]["num_nodes"] * self.base["cluster"]["node"]["gpus_per_node"]
        return int(self.value(point, "gpus", default)) if hw or "gpus" in self.index else default

    def cluster_data(self, point: tuple[Any, ...]) -> dict[str, Any]:
        hw = self.hardware_of(point)
        data = dict(self.clusters[hw]) if hw else dict(self.base["cluster"])
        for a, v in zip(self.axes, point, strict=True):
            if a.name.startswith("cluster."):
                data = _set_path(copy.deepcopy(data), a.name.split(".", 1)[1], v)
        gpn = data["node"]["gpus_per_node"]
        gpus = self.num_gpus(point)
        data["num_nodes"] = gpus // gpn if gpus % gpn == 0 else gpus / gpn  # a fraction fails validation
        return data

    def scenario_data(self, point: tuple[Any, ...]) -> dict[str, Any]:
        """The point as a scenario mapping (validated by the caller)."""
        b = self.base
        data = {**b, "parallel": dict(b["parallel"]), "precision": dict(b["precision"]),
                "experts": dict(b["experts"]), "cluster": self.cluster_data(point)}
        par = data["parallel"]
        par["dp"] = None
        par["num_microbatches"] = None
        for a, v in zip(self.axes, point, strict=True):
            if a.name in PARALLEL_AXES:
                par[a.name] = v
            elif a.name == "precision":
                data["precision"].update(a.changes[v] if a.changes else {})
            elif a.name == "balancing":
                data["experts"]["policy"] = v
                if v == "eplb" and not b["experts"]["num_redundant_experts"]:
                    data["experts"]["num_redundant_experts"] = par["ep"]
            elif a.name.count(".") and not a.name.startswith("cluster."):  # cluster keys: in cluster_data
                section, rest = a.name.split(".", 1)
                data[section] = _set_path(copy.deepcopy(data[section]), rest, v)
                if section == "parallel":
                    par = data["parallel"]  # the axes after this one write into the new mapping
        if par["tp"] > 1 and not any(a.name == "sequence_parallel" for a in self.axes) and \
                self.base_scenario.model.is_moe:
            par["sequence_parallel"] = True  # a swept TP of an MoE runs with sequence parallelism (it needs it)
        layers = par.get("stage_layers")
        if layers is not None and len(layers) != num_stages(par["schedule"], par["pp"], par["vpp"]):
            par["stage_layers"] = None
        return data

    def scenario(self, point: tuple[Any, ...]) -> Scenario:
        return Scenario.model_validate(self.scenario_data(point))


def _freeze(v: Any) -> Any:
    return tuple(_freeze(x) for x in v) if isinstance(v, list) else v


def _set_path(node: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    cur = node
    *parents, leaf = path.split(".")
    for p in parents:
        cur = cur.setdefault(p, {})
    cur[leaf] = value
    return node


def _check_values(name: str, values: tuple[Any, ...], annotation: Any) -> tuple[Any, ...]:
    ta = TypeAdapter(annotation)
    kept = []
    for i, v in enumerate(values):
        try:
            kept.append(ta.validate_python(v))
        except ValidationError as e:
            msg = format_validation_error(e).replace("\n", "; ")
            raise SimInputError(msg, field=f"axes.{name}.{i}") from None
    return tuple(dict.fromkeys(kept))


def build_space(spec: SweepSpec, spec_dir: Path | None = None) -> Space:
    """Resolve the spec's base and axes (SimInputError naming the field on any problem)."""
    base_dir = spec_dir or Path.cwd()
    ref = spec.base if not (base_dir / spec.base).is_file() else str(base_dir / spec.base)
    try:
        find_workload(ref)
    except SimInputError as e:
        raise SimInputError(str(e).split(": ", 1)[-1], field="base") from None
    overrides = tuple(f"{k}={v}" for k, v in spec.set.items())
    try:
        base = load_scenario(ref, overrides=overrides)
    except SimInputError as e:
        raise SimInputError(f"the base job with the spec's set: {e}", field="base") from None
    notes: list[str] = []
    ax = spec.axes
    axes: list[Axis] = []
    clusters: dict[str, dict[str, Any]] = {}
    if ax.hardware is not None:
        for i, hw in enumerate(ax.hardware):
            try:
                data = resolve_cluster(hardware_profile(hw), base_dir)
                ClusterSpec.model_validate(data)
            except SimInputError as e:
                raise SimInputError(str(e), field=f"axes.hardware.{i}") from None
            except ValidationError as e:
                raise SimInputError(format_validation_error(e, ClusterSpec).replace("\n", "; "),
                                    field=f"axes.hardware.{i}") from None
            clusters[hw] = data
        axes.append(Axis("hardware", tuple(clusters)))
    if ax.gpus is not None:
        axes.append(Axis("gpus", tuple(dict.fromkeys(ax.gpus))))
    fields = ParallelSpec.model_fields
    for name in PARALLEL_AXES:
        values = getattr(ax, name)
        if values is None:
            continue
        values = _check_values(name, values, fields[name].annotation)
        axes.append(Axis(name, values))
    if ax.precision is not None:
        axes.append(_precision_axis(ax.precision, base))
    if ax.balancing is not None:
        if not base.model.is_moe:
            notes.append("axes.balancing: the model has no routed experts; axis skipped")
        else:
            pol = _check_values("balancing", ax.balancing, ExpertLoadSpec.model_fields["policy"].annotation)
            axes.append(Axis("balancing", pol))
    if ax.usd_per_gpu_hour is not None:
        if any(p < 0 for p in ax.usd_per_gpu_hour):
            raise SimInputError("prices must be >= 0", field="axes.usd_per_gpu_hour")
        axes.append(Axis("usd_per_gpu_hour", tuple(dict.fromkeys(ax.usd_per_gpu_hour))))
    for key, values in ax.set.items():
        axes.append(Axis(key, tuple(dict.fromkeys(_freeze(v) for v in values))))
    axes = [a for a in axes if a.name not in INNER] + sorted((a for a in axes if a.name in INNER),
                                                             key=lambda a: INNER.index(a.name))
    tokens = spec.tokens if spec.tokens is not None else base.training.total_tokens
    space = Space(spec, base.model_dump(), tuple(axes), clusters, tokens, notes)
    if base.parallel.stage_layers is not None and any(a.name in ("pp", "schedule", "vpp") for a in axes):
        notes.append("the base's parallel.stage_layers is dropped (balanced split) where a point's stage "
                     "count differs")
    return space


def _precision_axis(values: tuple[str | dict[str, Any], ...], base: Scenario) -> Axis:
    changes: dict[Any, dict[str, Any]] = {}
    for i, v in enumerate(values):
        if isinstance(v, str):
            if v not in PRECISION_RECIPES and v != "base":
                raise SimInputError(f"unknown recipe {v!r}; recipes: base, {', '.join(PRECISION_RECIPES)}, or "
                                    "a mapping of precision fields", field=f"axes.precision.{i}")
            change, label = ({} if v == "base" else PRECISION_RECIPES[v]), v
        else:
            change = {k: x for k, x in v.items() if k != "name"}
            label = str(v.get("name") or ",".join(f"{k}={x}" for k, x in sorted(change.items())))
        try:
            PrecisionSpec.model_validate({**base.precision.model_dump(), **change})
        except ValidationError as e:
            raise SimInputError(format_validation_error(e, PrecisionSpec).replace("\n", "; "),
                                field=f"axes.precision.{i}") from None
        changes[label] = change
    return Axis("precision", tuple(changes), changes)
