"""``sim run``: simulate one training step of a scenario (default: DeepSeek-V3 on 2,048 H800)."""

from __future__ import annotations

import sys

import click

from sim.cli.common import echo_json, human_bytes, write_atomic
from sim.errors import SimInputError
from sim.loading import load_scenario

BREAKDOWN_KEYS = ("forward", "backward_input", "backward_weight", "overlapped", "bubble", "exposed_comm",
                  "optimizer")


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
@click.option("--mode", type=click.Choice(["detailed", "fast", "analytic"]), default="detailed", show_default=True,
              help="detailed: per-layer phases; fast: per-action durations, for sweeps; analytic: the same "
                   "durations combined without an event loop (no trace or Gantt chart)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--verbose", "-v", is_flag=True, help="list every op that fell back to profile efficiencies")
@click.option("--trace", "trace_out", type=click.Path(dir_okay=False), default=None,
              help="write a Chrome/Perfetto trace JSON")
@click.option("--gantt", "gantt_out", type=click.Path(dir_okay=False), default=None, help="write a Gantt PNG")
def run(workload: str | None, hardware: str | None, gpus: int | None, overrides: tuple[str, ...],
        calibration: str | None, mode: str, as_json: bool, verbose: bool, trace_out: str | None,
        gantt_out: str | None) -> None:
    """Simulate one training step of WORKLOAD and report where the time goes."""
    from sim.step import num_actions, simulate_step

    if mode == "analytic" and (trace_out or gantt_out):
        raise SimInputError("--trace and --gantt need a timeline: use --mode detailed or fast", field="--mode")
    extra = (f"calibration={calibration}",) if calibration else ()
    scenario = load_scenario(workload, hardware=hardware, gpus=gpus, overrides=(*overrides, *extra))
    named = calibration is not None  # a table the user names must fit; the job's own may be set aside
    if sys.stderr.isatty() and mode != "analytic":
        with click.progressbar(length=num_actions(scenario), label="simulating", file=sys.stderr) as bar:
            result = simulate_step(scenario, mode=mode, allow_cpu_calibration=named, imbalance_cost=True,
                                   progress=bar.update, strict_calibration=named)
    else:
        result = simulate_step(scenario, mode=mode, allow_cpu_calibration=named, imbalance_cost=True,
                               strict_calibration=named)
    nranks = scenario.parallel.pp
    if trace_out:
        from sim.perfetto import write_chrome_trace

        write_atomic(trace_out, lambda p: write_chrome_trace(p, result.trace, nranks, scenario.name,
                                                             {"step_time_s": result.step_time_s}))
    if gantt_out:
        from sim.plots import write_gantt

        write_atomic(gantt_out, lambda p: write_gantt(p, result.trace, nranks,
                                                      f"{scenario.name}: {result.step_time_s:.2f} s per step"))
    for warning in result.warnings:
        click.echo(f"WARNING: {warning}", err=True)
    if verbose:
        for note in result.notes:
            click.echo(f"note: {note}", err=True)
    elif result.notes:
        click.echo(f"note: {len(result.notes)} kinds of ops had no calibration and used profile efficiencies "
                   "(--verbose lists them)", err=True)
    if as_json:
        out = result.to_dict()
        out["scenario"] = scenario.name
        echo_json(out)
        return
    _print_human(scenario, result)


def _print_human(scenario, r) -> None:
    p = scenario.parallel
    click.echo(f"{scenario.name}: {scenario.model.name} on {scenario.num_gpus} x {scenario.cluster.gpu.name}")
    click.echo(f"  layout TP{p.tp} PP{p.pp} DP{scenario.dp} EP{p.ep}, {p.schedule}, "
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
        click.echo(f"    {k:16s} {v:8.3f} s  {v / r.step_time_s:6.1%}")
    verdict = "OUT OF MEMORY" if r.oom else "fits"
    click.echo(f"  peak memory per GPU  {human_bytes(r.peak_memory_per_gpu_bytes)} of "
               f"{human_bytes(r.memory_capacity_bytes)} ({verdict})")
    if r.imbalance != 1.0 or r.imbalance_cost_s is not None:
        cost = f"; costs {r.imbalance_cost_s:.3f} s over balanced routing" if r.imbalance_cost_s is not None else ""
        click.echo(f"  expert imbalance     {r.imbalance:.3f} (max/mean tokens per GPU{cost})")
    if sys.stdout.isatty():
        events = f" ({r.num_events} events)" if r.num_events else ""
        click.echo(f"  simulated in {r.wall_time_s:.2f} s{events}")
