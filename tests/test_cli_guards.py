"""One test per case of the robustness issue: 21 bad inputs that gave a traceback, unbounded work or an
impossible result with exit 0. Each now exits 2 naming the field (or runs and says what it did).

The unbounded cases run as subprocesses under a 2.5 GB address-space limit and a timeout, so a regression
fails the test instead of waking the OOM killer; every budget is explicit (``--max-memory``), so the result
does not depend on this machine's RAM.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sim.cli import main

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "workloads" / "tiny_moe_job.yaml")
LLAMA = str(REPO / "workloads" / "llama3_70b_h100.yaml")
H800_TABLE = str(REPO / "hardware_profiles" / "calibrated" / "h800_deepseek_trace.yaml")
LIMIT_BYTES = 2_500 * 2**20


def sim_bounded(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``sim ARGS`` in a child with at most 2.5 GB of address space."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, LIMIT_BYTES))

    env = {**os.environ, "SIM_MAX_MEMORY": "2G"}
    return subprocess.run([sys.executable, "-m", "sim.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, preexec_fn=limit, cwd=REPO)


def refused(r, field: str) -> None:
    out = r.stderr if hasattr(r, "stderr") else r.output
    code = r.returncode if hasattr(r, "returncode") else r.exit_code
    assert code == 2, out
    assert "Traceback" not in out and f"error: {field}" in out, out


# ------------------------------------------------------------------------------------------ unbounded work


def test_a_million_microbatches_are_refused_before_any_allocation():
    """Was: 'Unable to allocate 113. GiB' after 3 s."""
    t0 = time.perf_counter()
    r = sim_bounded("run", "--set", "training.global_batch_size=128000000")
    refused(r, "training.global_batch_size")
    assert "1,000,000 micro-batches" in r.stderr and "GiB" in r.stderr and "--max-memory" in r.stderr
    assert time.perf_counter() - t0 < 20


def test_a_million_balancing_steps_are_priced_without_the_bias_history(runner):
    """Was: 55 GiB for the per-step bias the report never used; now 2.5 GB, refused under a smaller budget."""
    from sim.budget import experts_estimate
    from sim.loading import load_scenario

    est = experts_estimate(load_scenario(), 1_000_000, plot=False, step_time=False)
    assert 1.5 * 2**30 < est.bytes < 4 * 2**30
    r = runner.invoke(main, ["experts", "deepseek_v3", "--steps", "1000000", "--max-memory", "1G", "--json"])
    refused(r, "--steps")


def test_a_dense_job_with_a_million_microbatches_in_fast_mode():
    """Was: no output while memory grew past 5 GB."""
    r = sim_bounded("run", LLAMA, "--mode", "fast", "--set", "training.global_batch_size=32000000")
    refused(r, "training.global_batch_size")


def test_a_schedule_of_a_million_microbatches(runner):
    """Was: 134 s and 6 GB with no progress."""
    r = sim_bounded("schedule", "1f1b", "--pp", "8", "--microbatches", "1000000", "--max-memory", "2G")
    refused(r, "--microbatches")
    r = runner.invoke(main, ["schedule", "1f1b", "--pp", "8", "--microbatches", "1000000", "--max-memory", "1T",
                             "--max-time", "30"])
    refused(r, "--microbatches")
    assert "time budget of 30 s" in r.stderr


def test_the_default_mode_steps_down_to_fit_and_says_so(runner, tmp_path):
    args = ["run", LLAMA, "--set", "training.global_batch_size=32000", "--max-memory", "200M", "--quiet",
            "--gantt", str(tmp_path / "g.png"), "--json"]
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["mode"] == "fast" and "ran in fast mode instead" in r.stderr
    r = runner.invoke(main, [*args, "--mode", "detailed"])
    refused(r, "training.global_batch_size")
    assert "--mode fast would need only" in r.stderr


# ------------------------------------------------------------------------------ impossible results, exit 0


@pytest.mark.parametrize(("override", "field"), [
    ("cluster.gpu.peak_tflops.fp8=100", "fp8"),  # was an FP8 MFU of 296 %
    ("cluster.gpu.peak_tflops.fp8=1e-9", "fp8"),  # was 716 %
    ("cluster.gpu.hbm_gb=inf", "cluster.gpu.hbm_gb"),  # was '69.53 GB of inf TB (fits)'
    ("cluster.gpu.hbm_gb=1e300", "cluster.gpu.hbm_gb"),
    ("cluster.gpu.hbm_bandwidth_tb_per_s=inf", "cluster.gpu.hbm_bandwidth_tb_per_s"),
    ("cluster.gpu.hbm_bandwidth_tb_per_s=1e300", "cluster.gpu.hbm_bandwidth_tb_per_s"),
    ("training.total_tokens=inf", "training.total_tokens"),
    ("training.total_tokens=1e300", "training.total_tokens"),
    ("training.seq_len=1000000000000", "training.seq_len"),
    ("cluster.fabric.endpoint_latency_us=nan", "cluster.fabric.endpoint_latency_us"),
    ("cluster.node.nvlink_latency_us=1e300", "cluster.node.nvlink_latency_us"),
    ("experts.seed=-1", "experts.seed"),
])
def test_impossible_inputs_are_refused_naming_the_field(runner, override, field):
    r = runner.invoke(main, ["run", "--mode", "fast", "--set", override])
    refused(r, "")
    assert field in r.stderr


def test_a_sequence_beyond_the_models_positions_needs_an_explicit_override(runner):
    r = runner.invoke(main, ["model", "deepseek_v3", "--seq-len", "1000000000000"])
    refused(r, "--seq-len")
    r = runner.invoke(main, ["model", "gpt3_175b", "--seq-len", "4096"])
    refused(r, "--seq-len")
    assert "max_seq_len (2,048)" in r.stderr and "--set model.max_seq_len" in r.stderr
    r = runner.invoke(main, ["model", "gpt3_175b", "--seq-len", "4096", "--set", "model.max_seq_len=4096"])
    assert r.exit_code == 0, r.output


def test_a_billion_gpus_exceed_the_fabric(runner):
    r = runner.invoke(main, ["run", "--mode", "fast", "--gpus", "1073741824"])
    refused(r, "cluster")
    assert "exceed the limit of 16,384 GPUs" in r.stderr


def test_an_impossible_result_is_a_bug_report_not_a_result(runner, monkeypatch):
    import sim.step

    real = sim.step.simulate_step

    def broken(*args, **kwargs):
        r = real(*args, **kwargs)
        r.mfu.update(bf16_causal=2.96, fp8_causal=1.48)  # model FLOPs faster than the FP8 peak
        return r

    monkeypatch.setattr(sim.step, "simulate_step", broken)
    r = runner.invoke(main, ["run", TINY, "--mode", "fast", "--json"])
    assert r.exit_code == 1 and "a simulator bug" in r.stderr and "MFU fp8_causal" in r.stderr
    assert r.stdout == ""


# --------------------------------------------------------------------------------- what-ifs and calibration


def test_a_peak_override_under_calibration_scales_the_measured_rate_and_says_so(runner):
    """Was: doubling a peak with a calibration table active changed the step by 0.04 % and said nothing."""
    base = [LLAMA, "--mode", "fast", "--json", "--calibration", H800_TABLE]
    r0 = runner.invoke(main, ["run", *base])
    r1 = runner.invoke(main, ["run", *base, "--set", "cluster.gpu.peak_tflops.bf16=1978.8",
                              "--set", "cluster.gpu.peak_tflops.fp8=3957.8"])
    assert r0.exit_code == 0 and r1.exit_code == 0, r0.output + r1.output
    assert json.loads(r0.stdout)["calibration"]["overridden"] == {}
    assert r0.exit_code == 0 and r1.exit_code == 0, r0.output + r1.output
    a, b = json.loads(r0.stdout), json.loads(r1.stdout)
    assert b["step_time_s"] < 0.9 * a["step_time_s"]
    cal = b["calibration"]
    assert cal["measured_on"] == "NVIDIA H800" and cal["rule"] == "scaled"
    assert set(cal["overridden"]) == {"peak_tflops.bf16", "peak_tflops.fp8"}
    assert "gemm fp8" in cal["overridden"]["peak_tflops.fp8"]["corrects"]
    human = runner.invoke(main, ["run", *[a for a in base if a != "--json"],
                                 "--set", "cluster.gpu.peak_tflops.bf16=1978.8",
                                 "--set", "cluster.gpu.peak_tflops.fp8=3957.8"]).stdout
    assert "calibration" in human and "peak_tflops.fp8 = 3957.8" in human and "measured rate" in human


def test_a_software_launch_time_under_calibration_is_reported_as_what_it_is(runner):
    """software.kernel_launch_us acts through the GPU's per-kernel overhead: on the table's own GPU it is no
    longer "pinned" (the step moves), and the note names the software key, not a GPU field nobody set."""
    base = ["--mode", "fast", "--json"]
    r0 = runner.invoke(main, ["run", *base])
    r1 = runner.invoke(main, ["run", *base, "--set", "software.kernel_launch_us=20"])
    assert r0.exit_code == 0 and r1.exit_code == 0, r0.output + r1.output
    a, b = json.loads(r0.stdout), json.loads(r1.stdout)
    assert a["calibration"]["overridden"] == {} and b["step_time_s"] > a["step_time_s"]
    cal = b["calibration"]
    assert cal["rule"] == "scaled"
    change = cal["overridden"]["efficiency.kernel_overhead_us"]
    assert (change["key"], change["to"]) == ("software.kernel_launch_us", 20)
    human = runner.invoke(main, ["run", "--mode", "fast", "--set", "software.kernel_launch_us=20"]).stdout
    assert "software.kernel_launch_us = 20" in human


# ------------------------------------------------------------------------------------------- tracebacks


def test_unwritable_outputs_are_refused_before_the_simulation(runner, monkeypatch):
    import sim.step

    def never(*args, **kwargs):
        raise AssertionError("simulated before checking the outputs")

    monkeypatch.setattr(sim.step, "simulate_step", never)
    for option, path, message in (("--gantt", "/proc/g.png", "cannot write"),
                                  ("--trace", "/sys/t.json", "cannot write"),
                                  ("--gantt", "/no/such/folder/g.png", "does not exist"),
                                  ("--gantt", "g.txt", "unsupported image type"),
                                  ("--trace", "t.png", "unsupported file type"),
                                  ("--gantt", "a" * 5000 + ".png", "4,096")):
        r = runner.invoke(main, ["run", TINY, option, path])
        refused(r, option)
        assert message in r.stderr


@pytest.mark.parametrize("args", [
    ["run", "a" * 5000],
    ["run", TINY, "--hardware", "h" * 5000],
    ["run", TINY, "--set", "name=" + "n" * 5000],
    ["run", TINY, "--set", "model=" + "m" * 5000],
    ["run", TINY, "--set", "cluster.gpu.name=" + "g" * 5000],
    ["model", "m" * 5000],
    ["schedule", "1f1b", "--pp", "2", "--microbatches", "4", "--plot", "p" * 5000 + ".png"],
])
def test_five_thousand_character_names_and_paths(runner, args):
    r = runner.invoke(main, args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and r.stderr.startswith("error: ")


def test_a_histogram_with_a_word_in_it(runner, tmp_path):
    csv = tmp_path / "h.csv"
    csv.write_text("e0,e1,e2,e3\n1,2,3,4\n1,2,three,4\n")
    r = runner.invoke(main, ["run", TINY, "--set", "experts.skew=histogram", "--set", f"experts.histogram={csv}"])
    refused(r, "experts.histogram")
    assert "row 3, e2: 'three' is not a number" in r.stderr


# ------------------------------------------------------------------------------------------ consistency


def test_a_duplicate_key_is_named_as_such(runner, tmp_path):
    """Was: reported as 'ep needs an MoE model' (the second model: replaced the first)."""
    job = tmp_path / "job.yaml"
    job.write_text(Path(TINY).read_text().replace("model: tiny_moe\n", "model: tiny_moe\nmodel: llama3_70b\n"))
    r = runner.invoke(main, ["run", str(job)])
    assert r.exit_code == 2 and "duplicate key 'model'" in r.stderr and "lines" in r.stderr


@pytest.mark.parametrize("workload", [TINY, LLAMA])
def test_model_and_run_report_the_same_memory(runner, workload):
    m = json.loads(runner.invoke(main, ["model", workload, "--json"]).stdout)
    r = json.loads(runner.invoke(main, ["run", workload, "--mode", "fast", "--json", "--quiet"]).stdout)
    assert m["memory_per_rank"] == r["memory_per_rank"]
    assert m["memory_per_gpu_bytes"] == r["peak_memory_per_gpu_bytes"]


def test_the_gantt_extension_picks_the_format(runner, tmp_path):
    r = runner.invoke(main, ["run", TINY, "--mode", "fast", "--gantt", str(tmp_path / "g.svg")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "g.svg").read_text().lstrip().startswith("<?xml")


def test_fast_mode_gantt_draws_every_action_whole():
    """Was: an almost empty chart (fast mode records no compute tasks, only the tail's and the DP stream's)."""
    from matplotlib.collections import PolyCollection

    from sim.loading import load_scenario
    from sim.plots import SCHEDULE_CATEGORIES, gantt_figure
    from sim.step import simulate_step

    r = simulate_step(load_scenario(TINY), mode="fast")
    actions = [a for a in r.trace.actions if a.category in SCHEDULE_CATEGORIES]
    assert actions and r.trace.tasks  # the tail and the DP stream still have tasks
    ax = gantt_figure(r.trace, 4).axes[0]
    bars = [p for c in ax.collections if isinstance(c, PolyCollection) for p in c.get_paths()]
    widths = sum(p.vertices[:, 0].max() - p.vertices[:, 0].min() for p in bars)
    assert len(bars) >= len(actions)
    assert widths >= sum(a.end - a.start for a in actions) * (1 - 1e-9)


# --------------------------------------------------------------------------------------------- progress


def test_progress_goes_to_stderr_as_lines_and_quiet_silences_it(runner, monkeypatch):
    import sim.cli.schedule_cmd
    from sim.progress import Progress

    def eager(label, total, quiet, unit=""):
        return Progress(label, total, unit=unit, quiet=quiet, delay_s=0.0)

    monkeypatch.setattr(sim.cli.schedule_cmd, "new_progress", eager)
    args = ["schedule", "1f1b", "--pp", "4", "--microbatches", "200", "--json"]
    r = runner.invoke(main, args)
    assert r.exit_code == 0
    json.loads(r.stdout)  # stdout holds the JSON object only
    assert "[sim schedule]" in r.stderr and "done in" in r.stderr and "\r" not in r.stderr
    r = runner.invoke(main, [*args, "--quiet"])
    assert r.exit_code == 0 and r.stderr == ""


# ------------------------------------------------------------------------------- the other commands' budgets


def test_validate_reports_a_case_over_the_budget_without_running_it(runner):
    r = runner.invoke(main, ["validate", "bloom_176b/gbs2048", "--max-memory", "1M", "--json", "--quiet"])
    assert r.exit_code == 0, r.output
    (case,) = json.loads(r.stdout)["cases"]
    assert case["status"] == "not_expressible" and "training.global_batch_size" in case["reason"]


def test_estimate_prices_every_phase_before_the_first_simulation(runner, tmp_path):
    r = runner.invoke(main, ["estimate", "--set", "training.global_batch_size=128000000", "--plot",
                             str(tmp_path / "e.png")])
    refused(r, "training.global_batch_size")
    assert not (tmp_path / "e.png").exists()
    r = runner.invoke(main, ["estimate", "--plot", str(tmp_path / "e.txt")])
    refused(r, "--plot")


def test_named_models_and_clusters_replace_the_jobs(runner):
    r = runner.invoke(main, ["model", TINY, "--set", "model=llama3_70b", "--json"])
    assert r.exit_code == 2 and "parallel.ep" in r.stderr  # a dense model refuses the job's EP4
    r = runner.invoke(main, ["run", LLAMA, "--mode", "fast", "--set", "cluster=h100_ib_1024", "--json", "--quiet"])
    assert r.exit_code == 0, r.output


def test_an_sm_driven_all_to_all_without_sms_names_comm_sms(runner):
    """DeepSeek's stack (DeepEP) with no communication SMs gave a traceback from inside the all-to-all model
    (found trying a DeepSeek-V2-like job on hai_llm_2024 with comm_sms left at its default 0)."""
    r = runner.invoke(main, ["run", "--mode", "fast", "--set", "parallel.comm_sms=0"])
    refused(r, "parallel.comm_sms")
    assert "software.a2a_library=nccl" in r.stderr
    r = runner.invoke(main, ["run", "--mode", "analytic", "--set", "parallel.comm_sms=0",
                             "--set", "software.a2a_library=nccl", "--json", "--quiet"])
    assert r.exit_code == 0, r.output
