"""Scenario validation: every bad input is a SimInputError naming the field; nothing else escapes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import get_args

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.config import Scenario, SoftwareSpec
from sim.config.hardware import FLASH_KERNELS, FlashKernel
from sim.errors import SimInputError
from sim.loading import load_scenario, resolve_workload, validate

REPO = Path(__file__).resolve().parent.parent
DEFAULT = REPO / "workloads" / "deepseek_v3.yaml"


def write_job(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load(DEFAULT.read_text())
    data["model"] = str(REPO / "workloads/models/deepseek_v3_671b.yaml")
    data["cluster"] = "deepseek_h800_2048"
    data.pop("calibration", None)
    mutate(data)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_default_scenario_derives_layout():
    s = load_scenario()
    assert (s.dp, s.num_microbatches, s.num_stages, s.num_gpus) == (128, 120, 16, 2048)


def test_unknown_yaml_key_is_named(tmp_path):
    path = write_job(tmp_path, lambda d: d["parallel"].update(pipline_schedule="1f1b"))
    with pytest.raises(SimInputError) as e:
        load_scenario(str(path))
    assert "parallel.pipline_schedule" in str(e.value) and "allowed keys" in str(e.value)
    assert "schedule" in str(e.value)


def test_layout_that_does_not_divide(tmp_path):
    path = write_job(tmp_path, lambda d: d["parallel"].update(pp=12))
    with pytest.raises(SimInputError, match=r"tp x pp"):
        load_scenario(str(path))


def test_ep_larger_than_experts():
    with pytest.raises(SimInputError, match=r"parallel.ep: 512 exceeds the 256 routed experts"):
        load_scenario(overrides=["parallel.ep=512"])


def test_dualpipe_preconditions():
    with pytest.raises(SimInputError, match=r"dualpipe needs num_microbatches >= 2 \* pp"):
        load_scenario(overrides=["training.global_batch_size=2048"])


def test_fp8_on_a100_is_refused():
    with pytest.raises(SimInputError, match=r"no FP8 tensor cores"):
        load_scenario(hardware="a100_ib_3072", overrides=["parallel.ep=8"])


def test_attention_kernel_curves_are_validated():
    """Per-kernel curves: bounded like the default curve, one source each, one curve per kernel, and only for a
    kernel the GPU's architecture can run; the software field takes the kernels and 'default' only."""
    fa2 = "cluster.gpu.efficiency.attention_kernels.fa2"
    with pytest.raises(SimInputError, match=rf"{fa2}.fwd_frac: Input should be less than or equal to 1"):
        load_scenario(overrides=[f"{fa2}.fwd_frac=1.5"])
    with pytest.raises(SimInputError, match=r"attention_kernels.fa3: is the default curve's kernel"):
        load_scenario(overrides=["cluster.gpu.efficiency.attention_kernels.fa3={fwd_frac: 0.5, bwd_frac: 0.3, "
                                 "seq_half: 100, causal_waste: 100}"])
    with pytest.raises(SimInputError, match=r"efficiency_sources: give a source for attention_kernels.cudnn"):
        load_scenario(hardware="a100_ib_3072", overrides=["cluster.gpu.efficiency.attention_kernels.cudnn={fwd_frac: "
                                                          "0.5, bwd_frac: 0.3, seq_half: 100, causal_waste: 100}"])
    with pytest.raises(SimInputError, match=r"efficiency.attention_kernel: fa3 runs only on sm90"):
        load_scenario(hardware="a100_ib_3072", overrides=["cluster.gpu.efficiency.attention_kernel=fa3"])
    with pytest.raises(SimInputError, match=r"software.flash_kernel: got 'fa4'; allowed: 'default', 'fa2'"):
        load_scenario(overrides=["software.flash_kernel=fa4"])


def test_software_names_the_kernels_the_profiles_do():
    assert get_args(FlashKernel) == FLASH_KERNELS
    assert get_args(SoftwareSpec.model_fields["flash_kernel"].annotation) == ("default", *FLASH_KERNELS)


def test_override_of_unknown_nested_key():
    with pytest.raises(SimInputError, match=r"cluster.gpu.hbm_gib: unknown key"):
        load_scenario(overrides=["cluster.gpu.hbm_gib=96"])


def test_override_indexes_lists():
    s = load_scenario(overrides=["run.phases.0.tokens=7.4e12", "run.phases.2.steps=10"])
    assert (s.run.phases[0].tokens, s.run.phases[2].steps) == (7.4e12, 10)
    for key, message in (("run.phases.4.steps", r"run.phases is a list of 4: index it 0-3 \(got '4'\)"),
                         ("run.phases.first.steps", "index it 0-3"), ("parallel.tp.x", "parallel.tp is not a mapping")):
        with pytest.raises(SimInputError, match=message) as e:
            load_scenario(overrides=[f"{key}=1"])
        assert e.value.field == key


def test_gpus_option_scales_data_parallelism():
    s = load_scenario(gpus=4096, overrides=["training.global_batch_size=30720"])
    assert (s.num_gpus, s.dp, s.num_microbatches) == (4096, 256, 120)


FIELDS = {
    "parallel.tp": st.integers(-2, 40), "parallel.pp": st.integers(-1, 70), "parallel.ep": st.integers(-1, 600),
    "parallel.vpp": st.integers(-1, 5), "parallel.micro_batch_size": st.integers(-1, 9),
    "parallel.schedule": st.sampled_from(["1f1b", "dualpipe", "zb1p", "gpipe", "interleaved-1f1b", "bogus"]),
    "parallel.zero_stage": st.integers(-1, 5), "parallel.comm_sms": st.integers(-5, 200),
    "parallel.stage_layers": st.lists(st.integers(-1, 10), max_size=18),
    "training.global_batch_size": st.integers(-10, 40000), "training.seq_len": st.integers(-1, 10000),
    "model.n_layers": st.integers(-1, 80), "model.n_heads": st.integers(-1, 200),
    "model.n_activated_experts": st.integers(-1, 300), "model.n_expert_groups": st.integers(0, 40),
    "model.attention": st.sampled_from(["mla", "gqa", "mha", "flash"]),
    "cluster.num_nodes": st.integers(-1, 600), "cluster.gpu.num_sms": st.integers(-1, 200),
    "precision.fprop": st.sampled_from(["fp8", "bf16", "fp4", 3]),
    "experts.skew": st.sampled_from(["zipf", "balanced", "uniform"]),
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(sorted(FIELDS)), st.none(), min_size=1, max_size=4).flatmap(
    lambda keys: st.fixed_dictionaries({k: FIELDS[k] for k in keys})))
def test_random_invalid_configs_never_raise_uncaught(changes):
    base = resolve_workload(DEFAULT)
    data = copy.deepcopy(base)
    for key, value in changes.items():
        node = data
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    try:
        s = validate(Scenario, data)
    except SimInputError as e:
        assert str(e)
        return
    assert isinstance(s, Scenario)
