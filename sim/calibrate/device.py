"""Metadata of the device being calibrated: name, SMs, clocks, memory, torch and CUDA versions.

GPU clocks are read with ``nvidia-smi --query-gpu`` (current and maximum SM clock, memory clock: datasheet peaks
assume boost clocks, e.g. the H100's 989.4 TFLOP/s at 1.83 GHz per glennklockwood.com/garden/peak-FLOPS, and
sustained clocks drop under power and thermal limits) when it is on the PATH; a missing tool leaves them empty
rather than failing.
``torch.cuda`` is queried only when CUDA is available.
"""

from __future__ import annotations

import datetime
import platform
import shutil
import subprocess
from typing import Any

import torch

from sim.calibrate.table import DeviceInfo


def cuda_available() -> bool:
    return bool(torch.cuda.is_available())


def device_info(device: str, source: str, settings: dict[str, Any]) -> DeviceInfo:
    created = datetime.date.today().isoformat()
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return DeviceInfo(name=props.name, kind="cuda", num_sms=props.multi_processor_count,
                          compute_capability=f"{props.major}.{props.minor}", clocks_mhz=gpu_clocks(),
                          memory_bytes=float(props.total_memory), torch_version=torch.__version__,
                          cuda_version=torch.version.cuda, source=source, created=created, settings=settings)
    return DeviceInfo(name=cpu_name(), kind="cpu", torch_version=torch.__version__, source=source, created=created,
                      settings=settings)


def fp8_supported() -> bool:
    """FP8 tensor cores: compute capability 8.9 (Ada) or 9.0+ (Hopper, Blackwell)."""
    if not cuda_available():
        return False
    major, minor = torch.cuda.get_device_capability(0)
    return (major, minor) >= (8, 9)


def gpu_clocks() -> dict[str, float]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    fields = ("clocks.sm", "clocks.max.sm", "clocks.mem")
    try:
        out = subprocess.run([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        values = [float(v) for v in out.strip().splitlines()[0].split(",")]
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return {}
    return dict(zip(("sm", "sm_max", "mem"), values, strict=False))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"
