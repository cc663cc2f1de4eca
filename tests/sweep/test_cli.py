"""`sim sweep` and `sim plan` from the command line: JSON, Parquet and plot outputs; malformed specs exit 2
naming the field."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from sim.cli import main
from tests.sweep.conftest import TINY_SPEC, write_spec


def tiny_data(**axes):
    data = yaml.safe_load(TINY_SPEC.read_text())
    data["base"] = "tiny_moe_job.yaml"
    data["axes"] = axes or {"pp": [2, 4], "schedule": ["1f1b", "dualpipe"], "usd_per_gpu_hour": [2.0, 3.0]}
    return data


def test_sweep_json_parquet_and_plot(runner, tmp_path):
    spec = write_spec(tmp_path, tiny_data())
    out, png = tmp_path / "r.parquet", tmp_path / "front.png"
    r = runner.invoke(main, ["sweep", spec, "--workers", "1", "--out", str(out), "--plot", str(png), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["counts"]["points"] == 8 and d["tier"] in ("fast", "analytic")
    assert d["best"] and d["pareto_front"] and d["ranking"]["rows"]
    frame = pd.read_parquet(out)
    assert len(frame) == 8 and set(frame["status"]) <= {"ok", "pruned", "oom"}
    for col in ("hardware", "gpus", "tp", "pp", "dp", "schedule", "usd_per_gpu_hour", "step_time_s", "mfu",
                "tokens_per_s_per_gpu", "memory_per_gpu_gb", "oom", "gpu_hours", "days", "usd", "mwh", "pareto"):
        assert col in frame.columns, col
    assert png.stat().st_size > 10_000


def test_a_point_refused_before_its_layout_has_no_dp(runner, tmp_path):
    """EP 3 cannot divide the tiny job's data-parallel ranks: the point is refused by the layout rule before a DP is
    known, so its dp and micro-batch count are missing (not -1, which a layout label once printed as DP-1)."""
    out = tmp_path / "r.parquet"
    spec = write_spec(tmp_path, tiny_data(pp=[2], ep=[2, 3]))
    r = runner.invoke(main, ["sweep", spec, "--workers", "1", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    frame = pd.read_parquet(out)
    refused = frame[frame["ep"] == 3]
    assert len(refused) and refused["dp"].isna().all() and refused["num_microbatches"].isna().all()
    assert (frame.loc[frame["ep"] == 2, "dp"] > 0).all()


def test_sweep_human_report(runner, tmp_path):
    r = runner.invoke(main, ["sweep", write_spec(tmp_path, tiny_data()), "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert "pruned before simulating" in r.stdout and "Pareto front" in r.stdout


def test_points_that_are_no_configuration_are_named_so(runner, tmp_path):
    """A vpp axis crossed with the schedules makes points that are no configuration at all (1F1B at vpp 2, which
    has no virtual stages; interleaved 1F1B at vpp 1): the report says so in words, not by the rule's short
    name."""
    data = tiny_data(pp=[2], schedule=["1f1b", "interleaved-1f1b"], vpp=[1, 2])
    r = runner.invoke(main, ["sweep", write_spec(tmp_path, data), "--workers", "1"])
    assert r.exit_code == 0, r.output
    line = next(x for x in r.stdout.splitlines() if "pruned before simulating" in x)
    assert "not a configuration (a vpp the schedule does not take) 2" in line and "n/a" not in line


@pytest.mark.parametrize(("change", "field"), [
    ({"axes": {"tpp": [1]}}, "axes.tpp"),
    ({"axes": {"pp": {"from": 8, "to": 2}}}, "axes.pp"),
    ({"axes": {"tp": [1, 2.5]}}, "axes.tp.1"),
    ({"axes": {"schedule": ["1f1b", "zigzag"]}}, "axes.schedule.1"),
    ({"axes": {"hardware": ["h100", "tpu9"]}}, "axes.hardware.1"),
    ({"axes": {"precision": ["fp4"]}}, "axes.precision.0"),
    ({"objective": "cost"}, "objective"),
    ({"evaluation": {"top_k": -1}}, "evaluation.top_k"),
    ({"base": "no_such_job.yaml"}, "base"),
])
def test_malformed_spec_exits_2_naming_the_field(runner, tmp_path, change, field):
    data = tiny_data()
    data.update(change)
    r = runner.invoke(main, ["sweep", write_spec(tmp_path, data), "--workers", "1"])
    assert r.exit_code == 2, r.output
    assert field in r.output
    assert "Traceback" not in r.output


def test_mechanism_axes_sweep_cp_and_recompute(runner, tmp_path):
    data = tiny_data(pp=[2, 4], cp=[1, 2], recompute=["none", "activations"])
    r = runner.invoke(main, ["sweep", write_spec(tmp_path, data), "--workers", "1", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert not any("axis skipped" in n for n in out["notes"])


def test_plan_recommends_and_explains(runner, tmp_path):
    spec_out = tmp_path / "plan.yaml"
    r = runner.invoke(main, ["plan", "tiny_moe_job.yaml", "--tokens", "1B", "--deadline-days", "0.004",
                             "--budget-usd", "3", "--gpus", "16,32", "--axis", "tp=1", "--axis", "pp=2,4",
                             "--axis", "ep=2", "--axis", "micro_batch_size=1,2", "--workers", "1", "--top-k", "2",
                             "--spec-out", str(spec_out), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    recs = d["recommendations"]
    assert recs and all(x["days"] <= 0.004 and x["usd"] <= 3 for x in recs)
    assert [x["usd"] for x in recs] == sorted(x["usd"] for x in recs)
    assert {"illegal", "slower"} <= set(d["runners_up"])
    assert yaml.safe_load(spec_out.read_text())["axes"]["gpus"] == [16, 32]
    # the default grid pairs each of its schedules (the job's, 1F1B, ZB1P, interleaved) with vpp 1 and 2: half the
    # points are no configuration (a schedule without virtual stages at vpp 2, interleaving at vpp 1), counted
    # neither as configurations nor as losers
    assert d["counts"]["points"] == 2 * d["configurations"]
    lost = sum(v["count"] for k, v in d["runners_up"].items() if k != "costlier")
    assert lost + len(recs) + d["runners_up"].get("costlier", {"count": 0})["count"] <= d["configurations"]
    # the examples show one reason of each rule before a second of any: here a layout rule (more stages than
    # layers) among the many schedule preconditions
    illegal = d["runners_up"]["illegal"]
    assert set(illegal["by_rule"]) == {"schedule", "layout"}
    assert [x["why"].split(":")[0] for x in illegal["examples"][:2]] == ["parallel.schedule", "parallel.pp"]


def test_plan_bad_tokens_exit_2(runner):
    r = runner.invoke(main, ["plan", "tiny_moe_job.yaml", "--tokens", "lots"])
    assert r.exit_code == 2 and "--tokens" in r.output
    for tokens in ("-5T", "0"):
        r = runner.invoke(main, ["plan", "tiny_moe_job.yaml", "--tokens", tokens])
        assert r.exit_code == 2 and "--tokens: must be a positive amount" in r.output


@pytest.mark.parametrize("gpus", ["-8", "0", "8.5", "16,x"])
def test_plan_gpu_counts_are_whole_numbers_from_1(runner, gpus):
    r = runner.invoke(main, ["plan", "tiny_moe_job.yaml", "--tokens", "1B", "--gpus", gpus])
    assert r.exit_code == 2 and "--gpus: expected whole numbers from 1" in r.output


def test_a_sweep_spec_with_a_negative_gpu_count_is_refused(tmp_path, runner):
    spec = tmp_path / "s.yml"
    spec.write_text("name: s\nworkload: tiny_moe_job\ntokens: 1.0e9\naxes:\n  gpus: [-16, 32]\n")
    r = runner.invoke(main, ["sweep", str(spec), "--workers", "1"])
    assert r.exit_code == 2 and "axes.gpus" in r.output and "greater than or equal to 1" in r.output


@pytest.mark.parametrize(("args", "option"), [
    (["sweep", "tiny_moe_sweep", "--plot", "front.txt"], "--plot"),
    (["sweep", "tiny_moe_sweep", "--out", "r.csv"], "--out"),
    (["plan", "tiny_moe_job.yaml", "--tokens", "1B", "--plot", "pf.txt"], "--plot"),
    (["plan", "tiny_moe_job.yaml", "--tokens", "1B", "--spec-out", "s.txt"], "--spec-out")])
def test_outputs_are_checked_before_any_work(runner, tmp_path, monkeypatch, args, option):
    """A bad extension exits 2 naming the option before the sweep runs (it used to run the whole sweep, then
    fail with a traceback writing the plot) and writes nothing."""
    monkeypatch.chdir(tmp_path)
    import sim.sweep

    monkeypatch.setattr(sim.sweep, "run_sweep", lambda *a, **k: pytest.fail("the sweep ran"))
    r = runner.invoke(main, args)
    assert r.exit_code == 2 and f"{option}: unsupported" in r.output
    assert not list(tmp_path.iterdir())


def test_out_without_pyarrow_exits_2_before_writing_anything(runner, tmp_path, monkeypatch):
    """The Quick-start install has no pyarrow: --out must say so, naming the option and the extra, before any
    part file exists (nothing half-written)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    out = tmp_path / "r.parquet"
    r = runner.invoke(main, ["sweep", "tiny_moe_sweep", "--out", str(out), "--workers", "1"])
    assert r.exit_code == 2, r.output
    assert "--out" in r.output and "pyarrow" in r.output and ".[sweep]" in r.output
    assert not list(tmp_path.iterdir())


def test_plan_reasons_print_dollars_as_a_planner_reads_them():
    from sim.sweep.plan import money

    assert money(6.012e6) == "$6.012M" and money(45_200.4) == "$45,200" and money(5.3e6) == "$5.3M"
    assert money(1.2345e10) == "$12.35B" and money(9.9995e9) == "$9.999B" and money(-5) == "-$5"


def test_plan_out_without_pyarrow_writes_not_even_its_spec(runner, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    r = runner.invoke(main, ["plan", "tiny_moe_job.yaml", "--tokens", "1B", "--gpus", "16", "--workers", "1",
                             "--out", str(tmp_path / "p.parquet"), "--spec-out", str(tmp_path / "plan.yaml")])
    assert r.exit_code == 2 and "--out" in r.output and "pyarrow" in r.output
    assert not list(tmp_path.iterdir())
