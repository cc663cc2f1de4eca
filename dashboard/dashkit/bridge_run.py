"""The bridge's second half: whole runs (``sim.estimate``) and validation against published runs
(``sim.validation``), for the Cost and Validation pages.

Like :mod:`dashkit.bridge` (the only other module that imports ``sim``), it hands pages plain dataclasses and
pandas frames (:class:`~dashkit.results.RunView`, :class:`~dashkit.results.ValidationView`) and turns input
errors into :class:`~dashkit.results.UserError` naming the field.

- The estimate is cached on the validated scenario and the tier; an estimate that fails (a phase whose layout
  search finds nothing) is cached as its error, so a bad scenario is not simulated again on every rerun.
- Validation results are cached per case, on the case's name, the tier and the modification times of its files
  (an edited case file runs again); a run over some families reuses every case already run.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from dashkit.bridge import guarded, restore
from dashkit.results import RunView, UserError, ValidationView
from sim.errors import SimInputError
from sim.estimate import estimate_run
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
