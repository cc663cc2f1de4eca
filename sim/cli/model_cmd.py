"""``sim model WORKLOAD``: parameters, FLOPs per token, KV cache and memory per GPU.

Memory comes from :func:`sim.memory.memory_per_rank`, the function ``sim run`` reports (a test pins that the
two agree). ``--seq-len`` is held to the model's maximum position like a job's (``sim.guards``)."""

from __future__ import annotations

import click

from sim.budget import model_estimate
from sim.cli.common import budget_check, echo_json, human_bytes, human_count, work_options
from sim.guards import check_seq_len
from sim.loading import load_model
from sim.model_report import model_report


@click.command()
@click.argument("workload")
@click.option("--seq-len", type=click.IntRange(min=1), default=None,
              help="sequence length for attention FLOPs (default: the job's, else the model's max_seq_len)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override a field, e.g. --set model.max_seq_len=131072 (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@work_options
def model(workload: str, seq_len: int | None, overrides: tuple[str, ...], as_json: bool, max_memory: str | None,
          max_time: str | None, quiet: bool) -> None:
    """Architecture arithmetic for WORKLOAD (a job file, or a model file under workloads/models)."""
    m, scenario = load_model(workload, overrides)
    seq = seq_len or (scenario.training.seq_len if scenario else m.max_seq_len)
    if seq_len is not None:
        check_seq_len(m, seq_len, "--seq-len")
    if scenario is not None:
        budget_check(model_estimate(scenario), max_memory, max_time)
    report = model_report(m, scenario, seq)
    if as_json:
        echo_json(report)
        return
    click.echo(f"{report['model']}  (sequence length {seq})")
    click.echo(f"  parameters, total           {human_count(report['params_total'])}")
    click.echo(f"  parameters, activated       {human_count(report['params_active'])} "
               f"({human_count(report['params_active_with_embedding'])} with the embedding table)")
    if report["params_mtp"]:
        click.echo(f"  parameters, MTP (unique)    {human_count(report['params_mtp'])}")
    click.echo(f"  train FLOPs/token, causal   {report['train_flops_per_token_causal'] / 1e9:.1f} G "
               f"(non-causal {report['train_flops_per_token_noncausal'] / 1e9:.1f} G; "
               f"MTP +{report['train_flops_per_token_mtp'] / 1e9:.1f} G)")
    click.echo(f"  KV cache per token (BF16)   {report['kv_cache_bytes_per_token']:,.0f} bytes")
    if report["memory_per_gpu_bytes"] is None:
        click.echo(f"  memory per GPU              -- {report['memory_note']}")
        return
    lay = report["layout"]
    cp = f" CP{lay['cp']}" if lay.get("cp", 1) > 1 else ""
    click.echo(f"  layout  TP{lay['tp']}{cp} PP{lay['pp']} DP{lay['dp']} EP{lay['ep']} {lay['schedule']}, "
               f"{lay['num_microbatches']} micro-batches, layers per stage {lay['stage_layers']}")
    cap = report["memory_capacity_bytes"]
    click.echo(f"  memory per GPU (worst rank) {human_bytes(report['memory_per_gpu_bytes'])} of {human_bytes(cap)}")
    click.echo("    rank   weights     grads       optimizer   activations  total")
    for r in report["memory_per_rank"]:
        cells = [human_bytes(r[k]) for k in ("weights_bytes", "gradients_bytes", "optimizer_bytes",
                                              "activations_bytes", "total_bytes")]
        click.echo(f"    {r['rank']:>4}   " + "  ".join(f"{c:>10}" for c in cells))
