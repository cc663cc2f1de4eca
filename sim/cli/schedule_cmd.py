"""``sim schedule NAME --pp P --microbatches N``: a pipeline schedule's grid, bubble and peak activations.

Runs the zero-latency list scheduler (:mod:`sim.schedules.listsched`) with uniform chunk durations. The work
(actions x stages) is priced against ``--max-memory`` before the schedule is built, the ``--plot`` path is
checked first, and a run of more than a second shows progress by stage (build, schedule, draw).
``--json`` keys: ``bubble_per_rank``, ``bubble_max``, ``bubble_total``, ``makespan``,
``peak_activations_per_rank``, plus the inputs and the published formula's value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from sim.budget import schedule_estimate
from sim.cli.common import budget_check, echo_json, new_progress, work_options, write_atomic
from sim.errors import SimInputError
from sim.guards import check_numbers
from sim.outputs import IMAGE_FORMATS, check_output
from sim.pipeline import SCHEDULE_NAMES, check_layer_split, check_schedule
from sim.schedules.actions import Schedule, to_text
from sim.schedules.formulas import FORMULAS, published_bubble
from sim.schedules.generators import build_schedule
from sim.schedules.grid import chart
from sim.schedules.listsched import Durations, ScheduleResult, simulate

#: Largest --pp or --microbatches (the work budget bounds their product).
MAX_COUNT = 10**9
#: Longest chunk duration (any unit): beyond it sums of durations lose precision or overflow.
MAX_DURATION = 1e12
LEGEND = ("F forward, B backward, I backward-for-input, W backward-for-weights, X overlapped F&B; "
          "lower case: direction 1; '-' continues the action on the left; '.' idle")


def _durations(f: float, b: float, w: float | None, fb: float | None) -> Durations:
    return Durations(f, b, b / 2 if w is None else w, f + b if fb is None else fb)


def _report(s: Schedule, d: Durations, res: ScheduleResult, vpp: int) -> dict[str, Any]:
    return {
        "schedule": s.name, "pp": s.num_ranks, "vpp": vpp, "num_stages": s.num_stages,
        "num_microbatches": s.num_microbatches, "num_actions": s.num_actions,
        "durations": {"f": d.f, "b": d.b, "w": d.w, "fb": d.fb},
        "makespan": res.makespan, "bubble_per_rank": list(res.idle_per_rank),
        "bubble_max": res.bubble_max, "bubble_total": res.bubble_total,
        "busy_per_rank": list(res.busy_per_rank),
        "peak_activations_per_rank": list(res.peak_activations_per_rank),
        "formula": FORMULAS[s.name], "formula_bubble": published_bubble(s.name, s.num_ranks, d, vpp),
    }


def _print(s: Schedule, d: Durations, res: ScheduleResult, report: dict[str, Any]) -> None:
    per_dir = f" ({s.microbatches_per_direction} per direction)" if s.num_directions == 2 else ""
    click.echo(f"{s.name}: {s.num_ranks} ranks, {s.num_stages} stages, {s.num_microbatches} micro-batches"
               f"{per_dir}, {s.num_actions} actions")
    click.echo(f"durations  F={d.f:g}  B={d.b:g}  W={d.w:g}  F&B={d.fb:g}  (I = B-W = {d.b - d.w:g})")
    grid, quantum = chart(s, res)
    click.echo(grid)
    click.echo(f"time per character: {quantum:.3g}; {LEGEND}")
    click.echo("rank        busy      bubble   peak activations")
    for r in range(s.num_ranks):
        click.echo(f"r{r:<4} {res.busy_per_rank[r]:>10.4g}  {res.idle_per_rank[r]:>10.4g}   "
                   f"{res.peak_activations_per_rank[r]:>6}")
    click.echo(f"bubble: max {res.bubble_max:.6g} per rank, total {res.bubble_total:.6g}; "
               f"makespan {res.makespan:.6g}")
    click.echo(f"published formula {report['formula']} = {report['formula_bubble']:.6g}")


def _plot(s: Schedule, res: ScheduleResult, out: str) -> None:
    from sim.schedules.plot import gantt

    fig = gantt(s, res)
    suffix = Path(out).suffix.lstrip(".").lower()
    if suffix not in fig.canvas.get_supported_filetypes():
        raise SimInputError(f"unsupported image type {suffix!r}; use .png, .svg or .pdf", field="--plot")
    write_atomic(out, lambda tmp: fig.savefig(tmp, dpi=120, format=suffix), "--plot")


@click.command()
@click.argument("name", type=click.Choice(SCHEDULE_NAMES))
@click.option("--pp", type=click.IntRange(1, MAX_COUNT), required=True, help="pipeline ranks (devices)")
@click.option("--microbatches", type=click.IntRange(1, MAX_COUNT), required=True, help="micro-batches per step")
@click.option("--vpp", type=click.IntRange(1, 4096), default=1, show_default=True,
              help="virtual stages per rank (interleaved-1f1b)")
@click.option("--layers", type=click.IntRange(1, 1_000_000), default=None,
              help="transformer layers: checks they split into the stages")
@click.option("--f", "f", type=float, default=1.0, show_default=True, help="forward chunk time")
@click.option("--b", "b", type=float, default=2.0, show_default=True, help="full backward chunk time")
@click.option("--w", "w", type=float, default=None, help="backward-for-weights time [default: B/2]")
@click.option("--fb", "fb", type=float, default=None, help="overlapped F&B pair time [default: F+B]")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--plot", "plot", type=click.Path(dir_okay=False), default=None, help="write a Gantt chart (png/svg/pdf)")
@click.option("--text", "as_text", is_flag=True, help="also print every rank's actions (compact text form)")
@work_options
def schedule(name: str, pp: int, microbatches: int, vpp: int, layers: int | None, f: float, b: float,
             w: float | None, fb: float | None, as_json: bool, plot: str | None, as_text: bool,
             max_memory: str | None, max_time: str | None, quiet: bool) -> None:
    """Build pipeline schedule NAME and run it with uniform chunk durations and no communication."""
    if plot:
        check_output(plot, "--plot", IMAGE_FORMATS)
    for option, value in (("--f", f), ("--b", b), ("--w", w), ("--fb", fb)):
        if value is not None and not 0 <= value <= MAX_DURATION:
            raise SimInputError(f"must be >= 0, finite and at most {MAX_DURATION:g} (got {value:g})", field=option)
    if (problem := check_schedule(name, pp, microbatches, vpp)) is not None:
        option = "--vpp" if "vpp" in problem else "--microbatches" if "micro" in problem else "--pp"
        raise SimInputError(problem, field=option)
    d = _durations(f, b, w, fb)
    if layers is not None and (problem := check_layer_split(name, pp, layers, vpp)):
        raise SimInputError(problem, field="--layers")
    est = schedule_estimate(name, pp, microbatches, vpp, plot=plot is not None, text=as_text)
    budget_check(est, max_memory, max_time)
    with new_progress("sim schedule", 3 * est.actions + (2 * est.actions if plot else 0), quiet) as bar:
        bar.stage(f"building {est.actions:,} actions")  # measured: building costs twice the list scheduling
        sched = build_schedule(name, pp, microbatches, vpp)
        bar.update(2 * est.actions)
        bar.stage("list-scheduling")
        res = simulate(sched, d)
        bar.update(est.actions)
        check_numbers([("makespan", res.makespan), ("bubble_max", res.bubble_max)], f"schedule {name}")
        report = _report(sched, d, res, vpp)
        if plot:
            bar.stage("drawing the chart")
            _plot(sched, res, plot)
    if as_json:
        echo_json(report)
        return
    _print(sched, d, res, report)
    if as_text:
        click.echo(to_text(sched), nl=False)
