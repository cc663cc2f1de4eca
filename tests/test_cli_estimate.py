"""`sim estimate`: the JSON keys, the plot, --price and --gpus, and malformed run: sections exiting 2 with the
field named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from sim.cli import main

PHASE_KEYS = {"name", "steps", "tokens", "step_time_s", "gpu_hours", "days", "usd", "kwh", "co2_kg", "layout",
              "layout_reason"}
TOTAL_KEYS = {"gpu_hours", "days", "usd", "kwh", "co2_kg", "steps", "tokens"}


def job(tmp_path: Path, run: Any = None, **extra: Any) -> str:
    """The tiny MoE test job with a run: section, written to a file (it names its model and GPU by name)."""
    data = yaml.safe_load((Path(__file__).resolve().parent.parent / "workloads/tiny_moe_job.yaml").read_text())
    if run is not None:
        data["run"] = run
    for key, value in extra.items():
        data[key].update(value)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_default_json_and_plot(runner, tmp_path):
    png = tmp_path / "e.png"
    r = runner.invoke(main, ["estimate", "--json", "--plot", str(png)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)  # one JSON object and nothing else on stdout
    assert [p["name"] for p in out["phases"]] == ["pre-training", "context-32k", "context-128k", "post-training"]
    for p in out["phases"]:
        assert set(p) >= PHASE_KEYS
    assert out["phases"][0]["step_time_s"][0] < out["phases"][0]["step_time_s"][1]  # a range over the ramp
    assert out["phases"][2]["layout_reason"] and out["phases"][2]["layout"]["schedule"]
    assert set(out["total"]) >= TOTAL_KEYS
    assert {"gpus_plus_10pct", "deadline_plus_1_day", "price_plus_10pct"} <= set(out["sensitivities"])
    assert out["measured"]["source"].startswith("DeepSeek-V3 tech report")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_human_table_and_price(runner, tmp_path):
    path = job(tmp_path, {"phases": [{"name": "pre", "tokens": 1e9}, {"name": "sft", "gpu_hours": 3.0}]})
    r = runner.invoke(main, ["estimate", path, "--price", "4"])
    assert r.exit_code == 0, r.output
    assert "$4.00 per GPU-hour" in r.output
    for word in ("pre", "sft", "given", "total", "sensitivities"):
        assert word in r.output
    a = json.loads(runner.invoke(main, ["estimate", path, "--json", "--price", "1"]).stdout)
    b = json.loads(runner.invoke(main, ["estimate", path, "--json", "--price", "2"]).stdout)
    assert b["total"]["usd"] == pytest.approx(2 * a["total"]["usd"])
    assert b["total"]["gpu_hours"] == a["total"]["gpu_hours"]


def test_gpus_and_set(runner, tmp_path):
    path = job(tmp_path, {"phases": [{"name": "pre", "tokens": 1e9}]})
    r = runner.invoke(main, ["estimate", path, "--gpus", "32", "--set", "parallel.schedule=1f1b", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["num_gpus"] == 32 and out["phases"][0]["layout"]["schedule"] == "1f1b"
    assert out["phases"][0]["layout"]["dp"] == 8


@pytest.mark.parametrize(("run", "field"), [
    ({"phases": [{"name": "a", "tokns": 1e9}]}, "run.phases.0.tokns"),
    ({"phases": [{"name": "a", "tokens": 1e9, "steps": 3}]}, "run.phases.0"),
    ({"phases": [{"name": "a"}]}, "run.phases.0"),
    ({"phases": [{"name": "a", "tokens": -1}]}, "run.phases.0.tokens"),
    ({"phases": [{"name": "a", "tokens": 1e9, "batch_ramp": {"start_global_batch_size": 8, "ramp_tokens": 2e9}}]},
     "batch_ramp.ramp_tokens"),
    ({"phases": [{"name": "a", "tokens": 1e9, "batch_ramp": {"start_global_batch_size": 8, "ramp_tokens": 1e8,
                                                             "shape": "cubic"}}]}, "run.phases.0.batch_ramp.shape"),
    ({"phases": [{"name": "a", "tokens": 1e9, "batch_ramp": {"start_global_batch_size": 64, "ramp_tokens": 1e8}}]},
     "run.phases.0 (a).batch_ramp.start_global_batch_size"),
    ({"phases": [{"name": "a", "tokens": 1e9, "overrides": {"model.n_layers": 2}}]}, "overrides.model.n_layers"),
    ({"phases": [{"name": "a", "tokens": 1e9, "overrides": {"parallel.nonsense": 2}}]}, "parallel.nonsense"),
    ({"phases": [{"name": "a", "gpu_hours": 5, "seq_len": 4096}]}, "gpu_hours"),
    ({"phases": [{"name": "a", "tokens": 1e9}, {"name": "a", "steps": 2}]}, "run: phases: names must be unique"),
    ({"phases": [{"name": "a", "tokens": 1e9}], "overheads": {"mtbf_node_hours": 100}},
     "run.overheads: checkpoint_interval_s"),
    ({"phases": [{"name": "a", "tokens": 1e9}], "measured": {"source": "x", "stages": [
        {"name": "s", "phases": ["b"], "gpu_hours": 1}]}}, "run: measured.stages.0.phases"),
    ({"phases": [{"name": "a", "tokens": 1e9}], "energy": {"grid_kg_co2_per_kwh": -1}},
     "run.energy.grid_kg_co2_per_kwh"),
    ({"phases": []}, "run.phases"),
    ([1, 2], "run"),
])
def test_malformed_run_exits_2_naming_the_field(runner, tmp_path, run, field):
    r = runner.invoke(main, ["estimate", job(tmp_path, run), "--json"])
    assert r.exit_code == 2, r.output
    assert field in r.output
    assert "Traceback" not in r.output and r.stdout == ""


def test_a_layout_search_turned_off_exits_2(runner, tmp_path):
    path = job(tmp_path, {"phases": [{"name": "small", "global_batch_size": 16, "steps": 3,
                                      "layout_search": False}]})
    r = runner.invoke(main, ["estimate", path])
    assert r.exit_code == 2
    assert "run.phases.0 (small)" in r.output and "dualpipe needs" in r.output


def test_run_and_the_training_shorthand_together_exit_2(runner, tmp_path):
    path = job(tmp_path, {"phases": [{"name": "a", "tokens": 1e9}]},
               training={"batch_ramp": {"start_global_batch_size": 16, "ramp_tokens": 1e8}})
    r = runner.invoke(main, ["estimate", path])
    assert r.exit_code == 2 and "run:" in r.output


def test_total_tokens_beside_a_run_section_exits_2_naming_the_phase_field(runner, tmp_path):
    """With a run: section the phases carry the tokens; training.total_tokens would change nothing."""
    path = job(tmp_path, {"phases": [{"name": "a", "global_batch_size": 16, "tokens": 1e9}]})
    r = runner.invoke(main, ["estimate", path, "--set", "training.total_tokens=2e9"])
    assert r.exit_code == 2 and "run.phases.0.tokens" in r.output
    one, two = (json.loads(runner.invoke(main, ["estimate", path, "--json", "--set", f"run.phases.0.tokens={t}"]
                                         ).stdout) for t in ("1e9", "2e9"))
    assert two["total"]["gpu_hours"] == pytest.approx(2 * one["total"]["gpu_hours"], rel=1e-6)


def test_bad_price_exits_2(runner):
    r = runner.invoke(main, ["estimate", "--price", "-1"])
    assert r.exit_code == 2 and "--price" in r.output
