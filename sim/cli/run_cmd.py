"""``sim run``: simulate one training step of a scenario (default: DeepSeek-V3 on 2,048 H800)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from sim.budget import Budget, Estimate, check, human, run_estimate
from sim.cli.common import echo_json, human_bytes, new_progress, work_options, write_atomic
from sim.config import Scenario
from sim.errors import SimBugError, SimInputError
from sim.guards import check_step_result
from sim.loading import load_scenario
from sim.outputs import IMAGE_FORMATS, JSON_FORMATS, check_outputs

if TYPE_CHECKING:
    from sim.timeline import Trace

#: Fidelity tiers, most detailed first; a tier missing from ``sim.step.MODES`` is skipped.
TIERS = ("detailed", "fast", "analytic")

BREAKDOWN_KEYS = ("forward", "backward_input", "backward_weight", "overlapped", "bubble", "exposed_comm",
                  "optimizer", "host")


def scenario_options(f):
    """The options every command that loads a scenario shares."""
    f = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="override a scenario field, e.g. --set parallel.pp=8 (repeatable)")(f)
    f = click.option("--gpus", type=int, default=None, help="number of GPUs (data parallelism scales)")(f)
    f = click.option("--hardware", default=None, help="cluster profile name or file")(f)
    return click.argument("workload", required=False)(f)


@click.command()
@scenario_options
@click.option("--calibration", type=click.Path(dir_okay=False), default=None,
              help="calibration table (from `sim calibrate`) replacing the scenario's")
@click.option("--mode", type=click.Choice(list(TIERS)), default="detailed", show_default=True,
              help="detailed: per-layer phases; fast: per-action durations, for sweeps; analytic: the same "
                   "durations combined without an event loop (no trace or Gantt chart). The default steps down, "
                   "saying so, when detailed would exceed --max-memory")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--verbose", "-v", is_flag=True, help="list every op that fell back to profile efficiencies")
@click.option("--trace", "trace_out", type=click.Path(dir_okay=False), default=None,
              help="write a Chrome/Perfetto trace JSON")
@click.option("--gantt", "gantt_out", type=click.Path(dir_okay=False), default=None,
              help="write a Gantt chart (.png, .svg, .pdf, ...)")
@work_options
def run(workload: str | None, hardware: str | None, gpus: int | None, overrides: tuple[str, ...],
        calibration: str | None, mode: str, as_json: bool, verbose: bool, trace_out: str | None,
        gantt_out: str | None, max_memory: str | None, max_time: str | None, quiet: bool) -> None:
    """Simulate one training step of WORKLOAD and report where the time goes."""
    from sim.step import num_actions, routing_is_skewed, simulate_step
    from sim.whatif import calibration_report

    if mode == "analytic" and (trace_out or gantt_out):
        raise SimInputError("--trace and --gantt need a timeline: use --mode detailed or fast", field="--mode")
    check_outputs([(trace_out, "--trace", JSON_FORMATS), (gantt_out, "--gantt", IMAGE_FORMATS)])
    extra = (f"calibration={calibration}",) if calibration else ()
    scenario = load_scenario(workload, hardware=hardware, gpus=gpus, overrides=(*overrides, *extra))
    named = calibration is not None  # a table the user names must fit; the job's own may be set aside
    explicit = click.get_current_context().get_parameter_source("mode") is not ParameterSource.DEFAULT
    mode, est, switched = choose_mode(scenario, mode, explicit, Budget.from_option(max_memory, max_time),
                                      bool(trace_out), bool(gantt_out))
    record = bool(trace_out or gantt_out)
    ctx_units = sum(p.seconds for p in est.parts if p.what.startswith("expert") or p.what.startswith("cost"))
    main_units = sum(p.seconds for p in est.parts if not p.what.startswith("balanced")) - ctx_units
    with new_progress("sim run", est.seconds or 1.0, quiet) as bar:
        bar.stage("building the step (costs, expert loads)")
        total_actions = num_actions(scenario)
        seen = [0]

        def on_action(n: int) -> None:
            if not seen[0]:
                bar.update(ctx_units)
                bar.stage(f"simulating {total_actions:,} actions ({mode})")
            seen[0] += n
            bar.update(main_units * n / max(total_actions, 1))
            if seen[0] >= total_actions and routing_is_skewed(scenario):
                bar.stage("the same step with balanced routing (imbalance cost)")

        result = simulate_step(scenario, mode=mode, allow_cpu_calibration=named, imbalance_cost=True,  # type: ignore[arg-type]
                               progress=on_action, strict_calibration=named, record_trace=record)
    check_step_result(result, f"{scenario.name} ({mode} mode)")
    cal = calibration_report(scenario)
    if cal is not None and cal["rule"] == "pinned" and overrides:
        cal = calibration_report(scenario, load_scenario(workload, hardware=hardware, gpus=gpus, overrides=extra))
    if trace_out or gantt_out:
        if result.trace is None:
            raise SimBugError("the simulation kept no trace for --trace/--gantt", scenario.name)
        _write_outputs(scenario, result.trace, result.step_time_s, trace_out, gantt_out)
    if switched:
        result.warnings.append(switched)
    for warning in result.warnings:
        click.echo(f"WARNING: {warning}", err=True)
    if verbose:
        for note in result.notes:
            click.echo(f"note: {note}", err=True)
    elif result.notes and not quiet:
        click.echo(f"note: {len(result.notes)} notes on how kernels were costed (calibration reach, kernel "
                   "fallbacks; --verbose lists them)", err=True)
    if as_json:
        out = result.to_dict()
        out["scenario"] = scenario.name
        out["calibration"] = cal
        out["work_estimate"] = {"memory_bytes": est.bytes, "actions": est.actions, "events": est.events}
        echo_json(out)
        return
    _print_human(scenario, result, cal)


def _write_outputs(scenario: Scenario, trace: Trace, step_time_s: float, trace_out: str | None,
                   gantt_out: str | None) -> None:
    nranks = scenario.parallel.pp
    if trace_out:
        from sim.perfetto import write_chrome_trace

        write_atomic(trace_out, lambda p: write_chrome_trace(p, trace, nranks, scenario.name,
                                                             {"step_time_s": step_time_s}), "--trace")
    if gantt_out:
        from sim.plots import gantt_figure

        fig = gantt_figure(trace, nranks, f"{scenario.name}: {step_time_s:.2f} s per step")
        fmt = gantt_out.rsplit(".", 1)[-1].lower()
        write_atomic(gantt_out, lambda p: fig.savefig(p, format=fmt), "--gantt")


def choose_mode(scenario: Scenario, mode: str, explicit: bool, budget: Budget, trace_out: bool,
                gantt_out: bool) -> tuple[str, Estimate, str | None]:
    """The mode to run in, its work estimate, and a note when the default mode stepped down to fit the budget.

    Tiers, most detailed first: detailed, fast, then analytic once ``sim.step`` offers it. A mode the user
    chose is never changed: it runs or is refused, naming the tier that would fit."""
    from sim.step import MODES

    def estimate(m: str) -> Estimate:
        return run_estimate(scenario, m, record_trace=trace_out or gantt_out, trace_out=trace_out,
                            gantt_out=gantt_out, imbalance_cost=True)

    est = estimate(mode)
    if budget.fits(est):
        return mode, est, None
    tiers = [m for m in TIERS if m in MODES]
    for lower in tiers[tiers.index(mode) + 1:] if mode in tiers else []:
        alt = estimate(lower)
        if budget.fits(alt):
            if explicit:
                check(est, budget, f"--mode {lower} would need only {human(alt.bytes)}.")
            return lower, alt, (f"{mode} mode would need an estimated {human(est.bytes)} of memory, over the "
                                f"{human(budget.max_bytes)} budget ({budget.source}); ran in {lower} mode instead "
                                f"({human(alt.bytes)}); --max-memory raises the budget")
    check(est, budget)
    raise AssertionError("unreachable")  # pragma: no cover


def _print_human(scenario: Scenario, r: Any, cal: dict[str, Any] | None) -> None:
    p = scenario.parallel
    click.echo(f"{scenario.name}: {scenario.model.name} on {scenario.num_gpus} x {scenario.cluster.gpu.name}")
    cp = f" CP{p.cp}" if p.cp > 1 else ""
    click.echo(f"  layout TP{p.tp}{cp} PP{p.pp} DP{scenario.dp} EP{p.ep}, {p.schedule}, "
               f"{scenario.num_microbatches} micro-batches of {scenario.tokens_per_microbatch} tokens ({r.mode})")
    click.echo(f"  step time            {r.step_time_s:8.3f} s")
    click.echo(f"  tokens/s per GPU     {r.tokens_per_s_per_gpu:8.0f}")
    click.echo(f"  GPU-hours per 1T tok {r.gpu_hours_per_trillion_tokens:8.0f}")
    mfu = r.mfu
    fp8 = f", FP8 causal {mfu['fp8_causal']:.1%}" if mfu["fp8_causal"] is not None else ""
    click.echo(f"  MFU                  BF16 causal {mfu['bf16_causal']:.1%}, "
               f"non-causal {mfu['bf16_noncausal']:.1%}{fp8}")
    click.echo("  breakdown (mean over pipeline ranks)")
    for k in BREAKDOWN_KEYS:
        v = r.breakdown_s[k]
        if k == "host" and v == 0:
            continue  # shown only for a stack with host work per step (software.step_overhead_s)
        click.echo(f"    {k:16s} {v:8.3f} s  {v / r.step_time_s:6.1%}")
    verdict = "OUT OF MEMORY" if r.oom else "fits"
    click.echo(f"  peak memory per GPU  {human_bytes(r.peak_memory_per_gpu_bytes)} of "
               f"{human_bytes(r.memory_capacity_bytes)} ({verdict})")
    if r.imbalance != 1.0 or r.imbalance_cost_s is not None:
        cost = f"; costs {r.imbalance_cost_s:.3f} s over balanced routing" if r.imbalance_cost_s is not None else ""
        click.echo(f"  expert imbalance     {r.imbalance:.3f} (max/mean tokens per GPU{cost})")
    from sim.whatif import calibration_lines

    for i, line in enumerate(calibration_lines(cal)):
        click.echo(f"  {'calibration' if i == 0 else '':20s} {line}")
    if sys.stdout.isatty():
        events = f" ({r.num_events} events)" if r.num_events else ""
        click.echo(f"  simulated in {r.wall_time_s:.2f} s{events}")
