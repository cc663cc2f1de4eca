"""``sim validate``: every case of ``workloads/published/`` (or the named ones), predicted vs measured.

Errors are results: the command exits 0 when the run completed, whatever the errors; 2 on a malformed case file
(the message names the file and the field). ``--json`` prints one JSON object on stdout and nothing else there;
progress and timing go to stderr. Every case's simulation is priced against ``--max-memory`` and ``--max-time``
as it loads; a case over the budget is reported (not_expressible, with the estimate), never run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import click

from sim.budget import Budget, check, step_estimate
from sim.cli.common import new_progress, work_options, write_atomic
from sim.config import Scenario
from sim.outputs import IMAGE_FORMATS, check_output
from sim.validation.cases import published_dir


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


@click.command()
@click.argument("cases", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object (cases and summary)")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None,
              help="write predicted vs measured (log-log, +-10 % band) to a PNG")
@click.option("--mode", type=click.Choice(["fast", "detailed"]), default="fast", show_default=True,
              help="the simulator's fidelity for every case")
@click.option("--set", "extra", multiple=True, metavar="KEY=VALUE",
              help="override a field in every case, after the case's own overrides (a what-if over the set, e.g. "
                   "--set cluster.gpu.efficiency.hbm_frac=0.8; repeatable)")
@click.option("--explain", is_flag=True,
              help="per case, where its step goes: the breakdown and the busiest rank's largest tasks (simulates "
                   "each case in detail with every task recorded, whatever --mode says; slower)")
@click.option("--dir", "cases_dir", type=click.Path(file_okay=False), default=None,
              help="folder of case files [default: workloads/published]")
@work_options
def validate(cases: tuple[str, ...], as_json: bool, plot_out: str | None, mode: str, extra: tuple[str, ...],
             explain: bool, cases_dir: str | None, max_memory: str | None, max_time: str | None,
             quiet: bool) -> None:
    """Run published cases (all, or CASES: families, file stems, case names, globs or case files) and report
    predicted, measured and the signed error predicted / measured - 1."""
    from sim.loading import scenario_guard
    from sim.validation import load_cases, run_cases, select, summarize
    from sim.validation.report import json_object, table_lines, validation_figure
    from sim.validation.runner import check_extra

    if plot_out:
        check_output(plot_out, "--plot", IMAGE_FORMATS)
    budget = Budget.from_option(max_memory, max_time)
    folder = Path(cases_dir) if cases_dir else published_dir()
    only_files = bool(cases) and all(Path(c).suffix in (".yaml", ".yml") and Path(c).is_file() for c in cases)
    chosen = select([] if only_files else load_cases(folder), cases)
    check_extra(chosen, extra)
    t0 = time.perf_counter()

    def within_budget(s: Scenario) -> None:
        est = step_estimate(s, "detailed" if explain else mode)
        est.command = "validate"
        check(est, budget)

    with new_progress("sim validate", len(chosen), quiet, unit="cases") as bar, scenario_guard(within_budget):
        def step(case: Any) -> None:
            bar.stage(case.name)
            bar.update(1)

        results = run_cases(chosen, mode, step, extra, explain)
    wall = time.perf_counter() - t0
    summary = summarize(results)
    ran = "detailed" if explain else mode
    if plot_out:
        fig = validation_figure(results) if not extra else validation_figure(
            results, f"sim validate, what-if: --set {' --set '.join(extra)}")
        fmt = plot_out.rsplit(".", 1)[-1].lower()
        write_atomic(plot_out, lambda tmp: fig.savefig(tmp, dpi=130, format=fmt), "--plot")
    if as_json:
        click.echo(json.dumps(_clean(json_object(results, summary, ran, wall, extra)), indent=2))
        click.echo(f"validated {len(results)} cases in {wall:.1f} s (mode {ran})", err=True)
        return
    for line in table_lines(results, summary, ran, wall, extra):
        click.echo(line)
