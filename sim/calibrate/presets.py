"""What the timing harness measures: shapes taken from the workload's op list, per device and preset.

GEMM shapes ``(n, k)`` are the projections of one MoE layer, one dense FFN layer, the output head and the MTP
projection of the model (:mod:`sim.model.ops`); grouped expert GEMMs use ``experts_up``/``experts_down`` with as
many groups as experts per expert-parallel rank (``n_routed_experts / ep`` of the job, else 4) over a sweep of
per-expert loads; attention uses the model's heads and head sizes. On a GPU the shapes are the real ones. On a
CPU they are scaled down by a power of two until the largest layer dimension fits a cap (time, not memory, forces
it: one FP32 thread does ~30 GFLOP/s, measured with torch 2.13.0+cpu on a 2-core AVX2 machine), rounded to
multiples of 16, the head's vocabulary clamped to the cap; the scale is recorded in the table's settings and every
entry holds the shape actually measured.

Budgets: ``cpu --quick`` about a minute on a 2-core machine, ``cuda --quick`` well under 5 minutes on one
H100/H200 (the issue's bound), the full presets a few times longer.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.calibrate.timing import TimingPolicy
from sim.config import ModelSpec, Scenario
from sim.model.ops import Op, attention_ops, ffn_ops, head_ops, moe_ops, mtp_ops


@dataclass(frozen=True, slots=True)
class GemmShape:
    name: str
    n: int
    k: int


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    device: str
    dtype: str  # GEMM, attention and memory dtype ("fp32" on CPUs, "bf16" on GPUs)
    scale: int  # model dimensions divided by this
    gemms: tuple[GemmShape, ...]
    tokens: tuple[int, ...]
    passes: tuple[str, ...]
    experts: tuple[GemmShape, ...]
    groups: int
    loads: tuple[int, ...]  # rows per expert
    heads: int
    qk_dim: int
    v_dim: int
    seqs: tuple[int, ...]
    width: int  # memory-bound kernels run over [rows, width]
    norm: str
    rows: tuple[int, ...]
    optimizer_params: tuple[int, ...]
    comm_bytes: tuple[int, ...]
    fp8_tokens: tuple[int, ...]
    policy: TimingPolicy


def _dim(x: int, scale: int) -> int:
    return max(16, round(x / scale / 16) * 16)


def _scale_for(model: ModelSpec, cap: int | None) -> int:
    """The power of two that brings the largest layer projection (the vocabulary aside) under ``cap``."""
    if cap is None:
        return 1
    largest = max(max(g.n, g.k) for g in model_gemms(model) if g.name != "head")
    scale = 1
    while largest / scale > cap:
        scale *= 2
    return scale


def model_gemms(m: ModelSpec) -> list[GemmShape]:
    """Distinct dense projections of the model: attention, router, shared experts, dense FFN, head, MTP."""
    ops: list[Op] = attention_ops(m) + ffn_ops(m) + head_ops(m)
    if m.is_moe:
        ops += [op for op in moe_ops(m) if op.kind == "gemm"]
    if m.n_mtp_layers:
        ops += [op for op in mtp_ops(m) if op.name == "mtp_eh_proj"]
    seen: dict[str, GemmShape] = {}
    for op in ops:
        if op.kind == "gemm" and op.name not in seen:
            seen[op.name] = GemmShape(op.name, op.n, op.k)
    return list(seen.values())


def experts_per_rank(m: ModelSpec, scenario: Scenario | None) -> int:
    if not m.is_moe:
        return 0
    if scenario is not None and m.n_routed_experts % scenario.parallel.ep == 0:
        return m.n_routed_experts // scenario.parallel.ep
    return min(4, m.n_routed_experts)


def make_preset(device: str, quick: bool, m: ModelSpec, scenario: Scenario | None) -> Preset:
    cpu = device == "cpu"
    cap = (2048 if quick else 4096) if cpu else None
    scale = _scale_for(m, cap)
    gemms = tuple(GemmShape(g.name, min(_dim(g.n, scale), cap or g.n), _dim(g.k, scale)) for g in model_gemms(m))
    if cpu and quick:
        gemms = tuple(g for g in gemms if g.name != "mtp_eh_proj")
    experts: tuple[GemmShape, ...] = ()
    if m.is_moe:
        experts = (GemmShape("experts_up", _dim(2 * m.moe_inter_dim, scale), _dim(m.dim, scale)),
                   GemmShape("experts_down", _dim(m.dim, scale), _dim(m.moe_inter_dim, scale)))
    heads = max(1, m.n_heads // scale)
    name = f"{device}{'-quick' if quick else ''}"
    if cpu:
        return Preset(
            name, device, "fp32", scale, gemms, (64, 256, 1024) if quick else (32, 128, 512, 2048),
            ("fwd", "dgrad", "wgrad"), experts, experts_per_rank(m, scenario),
            (64, 256, 1024) if quick else (32, 128, 512, 2048), heads, m.qk_head_dim, m.value_head_dim,
            (128, 512, 1024) if quick else (128, 256, 512, 1024, 2048), _dim(m.dim, scale), m.norm,
            (256, 2048, 8192) if quick else (256, 1024, 4096, 16384),
            (1 << 16, 1 << 20) if quick else (1 << 16, 1 << 20, 1 << 22),
            (1 << 12, 1 << 16, 1 << 20) if quick else (1 << 10, 1 << 14, 1 << 18, 1 << 22), (),
            TimingPolicy(warmup=1, min_repeats=3 if quick else 5, max_repeats=15 if quick else 50,
                         budget_s=0.02 if quick else 0.1))
    return Preset(
        name, device, "bf16", 1, gemms, (1024, 4096, 16384) if quick else (256, 1024, 2048, 4096, 8192, 16384),
        ("fwd", "dgrad", "wgrad"), experts, experts_per_rank(m, scenario),
        (1024, 4096, 8192) if quick else (256, 1024, 2048, 4096, 8192, 16384), m.n_heads, m.qk_head_dim,
        m.value_head_dim, (1024, 4096) if quick else (1024, 2048, 4096, 8192, 16384), m.dim, m.norm,
        (1024, 4096, 16384) if quick else (256, 1024, 4096, 16384, 65536),
        (1 << 20, 1 << 24) if quick else (1 << 20, 1 << 24, 1 << 27),
        (1 << 20, 1 << 24, 1 << 28) if quick else tuple(1 << p for p in range(16, 31, 2)),
        (1024, 4096, 16384) if quick else (256, 1024, 4096, 16384),
        TimingPolicy(warmup=3 if quick else 5, min_repeats=5, max_repeats=20 if quick else 50,
                     budget_s=0.03 if quick else 0.1))
