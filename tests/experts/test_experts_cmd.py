"""`sim experts`: JSON keys, the imbalance falls under the bias policy from the default skewed start, EPLB lowers
the busiest GPU, the plot is written, bad input exits 2 naming the field."""

from __future__ import annotations

import json

from sim.cli import main
from tests.experts.conftest import V3_JOB

FAST = ["--no-step-time", "--json"]


def test_bias_json_shows_imbalance_falling(runner):
    r = runner.invoke(main, ["experts", V3_JOB, "--steps", "60", "--policy", "bias", *FAST])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    for key in ("imbalance_by_step", "initial_imbalance", "final_imbalance", "step_time_s_by_policy",
                "max_load_before", "max_load_after"):
        assert key in out
    assert out["skew"] == "zipf" and out["zipf_exponent"] == 1.0      # default start when the job is balanced
    assert len(out["imbalance_by_step"]) == 61 and out["step_time_s_by_policy"] is None
    assert out["final_imbalance"] < 0.8 * out["initial_imbalance"]


def test_eplb_lowers_the_max_load(runner):
    r = runner.invoke(main, ["experts", V3_JOB, "--steps", "10", "--policy", "eplb", *FAST])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["num_redundant_experts"] == 64                             # one spare slot per GPU by default
    assert out["max_load_after"] < 0.5 * out["max_load_before"]


def test_explicit_skew_and_seed(runner):
    args = ["experts", V3_JOB, "--steps", "5", "--policy", "none", "--skew", "dirichlet", "--seed", "3", *FAST]
    out = json.loads(runner.invoke(main, args).output)
    assert out["skew"] == "dirichlet" and out["seed"] == 3
    assert out["initial_imbalance"] == out["final_imbalance"] > 1.0


def test_step_time_by_policy_shows_what_balancing_buys(runner):
    # From a Zipf start (the command's default on a balanced job), 32 micro-batches to keep it quick.
    r = runner.invoke(main, ["experts", V3_JOB, "--steps", "2", "--json", "--set", "training.global_batch_size=4096"])
    assert r.exit_code == 0, r.output
    times = json.loads(r.stdout)["step_time_s_by_policy"]
    assert set(times) == {"none", "bias", "aux", "eplb"}
    assert times["bias"] < times["none"] and times["eplb"] < times["none"]


def test_plot_is_written(runner, tmp_path):
    out = tmp_path / "experts.png"
    r = runner.invoke(main, ["experts", V3_JOB, "--steps", "20", "--no-step-time", "--plot", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "step" in r.output and [p.name for p in tmp_path.iterdir()] == ["experts.png"]


def test_bad_input_exits_2_naming_the_field(runner):
    r = runner.invoke(main, ["experts", V3_JOB, "--set", "experts.skew=bogus", *FAST])
    assert r.exit_code == 2 and "experts.skew" in r.output
    r = runner.invoke(main, ["experts", V3_JOB, "--policy", "eplb", "--redundant", "3", *FAST])
    assert r.exit_code == 2 and "experts.num_redundant_experts" in r.output
    r = runner.invoke(main, ["experts", V3_JOB, "--skew", "histogram", *FAST])
    assert r.exit_code == 2 and "histogram" in r.output
