"""``sim sweep SPEC``: many configurations, pruned, ranked, the front-runners simulated in detail, priced.

Prints what was pruned and why, the best points by the spec's objective, how the detail tier re-ranked the
front-runners, and the Pareto front of (days, dollars); ``--out`` streams the results to Parquet (one row per
point) and ``--resume`` finishes an interrupted sweep; ``--plot`` draws the front; ``--json`` prints one
object on stdout. Progress goes to stderr on a terminal.
"""

from __future__ import annotations

from typing import Any

import click

from sim.cli.common import echo_json, new_progress, write_atomic
from sim.outputs import IMAGE_FORMATS, PARQUET_FORMATS, check_outputs
from sim.progress import Progress


class StageProgress:
    """The sweep's ``progress(stage, done, total)`` on a :class:`sim.progress.Progress` (a tqdm bar on a
    terminal, a line every 10 s elsewhere): each stage counts its own points."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.stage = ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        bar = self.bar
        if stage != self.stage:
            self.stage = stage
            bar.update(-bar.done)  # a new stage starts from none of its points
            bar.set_total(total)
            bar.stage(stage)
        bar.set_total(total)
        bar.update(done - bar.done)


def executor_options(f: Any) -> Any:
    f = click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="worker processes (default: one per core)")(f)
    f = click.option("--scheduler", default=None, metavar="ADDRESS",
                     help="a Dask scheduler (with --executor dask); default: a LocalCluster")(f)
    return click.option("--executor", "executor_kind", type=click.Choice(["local", "dask"]), default="local",
                        show_default=True, help="where points are evaluated")(f)


def tier_options(f: Any) -> Any:
    f = click.option("--top-k", type=click.IntRange(min=0), default=None,
                     help="front-runners re-simulated in detail (default: the spec's, 10)")(f)
    return click.option("--tier", type=click.Choice(["auto", "analytic", "fast", "detailed"]), default=None,
                        help="ranking tier (default: the spec's; auto: analytic when available, else fast)")(f)


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="results as Parquet, streamed while the sweep runs")
@click.option("--resume", is_flag=True, help="finish the interrupted sweep streamed to --out")
@executor_options
@tier_options
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None,
              help="write the (days, dollars) Pareto front as a PNG")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--quiet", "-q", is_flag=True, help="no progress on stderr")
def sweep(spec_path: str, out: str | None, resume: bool, executor_kind: str, scheduler: str | None,
          workers: int | None, tier: str | None, top_k: int | None, plot_out: str | None, as_json: bool,
          quiet: bool) -> None:
    """Sweep the configurations SPEC describes: prune, rank, simulate the best in detail, price them."""
    from sim.sweep import load_spec, run_sweep
    from sim.sweep.store import require_parquet

    check_outputs([(out, "--out", PARQUET_FORMATS), (plot_out, "--plot", IMAGE_FORMATS)])
    if out:
        require_parquet()
    spec, spec_dir = load_spec(spec_path)
    result = run_with_progress(lambda ex, bar: run_sweep(spec, spec_dir, executor=ex, out=out, resume=resume,
                                                         progress=bar, tier=tier, top_k=top_k),
                               executor_kind, scheduler, workers, quiet)
    report(result, plot_out, as_json)


def run_with_progress(fn: Any, executor_kind: str, scheduler: str | None, workers: int | None,
                      quiet: bool = False, label: str = "sim sweep") -> Any:
    from sim.sweep.executors import make_executor

    executor = make_executor(executor_kind, scheduler, workers)
    try:
        with new_progress(label, 1, quiet, unit="points") as bar:
            return fn(executor, StageProgress(bar))
    except BaseException:
        executor.abort()  # an interrupt: stop the workers now; streamed results stay for --resume
        raise
    finally:
        executor.close()


def summary(result: Any, top: int = 10) -> dict[str, Any]:
    """The JSON form of a sweep's result."""
    from sim.sweep.pareto import label_columns, layout_label

    frame = result.frame
    cols = label_columns(frame.attrs.get("swept", ()))
    keep = ["index", "hardware", "gpus", "tp", "pp", "dp", "ep", "schedule", "vpp", "micro_batch_size",
            "zero_stage", "recompute", "precision", "usd_per_gpu_hour", "tier", "step_time_s", "mfu",
            "tokens_per_s_per_gpu", "memory_per_gpu_gb", "gpu_hours", "days", "usd", "mwh"]

    def records(df: Any) -> list[dict[str, Any]]:
        out = []
        for _, row in df.iterrows():
            d = {k: (row[k].item() if hasattr(row[k], "item") else row[k]) for k in keep if k in row}
            d["layout"] = layout_label(row, cols)
            out.append(d)
        return out

    ok = frame[(frame["status"] == "ok") & frame["meets_constraints"].fillna(False).astype(bool)]
    best = ok.sort_values([result.spec.objective, "index"]).head(top)
    return {"name": result.spec.name, "objective": result.spec.objective, "tokens": result.space.tokens,
            "deadline_days": result.spec.deadline_days, "budget_usd": result.spec.budget_usd,
            "tier": result.tier, "detail_tier": result.detail_tier, "counts": result.counts,
            "timings_s": result.timings, "best": records(best), "ranking": result.ranking,
            "pareto_front": records(result.front), "notes": result.notes, "warnings": result.warnings}


def report(result: Any, plot_out: str | None, as_json: bool) -> None:
    if plot_out:
        from sim.sweep.pareto import label_columns, write_front_plot

        title = f"{result.spec.name}: {result.space.tokens / 1e12:.4g}T tokens, Pareto front of days and dollars"
        write_atomic(plot_out, lambda p: write_front_plot(p, result.frame, title,
                                                          label_columns(result.frame.attrs.get("swept", ()))),
                     "--plot")
    d = summary(result)
    if as_json:
        echo_json(d)
        return
    print_human(d)


def _money(x: float) -> str:
    for unit, f in (("M", 1e6), ("K", 1e3)):
        if abs(x) >= f:
            return f"${x / f:.4g}{unit}"
    return f"${x:.4g}"


def _table(rows: list[dict[str, Any]]) -> None:
    click.echo(f"    {'#':>7} {'days':>8} {'USD':>9} {'step s':>8} {'MFU':>6} {'GB/GPU':>7}  layout")
    for r in rows:
        mfu = "-" if r["mfu"] is None or r["mfu"] != r["mfu"] else f"{r['mfu']:.1%}"
        click.echo(f"    {r['index']:>7} {r['days']:>8.4g} {_money(r['usd']):>9} {r['step_time_s']:>8.4g} {mfu:>6} "
                   f"{r['memory_per_gpu_gb']:>7.1f}  {r['layout']} [{r['tier']}]")


def print_human(d: dict[str, Any]) -> None:
    c, t = d["counts"], d["timings_s"]
    click.echo(f"{d['name']}: {c['points']:,} points, {d['tokens'] / 1e12:.4g}T tokens, objective {d['objective']}"
               + (f", deadline {d['deadline_days']:g} days" if d["deadline_days"] else "")
               + (f", budget {_money(d['budget_usd'])}" if d["budget_usd"] else ""))
    from sim.sweep.rules import NOT_A_CONFIGURATION

    # "n/a" points are not configurations at all (a vpp the schedule does not take: vpp > 1 without virtual
    # stages, or interleaving at vpp 1): say so rather than print the rule's short name
    label = {NOT_A_CONFIGURATION: "not a configuration (a vpp the schedule does not take)"}
    pruned = ", ".join(f"{label.get(k, k)} {v:,}" for k, v in sorted(c["pruned_by_rule"].items())) or "none"
    click.echo(f"  pruned before simulating: {pruned}")
    by = ", ".join(f"{k} {v:,}" for k, v in sorted(c["by_status"].items()))
    click.echo(f"  results: {by}; {c.get('rank_simulations', 0):,} {d['tier']} simulations"
               + (f", {c.get('detail_simulations', 0)} {d['detail_tier']}" if d["detail_tier"] else "")
               + f"; {t['total_s']:.1f} s (pruning {t['prune_s']:.1f} s, ranking {t['rank_s']:.1f} s, "
               f"detail {t['detail_s']:.1f} s)")
    if d["best"]:
        click.echo(f"  best by {d['objective']}:")
        _table(d["best"])
    else:
        click.echo("  no point fits and meets the constraints")
    rk = d["ranking"]
    if rk.get("detail_tier") and rk.get("rows"):
        tau = rk.get("kendall_tau")
        click.echo(f"  {rk['detail_tier']} re-ranking of the top {rk['k']}: best "
                   f"{'changed' if rk['best_changed'] else 'unchanged'}, Kendall tau "
                   f"{'-' if tau is None else format(tau, '.2f')}, largest change of {d['objective']} "
                   f"{(rk['max_abs_change'] or 0):.2%}")
        for r in rk["rows"]:
            a, b = r[f"rank_{rk['rank_tier']}"], r[f"rank_{rk['detail_tier']}"]
            if a != b:
                click.echo(f"    #{r['index']} {r['layout']}: {a} -> {b}")
    click.echo(f"  Pareto front (days, dollars): {len(d['pareto_front'])} points")
    _table(d["pareto_front"][:15])
    for n in d["notes"]:
        click.echo(f"note: {n}")
    for w in d["warnings"]:
        click.echo(f"WARNING: {w}", err=True)
