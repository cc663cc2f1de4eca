"""Validation results as a table, one JSON object, or a predicted-vs-measured figure (matplotlib Figure API,
never pyplot state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from sim.validation.metrics import LABELS
from sim.validation.runner import CaseResult

MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*", "<", ">", "h")
BAND = 0.10


def layout_text(layout: dict[str, Any]) -> str:
    g = layout.get
    parts = [f"{g('gpus')} GPUs" if g("gpus") else f"{g('nodes')} nodes", f"TP{g('tp')}", f"PP{g('pp')}"]
    if (g("cp") or 1) > 1:
        parts.append(f"CP{g('cp')}")
    parts.append(f"DP{g('dp')}" if g("dp") else "DP?")
    if (g("ep") or 1) > 1:
        parts.append(f"EP{g('ep')}")
    sched = str(g("schedule"))
    if (g("vpp") or 1) > 1:
        sched += f" v{g('vpp')}"
    parts.append(sched)
    mb = f"mbs{g('micro_batch_size')}"
    if g("num_microbatches"):
        mb += f"x{g('num_microbatches')}"
    parts += [mb, f"rc:{g('recompute')}", f"Z{g('zero_stage')}"]
    return " ".join(parts)


def number(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def percent(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def json_object(results: list[CaseResult], summary: dict[str, Any], mode: str, wall_s: float,
                extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """``extra``: the ``--set`` overrides every case ran with (``overrides``, empty for the cases as published)."""
    return {"mode": mode, "wall_time_s": wall_s, "overrides": list(extra), "cases": [r.to_dict() for r in results],
            "summary": summary}


def _first_line(text: str | None, width: int = 110) -> str:
    line = (text or "").strip().splitlines()[0] if text else ""
    return line if len(line) <= width else line[: width - 3] + "..."


def table_lines(results: list[CaseResult], summary: dict[str, Any], mode: str, wall_s: float,
                extra: tuple[str, ...] = ()) -> list[str]:
    name_w = max([len(r.name) for r in results] + [4])
    lines = [f"what-if: every case with --set {' --set '.join(extra)}", ""] if extra else []
    lines += [f"{'case':{name_w}}  {'metric':18} {'predicted':>10} {'measured':>10} {'error':>8}  layout"]
    for r in results:
        pred = number(r.predicted) if r.status == "ok" else ("n/a" if r.status == "not_expressible" else "FAILED")
        flag = " OOM" if r.oom else ""
        lines.append(f"{r.name:{name_w}}  {LABELS[r.metric]:18} {pred:>10} {number(r.measured):>10} "
                     f"{percent(r.error):>8}  {layout_text(r.layout)}{flag}")
    skipped = [r for r in results if r.status != "ok"]
    if skipped:
        lines += ["", "not expressible today (predicted: null; counted, excluded from the statistics):"]
        for r in skipped:
            planned = f" [planned: {', '.join(r.planned_keys)}]" if r.planned_keys else ""
            unplanned = (f" [NOT planned keys: {', '.join(r.unplanned_unknown_keys)}]"
                         if r.unplanned_unknown_keys else "")
            lines.append(f"  {r.name}: {_first_line(r.reason)}{planned}{unplanned}")
    unapplied = sorted({str(r.software["profile"]) for r in results if r.software and not r.software["applied"]})
    if unapplied:
        lines += ["", f"software profiles not applied (the simulator has no software key yet): {', '.join(unapplied)}"]
    fam_w = max([len(f) for f in summary["families"]] + [7])
    lines += ["", f"{'family':{fam_w}}  {'cases':>5} {'expr.':>5} {'mean|err|':>9} {'max|err|':>9}  worst"]
    rows = [*summary["families"].items(), ("overall", summary["overall"])]
    for fam, s in rows:
        worst = f"{s['worst']['name']} ({percent(s['worst']['error'])})" if s["worst"] else "-"
        mean = "-" if s["mean_abs_error"] is None else f"{s['mean_abs_error']:.1%}"
        mx = "-" if s["max_abs_error"] is None else f"{s['max_abs_error']:.1%}"
        lines.append(f"{fam:{fam_w}}  {s['count']:>5} {s['expressible']:>5} {mean:>9} {mx:>9}  {worst}")
    lines += explain_lines(results)
    o = summary["overall"]
    lines += ["", f"{o['count']} cases ({o['expressible']} expressible, {o['not_expressible']} not expressible, "
                  f"{o['failed']} failed) in {wall_s:.1f} s, mode {mode}; error = predicted / measured - 1"]
    if extra:
        lines.append(f"what-if: not the cases as published (--set {' --set '.join(extra)})")
    return lines


def explain_lines(results: list[CaseResult]) -> list[str]:
    """Per case explained (``--explain``): its step by category, then the busiest rank's largest tasks."""
    out: list[str] = []
    for r in results:
        if not r.top_tasks:
            continue
        step = r.step_time_s or 0.0
        parts = ", ".join(f"{k} {v:.3g}" for k, v in r.breakdown_s.items() if v > 0)
        out += ["", f"{r.name}: step {step:.4g} s ({parts})",
                f"  busiest rank {r.top_tasks[0]['rank']}, its largest tasks (seconds in the step, count):"]
        out += [f"    {t['stream']:8} {t['name']:32} {t['seconds']:9.4g} s  x{t['count']}" for t in r.top_tasks]
    return out


def validation_figure(results: list[CaseResult], title: str = "sim validate: predicted vs measured") -> Figure:
    """Predicted against measured, log-log, each case in its own metric's units, the +-10 % band shaded."""
    fig = Figure(figsize=(7.5, 6.5), layout="constrained")
    ax = fig.add_subplot()
    ok = [r for r in results if r.status == "ok" and r.predicted is not None]
    if not ok:
        ax.text(0.5, 0.5, "no expressible case", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        return fig
    values = [v for r in ok for v in (r.measured, r.predicted or r.measured)]
    lo, hi = min(values) / 1.6, max(values) * 1.6
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.fill_between(xs, [x * (1 - BAND) for x in xs], [x * (1 + BAND) for x in xs], color="0.88",
                    label=f"±{BAND:.0%}")
    ax.plot(xs, xs, color="0.45", lw=1.0, label="predicted = measured")
    families: dict[str, list[CaseResult]] = {}
    for r in ok:
        families.setdefault(r.family, []).append(r)
    for i, (fam, rs) in enumerate(families.items()):
        metrics = ", ".join(sorted({LABELS[r.metric] for r in rs}))
        ax.scatter([r.measured for r in rs], [r.predicted or 0.0 for r in rs], marker=MARKERS[i % len(MARKERS)], s=40,
                   label=f"{fam} ({len(rs)}; {metrics})", zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured (each case in its own metric)")
    ax.set_ylabel("predicted")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    return fig


def write_figure(path: Path, results: list[CaseResult]) -> None:
    validation_figure(results).savefig(path, dpi=130, format="png")
