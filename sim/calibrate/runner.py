"""``sim calibrate --device cpu|cuda``: run the timing harness over a preset and assemble the table.

Order: dense GEMMs, grouped expert GEMMs, FP8 GEMMs (CUDA with compute capability >= 8.9 only), attention
forward and backward, memory-bound kernels, the optimizer step, then collectives (NCCL when this machine has
two or more GPUs, gloo between two CPU processes on a CPU run, none with one GPU). On a GPU, TF32 is switched
off for the run (true FP32 where FP32 is used) and the setting recorded. What could not run is listed in the
table's notes with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter

import torch

from sim.calibrate import collectives, kernels
from sim.calibrate.device import cuda_available, device_info, fp8_supported
from sim.calibrate.presets import Preset, make_preset
from sim.calibrate.table import SCHEMA_VERSION, CalibrationTable, Entry
from sim.calibrate.timing import make_timer
from sim.config import ModelSpec, Scenario
from sim.errors import SimInputError

Progress = Callable[[str], None]


def calibrate(device: str, quick: bool, model: ModelSpec, scenario: Scenario | None,
              progress: Progress) -> tuple[CalibrationTable, str]:
    """Measure, and return the table and the header comment for its file."""
    if device == "cuda" and not cuda_available():
        raise SimInputError("CUDA is not available to torch here (no GPU, or a CPU-only torch build); "
                            "use --device cpu", field="--device")
    preset = make_preset(device, quick, model, scenario)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    timer = make_timer(device, preset.policy)
    skipped: list[str] = []
    entries: list[Entry] = []
    steps: list[tuple[str, Callable[..., list[Entry]]]] = [
        ("dense GEMMs", kernels.dense_gemms), ("grouped expert GEMMs", kernels.grouped_gemms)]
    if device == "cuda" and fp8_supported():
        steps += [("FP8 GEMMs", kernels.fp8_gemms), ("FP8 grouped GEMMs", kernels.fp8_grouped_gemms)]
    else:
        skipped.append("fp8 gemm: the device has no FP8 tensor cores")
    steps += [("attention", kernels.attention), ("memory-bound kernels", kernels.memory_kernels),
              ("optimizer step", kernels.optimizer_step)]
    torch.manual_seed(0)
    for label, step in steps:
        t0 = perf_counter()
        progress(f"{label} ...")
        new = step(preset, timer, device, skipped)
        entries += new
        progress(f"{label}: {len(new)} entries in {perf_counter() - t0:.1f} s")
    entries += _collectives(device, preset, skipped, progress)
    settings = _settings(preset, quick)
    source = f"sim calibrate --device {device}{' --quick' if quick else ''} (preset {preset.name}, model {model.name})"
    info = device_info(device, source, settings)
    notes = _notes(preset, skipped, device)
    table = CalibrationTable(schema_version=SCHEMA_VERSION, device=info, entries=tuple(entries), notes=notes)
    header = (f"Calibration table measured by\n  {source}\non {info.name} with torch {info.torch_version}"
              f"{f', CUDA {info.cuda_version}' if info.cuda_version else ''}.")
    if device == "cpu":
        header += ("\nCPU TIMINGS: pipeline validation only, never GPU data (device.kind: cpu).")
    return table, header


def _collectives(device: str, preset: Preset, skipped: list[str], progress: Progress) -> list[Entry]:
    if device == "cuda":
        world = torch.cuda.device_count()
        if world < 2:
            skipped.append("collectives: one GPU (NCCL needs two or more)")
            return []
        backend, world = "nccl", min(world, 8)
    else:
        backend, world = "gloo", 2
    t0 = perf_counter()
    progress(f"collectives ({backend}, {world} processes) ...")
    repeats = preset.policy.min_repeats
    entries, problems = collectives.run_collectives(backend, world, preset.comm_bytes, repeats)
    skipped += problems
    progress(f"collectives: {len(entries)} entries in {perf_counter() - t0:.1f} s")
    return entries


def _settings(p: Preset, quick: bool) -> dict[str, str | int | float | bool]:
    pol = p.policy
    out: dict[str, str | int | float | bool] = {
        "preset": p.name, "shape_scale": p.scale, "warmup": pol.warmup, "min_repeats": pol.min_repeats,
        "max_repeats": pol.max_repeats, "budget_s_per_measurement": pol.budget_s, "experts_per_rank": p.groups}
    if p.device == "cuda":
        out.update({"timer": "cuda events, one call per event pair", "l2_flush_bytes": 256 << 20, "tf32": False})
    else:
        out.update({"timer": "perf_counter_ns", "threads": 1})
    return out


def _notes(p: Preset, skipped: list[str], device: str) -> str:
    lines = []
    if device == "cpu":
        lines.append("Measured on a CPU: validates the calibration pipeline; never use these rates as GPU data.")
    if p.scale > 1:
        lines.append(f"Model dimensions were divided by {p.scale} (rounded to multiples of 16) to fit the "
                     "device; entries hold the shapes actually measured.")
    lines += [f"skipped: {s}" for s in skipped]
    return "\n".join(lines)
