"""The bridge's second half: whole runs (``sim.estimate``), capacity plans (``sim.sweep.plan``) and validation
against published runs (``sim.validation``), for the Cost, Plan and Validation pages.

Like :mod:`dashkit.bridge` (the only other module that imports ``sim``), it hands pages plain dataclasses and
pandas frames (:class:`~dashkit.results.RunView`, :class:`~dashkit.results.ValidationView`) and turns input
errors into :class:`~dashkit.results.UserError` naming the field.

- The estimate is cached on the validated scenario and the tier; an estimate that fails (a phase whose layout
  search finds nothing) is cached as its error, so a bad scenario is not simulated again on every rerun.
- A plan runs the edited job as ``sim plan`` runs a job file (the job's YAML, the job's own cluster as a
  profile file), in this process (one worker, the analytic tier), only within :data:`dashkit.plans.MAX_POINTS`
  configurations and :data:`dashkit.plans.MAX_SIMULATIONS` simulations; the deadline and the budget are applied
  afterwards (:func:`plan_view`), so moving them re-ranks without simulating again.
- Validation results are cached per case, on the case's name, the tier and the modification times of its files
  (an edited case file runs again); a run over some families reuses every case already run.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
import yaml
from pydantic import ValidationError

from dashkit import bridge, plans
from dashkit.bridge import guarded, restore
from dashkit.results import JOB_CLUSTER, Edits, PlanRequest, PlanRun, PlanView, RunView, UserError, ValidationView
from sim import loading
from sim.config import ClusterSpec
from sim.errors import SimInputError
from sim.estimate import estimate_run
from sim.sweep import run_sweep
from sim.sweep.executors import LocalExecutor
from sim.sweep.pareto import label_columns, layout_label
from sim.sweep.plan import default_axes, parse_amount, plan_spec, recommend
from sim.sweep.prune import CANDIDATE, prune
from sim.sweep.space import build_space
from sim.validation import Case, CaseResult, load_cases, run_cases, summarize
from sim.validation.cases import published_dir
from sim.validation.metrics import LABELS

PREDICTED, PUBLISHED = "sim estimate", "published"

# ------------------------------------------------------------------------------------------------ estimate


def layout_text(lay: dict[str, Any] | None) -> str:
    """An estimate's layout in one line: ``dualpipe TP1 PP16 DP128 EP64 mbs1 x120``, recompute when not the
    default (as ``sim estimate`` prints it, plus EP and micro-batches)."""
    if not lay:
        return ""
    vpp = f" vpp{lay['vpp']}" if lay.get("vpp", 1) > 1 else ""
    ep = f" EP{lay['ep']}" if lay.get("ep", 1) > 1 else ""
    rc = "" if lay.get("recompute") == "norm_and_up_proj" else f" rc:{lay.get('recompute')}"
    return (f"{lay['schedule']}{vpp} TP{lay['tp']} PP{lay['pp']} DP{lay['dp']}{ep} mbs{lay['micro_batch_size']}"
            f" x{lay.get('num_microbatches', '?')}{rc}")


def _step_range(st_s: list[float] | None) -> str:
    if not st_s:
        return "given"
    lo, hi = st_s
    return f"{lo:.4g}" if abs(hi - lo) <= 1e-9 * abs(hi) else f"{lo:.4g} – {hi:.4g}"


def _phases(d: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for p in d["phases"]:
        rows.append({
            "phase": p["name"], "kind": p["kind"].replace("_", " "), "simulated": p["simulated"],
            "steps": p["steps"], "tokens": p["tokens"], "step time (s)": _step_range(p["step_time_s"]),
            "GPU-hours": p["gpu_hours"], "days": p["days"], "MWh": p["kwh"] / 1e3,
            "t CO2": None if p["co2_kg"] is None else p["co2_kg"] / 1e3, "GPU busy": p["utilization"],
            "layout": layout_text(p["layout"]) if p["simulated"] else "given as GPU-hours",
            "why the layout changed": p["layout_reason"] or "",
        })
    return pd.DataFrame(rows)


def _by_stage(d: dict[str, Any]) -> pd.DataFrame:
    """The chart's bars: per published stage the estimate beside the published figure (phases no stage covers
    alone), or per phase when the job has no published figures."""
    m = d["measured"]
    rows: list[dict[str, Any]] = []
    covered: set[str] = set()
    if m and m["stages"]:
        for s in m["stages"]:
            covered.update(s["phases"])
            rows.append({"stage": s["name"], "source": PREDICTED, "gpu_hours": s["gpu_hours"], "error": s["error"]})
            rows.append({"stage": s["name"], "source": PUBLISHED, "gpu_hours": s["measured_gpu_hours"],
                         "error": None})
    for p in d["phases"]:
        if p["name"] not in covered:
            rows.append({"stage": p["name"], "source": PREDICTED, "gpu_hours": p["gpu_hours"], "error": None})
    return pd.DataFrame(rows, columns=["stage", "source", "gpu_hours", "error"])


def _published(d: dict[str, Any]) -> pd.DataFrame | None:
    m = d["measured"]
    if not m or not m["stages"]:
        return None
    return pd.DataFrame([{"stage": s["name"], "phases": ", ".join(s["phases"]), "predicted GPU-hours": s["gpu_hours"],
                          "published GPU-hours": s["measured_gpu_hours"], "error": s["error"]} for s in m["stages"]])


def run_view(scenario_key: str, tier: str) -> RunView:
    """The whole run's estimate of the scenario (cached); raises :class:`UserError`."""
    view, err = _estimate(scenario_key, tier)
    if err is not None:
        raise err
    assert view is not None
    return view


@st.cache_data(show_spinner=False, max_entries=16)
def _estimate(scenario_key: str, tier: str) -> tuple[RunView | None, UserError | None]:
    t0 = time.perf_counter()
    try:
        est = guarded(estimate_run, restore(scenario_key), mode=tier)
    except UserError as e:
        return None, e
    d = est.to_dict()
    m = d["measured"] or {}
    return RunView(name=est.scenario, num_gpus=est.num_gpus, gpu=est.gpu, tier=tier,
                   usd_per_gpu_hour=est.usd_per_gpu_hour, phases=_phases(d), total=dict(d["total"]),
                   by_stage=_by_stage(d), published=_published(d), published_total=m.get("total"),
                   published_usd=m.get("usd"), source=m.get("source"), sensitivities=dict(d["sensitivities"]),
                   simulations=est.simulations, wall_time_s=time.perf_counter() - t0, notes=list(est.notes),
                   warnings=list(est.warnings)), None


# ------------------------------------------------------------------------------------------------ plans

#: The layout axes the Plan page offers, with their widgets' labels (the names user errors give).
PLAN_AXES = {"tp": "Tensor parallel (TP)", "pp": "Pipeline parallel (PP)", "ep": "Expert parallel (EP)",
             "schedule": "Pipeline schedules", "micro_batch_size": "Micro-batch sizes",
             "recompute": "Activation recompute"}
TOKENS, DEADLINE, BUDGET, GPUS, HARDWARE = ("Tokens to train", "Deadline (days)", "Budget (USD)", "GPU counts",
                                            "Hardware")


@st.cache_data(show_spinner=False, max_entries=1)
def hardware_choices() -> dict[str, dict[str, Any]]:
    """The cluster profiles a plan can run on (``sim plan --hardware``), by name: GPU type, GPUs per node, price."""
    out = {}
    for name in bridge.clusters():
        try:
            c = ClusterSpec.model_validate(loading.resolve_cluster(name, loading.profiles_dir()))
        except (SimInputError, ValidationError):  # a broken profile is left out of the choices
            continue
        out[name] = {"gpu": c.gpu.name, "gpus_per_node": c.node.gpus_per_node, "usd_per_gpu_hour": c.usd_per_gpu_hour}
    return out


def _job_file(edits: Edits, folder: Path) -> Path:
    path = folder / "job.yaml"
    path.write_text(bridge.job_yaml(edits))
    return path


@st.cache_data(show_spinner=False, max_entries=16)
def plan_defaults(edits: Edits) -> dict[str, Any]:
    """What the Plan page's widgets start from for the edited job: its tokens, GPU count, cluster, and per axis
    the values offered and those picked. TP and PP (and EP, schedules) start from ``sim plan``'s grid around the
    job's layout (``sim.sweep.plan.default_axes``); micro-batch size and recompute start at the job's own (``sim
    plan`` also tries 1 and 2, and full recompute: four times the simulations)."""
    s = bridge.build(edits)
    with tempfile.TemporaryDirectory(prefix="sim-plan-") as tmp:
        grid = guarded(default_axes, str(_job_file(edits, Path(tmp))))
    p, gpn = s.parallel, s.cluster.node.gpus_per_node
    options: dict[str, list[Any]] = {
        "tp": sorted({t for t in (1, 2, 4, 8, 16) if t <= gpn} | set(grid["tp"]) | {p.tp}),
        "pp": sorted({1, 2, 4, 8, 16, 32, 64} | set(grid["pp"]) | {p.pp}),
        "schedule": list(bridge.SCHEDULE_NAMES),
        "micro_batch_size": sorted({1, 2, 4, 8, p.micro_batch_size}),
        "recompute": list(dict.fromkeys([*bridge.RECOMPUTE, p.recompute])),
    }
    picked: dict[str, list[Any]] = {"tp": grid["tp"], "pp": grid["pp"], "schedule": grid["schedule"],
                                    "micro_batch_size": [p.micro_batch_size], "recompute": [p.recompute]}
    if s.model.is_moe:
        e = s.model.n_routed_experts
        options["ep"] = sorted({x for x in (1, 2, 4, 8, 16, 32, 64, 128, 256) if e % x == 0} | set(grid["ep"]) | {p.ep})
        picked["ep"] = grid["ep"]
    return {"tokens": s.training.total_tokens, "num_gpus": s.num_gpus, "gpus_per_node": gpn,
            "gpus": plans.default_gpus(s.num_gpus, gpn), "gpu_options": plans.gpu_choices(s.num_gpus),
            "cluster": s.cluster.name, "gpu": s.cluster.gpu.name, "usd_per_gpu_hour": s.cluster.usd_per_gpu_hour,
            "vpp": p.vpp, "options": options, "picked": {k: picked[k] for k in PLAN_AXES if k in picked},
            "is_moe": s.model.is_moe}


def _amount(text: str, field: str) -> float:
    value = guarded(parse_amount, text, field)
    if not value > 0 or not math.isfinite(value):
        raise UserError(f"must be more than 0 (got {text.strip()!r})", field)
    return value


def plan_request(edits: Edits, tokens: str, gpus: Sequence[int], hardware: Sequence[str],
                 axes: dict[str, Sequence[Any]]) -> PlanRequest:
    """The plan the widgets describe; :class:`UserError` naming the widget for an empty choice, a token count
    that is not a positive number (``14.8T``, ``469B``, ``1e9``) or more than :data:`plans.MAX_POINTS`
    configurations."""
    n = _amount(tokens, TOKENS)
    if not gpus:
        raise UserError("pick at least one GPU count", GPUS)
    if not hardware:
        raise UserError("pick at least one cluster (the job's own, or a profile)", HARDWARE)
    d = plan_defaults(edits)
    picked: dict[str, tuple[Any, ...]] = {}
    for name, values in axes.items():
        if name not in PLAN_AXES:
            raise UserError(f"not an axis the page sweeps ({', '.join(PLAN_AXES)})", name)
        if not values:
            raise UserError("pick at least one value", PLAN_AXES[name])
        picked[name] = tuple(values)
    if "schedule" in picked:
        picked["vpp"] = tuple(plans.vpp_values(list(picked["schedule"]), d["vpp"]))
    req = PlanRequest(float(n), tuple(sorted({int(g) for g in gpus})), tuple(dict.fromkeys(hardware)),
                      tuple(picked.items()))
    if req.points > plans.MAX_POINTS:
        raise UserError(f"{req.points:,} configurations: the page plans at most {plans.MAX_POINTS:,}. Remove some "
                        "values (or run `sim plan` on the job downloaded from the Scenario page).", "configurations")
    return req


def plan_constraints(deadline_days: float | None, budget: str | None) -> tuple[float | None, float | None]:
    """The deadline (days) and the budget (USD: ``6M``, ``6e6``); None where not set (empty); :class:`UserError`
    naming the field when not positive."""
    if deadline_days is not None and not (deadline_days > 0 and math.isfinite(deadline_days)):
        raise UserError(f"must be more than 0 days (got {deadline_days:g}); leave it empty for no deadline", DEADLINE)
    usd = _amount(budget, BUDGET) if budget is not None and budget.strip() else None
    return (float(deadline_days) if deadline_days is not None else None), usd


Progress = Callable[[str, int, int], None]


def run_plan(edits: Edits, request: PlanRequest, progress: Progress | None = None) -> PlanRun:
    """Run the plan (``sim plan`` on the edited job: prune, then one analytic simulation per surviving layout,
    in this process); :class:`UserError` beyond :data:`plans.MAX_SIMULATIONS` simulations."""
    if request.points > plans.MAX_POINTS:
        raise UserError(f"{request.points:,} configurations exceed {plans.MAX_POINTS:,}", "configurations")
    t0 = time.perf_counter()
    s = bridge.build(edits)
    with tempfile.TemporaryDirectory(prefix="sim-plan-") as tmp:
        folder = Path(tmp)
        labels: dict[str, str] = {}
        hardware = []
        for hw in request.hardware:
            if hw == JOB_CLUSTER:
                path = folder / "job_cluster.yaml"
                path.write_text(yaml.safe_dump(s.cluster.model_dump(mode="json"), sort_keys=False))
                swapped = f" with {s.cluster.gpu.name}" if edits.gpu else ""  # the GPU edited, not the name
                hw_ref, label = str(path), f"{s.cluster.name}{swapped} (job)"
            else:
                hw_ref, label = hw, hw
            hardware.append(hw_ref)
            labels[hw_ref] = label
        spec = guarded(plan_spec, str(_job_file(edits, folder)), request.tokens, gpus=list(request.gpus),
                       hardware=hardware, axes={k: list(v) for k, v in request.axes}, tier="auto", top_k=0)
        spec = spec.model_copy(update={"name": f"plan-{s.name}"})
        space = guarded(build_space, spec)
        v = prune(space)  # to count the simulations (run_sweep prunes again: a second at most)
        sims = len({int(i) // v.num_prices for i in np.flatnonzero(v.status == CANDIDATE)})
        if sims > plans.MAX_SIMULATIONS:
            raise UserError(f"{sims:,} layouts survive the rules and the memory model: the page simulates at most "
                            f"{plans.MAX_SIMULATIONS:,}. Remove some values (or run `sim plan` on the job "
                            "downloaded from the Scenario page).", "configurations")
        result = guarded(run_sweep, spec, executor=LocalExecutor(workers=1), progress=progress, batch_size=8)
    frame = result.frame
    gpu = {labels[h]: c["gpu"]["name"] for h, c in result.space.clusters.items()}
    frame["hardware"] = frame["hardware"].map(labels).fillna(frame["hardware"])
    for ref, label in labels.items():
        if ref != label:
            frame["reason"] = frame["reason"].str.replace(ref, label, regex=False)
    frame.insert(frame.columns.get_loc("hardware") + 1, "gpu", frame["hardware"].map(gpu))
    cols = [c for c in label_columns(frame.attrs.get("swept", ())) if c not in ("hardware", "gpus")]
    frame.insert(1, "layout", [layout_label(r, cols) for r in frame.to_dict("records")])  # columns say the rest
    c = result.counts
    return PlanRun(request=request, frame=frame, spec=spec, tier=result.tier, counts=c,
                   simulations=int(c.get("rank_simulations", 0)) + int(c.get("detail_simulations", 0)),
                   wall_time_s=time.perf_counter() - t0, notes=list(result.notes), warnings=list(result.warnings))


def plan_view(run: PlanRun, deadline_days: float | None, budget_usd: float | None) -> PlanView:
    """``run`` read against a deadline and a budget: ``sim plan``'s recommendation (``recommend``), every point's
    verdict and reason, the best point per hardware and GPU count, the summary of why the rest lost."""
    spec = run.spec.model_copy(update={"deadline_days": deadline_days, "budget_usd": budget_usd})
    frame = run.frame.copy()
    frame["meets_constraints"] = plans.meets(frame, deadline_days, budget_usd)
    rec = recommend(frame, spec, top=3)
    order = [r["index"] for r in rec["recommendations"]]
    points = plans.classify(frame, deadline_days, budget_usd, order[0] if order else None)
    rows = points.set_index("index", drop=False).loc[order].to_dict("records")  # the page's columns
    return PlanView(tokens=run.request.tokens, deadline_days=deadline_days, budget_usd=budget_usd,
                    recommended=rows[0] if rows else None, runners_up=rows[1:], binding=rec.get("binding"),
                    points=points, best=plans.best_per_count(points), lost=plans.lost_summary(points),
                    tier=run.tier, counts=run.counts, simulations=run.simulations, wall_time_s=run.wall_time_s,
                    notes=run.notes, warnings=run.warnings)


# ------------------------------------------------------------------------------------------------ validation


def _fingerprint(paths: list[Path]) -> str:
    return ";".join(f"{p}@{p.stat().st_mtime_ns}" for p in sorted(set(paths)) if p.is_file())


@st.cache_data(show_spinner=False, max_entries=4)
def _cases(folder: str, fingerprint: str) -> tuple[list[Case], UserError | None]:
    try:
        return load_cases(Path(folder)), None
    except SimInputError as e:
        text = str(e)
        head, sep, rest = text.partition(": ")
        return [], UserError(rest if sep and head.endswith(".yaml") else text,
                             Path(head).name if sep and head.endswith(".yaml") else "workloads/published")


def cases() -> list[Case]:
    """Every published case (read again when a case file changes); raises :class:`UserError`."""
    folder = published_dir()
    found, err = _cases(str(folder), _fingerprint(list(folder.glob("*.yaml"))))
    if err is not None:
        raise err
    return found


def catalog() -> pd.DataFrame:
    """The cases: name, family, title, metric (in the table's words)."""
    return pd.DataFrame([{"case": c.name, "family": c.family, "title": c.title, "metric": LABELS[c.measured.metric]}
                         for c in cases()], columns=["case", "family", "title", "metric"])


def case_token(name: str) -> str:
    """What a case's cached result depends on besides its name and the tier: its files' modification times."""
    c = next((c for c in cases() if c.name == name), None)
    if c is None:
        raise UserError(f"no case named {name!r}", "case")
    return _fingerprint([c.path] + ([c.job_path] if c.job_path else []))


@st.cache_data(show_spinner=False, max_entries=512)
def run_case(name: str, tier: str, token: str) -> dict[str, Any]:
    """One case through the simulator (``sim.validation.run_cases``), as a plain mapping (``CaseResult``'s
    fields). A case the simulator cannot express, or one that fails, is a result with its reason."""
    case = next(c for c in cases() if c.name == name)
    return run_cases([case], tier)[0].to_dict()


def case_result(name: str, tier: str) -> dict[str, Any]:
    """The result of the case named ``name`` at ``tier``: cached, run when its files changed."""
    return run_case(name, tier, case_token(name))


def _reason(r: dict[str, Any]) -> str:
    if r["status"] == "ok":
        return ""
    text = "; ".join(line.strip() for line in (r["reason"] or "").splitlines() if line.strip())
    if r["planned_keys"]:
        text += f" [planned: {', '.join(r['planned_keys'])}]"
    return text


def validation_view(results: list[dict[str, Any]]) -> ValidationView:
    """Rows and statistics (``sim.validation.summarize``) of case results from :func:`run_case`."""
    from sim.validation.report import layout_text as case_layout_text  # imports matplotlib: only when needed

    rows = []
    for r in results:
        err = r["error"]
        rows.append({"case": r["name"], "family": r["family"], "metric": LABELS.get(r["metric"], r["metric"]),
                     "unit": r["unit"], "predicted": r["predicted"], "measured": r["measured"],
                     "error": err if err is not None and math.isfinite(err) else None,
                     "status": r["status"].replace("_", " "),
                     "layout": case_layout_text(r["layout"]) + (" OOM" if r["oom"] else ""),
                     "reason": _reason(r), "title": r["title"]})
    summary = summarize([CaseResult(**r) for r in results])
    fams = []
    for fam, s in [*summary["families"].items(), ("overall", summary["overall"])]:
        w = s["worst"] or {}
        fams.append({"family": fam, "cases": s["count"], "expressible": s["expressible"],
                     "not expressible": s["not_expressible"], "failed": s["failed"],
                     "mean |error|": s["mean_abs_error"], "max |error|": s["max_abs_error"],
                     "worst case": w.get("name", ""), "worst error": w.get("error")})
    return ValidationView(pd.DataFrame(rows), pd.DataFrame(fams), summary["overall"])
