"""``sim estimate``: a whole training run, priced phase by phase (default: DeepSeek-V3 on 2,048 H800).

A table per phase (steps, tokens, step time, GPU-hours, days, dollars, energy, CO2, layout) and the total,
the layouts the search chose where the job's was illegal, the published figures when the job has them and
what more GPUs, a longer deadline or another price change. ``--json`` prints one object on stdout and
nothing else there; progress goes to stderr (``sim.progress``). The phases' step simulations are priced against
``--max-memory`` and ``--max-time`` before the first one runs.
"""

from __future__ import annotations

from typing import Any

import click

from sim.budget import Estimate, many_steps_estimate, step_estimate
from sim.cli.common import budget_check, echo_json, human_count, new_progress, work_options, write_atomic
from sim.cli.run_cmd import scenario_options
from sim.config import Scenario
from sim.errors import SimInputError
from sim.loading import load_scenario, parse_override
from sim.outputs import IMAGE_FORMATS, check_output


def _work(scenario: Scenario, mode: str, max_search: int = 2) -> Estimate:
    """The step simulations of the run's phases: each phase's points (its batch and the ramp's), each point
    counted with the layout searches it may need when the job's layout is illegal there."""
    from sim.estimate.phases import phase_data, run_spec, validate_phase

    sims: list[Estimate] = []
    t = scenario.training
    for spec in run_spec(scenario).phases:
        if spec.gpu_hours is not None:
            continue
        seq, batch = spec.seq_len or t.seq_len, spec.global_batch_size or t.global_batch_size
        points = spec.batch_ramp.points if spec.batch_ramp is not None else 1
        q, _ = validate_phase(phase_data(scenario, spec, seq, batch))
        if q is not None:
            sims += [step_estimate(q, mode)] * points
        else:  # the layout will be searched: price the job's layout at this batch, for each candidate
            per_step = scenario.dp * scenario.parallel.micro_batch_size
            n = max(1, -(-batch // per_step))
            sims += [step_estimate(scenario, mode, n=n)] * (points * (1 + max_search))
    return many_steps_estimate("estimate", sims)


@click.command()
@scenario_options
@click.option("--price", type=click.FloatRange(min=0), default=None, metavar="USD_PER_GPU_HOUR",
              help="price per GPU-hour (default: the cluster profile's usd_per_gpu_hour)")
@click.option("--mode", type=click.Choice(["fast", "detailed"]), default="fast", show_default=True,
              help="step simulation mode for every simulated point")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None,
              help="write GPU-hours by phase (next to published figures) as a PNG")
@work_options
def estimate(workload: str | None, hardware: str | None, gpus: int | None, overrides: tuple[str, ...],
             price: float | None, mode: str, as_json: bool, plot_out: str | None, max_memory: str | None,
             max_time: str | None, quiet: bool) -> None:
    """Estimate a whole training run of WORKLOAD: GPU-hours, days, dollars, energy and CO2 per phase."""
    from sim.estimate import estimate_run

    if plot_out:
        check_output(plot_out, "--plot", IMAGE_FORMATS)
    scenario = load_scenario(workload, hardware=hardware, gpus=gpus, overrides=overrides)
    if scenario.run is not None and any(parse_override(o)[0] == "training.total_tokens" for o in overrides):
        raise SimInputError("not read: the job's run: section gives each phase's tokens; set "
                            "run.phases.0.tokens (its first phase) instead", field="training.total_tokens")
    work = _work(scenario, mode)
    budget_check(work, max_memory, max_time)
    with new_progress("sim estimate", 1, quiet, unit="step simulations") as bar:
        def progress(label: str, done: int, planned: int) -> None:
            bar.set_total(planned)
            bar.stage(label)
            bar.update(done - bar.done)

        est = estimate_run(scenario, mode=mode, price=price, progress=progress)
    if plot_out:
        from sim.estimate.plot import estimate_figure

        fig = estimate_figure(est)
        fmt = plot_out.rsplit(".", 1)[-1].lower()
        write_atomic(plot_out, lambda p: fig.savefig(p, dpi=120, format=fmt), "--plot")
    for w in est.warnings:
        click.echo(f"WARNING: {w}", err=True)
    out = est.to_dict()
    if as_json:
        echo_json(out)
        return
    _print_human(out)


def _money(x: float, signed: bool = False) -> str:
    sign = "-" if x < 0 else ("+" if signed else "")
    return f"{sign}${_sig(abs(x))}"


def _layout(lay: dict[str, Any] | None) -> str:
    if not lay:
        return "-"
    vpp = f" vpp{lay['vpp']}" if "vpp" in lay else ""
    cp = f" CP{lay['cp']}" if lay.get("cp", 1) > 1 else ""
    return (f"{lay['schedule']}{vpp} TP{lay['tp']}{cp} PP{lay['pp']} DP{lay['dp']} mbs{lay['micro_batch_size']}"
            f"{'' if lay['recompute'] == 'norm_and_up_proj' else ' rc:' + str(lay['recompute'])}")


def _sig(x: float) -> str:
    """Four significant figures with a K or M suffix: 2.482M, 50.21K, 12.34, 0.0123."""
    for unit, f in (("M", 1e6), ("K", 1e3)):
        if abs(x) >= f:
            return f"{x / f:.4g}{unit}"
    return f"{x:.4g}"


def _row(name: str, steps: Any, tokens: Any, st: Any, q: dict[str, Any], layout: str) -> str:
    steps_s = f"{steps:,}" if steps is not None else "-"
    tokens_s = human_count(tokens) if tokens else "-"
    if st is None:
        st_s = "given" if steps is None else ""
    elif abs(st[1] - st[0]) <= 1e-9 * abs(st[1]):
        st_s = f"{st[0]:.4g}"
    else:
        st_s = f"{st[0]:.4g}-{st[1]:.4g}"
    co2 = "-" if q["co2_kg"] is None else _sig(q["co2_kg"] / 1e3)
    return (f"  {name:<15} {steps_s:>9} {tokens_s:>9} {st_s:>12} {_sig(q['gpu_hours']):>10} "
            f"{q['days']:>7.3g} {_money(q['usd']):>9} {_sig(q['kwh'] / 1e3):>8} {co2:>7}  {layout}").rstrip()


def _print_human(d: dict[str, Any]) -> None:
    click.echo(f"{d['scenario']}: {d['num_gpus']} x {d['gpu']}, ${d['usd_per_gpu_hour']:.2f} per GPU-hour, "
               f"{d['mode']} mode, {d['step_simulations']} step simulations")
    click.echo(f"  {'phase':<15} {'steps':>9} {'tokens':>9} {'step time s':>12} {'GPU-hours':>10} {'days':>7} "
               f"{'USD':>9} {'MWh':>8} {'t CO2':>7}  layout")
    for p in d["phases"]:
        click.echo(_row(p["name"], p["steps"], p["tokens"], p["step_time_s"], p, _layout(p["layout"])))
    t = d["total"]
    click.echo(_row("total", t["steps"], t["tokens"], None, t, ""))
    reasons = [(p["name"], p["layout_reason"]) for p in d["phases"] if p["layout_reason"]]
    if reasons:
        click.echo("layouts changed where the job's does not work:")
        for name, reason in reasons:
            click.echo(f"  {name}: {reason}")
    m = d["measured"]
    if m:
        click.echo(f"published: {m['source']}")
        for st in m["stages"]:
            click.echo(f"  {st['name']:<18} {_sig(st['gpu_hours']):>9} vs {_sig(st['measured_gpu_hours']):>8}"
                       f"  {_err(st['error'])}")
        if "total" in m:
            tt = m["total"]
            click.echo(f"  {'total':<18} {_sig(tt['gpu_hours']):>9} vs {_sig(tt['measured_gpu_hours']):>8}"
                       f"  {_err(tt['error'])}")
        if "usd" in m:
            u = m["usd"]
            click.echo(f"  {'USD at $' + format(u['usd_per_gpu_hour'], '.2f'):<18} {_money(u['usd']):>10} vs "
                       f"{_money(u['measured_usd']):>9}  {_err(u['error'])}")
    s = d["sensitivities"]
    if s:
        g, dl, pr = s["gpus_plus_10pct"], s["deadline_plus_1_day"], s["price_plus_10pct"]
        click.echo("sensitivities (" + s["model"] + "):")
        click.echo(f"  10% more GPUs ({g['gpus']}): {g['delta_days']:+.3g} days, {_signed(g['delta_gpu_hours'])} "
                   f"GPU-hours, {_money(g['delta_usd'], True)}")
        click.echo(f"  one more day ({dl['deadline_days']:.3g} days): about {dl['gpus']} GPUs "
                   f"({dl['delta_gpus']:+d}; continuous DP, not a layout) suffice, "
                   f"{_signed(dl['delta_gpu_hours'])} GPU-hours, {_money(dl['delta_usd'], True)}")
        click.echo(f"  price +10% (${pr['usd_per_gpu_hour']:.2f}): {_money(pr['delta_usd'], True)}; "
                   f"each $1 per GPU-hour adds {_money(pr['usd_per_1_usd_per_gpu_hour'])}")
    for n in d["notes"]:
        click.echo(f"note: {n}")


def _signed(x: float) -> str:
    return ("-" if x < 0 else "+") + _sig(abs(x))


def _err(e: float | None) -> str:
    return "-" if e is None else f"{e:+.1%}"
