"""What the simulator's speed work must not change: results never depend on caches or call order, every cache
can be emptied, balanced expert loads do not grow with the micro-batches, and the command line imports only
what a command needs. Timings live in ``benchmarks/bench_speed.py``; nothing here asserts one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from sim import analytic, assemble, step
from sim.cli import COMMANDS
from sim.experts import moe_layers
from sim.experts.loads import microbatch_loads
from sim.loading import load_scenario as load
from sim.loading import parse_yaml, profiles_dir, workloads_dir
from sim.step import clear_caches, simulate_step


def _json(result) -> str:
    d = result.to_dict()
    d.pop("wall_time_s")
    return json.dumps(d, sort_keys=True)


@pytest.mark.parametrize("mode", ["analytic", "fast", "detailed"])
def test_results_do_not_depend_on_call_order(mode):
    """The same scenario cold, after different ones (sharing caches: same layout, other batch sizes or
    schedules, skewed routing), and again warm gives the same JSON."""
    ref = "tiny_moe_job" if mode == "detailed" else None
    target = load(ref)
    others = [load(ref, overrides=["training.global_batch_size=" + ("64" if ref else "30720")]),
              load(ref, overrides=["parallel.schedule=zb1p"]),
              load(ref, overrides=["parallel.schedule=1f1b", "experts.skew=zipf",
                                   "training.global_batch_size=" + ("64" if ref else "4096")])]
    clear_caches()
    cold = _json(simulate_step(target, mode=mode))
    for other in others:
        simulate_step(other, mode=mode)
    after = _json(simulate_step(target, mode=mode))
    again = _json(simulate_step(target, mode=mode))
    assert cold == after == again


def test_analytic_does_not_depend_on_which_batch_size_built_its_table():
    small, large = load(), load(overrides=["training.global_batch_size=61440"])
    clear_caches()
    first = _json(simulate_step(large, mode="analytic"))
    clear_caches()
    simulate_step(small, mode="analytic")
    assert _json(simulate_step(large, mode="analytic")) == first


def test_clear_caches_empties_every_cache():
    simulate_step(load("tiny_moe_job"), mode="fast")
    simulate_step(load("tiny_moe_job"), mode="analytic")
    assert len(assemble.TIMINGS) and len(analytic.TABLES) and step._PREPARED
    clear_caches()
    assert not len(assemble.TIMINGS) and not len(analytic.TABLES) and not step._PREPARED


def test_balanced_loads_are_flat_in_micro_batches():
    """Balanced routing computes one micro-batch and repeats it as read-only views; the values are those of
    every micro-batch computed (row sums are the tokens times top-k)."""
    s = load()
    layers = moe_layers(s, include_mtp=True)
    lo = microbatch_loads(s, layers, 480)
    assert lo.local_expert_tokens.shape[1] == 480 and lo.local_expert_tokens.strides[1] == 0
    for table in (lo.dispatch_bytes, lo.combine_bytes):
        assert all(a.strides[1] == 0 and not a.flags.writeable for a in table.values())
    t, k = s.tokens_per_microbatch, s.model.n_activated_experts
    assert (lo.rank_tokens.sum(axis=-1) == s.parallel.ep * t * k).all()
    one = microbatch_loads(s, layers, 1)
    assert np.array_equal(lo.max_link_bytes("dispatch", "ib")[:, 7], one.max_link_bytes("dispatch", "ib")[:, 0])
    assert lo.max_link_bytes("combine", "nvlink").flags.c_contiguous


def test_cli_command_table_matches_the_commands():
    for name, (module, attr, text) in COMMANDS.items():
        cmd = getattr(__import__(f"sim.cli.{module}", fromlist=[attr]), attr)
        assert cmd.name == name
        assert cmd.help.split("\n\n")[0].strip() == text


_IMPORTS = r"""
import sys
from click.testing import CliRunner
from sim.cli import main
out = CliRunner().invoke(main, sys.argv[1:])
assert out.exit_code == 0, out.output
print(" ".join(sorted(m for m in ("pandas", "matplotlib", "torch", "streamlit", "sim.cli.run_cmd",
                                  "sim.cli.experts_cmd", "sim.cli.calibrate_cmd", "simpy") if m in sys.modules)))
"""


@pytest.mark.parametrize(("args", "allowed"), [(["--help"], set()),
                                               (["run", "tiny_moe_job", "--mode", "fast"], {"sim.cli.run_cmd",
                                                                                            "simpy"})])
def test_commands_import_only_what_they_need(args, allowed):
    out = subprocess.run([sys.executable, "-c", _IMPORTS, *args], capture_output=True, text=True, check=True)
    assert set(out.stdout.split()) <= allowed


def test_yaml_loader_gives_the_same_data():
    files = sorted(Path(workloads_dir()).rglob("*.yaml")) + sorted(Path(profiles_dir()).rglob("*.yaml"))
    assert files
    for f in files:
        text = f.read_text()
        assert parse_yaml(text) == yaml.safe_load(text), f
