"""``sim experts WORKLOAD``: expert load over steps and layers under a balancing policy.

When the workload's skew is ``balanced`` (the default DeepSeek-V3 job: DeepSeek's profile forced balanced
routing) and ``--skew`` is not given, the dynamics start from Zipf skew with exponent 1.0 (``--zipf-exponent``
changes it): balancing balanced loads shows nothing. Policy ``eplb`` without ``experts.num_redundant_experts``
in the workload gets one spare slot per GPU (``ep`` of them), DeepSeek's prefill deployment ratio (EP32 with 32
redundant experts), as ``sim run`` does (``sim.experts.placement.redundant_experts``); ``--redundant``
overrides.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from sim.cli.common import echo_json, write_atomic
from sim.config import Scenario
from sim.experts import POLICIES, simulate_balancing
from sim.experts.balancing import BalancingHistory
from sim.experts.placement import redundant_experts
from sim.loading import load_scenario
from sim.step import step_time_by_policy

DEFAULT_START_SKEW = "zipf"


def _overrides(scenario: Scenario, skew: str | None, zipf_exponent: float | None, policy: str | None,
               seed: int | None, redundant: int | None) -> list[str]:
    spec = scenario.experts
    out: list[str] = []
    if skew is not None:
        out.append(f"experts.skew={skew}")
    elif spec.skew == "balanced":
        out.append(f"experts.skew={DEFAULT_START_SKEW}")
    if zipf_exponent is not None:
        out.append(f"experts.zipf_exponent={zipf_exponent}")
    if policy is not None:
        out.append(f"experts.policy={policy}")
    if seed is not None:
        out.append(f"experts.seed={seed}")
    if redundant is not None:
        out.append(f"experts.num_redundant_experts={redundant}")
    return out


def _report(s: Scenario, h: BalancingHistory) -> dict[str, Any]:
    t = s.tokens_per_microbatch * s.model.n_activated_experts  # routed rows per GPU per micro-batch, on average
    by_step = h.imbalance_by_step
    return {
        "workload": s.name, "skew": s.experts.skew, "zipf_exponent": s.experts.zipf_exponent,
        "policy": h.policy, "seed": s.experts.seed, "steps": h.steps, "layers": list(h.layers),
        "num_redundant_experts": redundant_experts(s),
        "initial_imbalance": float(by_step[0]), "final_imbalance": float(by_step[-1]),
        "imbalance_by_step": [float(x) for x in by_step],
        "imbalance_max_by_step": [float(x) for x in h.imbalance_max_by_step],
        "max_load_before": float(h.imbalance_before.mean() * t) if h.policy == "eplb" else None,
        "max_load_after": float(h.imbalance_after.mean() * t) if h.policy == "eplb" else None,
        "imbalance_before": float(h.imbalance_before.mean()), "imbalance_after": float(h.imbalance_after.mean()),
        "step_time_s_by_policy": None,
    }


def _print(r: dict[str, Any], step_time: bool) -> None:
    click.echo(f"{r['workload']}: skew {r['skew']}"
               + (f" (exponent {r['zipf_exponent']})" if r["skew"] == "zipf" else "")
               + f", policy {r['policy']}, seed {r['seed']}, {r['steps']} steps, {len(r['layers'])} MoE layers")
    click.echo("  max/mean tokens per GPU (mean over layers; worst layer)")
    series, worst = r["imbalance_by_step"], r["imbalance_max_by_step"]
    marks = sorted({0, *range(0, len(series), max(1, (len(series) - 1) // 8)), len(series) - 1})
    for i in marks:
        click.echo(f"    step {i:>6}   {series[i]:7.3f}   {worst[i]:7.3f}")
    if r["policy"] == "eplb":
        click.echo(f"  EPLB with {r['num_redundant_experts']} redundant experts: busiest GPU "
                   f"{r['max_load_before']:,.0f} -> {r['max_load_after']:,.0f} routed rows per micro-batch "
                   f"(max/mean {r['imbalance_before']:.3f} -> {r['imbalance_after']:.3f})")
    times = r["step_time_s_by_policy"]
    if not step_time:
        click.echo("  step time by policy: not computed (--no-step-time)")
    elif times is None:
        click.echo("  step time by policy: engine not available")
    else:
        click.echo("  step time by policy: " + ", ".join(f"{p} {v:.3f} s" for p, v in times.items()))


@click.command()
@click.argument("workload")
@click.option("--steps", type=click.IntRange(min=0), default=300, show_default=True, help="training steps")
@click.option("--skew", type=click.Choice(["balanced", "zipf", "dirichlet", "histogram"]), default=None,
              help="starting skew (default: the workload's; zipf when the workload is balanced)")
@click.option("--zipf-exponent", type=click.FloatRange(min=0), default=None, help="Zipf exponent of the skew")
@click.option("--policy", type=click.Choice(list(POLICIES)), default=None,
              help="balancing policy (default: the workload's)")
@click.option("--seed", type=int, default=None, help="seed of the skew and drift")
@click.option("--redundant", type=click.IntRange(min=0), default=None,
              help="redundant expert slots for eplb (default: the workload's, or one per GPU)")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override a scenario field")
@click.option("--step-time/--no-step-time", default=True, show_default=True,
              help="run the engine once per policy for step_time_s_by_policy")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="write a PNG: load per expert over steps and the imbalance curve")
def experts(workload: str, steps: int, skew: str | None, zipf_exponent: float | None, policy: str | None,
            seed: int | None, redundant: int | None, sets: tuple[str, ...], step_time: bool, as_json: bool,
            plot_path: str | None) -> None:
    """Expert load and its balancing over training steps for WORKLOAD."""
    base = load_scenario(workload, overrides=list(sets))
    scenario = load_scenario(workload, overrides=[*sets, *_overrides(base, skew, zipf_exponent, policy, seed,
                                                                     redundant)])
    history = simulate_balancing(scenario, steps)
    report = _report(scenario, history)
    if step_time:
        with click.progressbar(POLICIES, label="step time under each policy", file=sys.stderr) as bar:
            report["step_time_s_by_policy"] = {p: step_time_by_policy(scenario, [p])[p] for p in bar}
    if plot_path:
        from sim.experts.plot import balancing_figure

        fig = balancing_figure(history, f"{scenario.name}: policy {history.policy}, skew {scenario.experts.skew}")
        write_atomic(plot_path, lambda p: fig.savefig(p, format=Path(plot_path).suffix.lstrip(".") or "png",
                                                      dpi=120))
    if as_json:
        echo_json(report)
    else:
        _print(report, step_time)

