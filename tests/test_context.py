"""What one step is built from (sim.context): the cost model reads the GPU as the software stack drives it."""

from __future__ import annotations

import pytest

from sim.context import build_context
from sim.loading import load_scenario
from sim.units import US

TINY = "workloads/tiny_moe_job.yaml"
UNCALIBRATED = ("calibration=null",)  # the cost model's own times, so a change per kernel shows exactly


@pytest.mark.parametrize("launch_us", [0.0, 25.0])
def test_software_launch_time_replaces_the_profiles_on_every_kernel(launch_us):
    """software.kernel_launch_us is the per-kernel overhead each kernel's cost adds: a memory-bound kernel and a
    GEMM each move by exactly the difference from the profile's kernel_overhead_us per kernel (an FP8 GEMM's
    pass is two kernels: the cast of its input, then the GEMM)."""
    base = build_context(load_scenario(TINY, overrides=list(UNCALIBRATED))).costs
    s = load_scenario(TINY, overrides=[*UNCALIBRATED, f"software.kernel_launch_us={launch_us}"])
    stack = build_context(s).costs
    delta = (launch_us - s.cluster.gpu.efficiency.kernel_overhead_us) * US
    assert stack.memory_seconds(1e8, "norm") - base.memory_seconds(1e8, "norm") == pytest.approx(delta, abs=1e-12)
    kernels = 2 if stack.gemm_dtype("fwd", "linear") == "fp8" else 1
    gemm = stack.gemm_pass_seconds("fwd", 4096, 2048, 1024, "linear")
    assert gemm - base.gemm_pass_seconds("fwd", 4096, 2048, 1024, "linear") == pytest.approx(kernels * delta,
                                                                                                abs=1e-12)


def test_known_gaps_beside_pytorch_context_parallelism():
    """PyTorch's CP is where the model leans on a fitted factor (or, without it, is optimistic at CP 4 and 8 on
    every published run): the warning says which, beside the result; no CP, or another CP mode, has none."""
    from sim.context import known_gaps

    assert known_gaps(load_scenario(TINY)) == ()
    dense = ["parallel.ep=1", "training.seq_len=8192"]

    def gaps(*more: str) -> tuple[str, ...]:
        return known_gaps(load_scenario(TINY, overrides=[*dense, *more]))

    (unfitted,) = gaps("parallel.cp=4", "parallel.cp_mode=pytorch")
    assert "lower bound" in unfitted and "pytorch_cp_step_efficiency = 1" in unfitted
    assert gaps("parallel.cp=2", "parallel.cp_mode=pytorch") == ()  # one published CP 2 run is faster than that
    (fitted,) = gaps("parallel.cp=2", "parallel.cp_mode=pytorch", "software.pytorch_cp_step_efficiency=0.6")
    assert "fitted" in fitted and "= 0.6 " in fitted
    assert gaps("parallel.cp=4", "parallel.cp_mode=ring", "software.pytorch_cp_step_efficiency=0.6") == ()
    s = load_scenario(TINY, overrides=[*dense, "parallel.cp=4", "parallel.cp_mode=pytorch"])
    assert unfitted in build_context(s).warnings


def test_known_gap_beside_a_fitted_data_parallel_collective_efficiency():
    """A stack whose data-parallel collectives carry a fitted efficiency (DeepSpeed ZeRO-3 2021) is flagged
    beside the result, naming the value; none at 1, none without data parallelism (no such collective)."""
    from sim.context import known_gaps

    (gap,) = known_gaps(load_scenario(TINY, overrides=["software.dp_collective_efficiency=0.07"]))
    assert "dp_collective_efficiency = 0.07" in gap and "empirical" in gap
    assert known_gaps(load_scenario(TINY, overrides=["software.dp_collective_efficiency=1"])) == ()
    one = load_scenario(TINY, overrides=["software.dp_collective_efficiency=0.07", "parallel.tp=4",
                                         "parallel.sequence_parallel=true", "parallel.ep=1"])
    assert one.dp == 1 and known_gaps(one) == ()
