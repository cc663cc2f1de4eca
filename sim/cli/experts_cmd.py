"""``sim experts WORKLOAD``: expert load over steps and layers under a balancing policy.

When the workload's skew is ``balanced`` (the default DeepSeek-V3 job: DeepSeek's profile forced balanced
routing) and ``--skew`` is not given, the dynamics start from Zipf skew with exponent 1.0 (``--zipf-exponent``
changes it): balancing balanced loads shows nothing. Policy ``eplb`` without ``experts.num_redundant_experts``
in the workload gets one spare slot per GPU (``ep`` of them), DeepSeek's prefill deployment ratio (EP32 with 32
redundant experts), as ``sim run`` does (``sim.experts.placement.redundant_experts``); ``--redundant``
overrides.

The balancing history (steps x layers and the heatmap layer's loads) and the four fast step simulations are
priced against ``--max-memory`` first; the per-step bias is not recorded (the report does not use it); progress
shows the balancing run, then each policy's simulation.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from sim.budget import experts_estimate, human_seconds, step_estimate
from sim.cli.common import budget_check, echo_json, new_progress, work_options, write_atomic
from sim.config import Scenario
from sim.config.limits import BALANCING_STEPS_MAX
from sim.errors import SimInputError, format_validation_error
from sim.experts import POLICIES, simulate_balancing
from sim.experts.balancing import BalancingHistory
from sim.experts.placement import redundant_experts
from sim.guards import check_numbers
from sim.loading import load_scenario
from sim.outputs import IMAGE_FORMATS, check_output

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
@click.option("--steps", type=click.IntRange(0, BALANCING_STEPS_MAX), default=300, show_default=True,
              help="training steps")
@click.option("--skew", type=click.Choice(["balanced", "zipf", "dirichlet", "histogram"]), default=None,
              help="starting skew (default: the workload's; zipf when the workload is balanced)")
@click.option("--zipf-exponent", type=click.FloatRange(0, 100), default=None, help="Zipf exponent of the skew")
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
@work_options
def experts(workload: str, steps: int, skew: str | None, zipf_exponent: float | None, policy: str | None,
            seed: int | None, redundant: int | None, sets: tuple[str, ...], step_time: bool, as_json: bool,
            plot_path: str | None, max_memory: str | None, max_time: str | None, quiet: bool) -> None:
    """Expert load and its balancing over training steps for WORKLOAD."""
    from sim.step import simulate_step, with_policy

    if plot_path:
        check_output(plot_path, "--plot", IMAGE_FORMATS)
    base = load_scenario(workload, overrides=list(sets))
    scenario = load_scenario(workload, overrides=[*sets, *_overrides(base, skew, zipf_exponent, policy, seed,
                                                                     redundant)])
    try:
        variants = [with_policy(scenario, p) for p in POLICIES] if step_time and scenario.model.is_moe else []
    except ValidationError as e:
        raise SimInputError(f"a balancing policy does not fit this job: {format_validation_error(e)}",
                            field="--step-time") from None
    est = experts_estimate(scenario, steps, plot=plot_path is not None, step_time=step_time, policies=variants)
    budget_check(est, max_memory, max_time)
    sims = [step_estimate(v, "fast") for v in variants]
    balancing_units = est.parts[0].seconds
    with new_progress("sim experts", balancing_units + sum(e.seconds for e in sims), quiet) as bar:
        bar.stage(_balancing_label(scenario, steps))
        history = simulate_balancing(scenario, steps, record_bias=False)
        bar.update(balancing_units)
        report = _report(scenario, history)
        check_numbers([("initial_imbalance", report["initial_imbalance"]),
                       ("final_imbalance", report["final_imbalance"])], f"{scenario.name} balancing", low=1.0)
        if variants:
            times: dict[str, float] = {}
            for p, v, sim_est in zip(POLICIES, variants, sims, strict=True):
                bar.stage(f"step time under policy {p}")
                result = simulate_step(v, mode="fast", record_trace=False,
                                       progress=_credit(bar, sim_est.seconds, v))
                check_numbers([(f"step time under {p}", result.step_time_s)], v.name)
                times[p] = result.step_time_s
            report["step_time_s_by_policy"] = times
    if plot_path:
        from sim.experts.plot import balancing_figure

        fig = balancing_figure(history, f"{scenario.name}: policy {history.policy}, skew {scenario.experts.skew}")
        fmt = Path(plot_path).suffix.lstrip(".").lower()
        write_atomic(plot_path, lambda p: fig.savefig(p, format=fmt, dpi=120), "--plot")
    if as_json:
        echo_json(report)
    else:
        _print(report, step_time)


#: Steps of the pilot that measures the balancing rate before a long run (its time is shown, not guessed).
PILOT_STEPS = 20
PILOT_ABOVE = 1_000


def _balancing_label(scenario: Scenario, steps: int) -> str:
    """What the balancing stage does and, for a long run, how long it takes at the rate a short pilot measured
    (the balancing library reports no progress of its own)."""
    label = f"balancing over {steps:,} steps"
    if steps < PILOT_ABOVE or not scenario.model.is_moe:
        return label
    t0 = time.perf_counter()
    simulate_balancing(scenario, PILOT_STEPS, record_bias=False)
    per_step = (time.perf_counter() - t0) / PILOT_STEPS
    return f"{label}, about {human_seconds(per_step * steps)} at the {per_step * 1e3:.2g} ms per step of a pilot"


def _credit(bar: Any, units: float, scenario: Scenario) -> Any:
    """A ``simulate_step`` progress callback that credits ``units`` over the scenario's actions."""
    from sim.step import num_actions

    total = max(1, num_actions(scenario))
    return lambda n: bar.update(units * n / total)
