"""Running validation cases: each job through the simulator's public entry points, its step turned into the
case's metric, and the signed error against the published number; then statistics per family and overall.

A case goes to ``sim.loading.load_scenario`` as a job file (its job keys written to a temporary file, references
made absolute; or the job file it references) with its overrides, then to ``sim.step.simulate_step``. Outcomes:

- ``ok``: predicted, with ``error = predicted / measured - 1`` (positive: the simulator's number is larger);
- ``not_expressible``: the simulator refused the job (an unknown key such as a planned one, an impossible
  layout); the reason is the simulator's validation message; counted, excluded from the error statistics;
- ``failed``: the simulator raised something other than an input error (a bug to look at); also excluded.

The ``software:`` key names a software-stack profile that the simulator does not have yet. Until its
``Scenario`` has a ``software`` field, the key and its ``software.*`` overrides are set aside and the case is
simulated with the simulator's own defaults; each result says whether its profile was applied.
"""

from __future__ import annotations

import copy
import math
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from sim.config import Scenario
from sim.errors import SimInputError
from sim.loading import load_scenario, profiles_dir
from sim.loading import parse_override as loading_parse_override
from sim.step import Mode, StepResult, simulate_step
from sim.timeline import Stream
from sim.units import GB
from sim.validation.cases import Case, parse_override
from sim.validation.metrics import predict

#: Keys the simulator will gain (the cases use them now; until then such a case is not expressible). Every key
#: the published cases use is real now: parallel.cp, cp_mode, fsdp_shard_group, fsdp_reshard_after_forward,
#: tp_comm_overlap, ep_overlap and recompute: activations (sim.config.parallel).
PLANNED_KEYS: tuple[str, ...] = ()
SOFTWARE_SUPPORTED = "software" in Scenario.model_fields
_UNKNOWN_RE = re.compile(r"^([\w.\[\]]+): unknown key", re.MULTILINE)


@dataclass
class CaseResult:
    name: str
    family: str
    title: str
    metric: str
    unit: str
    measured: float
    predicted: float | None
    error: float | None
    status: str  # ok | not_expressible | failed
    reason: str | None
    layout: dict[str, Any]
    planned_keys: list[str]
    software: dict[str, Any] | None
    source: str
    accounting: str
    note: str = ""
    oom: bool | None = None
    peak_memory_per_gpu_gb: float | None = None
    step_time_s: float | None = None
    unknown_keys: list[str] = field(default_factory=list)
    unplanned_unknown_keys: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0
    breakdown_s: dict[str, float] = field(default_factory=dict)  # the step by category (sim run's breakdown)
    #: with ``explain``: the busiest rank's tasks by name, largest first (stream, name, seconds, count)
    top_tasks: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: How many of the busiest rank's tasks ``explain`` keeps per case.
EXPLAIN_TASKS = 12


def busiest_rank_tasks(result: StepResult, n: int = EXPLAIN_TASKS) -> list[dict[str, Any]]:
    """The ``n`` largest task groups of the rank with the most busy time: per (stream, task name), the seconds
    its tasks ran and how many there were, largest first (a step recorded with its tasks)."""
    if result.trace is None or not result.busy_per_rank_s:
        return []
    rank = max(range(len(result.busy_per_rank_s)), key=result.busy_per_rank_s.__getitem__)
    totals: dict[tuple[str, str], list[float]] = {}
    for t in result.trace.tasks:
        if t.rank == rank:
            acc = totals.setdefault((Stream(t.stream).name.lower(), t.name), [0.0, 0])
            acc[0] += t.end - t.start
            acc[1] += 1
    top = sorted(totals.items(), key=lambda kv: -kv[1][0])[:n]
    return [{"rank": rank, "stream": stream, "name": name, "seconds": secs, "count": int(count)}
            for (stream, name), (secs, count) in top]


# ----------------------------------------------------------------------------------------------- the job


def _read_profile(value: Any, kind: str) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value
    if not isinstance(value, str):
        return None
    for p in (Path(value), profiles_dir() / kind / f"{value}.yaml"):
        if p.is_file():
            data = yaml.safe_load(p.read_text())
            return data if isinstance(data, dict) else None
    return None


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    """Apply one override to raw job data, quietly skipping paths through references (layout only)."""
    node: Any = data
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node, dict):
            return
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    if isinstance(node, dict):
        node[parts[-1]] = value


def raw_job(case: Case, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The case's job as data with its overrides (then ``extra``, ``--set``) applied and its cluster read (for the
    layout of a case the simulator cannot load)."""
    if case.body is not None:
        data = copy.deepcopy(case.body)
    else:
        assert case.job_path is not None
        data = yaml.safe_load(case.job_path.read_text()) or {}
    cluster = _read_profile(data.get("cluster"), "clusters")
    if cluster is not None:
        cluster = copy.deepcopy(cluster)
        cluster["node"] = _read_profile(cluster.get("node"), "nodes") or cluster.get("node")
        data["cluster"] = cluster
    for i, text in enumerate(case.overrides):
        key, value = parse_override(text, case.path, f"override[{i}]")
        _set(data, key, value)
    for text in extra:
        _set(data, *loading_parse_override(text))
    return data


def layout_of(case: Case, scenario: Scenario | None, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    data = raw_job(case, extra)
    p = data.get("parallel") or {}
    t = data.get("training") or {}
    c: dict[str, Any] = data["cluster"] if isinstance(data.get("cluster"), dict) else {}
    node: dict[str, Any] = c["node"] if isinstance(c.get("node"), dict) else {}
    nodes, per_node = c.get("num_nodes"), node.get("gpus_per_node")
    gpus = nodes * per_node if isinstance(nodes, int) and isinstance(per_node, int) else None
    tp, pp, cp = p.get("tp", 1), p.get("pp", 1), p.get("cp", 1)
    dp = gpus // (tp * pp * cp) if gpus and all(isinstance(x, int) and x > 0 for x in (tp, pp, cp)) else None
    out: dict[str, Any] = {
        "gpus": gpus, "nodes": nodes, "tp": tp, "pp": pp, "cp": cp, "dp": dp, "ep": p.get("ep", 1),
        "schedule": p.get("schedule", "1f1b"), "vpp": p.get("vpp", 1), "micro_batch_size": p.get("micro_batch_size", 1),
        "num_microbatches": None, "zero_stage": p.get("zero_stage", 1), "recompute": p.get("recompute", "none"),
        "seq_len": t.get("seq_len"), "global_batch_size": t.get("global_batch_size"),
    }
    if scenario is not None:
        sp = scenario.parallel
        out.update(gpus=scenario.num_gpus, nodes=scenario.cluster.num_nodes, tp=sp.tp, pp=sp.pp,
                   cp=getattr(sp, "cp", 1), dp=scenario.dp, ep=sp.ep, schedule=sp.schedule, vpp=sp.vpp,
                   micro_batch_size=sp.micro_batch_size, num_microbatches=scenario.num_microbatches,
                   zero_stage=sp.zero_stage, recompute=sp.recompute, seq_len=scenario.training.seq_len,
                   global_batch_size=scenario.training.global_batch_size)
    return out


def _flatten(data: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, data


def planned_keys_used(case: Case) -> list[str]:
    """The planned keys and values a case relies on (ZeRO-3 is a value the simulator accepts today but does not
    model beyond memory; its per-layer parameter gathers are planned)."""
    pairs = list(_flatten(case.body or {}))
    pairs += [parse_override(t, case.path, "override") for t in case.overrides]
    used: list[str] = []

    def add(k: str) -> None:
        if k not in used:
            used.append(k)

    for key, value in pairs:
        if key in PLANNED_KEYS:
            add(key)
        elif key == "parallel.recompute" and value == "activations":
            add("parallel.recompute=activations")
        elif key == "parallel.zero_stage" and value == 3:
            add("parallel.zero_stage=3")
        elif key == "parallel.stage_layers" and isinstance(value, list) and 0 in value:
            add("parallel.stage_layers (a stage without layers)")
    return used


def _software(case: Case, extra: tuple[str, ...] = ()) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
    """The software profile a case names, and the overrides to pass: the case's, then ``extra`` (``--set``)
    (``software`` ones set aside while the simulator has no such key)."""
    profile = (case.body or {}).get("software")
    settings: dict[str, Any] = {}
    keep = []
    parsed = [parse_override(text, case.path, "override") for text in case.overrides]
    parsed += [loading_parse_override(text) for text in extra]
    for text, (key, value) in zip((*case.overrides, *extra), parsed, strict=True):
        if key == "software":
            profile = value
        elif key.startswith("software."):
            settings[key.removeprefix("software.")] = value
        else:
            keep.append(text)
            continue
        if SOFTWARE_SUPPORTED:
            keep.append(text)
    if profile is None and not settings:
        return None, tuple(keep)
    return {"profile": profile, "settings": settings, "applied": SOFTWARE_SUPPORTED}, tuple(keep)


class _JobFiles:
    """Temporary job files, one per case file (its variants differ only in overrides)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.paths: dict[Path, Path] = {}

    def job_for(self, case: Case) -> str:
        if case.job_path is not None:
            return str(case.job_path)
        hit = self.paths.get(case.path)
        if hit is None:
            body = dict(case.body or {})
            if not SOFTWARE_SUPPORTED:
                body.pop("software", None)
            hit = self.folder / f"{len(self.paths):03d}_{case.path.stem}.yaml"
            hit.write_text(yaml.safe_dump(body, sort_keys=False))
            self.paths[case.path] = hit
        return str(hit)


# ----------------------------------------------------------------------------------------------- running


def run_case(case: Case, mode: str, files: _JobFiles, extra: tuple[str, ...] = (),
             explain: bool = False) -> CaseResult:
    """Simulate ``case`` and compare; ``extra``: ``--set`` overrides applied after the case's own (a what-if
    over the set); ``explain``: simulate in detail, every task recorded, and keep the busiest rank's largest
    tasks (``top_tasks``)."""
    t0 = time.perf_counter()
    software, overrides = _software(case, extra)
    m = case.measured
    res = CaseResult(name=case.name, family=case.family, title=case.title, metric=m.metric, unit=m.unit,
                     measured=m.value, predicted=None, error=None, status="ok", reason=None, layout={},
                     planned_keys=planned_keys_used(case), software=software, source=m.source,
                     accounting=m.accounting, note=case.note)
    scenario = None
    try:
        scenario = load_scenario(files.job_for(case), overrides=overrides)
        result = simulate_step(scenario, mode=cast(Mode, "detailed" if explain else mode),
                               record_trace=explain)  # simulate_step checks it
        predicted = predict(m.metric, scenario, result.step_time_s, result.tokens_per_s_per_gpu, m.peak_tflops)
        if not math.isfinite(predicted) or predicted <= 0:
            raise ValueError(f"the simulated {m.metric} is {predicted!r}")
        res.predicted, res.error = predicted, predicted / m.value - 1.0
        res.step_time_s = result.step_time_s
        res.oom = bool(result.oom)
        res.peak_memory_per_gpu_gb = result.peak_memory_per_gpu_bytes / GB
        res.warnings = list(getattr(result, "warnings", []) or [])
        res.breakdown_s = dict(result.breakdown_s)
        if explain:
            res.top_tasks = busiest_rank_tasks(result)
    except SimInputError as e:
        res.status, res.reason = "not_expressible", str(e)
        res.unknown_keys = _UNKNOWN_RE.findall(str(e))
        res.unplanned_unknown_keys = [k for k in res.unknown_keys if k not in PLANNED_KEYS
                                      and not k.startswith("software")]
    except Exception as e:  # a simulator bug: reported, never hidden, never fatal to the whole run
        res.status, res.reason = "failed", f"simulator error: {type(e).__name__}: {e}"
    res.layout = layout_of(case, scenario, extra)
    res.wall_time_s = time.perf_counter() - t0
    return res


def check_extra(cases: list[Case], extra: tuple[str, ...]) -> None:
    """Refuse ``--set`` overrides that are malformed, or that no case takes: each case that loads without them
    is tried with them until one accepts them; if none does (an unknown field, a value out of range), a
    :class:`SimInputError` naming ``--set`` and the first case's complaint. An override that suits some cases
    and not others (a sequence longer than one model's limit) runs, and those others are reported per case as
    not expressible."""
    for text in extra:
        loading_parse_override(text)
    if not extra:
        return
    first: tuple[Case, SimInputError] | None = None
    with tempfile.TemporaryDirectory(prefix="sim-validate-") as tmp:
        files = _JobFiles(Path(tmp))
        for case in cases:
            _, own = _software(case)
            job = files.job_for(case)
            try:
                load_scenario(job, overrides=own)
            except SimInputError:
                continue  # not expressible by itself: its row says why
            try:
                load_scenario(job, overrides=_software(case, extra)[1])
                return
            except SimInputError as e:
                first = first or (case, e)
    if first is not None:
        case, err = first
        raise SimInputError(f"{' '.join(extra)} fits no case (on {case.name}: {err})", field="--set")


def run_cases(cases: list[Case], mode: str = "fast", progress: Callable[[Case], None] | None = None,
              extra: tuple[str, ...] = (), explain: bool = False) -> list[CaseResult]:
    """Run ``cases`` in order; ``progress(case)`` after each; ``extra`` and ``explain`` as :func:`run_case`."""
    out = []
    with tempfile.TemporaryDirectory(prefix="sim-validate-") as tmp:
        files = _JobFiles(Path(tmp))
        for case in cases:
            out.append(run_case(case, mode, files, extra, explain))
            if progress is not None:
                progress(case)
    return out


# ----------------------------------------------------------------------------------------------- statistics


def _stats(results: list[CaseResult]) -> dict[str, Any]:
    ok = [r for r in results if r.status == "ok" and r.error is not None]
    errs = [abs(r.error) for r in ok if r.error is not None]
    worst = max(ok, key=lambda r: abs(r.error or 0.0)) if ok else None
    return {
        "count": len(results),
        "expressible": len(ok),
        "not_expressible": sum(r.status == "not_expressible" for r in results),
        "failed": sum(r.status == "failed" for r in results),
        "mean_abs_error": sum(errs) / len(errs) if errs else None,
        "max_abs_error": max(errs) if errs else None,
        "worst": {"name": worst.name, "error": worst.error} if worst else None,
    }


def summarize(results: list[CaseResult]) -> dict[str, Any]:
    """Per family (in order of first appearance) and overall: counts, mean and max |error|, the worst case."""
    families: dict[str, list[CaseResult]] = {}
    for r in results:
        families.setdefault(r.family, []).append(r)
    return {"families": {f: _stats(rs) for f, rs in families.items()}, "overall": _stats(results)}
