"""Hypothesis fuzzing of the command line: random ``--set`` paths and values, random job-file mutations and
random schedule arguments. Every run exits 2 with a message naming a field, or exits 0 with a valid result;
never a traceback, never exit 1, and always within a time and memory bound (the work budget makes that true:
each run gets ``--max-memory 300M --max-time 20``)."""

from __future__ import annotations

import json
import math
import re
import resource
import tempfile
import time
from pathlib import Path

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.cli import main

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "workloads" / "tiny_moe_job.yaml"
BOUNDS = ["--max-memory", "300M", "--max-time", "20", "--quiet"]
SECONDS_PER_RUN = 20.0
#: An error names what is wrong first: a dotted field, an option, WORKLOAD, or the file it read.
FIELD = re.compile(r"^error: (--[a-z-]+|[A-Za-z_][\w-]*(\.[\w-]+)*|/[^:]+|[\w./-]+\.ya?ml)[: ]")

FIELDS = [
    "name", "model", "cluster", "notes", "calibration",
    "model.n_layers", "model.dim", "model.n_heads", "model.vocab_size", "model.inter_dim", "model.moe_inter_dim",
    "model.n_routed_experts", "model.n_activated_experts", "model.n_shared_experts", "model.max_seq_len",
    "model.route_scale", "model.attention", "model.n_mtp_layers",
    "cluster.num_nodes", "cluster.pue", "cluster.usd_per_gpu_hour", "cluster.topology", "cluster.fabric",
    "cluster.gpu.hbm_gb", "cluster.gpu.hbm_bandwidth_tb_per_s", "cluster.gpu.num_sms", "cluster.gpu.tdp_w",
    "cluster.gpu.peak_tflops.fp8", "cluster.gpu.peak_tflops.bf16", "cluster.gpu.efficiency.hbm_frac",
    "cluster.gpu.efficiency.kernel_overhead_us", "cluster.gpu.name",
    "cluster.node.gpus_per_node", "cluster.node.nvlink_gb_per_s", "cluster.node.nics_per_node",
    "cluster.node.nic_achievable_gb_per_s", "cluster.node.nvlink_latency_us",
    "parallel.pp", "parallel.tp", "parallel.ep", "parallel.vpp", "parallel.schedule", "parallel.micro_batch_size",
    "parallel.num_microbatches", "parallel.comm_sms", "parallel.stage_layers", "parallel.zero_stage",
    "training.seq_len", "training.global_batch_size", "training.total_tokens",
    "experts.skew", "experts.zipf_exponent", "experts.balancing_steps", "experts.seed", "experts.policy",
    "experts.num_redundant_experts", "experts.drift_per_step", "experts.histogram",
    "software", "software.kernel_launch_us", "software.step_overhead_s", "precision.fprop",
]
SPECIAL = ["nan", ".nan", "inf", ".inf", "-.inf", "-inf", "1e300", "1e400", "-1e300", "1e-300", "0", "-1", "-0.0",
           "true", "null", "~", "[]", "{}", "[1, 2", "{a: 1}", "*x", "!!python/object:os.system ls", "'quoted'",
           "1_000_000", "0x10", "10" * 20, "3.5", "4096", "dualpipe", "bf16", "balanced", "zipf"]
PLAUSIBLE = st.one_of(st.integers(1, 64).map(str), st.sampled_from(["0.5", "1.0", "2", "8", "16", "128", "512", "0.9"]))
VALUES = st.one_of(
    PLAUSIBLE, PLAUSIBLE, PLAUSIBLE,
    st.sampled_from(SPECIAL),
    st.integers(-(10**30), 10**30).map(str),
    st.integers(-3, 5000).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.integers(1, 6000).map(lambda n: "x" * n),
    st.lists(st.integers(-2, 70), max_size=6).map(str),
)
PATHS = st.one_of(
    st.sampled_from(FIELDS),
    st.sampled_from(FIELDS).map(lambda f: f + ".deeper"),
    st.from_regex(r"[a-z_]{1,8}(\.[a-z_]{1,8}){0,3}", fullmatch=True),
)


def run_bounded(args: list[str]) -> None:
    runner = CliRunner()
    t0 = time.perf_counter()
    r = runner.invoke(main, [*args, *BOUNDS])
    elapsed = time.perf_counter() - t0
    assert elapsed < SECONDS_PER_RUN, f"{elapsed:.1f} s: {args}"
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"{args}: {type(r.exception).__name__}: {r.exception}") from r.exception
    assert r.exit_code in (0, 2), (args, r.exit_code, r.output[-2000:])
    if r.exit_code == 2:
        assert FIELD.match(r.stderr), (args, r.stderr[:500])
        return
    out = json.loads(r.stdout)
    assert math.isfinite(out["step_time_s"]) and out["step_time_s"] > 0
    assert all(v is None or 0 <= v <= 1 for v in out["mfu"].values()), out["mfu"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(PATHS, VALUES), min_size=1, max_size=3))
def test_random_overrides_exit_2_naming_a_field_or_give_a_valid_result(sets):
    args = ["run", str(TINY), "--mode", "fast", "--json"]
    for key, value in sets:
        args += ["--set", f"{key}={value}"]
    run_bounded(args)


NUMERIC = ["cluster.gpu.hbm_gb", "cluster.gpu.hbm_bandwidth_tb_per_s", "cluster.gpu.efficiency.hbm_frac",
           "cluster.gpu.efficiency.gemm_bf16_frac", "cluster.node.nvlink_latency_us", "cluster.pue",
           "training.total_tokens", "training.seq_len", "experts.zipf_exponent", "experts.drift_per_step",
           "experts.balancing_steps", "software.step_overhead_s", "model.vocab_size", "model.inter_dim",
           "model.moe_inter_dim", "parallel.comm_sms", "cluster.fabric.switch_hop_latency_us"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(NUMERIC), st.one_of(
    st.floats(0.01, 4096).map(lambda x: f"{x:.4g}"), st.integers(1, 100_000).map(str))), min_size=1, max_size=4),
    st.sampled_from(["balanced", "zipf"]))
def test_random_plausible_numbers_give_valid_results(sets, skew):
    """Values in range go deep: the simulation runs and its result passes the output checks (or a cross-field
    rule refuses it, naming the field)."""
    args = ["run", str(TINY), "--mode", "fast", "--json", "--set", f"experts.skew={skew}"]
    for key, value in sets:
        args += ["--set", f"{key}={value}"]
    run_bounded(args)


def _mutate(data: dict, path: list[str], value: object, delete: bool) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    if delete:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


YAML_VALUES = st.one_of(st.integers(1, 64), st.integers(1, 64), st.sampled_from([0.5, 0.9, 2.0, 128]),
                        st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.floats(), st.text(max_size=8),
                        st.lists(st.integers(-1, 9), max_size=4), st.dictionaries(st.text(max_size=4),
                                                                                 st.integers(), max_size=2))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(FIELDS), YAML_VALUES, st.booleans()), min_size=1, max_size=3),
       st.sampled_from(["none", "none", "none", "duplicate", "truncate", "garbage", "not_a_mapping"]))
def test_random_job_file_mutations(changes, damage):
    data = yaml.safe_load(TINY.read_text())
    data["model"] = str(REPO / "workloads" / "models" / "tiny_moe.yaml")
    for key, value, delete in changes:
        _mutate(data, key.split("."), value, delete)
    text = yaml.safe_dump(data, sort_keys=False)
    if damage == "duplicate":
        text += text.splitlines()[0] + "\n"
    elif damage == "truncate":
        text = text[: len(text) // 2]
    elif damage == "garbage":
        text = text.replace(":", ": [", 1)
    elif damage == "not_a_mapping":
        text = "- " + text.replace("\n", "\n  ")
    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job.yaml"
        job.write_text(text)
        run_bounded(["run", str(job), "--mode", "fast", "--json"])


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["gpipe", "1f1b", "zb1p", "interleaved-1f1b", "dualpipe", "dualpipev"]),
       st.one_of(st.integers(1, 8), st.integers(1, 8), st.integers(-2, 10**12)),
       st.one_of(st.integers(1, 64), st.integers(1, 64), st.integers(-2, 10**15)),
       st.one_of(st.integers(1, 3), st.integers(-1, 5000)),
       st.sampled_from(["1", "1", "0.5", "0", "-1", "nan", "inf", "1e300", "2.5"]))
def test_random_schedules(name, pp, n, vpp, f):
    args = ["schedule", name, "--pp", str(pp), "--microbatches", str(n), "--vpp", str(vpp), "--f", f, "--json"]
    runner = CliRunner()
    t0 = time.perf_counter()
    r = runner.invoke(main, [*args, *BOUNDS])
    assert time.perf_counter() - t0 < SECONDS_PER_RUN
    assert r.exception is None or isinstance(r.exception, SystemExit), (args, r.exception)
    assert r.exit_code in (0, 2), (args, r.output[-1000:])
    if r.exit_code == 0:
        out = json.loads(r.stdout)
        assert math.isfinite(out["makespan"]) and out["makespan"] >= 0
    else:  # ours, or click's usage error naming the option
        assert r.stderr.startswith("error: ") or "Error: Invalid value for '--" in r.stderr, r.stderr


def test_the_fuzzing_stayed_within_its_memory_bound():
    """Whatever the runs above did in this process, its peak stayed far below what the guards forbid."""
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert peak_kib < 3 * 2**20, f"peak RSS {peak_kib / 2**20:.1f} GiB"
