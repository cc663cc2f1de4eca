"""The timing harness: the quick CPU calibration end to end, the FP8 and grouped GEMM call builders, the GPU path.

No test asserts a timing: CPU figures validate the pipeline only (our own measurements with torch 2.13.0+cpu on a
shared 2-core machine: BF16 matmuls ~60x slower than FP32, times inflated 100x or more by thread oversubscription).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sim.calibrate.table import load_table
from sim.cli import main
from sim.errors import SimInputError
from tests.conftest import REPO

torch = pytest.importorskip("torch")


def test_quick_cpu_calibration_end_to_end(tmp_path: Path, runner) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "cpu.yaml"
    res = runner.invoke(main, ["calibrate", "--device", "cpu", "--quick", "--out", str(out)])
    assert res.exit_code == 0, res.output
    table = load_table(out)
    assert table.device.kind == "cpu" and not table.is_gpu and table.device.num_sms is None
    kinds = {e.kind for e in table.entries}
    assert {"gemm", "grouped_gemm", "attention_fwd", "attention_bwd", "memory", "optimizer"} <= kinds
    assert {"allreduce", "alltoall", "p2p"} <= kinds or "skipped: collectives" in table.notes
    assert out.read_text().startswith("# Calibration table measured by")
    assert "pipeline validation only" in out.read_text()
    with pytest.raises(SimInputError, match="never GPU data"):
        table.check_usable_for("H800-SXM-80GB")
    assert table.check_usable_for("H800-SXM-80GB", allow_cpu=True) is not None
    g = next(e for e in table.entries if e.kind == "gemm" and e.gemm_pass == "fwd")
    look = table.rate("gemm", g.dtype, m=g.shape["m"], n=g.shape["n"], k=g.shape["k"])
    assert look is not None and look.at_measured_point


def test_fp8_gemm_layout_rules_checked_on_cpu() -> None:
    from sim.calibrate.kernels import check_fp8_shape, fp8_gemm_fn

    out = fp8_gemm_fn(32, 64, 48, "cpu")()  # CPU runs _scaled_mm without the CUDA checks: ours apply
    assert out.shape == (32, 48) and out.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="divisible by 16"):
        check_fp8_shape(60, 40)


@pytest.mark.parametrize("gemm_pass", ["fwd", "dgrad", "wgrad"])
def test_grouped_gemm_builder_matches_a_loop(gemm_pass: str) -> None:
    from sim.calibrate.kernels import grouped_gemm_fn

    torch.manual_seed(0)
    out = grouped_gemm_fn(16, 32, 48, 3, gemm_pass, torch.float32, "cpu")()
    expected = {"fwd": (48, 32), "dgrad": (48, 48), "wgrad": (3, 32, 48)}[gemm_pass]
    assert tuple(out.shape) == expected


def test_cuda_device_refused_without_cuda(tmp_path: Path, runner) -> None:  # type: ignore[no-untyped-def]
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    res = runner.invoke(main, ["calibrate", "--device", "cuda", "--quick", "--out", str(tmp_path / "g.yaml")])
    assert res.exit_code == 2 and "CUDA is not available" in res.output


def test_device_path_without_torch_names_the_extra(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['torch'] = None\n"
            "from sim.cli import main\n"
            f"main(['calibrate', '--device', 'cpu', '--quick', '--out', {str(tmp_path / 'x.yaml')!r}])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert "install the calibrate extra: pip install -e '.[calibrate]'" in proc.stderr


def test_importing_sim_does_not_import_torch() -> None:
    code = "import sys, sim, sim.cli, sim.calibrate.table, sim.calibrate.trace_import; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


@pytest.mark.gpu
def test_quick_cuda_calibration(tmp_path: Path, runner) -> None:  # type: ignore[no-untyped-def]
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    out = tmp_path / "gpu.yaml"
    res = runner.invoke(main, ["calibrate", "--device", "cuda", "--quick", "--out", str(out)])
    assert res.exit_code == 0, res.output
    table = load_table(out)
    assert table.is_gpu and table.device.kind == "cuda" and table.device.num_sms
    assert {"gemm", "grouped_gemm", "attention_fwd", "attention_bwd", "memory", "optimizer"} <= {
        e.kind for e in table.entries}


def test_gpu_only_measurements_run_their_cpu_part() -> None:
    """The FP8 sweeps are GPU-only in a calibration; on a CPU, _scaled_mm runs (ours checks the CUDA layout
    rules) and _scaled_grouped_mm is absent, which must come back as a skip with the reason."""
    import dataclasses

    from sim.calibrate import kernels
    from sim.calibrate.presets import make_preset
    from sim.calibrate.timing import CpuTimer, TimingPolicy
    from sim.loading import load_model

    preset = dataclasses.replace(make_preset("cpu", True, load_model("tiny_moe")[0], None), fp8_tokens=(32,),
                                 loads=(16,))
    timer = CpuTimer(TimingPolicy(warmup=1, min_repeats=1, max_repeats=2, budget_s=0.001))
    skipped: list[str] = []
    fp8 = kernels.fp8_gemms(preset, timer, "cpu", skipped)
    assert fp8 and {e.gemm_pass for e in fp8} == {"fwd", "dgrad", "wgrad"}
    assert all(e.dtype == "fp8" and e.flops == 2 * e.shape["m"] * e.shape["n"] * e.shape["k"] for e in fp8)
    assert kernels.fp8_grouped_gemms(preset, timer, "cpu", skipped) == []
    assert any(s.startswith("fp8 grouped_gemm") for s in skipped)
