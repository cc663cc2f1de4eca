"""The guards as library functions: the work budget, output paths, scenario and result checks, progress."""

from __future__ import annotations

import io
import os
from dataclasses import replace
from pathlib import Path

import pytest

from sim import budget, progress
from sim.budget import Budget, Estimate, check, parse_seconds, parse_size, schedule_parts, step_estimate
from sim.errors import SimBugError, SimInputError
from sim.guards import check_histogram, check_raw, check_step_result, max_seq_len
from sim.loading import load_scenario
from sim.outputs import IMAGE_FORMATS, check_output, check_outputs, safe_filename, write_atomic
from sim.schedules.generators import build_schedule

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "workloads" / "tiny_moe_job.yaml")


# ------------------------------------------------------------------------------------------------ budget


@pytest.mark.parametrize(("name", "pp", "n", "vpp"), [("gpipe", 4, 8, 1), ("1f1b", 8, 40, 1), ("zb1p", 4, 12, 1),
                                                       ("interleaved-1f1b", 4, 8, 2), ("dualpipe", 16, 120, 1),
                                                       ("dualpipev", 4, 10, 1)])
def test_schedule_parts_bound_the_actions_closely(name, pp, n, vpp):
    s = build_schedule(name, pp, n, vpp)
    parts = sum(len(a.parts()) for r in s.ranks for a in r)
    assert parts <= schedule_parts(name, pp, n, vpp) <= 1.5 * parts + 2 * pp * pp


def test_sizes_and_durations_parse():
    assert parse_size("4G") == 4 * 10**9 and parse_size("4GiB") == 4 * 2**30 and parse_size("512M") == 512 * 10**6
    assert parse_size("2e9") == 2 * 10**9 and parse_size("1k") == 1000
    assert 0 < parse_size("10%") < budget.total_ram_bytes()
    assert parse_seconds("90") == 90 and parse_seconds("15m") == 900 and parse_seconds("2h") == 7200
    assert parse_seconds("0") is None
    for bad in ("lots", "-1G", "0", "nan", "1e999"):
        with pytest.raises(SimInputError, match="--max-memory"):
            parse_size(bad)
    with pytest.raises(SimInputError, match="--max-time"):
        parse_seconds("soon")


def test_default_budget_is_a_fraction_of_the_ram(monkeypatch):
    monkeypatch.delenv(budget.ENV_VAR, raising=False)
    limit, why = budget.default_max_memory()
    assert 0 < limit <= budget.total_ram_bytes() * budget.DEFAULT_RAM_FRACTION and "default" in why
    monkeypatch.setenv(budget.ENV_VAR, "123M")
    assert budget.default_max_memory() == (123 * 10**6, f"${budget.ENV_VAR}")


def test_check_names_the_field_that_drives_the_largest_part():
    est = Estimate("run")
    est.add("small", 10, "a.b")
    est.add("big", 10**12, "training.global_batch_size", 1.0)
    with pytest.raises(SimInputError) as e:
        check(est, Budget(10**9, "--max-memory"))
    assert str(e.value).startswith("training.global_batch_size:") and "931.3 GiB" in str(e.value)
    slow = Estimate("schedule")
    slow.add("actions", 1, "--microbatches", 1e6)
    with pytest.raises(SimInputError, match=r"^--microbatches: .* time budget"):
        check(slow, Budget(10**9, "x", 3600.0))
    check(slow, Budget(10**9, "x", None))  # no time limit


def test_a_million_microbatches_are_priced_by_their_expert_loads():
    """The observed 113 GiB allocation: one int64 per (layer, micro-batch, expert) and more besides."""
    s = load_scenario()
    est = step_estimate(s, "fast", n=1_000_000)
    loads = next(p for p in est.parts if p.what.startswith("expert loads"))
    assert loads.bytes >= 59 * 1_000_000 * 256 * 8 and loads.field == "training.global_batch_size"
    assert step_estimate(s, "fast").bytes < 512 * 2**20  # the default job fits any budget a laptop has


def test_detailed_tasks_count_only_when_recorded():
    s = load_scenario(str(REPO / "workloads" / "llama3_70b_h100.yaml"))
    recorded, summary = step_estimate(s, "detailed", record_trace=True, n=1024), step_estimate(s, "detailed", n=1024)
    assert recorded.bytes > 2 * summary.bytes and summary.bytes == step_estimate(s, "fast", n=1024).bytes


# ----------------------------------------------------------------------------------------------- outputs


def test_output_checks(tmp_path):
    assert check_output(tmp_path / "g.png", "--gantt", IMAGE_FORMATS) == tmp_path / "g.png"
    cases = [(tmp_path / "g.txt", "unsupported image type"), (tmp_path / "no" / "g.png", "does not exist"),
             (tmp_path, "is a folder"), (tmp_path / ("a" * 300 + ".png"), "255"),
             (Path("/proc/g.png"), "cannot write"), ("x" * 5000 + ".png", "4,096")]
    for path, message in cases:
        with pytest.raises(SimInputError, match=message) as e:
            check_output(path, "--gantt", IMAGE_FORMATS)
        assert str(e.value).startswith("--gantt:")
    with pytest.raises(SimInputError, match="--plot: the same file as --gantt"):
        check_outputs([(str(tmp_path / "a.png"), "--gantt", IMAGE_FORMATS), (None, "--trace", ()),
                       (str(tmp_path / "a.png"), "--plot", IMAGE_FORMATS)])


def test_write_atomic_turns_late_os_errors_into_input_errors(tmp_path):
    def fail(_: Path) -> None:
        raise PermissionError(13, "Permission denied")

    with pytest.raises(SimInputError, match=r"--trace: cannot write .*Permission denied"):
        write_atomic(tmp_path / "t.json", fail, "--trace")
    assert os.listdir(tmp_path) == []
    write_atomic(tmp_path / "t.json", lambda p: p.write_text("{}"), "--trace")
    assert (tmp_path / "t.json").read_text() == "{}"


def test_safe_filename():
    assert safe_filename("deepseek-v3 / 2048 GPUs") == "deepseek-v3_2048_GPUs"
    assert safe_filename("../../etc/passwd") == "etc_passwd"
    assert safe_filename("\x00\n") == "sim" and len(safe_filename("a" * 5000)) == 100


# -------------------------------------------------------------------------------------- inputs, results


def test_raw_strings_are_bounded():
    check_raw({"name": "x" * 200, "notes": "y" * 10_000})
    with pytest.raises(SimInputError, match=r"^model.name: 5,000 characters; at most 200"):
        check_raw({"model": {"name": "x" * 5000}})
    with pytest.raises(SimInputError, match=r"^sources.0: "):
        check_raw({"sources": ["x" * 10_001]})


def test_sequence_limit_is_the_stated_maximum_or_the_global_one():
    gpt3, _ = __import__("sim.loading", fromlist=["load_model"]).load_model("gpt3_175b")
    assert max_seq_len(gpt3)[0] == 2048
    assert max_seq_len(load_scenario().model)[0] == 163840  # V3 states HF's max_position_embeddings (YaRN)
    unstated = load_scenario("workloads/mixtral_8x7b_h100.yaml").model  # RoPE, no stated maximum
    assert max_seq_len(unstated)[0] == 2**24


def test_histogram_files_are_numbers(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("layer,expert,load\n3,0,10\n3,1,2.5\n")
    check_histogram(str(good))
    for text, message in (("e0,e1\n1,abc\n", "row 2, e1: 'abc' is not a number"), ("1,2\n3,-1\n", ">= 0"),
                          ("1,nan\n", "finite"), ("", "empty"), ("a,b\n", "no data")):
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(SimInputError, match=message):
            check_histogram(str(bad))


def test_impossible_results_are_bug_reports():
    from sim.step import simulate_step

    r = simulate_step(load_scenario(TINY), mode="fast")
    check_step_result(r)
    for change in ({"mfu": {**r.mfu, "fp8_causal": 2.96, "bf16_causal": 5.92}}, {"step_time_s": float("nan")},
                   {"mfu": {**r.mfu, "bf16_noncausal": float("nan")}},
                   {"breakdown_s": {**r.breakdown_s, "bubble": -1.0}}, {"peak_memory_per_gpu_bytes": float("inf")}):
        with pytest.raises(SimBugError, match="a simulator bug"):
            check_step_result(replace(r, **change), "tiny")


def test_an_attention_curve_the_job_never_reads_is_refused_naming_the_one_it_reads():
    """The default curve (efficiency.attention_*) costs a job only when its stack's kernel is the profile's
    default; an FA2 stack reads attention_kernels.fa2, an unfused one no curve at all: overriding the default
    there would change nothing, silently."""
    load_scenario(TINY, overrides=["cluster.gpu.efficiency.attention_fwd_frac=0.5"])  # fa3, the default: read
    eff = "cluster.gpu.efficiency"
    load_scenario(TINY, overrides=["software.flash_kernel=fa2", f"{eff}.attention_kernels.fa2.fwd_frac=0.3",
                                   f"{eff}.attention_kernel=fa3"])
    with pytest.raises(SimInputError, match=r"attention_bwd_frac: not read: .*attention_kernels\.fa2\.bwd_frac") as e:
        load_scenario(TINY, overrides=["software.flash_kernel=fa2", f"{eff}.attention_bwd_frac=0.5"])
    assert e.value.field == f"{eff}.attention_bwd_frac"
    with pytest.raises(SimInputError, match=r"software\.attention is unfused"):
        load_scenario(TINY, overrides=["software.attention=unfused", f"{eff}.attention_seq_half=10"])


def test_mfu_conventions_that_may_pass_100_percent_are_results():
    """Non-causal counting credits attention with FLOPs a causal kernel skips (at 128K tokens it about doubles
    them), and an FP8 job's BF16 MFU divides by half its peak: both may pass 100 % in a true result. Only the
    causal MFU over the fastest peak cannot."""
    from sim.step import simulate_step

    r = simulate_step(load_scenario(TINY), mode="fast")
    check_step_result(replace(r, mfu={"bf16_causal": 1.4, "bf16_noncausal": 2.1, "fp8_causal": 0.7}), "tiny")
    check_step_result(replace(r, mfu={"bf16_causal": 0.9, "bf16_noncausal": 1.03, "fp8_causal": None}), "tiny")
    with pytest.raises(SimBugError, match="fastest peak"):
        check_step_result(replace(r, mfu={"bf16_causal": 1.1, "bf16_noncausal": 1.3, "fp8_causal": None}), "tiny")


# ----------------------------------------------------------------------------------------------- progress


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_no_eta_before_the_warm_up_then_the_measured_rate(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    out = io.StringIO()
    p = progress.Progress("x", 100, file=out, tty=False, delay_s=1.0, interval_s=10.0, warmup_s=1.0)
    p._stop.set()
    p.update(1)
    assert p.eta_s() is None  # no time measured yet
    clock.t += 0.5
    p.update(9)
    assert p.eta_s() is None and out.getvalue() == ""  # warming up; nothing printed before the delay
    clock.t += 1.5
    p.update(10)
    assert p.eta_s() == pytest.approx(80 * 2.0 / 20)  # 20 units in 2 s: 80 left take 8 s
    assert "[x]  20%" in out.getvalue() and "ETA 8.0 s" in out.getvalue()
    p.close()
    assert out.getvalue().rstrip().endswith("done in 2.0 s")


def test_quiet_and_quick_print_nothing_and_a_terminal_gets_a_bar():
    out = io.StringIO()
    with progress.Progress("x", 10, file=out, tty=False, quiet=True, delay_s=0.0) as p:
        p.update(10)
    with progress.Progress("x", 10, file=out, tty=False, delay_s=60.0) as p:
        p.update(10)
    assert out.getvalue() == ""
    with progress.Progress("x", 10, file=out, tty=True, delay_s=0.0) as p:
        p.stage("simulating")
        p.update(5)
    assert "simulating" in out.getvalue() and "%" in out.getvalue()
