"""``sim plan WORKLOAD --tokens 14.8T``: the cheapest configurations that meet a deadline and a budget, each with
its layout, and why the runners-up lost (slower, over budget, OOM, illegal); see ``sim.sweep.plan``."""

from __future__ import annotations

from typing import Any

import click

from sim.cli.common import echo_json, human_count, write_atomic
from sim.cli.sweep_cmd import executor_options, run_with_progress, tier_options
from sim.outputs import IMAGE_FORMATS, PARQUET_FORMATS, YAML_FORMATS, check_outputs
from sim.sweep.plan import money


@click.command()
@click.argument("workload")
@click.option("--tokens", required=True, help="token budget, e.g. 14.8T")
@click.option("--deadline-days", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--budget-usd", default=None, help="e.g. 6e6 or 6M")
@click.option("--gpus", default=None, metavar="N,N,...", help="GPU counts, e.g. 1024,2048,4096")
@click.option("--hardware", default=None, metavar="H,H,...", help="GPUs or cluster profiles, e.g. h800,h100,h200")
@click.option("--axis", "axes", multiple=True, metavar="KEY=V1,V2",
              help="replace or add a sweep axis, e.g. --axis pp=8,16 (repeatable)")
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True, help="configurations to recommend")
@executor_options
@tier_options
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="every point as Parquet")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None, help="Pareto front PNG")
@click.option("--spec-out", type=click.Path(dir_okay=False), default=None,
              help="write the sweep spec the plan ran (for sim sweep)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--quiet", "-q", is_flag=True, help="no progress on stderr")
def plan(workload: str, tokens: str, deadline_days: float | None, budget_usd: str | None, gpus: str | None,
         hardware: str | None, axes: tuple[str, ...], top: int, executor_kind: str, scheduler: str | None,
         workers: int | None, tier: str | None, top_k: int | None, out: str | None, plot_out: str | None,
         spec_out: str | None, as_json: bool, quiet: bool) -> None:
    """Recommend the cheapest ways to train WORKLOAD on --tokens within --deadline-days and --budget-usd."""
    import yaml

    from sim.sweep import run_sweep
    from sim.sweep.plan import parse_amount, parse_counts, parse_list, plan_spec, recommend
    from sim.sweep.spec import dump_spec
    from sim.sweep.store import require_parquet

    check_outputs([(out, "--out", PARQUET_FORMATS), (plot_out, "--plot", IMAGE_FORMATS),
                   (spec_out, "--spec-out", YAML_FORMATS)])
    if out:
        require_parquet()
    extra: dict[str, list[Any]] = {}
    for text in axes:
        if "=" not in text:
            raise click.BadParameter(f"expected KEY=V1,V2 (got {text!r})", param_hint="--axis")
        k, v = text.split("=", 1)
        extra[k.strip()] = parse_list(v, f"--axis {k.strip()}")
    spec = plan_spec(workload, parse_amount(tokens, "--tokens"), deadline_days=deadline_days,
                     budget_usd=parse_amount(budget_usd, "--budget-usd") if budget_usd else None,
                     gpus=parse_counts(gpus, "--gpus") if gpus else None,
                     hardware=[str(x) for x in parse_list(hardware, "--hardware")] if hardware else None,
                     axes=extra, tier=tier or "auto", top_k=10 if top_k is None else top_k)
    if spec_out:
        write_atomic(spec_out, lambda p: p.write_text(yaml.safe_dump(dump_spec(spec), sort_keys=False)), "--spec-out")
    result = run_with_progress(lambda ex, bar: run_sweep(spec, executor=ex, out=out, progress=bar),
                               executor_kind, scheduler, workers, quiet, "sim plan")
    if plot_out:
        from sim.sweep.pareto import label_columns, write_front_plot

        write_atomic(plot_out, lambda p: write_front_plot(p, result.frame, f"plan: {workload}",
                                                          label_columns(result.frame.attrs.get("swept", ()))),
                     "--plot")
    rec = recommend(result.frame, spec, top)
    d = {"workload": workload, "tokens": spec.tokens, "deadline_days": deadline_days, "budget_usd": spec.budget_usd,
         "tier": result.tier, "detail_tier": result.detail_tier, **rec, "counts": result.counts,
         "timings_s": result.timings, "notes": result.notes, "warnings": result.warnings}
    if as_json:
        echo_json(d)
        return
    _print(d)


def _print(d: dict[str, Any]) -> None:
    c = d["counts"]
    cons = [f"deadline {d['deadline_days']:g} days" if d["deadline_days"] else "",
            f"budget {money(d['budget_usd'])}" if d["budget_usd"] else ""]
    click.echo(f"plan for {d['workload']}: {d['tokens'] / 1e12:.4g}T tokens"
               + "".join(f", {x}" for x in cons if x) + f"; {d['configurations']:,} configurations, "
               f"{c.get('rank_simulations', 0):,} simulated ({d['tier']}), {c.get('detail_simulations', 0)} in "
               f"detail, {d['timings_s']['total_s']:.1f} s")
    if d["recommendations"]:
        click.echo("recommended (cheapest first):")
        for i, r in enumerate(d["recommendations"], 1):
            click.echo(f"  {i}. {r['layout']}: {r['days']:.4g} days, {money(r['usd'])}, {human_count(r['gpu_hours'])} "
                       f"GPU-hours, {r['mwh']:,.4g} MWh, MFU {r['mfu']:.1%}, {r['memory_per_gpu_gb']:.0f} GB/GPU "
                       f"[{r['tier']}]")
    else:
        click.echo(f"no configuration qualifies: {d['binding']}")
    if d["runners_up"]:
        click.echo("why the others lost:")
        for kind, info in d["runners_up"].items():
            extra = ""
            if "by_rule" in info:
                extra = " (" + ", ".join(f"{k} {v:,}" for k, v in info["by_rule"].items()) + ")"
            click.echo(f"  {kind}: {info['count']:,}{extra}")
            for e in info["examples"]:
                click.echo(f"    #{e['index']} {e['layout']}: {e['why']}")
    for n in d["notes"]:
        click.echo(f"note: {n}")
    for w in d["warnings"]:
        click.echo(f"WARNING: {w}", err=True)
