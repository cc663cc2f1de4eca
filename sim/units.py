"""Unit factors and dtype sizes: the only place where they are written down.

SI inside the simulator (seconds, bytes, FLOP, bytes/s, FLOP/s). Human units appear only at the
edges: YAML keys such as ``hbm_bandwidth_tb_per_s`` and printed labels. GB = 1e9, GiB = 2**30,
TFLOP/s = 1e12 (decimal prefixes for rates and datasheet capacities, binary only where named).
"""

from __future__ import annotations

KILO = 1e3
MEGA = 1e6
GIGA = 1e9
TERA = 1e12
PETA = 1e15

KB = 1e3
MB = 1e6
GB = 1e9
TB = 1e12
KIB = 2**10
MIB = 2**20
GIB = 2**30

US = 1e-6
MS = 1e-3
SECONDS_PER_HOUR = 3600.0
SECONDS_PER_DAY = 86400.0

BITS_PER_BYTE = 8

#: Storage bytes per element. ``tf32`` is stored as fp32. ``e5m6`` is DeepSeek-V3's 12-bit cache format
#: for the input of the attention output projection (tech report section 3.3.3): 1.5 bytes.
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "tf32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "e5m6": 1.5,
}


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of ``dtype``; raises ``KeyError`` naming the allowed dtypes."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise KeyError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPE_BYTES)}") from None


def tflops(x_tflops: float) -> float:
    """TFLOP/s -> FLOP/s."""
    return x_tflops * TERA


def gbit_per_s(x: float) -> float:
    """Gbit/s -> bytes/s."""
    return x * GIGA / BITS_PER_BYTE
