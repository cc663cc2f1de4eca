"""GPU-hours by phase as stacked bars: the estimate, and the published figures when the job has them
(``run.measured``; for DeepSeek-V3 its tech report's Table 1). Matplotlib's Figure API, never pyplot."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from sim.estimate.report import RunEstimate

COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")


def _stacks(est: RunEstimate) -> tuple[list[str], list[float], list[float] | None]:
    """Labels and GPU-hours of the stacked segments: the published stages when given, else the phases."""
    m = est.spec.measured
    if est.comparison is not None and m is not None and m.stages:
        rows = est.comparison["stages"]
        covered = {n for st in m.stages for n in st.phases}
        labels = [r["name"] for r in rows]
        predicted = [r["gpu_hours"] for r in rows]
        measured = [r["measured_gpu_hours"] for r in rows]
        for p in est.phases:
            if p.work.spec.name not in covered:
                labels.append(p.work.spec.name)
                predicted.append(p.cost.gpu_hours)
                measured.append(0.0)
        return labels, predicted, measured
    return [p.work.spec.name for p in est.phases], [p.cost.gpu_hours for p in est.phases], None


def estimate_figure(est: RunEstimate) -> Figure:
    labels, predicted, measured = _stacks(est)
    fig = Figure(figsize=(8.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    bars = [("sim estimate", predicted)] + ([("published", measured)] if measured is not None else [])
    for x, (_, values) in enumerate(bars):
        bottom = 0.0
        for i, v in enumerate(values):
            name = labels[i]
            if x == 0 and measured is not None and measured[i] > 0:
                name = f"{name}: {v / 1e3:,.0f}K vs {measured[i] / 1e3:,.0f}K ({v / measured[i] - 1:+.1%})"
            ax.bar(x, v / 1e3, bottom=bottom / 1e3, width=0.55, color=COLORS[i % len(COLORS)],
                   label=name if x == 0 else None, edgecolor="white")
            if v > 0.05 * sum(values):
                ax.text(x, (bottom + v / 2) / 1e3, f"{v / 1e3:,.0f}K", ha="center", va="center", fontsize=8,
                        color="white")
            bottom += v
        ax.text(x, bottom / 1e3, f"{bottom / 1e3:,.0f}K", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(bars)), [name for name, _ in bars])
    ax.set_ylabel(f"{est.gpu} GPU-hours (thousands)")
    ax.set_title(f"{est.scenario}: {est.num_gpus} GPUs, GPU-hours by phase", fontsize=10)
    if est.comparison is not None:
        ax.set_xlabel(est.comparison["source"], fontsize=7)
    fig.legend(fontsize=8, loc="outside lower center")
    ax.margins(y=0.08)
    return fig


def write_estimate_plot(path: Path, est: RunEstimate) -> None:
    estimate_figure(est).savefig(path, dpi=120, format="png")
