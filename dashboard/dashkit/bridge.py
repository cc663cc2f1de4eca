"""The dashboard's caller of ``sim`` (with :mod:`dashkit.bridge_run` for whole runs and validation): scenarios
from edits, cached simulations, plain views of the results.

Pages never import ``sim``; they call the bridge and draw what it returns (dataclasses of numbers and pandas
frames, cheap to pickle into Streamlit's cache). Every user mistake surfaces as :class:`UserError` naming the
field, never as a traceback.

- Scenarios are built the way ``sim run`` builds them: the job's YAML mapping (a built-in workload or an
  upload) is edited as a mapping, written to a temporary file and read back by :func:`sim.loading.load_scenario`.
  The same edited mapping is what the page offers for download, so the download loads to the same scenario.
- Results are cached with ``st.cache_data`` keyed on the validated scenario (its canonical JSON) and the tier.
- Tiers are ``sim.step.MODES``; :func:`interactive_tier` picks the fastest one present for interactive
  widgets (``analytic`` once the library has it, else ``fast``); ``detailed`` runs on request.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import streamlit as st
import yaml
from pydantic import ValidationError

from dashkit import frames
from dashkit.results import Balancing, Edits, StepView, UserError, split_field
from sim import loading
from sim.calibrate import table as caltable
from sim.config import ExpertLoadSpec, GpuSpec, PrecisionSpec, Scenario, evolve
from sim.config.parallel import RECOMPUTE_POLICIES
from sim.costs.calibration import memory_model_seconds
from sim.costs.kernels import CostModel
from sim.errors import SimInputError, format_validation_error
from sim.experts import POLICIES, simulate_balancing
from sim.pipeline import SCHEDULE_NAMES
from sim.step import MODES, simulate_step, with_policy

__all__ = ["POLICIES", "SCHEDULE_NAMES", "Balancing", "Edits", "StepView", "UserError"]

TIER_SPEED = ("analytic", "fast", "detailed")  # fastest first
TRACE_TIER = "fast"  # the fastest tier that records a timeline of actions
RECOMPUTE: tuple[str, ...] = RECOMPUTE_POLICIES  # the named policies (a per-op list is for job files)
SKEWS = tuple(k for k in get_args(ExpertLoadSpec.model_fields["skew"].annotation) if k != "histogram")


def _user_error(e: Exception) -> UserError:
    """The library's message, with the field it names split off (``parallel.pp: ...``)."""
    text = format_validation_error(e, Scenario) if isinstance(e, ValidationError) else str(e)
    if isinstance(e, KeyError) and e.args:
        text = str(e.args[0])
    lines = [split_field(line) for line in text.splitlines() if line.strip()]
    fields = list(dict.fromkeys(f for f, _ in lines if f))
    field = getattr(e, "field", None) or (fields[0] if fields else None)
    message = "\n".join(f"{f}: {m}" if f and f != field else m for f, m in lines) or text
    message = message.removeprefix(f"{field}: ")  # a field the regex cannot split off ("run.phases.0 (p)")
    return UserError(message, field)


def guarded(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; input errors from the library (and ``ValueError``/``KeyError`` of bad values) become
    :class:`UserError`."""
    try:
        return fn(*args, **kwargs)
    except UserError:
        raise
    except (SimInputError, ValidationError, ValueError, KeyError) as e:
        raise _user_error(e) from None


# ------------------------------------------------------------------------------------------------ catalog


def tiers() -> tuple[str, ...]:
    """The library's tiers (modes), fastest first."""
    known = tuple(t for t in TIER_SPEED if t in MODES)
    return known + tuple(m for m in MODES if m not in known)


def interactive_tier() -> str:
    """The fastest tier for interactive widgets: ``analytic`` when the library has it, else ``fast``."""
    return next(t for t in tiers() if t != "detailed")


def workloads() -> list[str]:
    """Built-in training jobs (not bare model architectures), by name."""
    out = []
    for p in sorted(loading.workloads_dir().glob("*.yaml")):
        if not loading.is_model_file(loading.read_yaml(p)):
            out.append(p.stem)
    return out


def _profiles(kind: str) -> list[str]:
    return sorted(p.stem for p in (loading.profiles_dir() / kind).glob("*.yaml"))


def clusters() -> list[str]:
    return _profiles("clusters")


def gpus() -> list[str]:
    return _profiles("gpus")


def calibration_tables() -> list[str]:
    return sorted(p.name for p in (loading.profiles_dir() / "calibrated").glob("*.yaml"))


# ------------------------------------------------------------------------------------------------ scenarios


def _base(edits: Edits) -> tuple[dict[str, Any], Path]:
    if edits.upload is None:
        path = guarded(loading.find_workload, edits.workload)
        return loading.read_yaml(path), path.parent
    try:
        raw = yaml.safe_load(edits.upload)
    except yaml.YAMLError as e:
        raise UserError(f"not valid YAML: {e}", "uploaded job") from None
    if not isinstance(raw, dict):
        raise UserError("expected a mapping (model, cluster, parallel, training, ...)", "uploaded job")
    return raw, loading.workloads_dir()


def _find(ref: str, base: Path, named: Path) -> Path | None:
    for c in (base / ref, named / ref, named / f"{ref}.yaml"):
        if c.is_file():
            return c.resolve()
    return None


def _inline(raw: dict[str, Any], key: str, base: Path) -> None:
    """Replace a profile reference (``cluster``, ``cluster.gpu``, ``cluster.node``) by its YAML mapping."""
    parent, _, leaf = key.rpartition(".")
    node = raw[parent] if parent else raw
    ref = node.get(leaf)
    if isinstance(ref, str):
        sub = {"cluster": "clusters", "cluster.gpu": "gpus", "cluster.node": "nodes"}[key]
        path = _find(ref, base, loading.profiles_dir() / sub)
        if path is None:
            raise UserError(f"{ref!r} is neither a file nor a known profile", key)
        node[leaf] = loading.read_yaml(path)


def _absolute_refs(raw: dict[str, Any], base: Path) -> None:
    """File references relative to the job's folder become absolute, so the mapping loads from anywhere."""
    for key, named in (("model", loading.workloads_dir() / "models"), ("cluster", loading.profiles_dir() / "clusters")):
        ref = raw.get(key)
        if isinstance(ref, str) and not (named / ref).is_file() and not (named / f"{ref}.yaml").is_file() \
                and (base / ref).is_file():
            raw[key] = str((base / ref).resolve())
    cal = raw.get("calibration")
    if isinstance(cal, str) and not Path(cal).is_absolute():
        raw["calibration"] = str((base / cal).resolve())


def job_mapping(edits: Edits) -> dict[str, Any]:
    """The edited job file as a mapping (the download)."""
    raw, base = _base(edits)
    raw = copy.deepcopy(raw)
    _absolute_refs(raw, base)
    if edits.cluster:
        raw["cluster"] = edits.cluster
    needs_cluster = edits.gpu or edits.num_gpus is not None or any(k.startswith("cluster.") for k, _ in edits.sets)
    if needs_cluster:
        _inline(raw, "cluster", base)
        if not isinstance(raw.get("cluster"), dict):
            raise UserError("missing (a job file names its cluster)", "cluster")
    if edits.gpu:
        raw["cluster"]["gpu"] = edits.gpu
    for part in ("gpu", "node"):
        if any(k.startswith(f"cluster.{part}.") for k, _ in edits.sets):
            _inline(raw, f"cluster.{part}", base)
    if edits.num_gpus is not None:
        cluster = guarded(loading.resolve_cluster, raw["cluster"], base)
        per_node = int(cluster["node"].get("gpus_per_node", 8))
        if edits.num_gpus < 1 or edits.num_gpus % per_node:
            raise UserError(f"must be a positive multiple of the {per_node} GPUs per node (got {edits.num_gpus})",
                            "GPU count")
        raw["cluster"]["num_nodes"] = edits.num_gpus // per_node
        raw.setdefault("parallel", {})["dp"] = None
    for key, value in edits.sets:
        guarded(loading.apply_override, raw, key, value)
    return raw


def job_yaml(edits: Edits) -> str:
    head = "# Edited in the sim dashboard; run it with: sim run THIS_FILE.yaml\n"
    return head + yaml.safe_dump(job_mapping(edits), sort_keys=False)


def build(edits: Edits) -> Scenario:
    """The validated scenario of ``edits`` (read back through ``sim.loading.load_scenario``)."""
    text = job_yaml(edits)
    with tempfile.TemporaryDirectory(prefix="sim-dashboard-") as tmp:
        path = Path(tmp) / "job.yaml"
        path.write_text(text)
        try:
            return loading.load_scenario(str(path))
        except SimInputError as e:
            raise _user_error(e) from None


def key(scenario: Scenario) -> str:
    """The cache key of a validated scenario."""
    return scenario.model_dump_json()


def restore(scenario_key: str) -> Scenario:
    return Scenario.model_validate_json(scenario_key)


def changed(scenario: Scenario, changes: dict[str, Any]) -> Scenario:
    """``scenario`` with dotted fields replaced and validated again (page-local what-ifs)."""
    return guarded(evolve, scenario, changes)


def with_balancing(scenario: Scenario, policy: str) -> Scenario:
    return guarded(with_policy, scenario, policy)


@st.cache_data(show_spinner=False, max_entries=64)
def step(scenario_key: str, tier: str, trace: bool = False) -> StepView:
    """One step of the scenario at ``tier``; ``trace`` keeps the timeline (actions; tasks and links in detail)."""
    s = restore(scenario_key)
    # As ``sim run``: the job's own calibration table is set aside, with a warning, on another GPU.
    r = guarded(simulate_step, s, mode=tier, record_trace=trace and tier != "analytic", strict_calibration=False)
    view = StepView(tier=tier, step_time_s=r.step_time_s, mfu=dict(r.mfu), tokens_per_s_per_gpu=r.tokens_per_s_per_gpu,
                    gpu_hours_per_trillion_tokens=r.gpu_hours_per_trillion_tokens,
                    peak_memory_bytes=r.peak_memory_per_gpu_bytes, memory_capacity_bytes=r.memory_capacity_bytes,
                    oom=r.oom, breakdown_s=dict(r.breakdown_s), wall_time_s=r.wall_time_s,
                    memory=[dict(m) for m in r.memory_per_rank], per_rank=[dict(b) for b in r.breakdown_per_rank_s],
                    warnings=list(r.warnings), notes=list(r.notes))
    tr = r.trace
    if trace and tr is not None and tr.actions:
        view.actions = frames.actions(tr.actions)
        simulated = r.step_time_s - r.breakdown_s.get("host", 0.0)  # the trace ends before the host's share
        view.bubbles = frames.bubbles(view.actions, simulated)
        if tr.tasks:
            view.tasks = frames.tasks(tr.tasks)
            view.exposed = frames.exposed(view.actions, view.tasks)
            view.links = frames.link_series(tr.links.intervals, r.step_time_s, len(r.finish_per_rank_s))
        view.link_busy = frames.link_busy(tr.links.busy_s, r.step_time_s)
    return view


@st.cache_data(show_spinner=False, max_entries=64)
def schedule_row(scenario_key: str, name: str, tier: str = "fast") -> dict[str, Any]:
    """The scenario's step under schedule ``name`` (``vpp`` 2 for interleaved 1F1B): step time, bubble and
    exposed-communication fractions, peak memory and the actions, or the violated precondition, named."""
    s = restore(scenario_key)
    vpp = max(2, s.parallel.vpp) if name == "interleaved-1f1b" else 1
    row: dict[str, Any] = {"schedule": name, "vpp": vpp}
    try:
        v = step(key(changed(s, {"parallel.schedule": name, "parallel.vpp": vpp})), tier, True)
    except UserError as e:
        row["problem"] = str(e)
    else:
        row.update(step_time_s=v.step_time_s, bubble_frac=v.breakdown_s["bubble"] / v.step_time_s,
                   exposed_comm_frac=v.breakdown_s["exposed_comm"] / v.step_time_s,
                   peak_memory_gib=v.peak_memory_bytes / 2**30, oom=v.oom, problem=None, actions=v.actions)
    return row


def network_what_if(s: Scenario, ib_scale: float, nvlink_scale: float, comm_sms: int) -> Scenario:
    """``s`` with IB and NVLink bandwidth (line rate and achievable together) scaled and ``comm_sms`` set."""
    n = s.cluster.node
    changes: dict[str, Any] = {}
    if ib_scale != 1:
        changes |= {"cluster.node.nic_gbit_per_s": n.nic_gbit_per_s * ib_scale,
                    "cluster.node.nic_achievable_gb_per_s": n.nic_achievable_gb_per_s * ib_scale}
    if nvlink_scale != 1:
        changes |= {"cluster.node.nvlink_gb_per_s": n.nvlink_gb_per_s * nvlink_scale,
                    "cluster.node.nvlink_achievable_gb_per_s": n.nvlink_achievable_gb_per_s * nvlink_scale}
    if comm_sms != s.parallel.comm_sms:
        changes["parallel.comm_sms"] = comm_sms
    return changed(s, changes) if changes else s


@st.cache_data(show_spinner=False, max_entries=64)
def comm_sms_step(scenario_key: str, comm_sms: int, tier: str) -> tuple[float, float]:
    """Step time and exposed communication with ``comm_sms`` SMs held by communication kernels."""
    v = step(key(changed(restore(scenario_key), {"parallel.comm_sms": comm_sms})), tier)
    return v.step_time_s, v.breakdown_s["exposed_comm"]


def balancing_start(s: Scenario, skew: str) -> Scenario:
    """Balancing needs skewed routing: a balanced workload starts from ``skew`` (as ``sim experts`` does)."""
    if not s.model.is_moe:
        raise UserError(f"{s.model.name} has no routed experts", "model.n_routed_experts")
    return s if s.experts.skew != "balanced" else changed(s, {"experts.skew": skew})


@st.cache_data(show_spinner=False, max_entries=32)
def balancing(scenario_key: str, policy: str, steps: int) -> Balancing:
    s = with_balancing(restore(scenario_key), policy)
    h = guarded(simulate_balancing, s, steps, record_bias=False)
    return Balancing(policy, frames.imbalance(h.imbalance_by_step, h.imbalance_max_by_step),
                     frames.heatmap(h.heatmap_loads), h.heatmap_layer, float(h.imbalance_by_step[-1]))


@st.cache_data(show_spinner=False, max_entries=32)
def policy_step_time(scenario_key: str, policy: str, tier: str) -> float:
    return step(key(with_balancing(restore(scenario_key), policy)), tier).step_time_s


# ------------------------------------------------------------------------------------------------ calibration


def read_table(name: str | None = None, text: str | None = None) -> caltable.CalibrationTable:
    """A bundled table by file name, or an uploaded one."""
    if text is not None:
        return guarded(caltable.parse_table, text, "uploaded table")
    return guarded(caltable.load_table, loading.profiles_dir() / "calibrated" / str(name))


def gpu_for(table: caltable.CalibrationTable) -> GpuSpec | None:
    """The GPU profile the table was measured on (by model name), if there is one."""
    return guarded(loading.find_gpu_profile, table.device.name)


def _peak(gpu: GpuSpec, e: Any) -> float | None:
    """The peak an entry's rate is a fraction of: the dtype's tensor peak, or HBM bandwidth for memory kinds."""
    if e.kind in caltable.COMPUTE_KINDS:
        try:
            return gpu.peak_flops_per_s(e.dtype)
        except ValueError:
            return None
    return gpu.hbm_bandwidth_bytes_per_s if e.kind in ("memory", "optimizer") else None


def _modelled_seconds(model: CostModel, e: Any, m: float) -> float | None:
    """Seconds the profile's roofline (no table) gives an entry's family at size ``m``."""
    sh = e.shape
    if e.kind in caltable.GEMM_KINDS:
        groups = int(sh.get("groups", 1))
        rows = (m / groups,) * groups if groups > 1 else None
        return model.gemm_seconds(m, int(sh["n"]), int(sh["k"]), e.dtype if e.dtype != "fp16" else "bf16", rows)
    if e.kind in caltable.ATTENTION_KINDS:
        passes = {"attention_fwd": "fwd", "attention_bwd": "dgrad"}
        return model.attention_seconds(passes[e.kind], m * sh.get("batch", 1.0), int(m), int(sh["heads"]),
                                       int(sh["qk_dim"]), int(sh["v_dim"]), bool(sh.get("causal", 1.0)))
    if e.kind in ("memory", "optimizer"):
        return memory_model_seconds(model.gpu, m)
    return None


def calibration_frames(table: caltable.CalibrationTable, gpu: GpuSpec | None, points: int = 24
                       ) -> tuple[Any, Any]:
    """Measured points and modelled curves (the GPU profile's roofline without the table): the fraction of the
    peak (tensor FLOP/s, or HBM bandwidth) reached at each size; communication kinds in GB/s, measured only."""
    import numpy as np

    model = CostModel(gpu, PrecisionSpec(attention="bf16")) if gpu is not None else None
    measured, curves = [], []
    families: dict[str, list[Any]] = {}
    for e in table.entries:
        fam = frames.family_label(e.kind, e.dtype, e.name, e.gemm_pass, e.shape)
        families.setdefault(fam, []).append(e)
        peak = _peak(gpu, e) if gpu is not None else None
        at = guarded(_modelled_seconds, model, e, e.size) if model is not None and peak else None
        op = " ".join(x for x in (e.name, e.gemm_pass, e.dtype) if x)
        measured.append({"family": fam, "op": op, "kind": e.kind, "dtype": e.dtype, "size": e.size, "rate": e.rate,
                         "efficiency": e.rate / peak if peak else None, "seconds": e.seconds,
                         "modelled_seconds": at, "note": e.note})
    for fam, es in families.items():
        e = es[0]
        peak = _peak(gpu, e) if gpu is not None else None
        if model is None or not peak:
            continue
        lo, hi = min(x.size for x in es), max(x.size for x in es)
        for m in np.geomspace(lo / 2, hi * 2, points):
            secs = guarded(_modelled_seconds, model, e, float(m))
            if secs:
                work = e.work * (m / e.size) if e.kind not in caltable.ATTENTION_KINDS else e.work * (m / e.size) ** 2
                op = " ".join(x for x in (e.name, e.gemm_pass, e.dtype) if x)
                curves.append({"family": fam, "op": op, "kind": e.kind, "size": float(m),
                               "efficiency": work / secs / peak})
    return frames.table(measured), frames.table(curves)


def table_summary(table: caltable.CalibrationTable) -> dict[str, Any]:
    d = table.device
    return {"device": d.name, "kind": d.kind, "source": d.source, "created": d.created,
            "entries": len(table.entries), "notes": table.notes}


def hardware_defaults(edits: Edits) -> dict[str, Any]:
    """The job's cluster profile (by name, None when inlined), its GPU profile and GPU count."""
    raw, base = _base(edits)
    raw = copy.deepcopy(raw)
    if edits.cluster:
        raw["cluster"] = edits.cluster
    ref = raw.get("cluster")
    path = _find(ref, base, loading.profiles_dir() / "clusters") if isinstance(ref, str) else None
    _inline(raw, "cluster", base)
    cluster = raw.get("cluster")
    if not isinstance(cluster, dict):
        raise UserError("missing (a job file names its cluster)", "cluster")
    gpu = cluster.get("gpu")
    resolved = guarded(loading.resolve_cluster, cluster, base)
    per_node = int(resolved["node"].get("gpus_per_node", 8))
    return {"cluster": path.stem if path else None, "gpu": Path(gpu).stem if isinstance(gpu, str) else None,
            "num_gpus": int(resolved.get("num_nodes", 1)) * per_node, "gpus_per_node": per_node}
