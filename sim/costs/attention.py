"""Attention's time on one GPU: FlashAttention-class kernels by an efficiency curve, or the unfused path of
batched GEMMs and memory-bound kernels over materialized scores.

**Flash** (FlashAttention 2/3, cuDNN, FlashMLA): model FLOPs (forward ``4 s s_k d heads``, ``s_k`` halved when
causal; backward twice the forward) at ``peak x eta``, with

    eta = frac(pass) x s / (s + attention_seq_half[_bwd])
          x [causal: attention_causal_frac x s / (s + attention_causal_waste)]

Short sequences lose to the kernel's fixed costs per query block and, when causal, to the partly masked tiles
along the diagonal; both vanish as ``s`` grows (FA3 Figs. 5-6, FA2 Fig. 4), the backward's more slowly (its
own ``seq_half_bwd``: FA2 on H100 reaches 98 % of its long-sequence forward rate at 2K but 90 % of its
backward rate). What does not vanish is the causal kernel's imbalance: its query blocks attend to 1, 2, ...
key blocks, so the CTAs carry unequal work and the last wave runs partly empty. The papers' causal/non-causal
ratio at head dim 128 levels off below one (FA2 0.87, 0.90, 0.905 at 4K, 8K, 16K; cuDNN 0.85, 0.88, 0.91;
FA3 0.91, 0.93, 0.95) where ``s / (s + waste)`` alone would reach 0.98: ``causal_frac`` is the level the ratio
tends to (fitted: FA2 0.92, cuDNN 0.90; FA3's fit, 0.98, leaves more of its smaller gap to ``causal_waste``).
The six GPU-profile parameters are fitted to those figures by :mod:`sim.calibrate.fit_attention`. The papers
measure no causal backward: the backward is assumed to keep the forward's causal factors.

**Kernels.** The curve depends on the kernel as much as on the GPU: on H100, FlashAttention-2 (PyTorch SDPA's
FLASH backend) reaches about 35 % of the BF16 peak where FlashAttention-3 reaches 60-65 % (FA3 Figs. 5-6), and
cuDNN's fused attention (Transformer Engine) lies between. The ``attention_*`` fields of a GPU profile are its
default curve, fitted to the architecture's best kernel (``efficiency.attention_kernel``: fa3 on Hopper, fa2 on
Ampere); ``efficiency.attention_kernels`` holds the curves of other kernels. :func:`flash_curve` picks the
curve of the software stack's ``flash_kernel``: ``default`` (or the default curve's own kernel) takes the
default curve; a kernel with a curve of its own takes it; a kernel the profile has no curve for falls back to
the default curve with a note (no data: the profile does not guess a ratio); a kernel that cannot run on the
architecture (fa3 off Hopper) is refused with a :class:`~sim.errors.SimInputError` naming
``software.flash_kernel``.

**Head dim.** A curve is fitted at head dim 128; its ``head_dim_fwd`` and ``head_dim_bwd`` give the rate at other
head dims as a factor (:func:`head_dim_factor`: linear in log2(head dim) between the head dims measured, flat
beyond them). The papers' d 64 and 256 rows fit no monotonic term (FA2 peaks at 128 and is about 10 % slower at
both; cuDNN is about a third slower at 64 forward and a few per cent at 256), hence one factor per measured head
dim. The query/key head dim picks the factor (it sets the kernel's tiles). FA3 has no measurements off 128, so
its curve keeps one rate; the factors cancel in :meth:`~sim.costs.kernels.CostModel.noncausal_share`.

**Unfused** (Megatron-LM before FlashAttention, ``software.attention: unfused``; Megatron-Core's
``DotProductAttention``): ``S = Q K^T`` and ``O = P V`` as batched GEMMs over the full ``s x s`` scores (the
causal mask is applied in the softmax, not skipped), the scores written to HBM, a (fused or unfused) scale +
mask + softmax, and dropout on the probabilities as kernels of their own. Backward: ``dV = P^T dO``,
``dP = dO V^T``, dropout and softmax backward, ``dQ = dS K``, ``dK = dS^T Q``. HBM bytes per score element
(BF16 values, 1-byte masks): forward 2 (S) + 4 (softmax, fused; 12 unfused) + 5 (dropout, when on) + 2 (P read
by the second GEMM); backward 2 + 2 + 5 + 6 + 2 + 2; about 32 B in all with dropout, against 33-37.5 B measured
for PyTorch's unfused softmax (FA1 Fig. 2: 40.3 GB for 1.07e9 score elements). Under a causal mask the fused
kernel (Megatron-LM's ``scaled_upper_triang_masked_softmax``, also Megatron-Core's and Transformer Engine's)
reads only each row's first ``row + 1`` scores and writes the whole row, zeros above the diagonal: forward
1 + 2 = 3 B, backward (dP and P read over the triangle, dS written whole) 2 + 2 = 4 B; 29 B in all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sim.config import AttentionCurve, GpuSpec
from sim.config.hardware import FITTED_HEAD_DIM, flash_kernel_problem
from sim.costs import gemm
from sim.errors import SimInputError
from sim.units import US, dtype_bytes


@dataclass(frozen=True, slots=True)
class FlashChoice:
    """The curve a job's attention kernel runs at on one GPU."""

    curve: AttentionCurve
    default: bool           # the profile's default curve: calibration tables (measured with it) apply
    note: str | None = None  # why a requested kernel fell back to the default curve


def flash_curve(gpu: GpuSpec, kernel: str = "default") -> FlashChoice:
    """The curve of ``kernel`` (``software.flash_kernel``) on ``gpu``; see the module docstring."""
    eff = gpu.efficiency
    if kernel == "default" or kernel == eff.attention_kernel:
        return FlashChoice(eff.attention_curve, True)
    problem = flash_kernel_problem(kernel, gpu.arch)
    if problem:
        raise SimInputError(f"{problem} ({gpu.name})", field="software.flash_kernel")
    curve = eff.attention_kernels.get(kernel)  # type: ignore[call-overload]
    if curve is not None:
        return FlashChoice(curve, False)
    fitted = f"fitted to {eff.attention_kernel}" if eff.attention_kernel else "assumed, of no named kernel"
    return FlashChoice(eff.attention_curve, True, f"attention: {gpu.name}'s profile has no {kernel} curve "
                       f"(software.flash_kernel); its default curve ({fitted}) used")


def head_dim_factor(factors: dict[int, float], head_dim: float) -> float:
    """The rate at ``head_dim`` relative to the curve's own head dim (128): the profile's ``factors`` with 1 at
    128, linear in log2(head dim) between the head dims given, flat beyond the smallest and the largest."""
    if not factors:
        return 1.0
    points = sorted({FITTED_HEAD_DIM: 1.0, **factors}.items())
    return float(np.interp(math.log2(head_dim), [math.log2(d) for d, _ in points], [f for _, f in points]))


def flash_efficiency(curve: AttentionCurve, seq: float, causal: bool, backward: bool,
                     head_dim: float = FITTED_HEAD_DIM) -> float:
    """Fraction of the dense peak a FlashAttention-class kernel reaches on ``curve``, in model FLOPs, at
    ``head_dim`` (the query/key head dim: it picks the kernel's tiles)."""
    frac = curve.bwd_frac if backward else curve.fwd_frac
    half = curve.seq_half_bwd if backward and curve.seq_half_bwd is not None else curve.seq_half
    eta = frac * seq / (seq + half) * head_dim_factor(curve.head_dim_bwd if backward else curve.head_dim_fwd,
                                                      head_dim)
    if causal:
        eta *= curve.causal_frac * seq / (seq + curve.causal_waste)
    return eta


def flash_seconds(gpu: GpuSpec, dtype: str, fwd_flops: float, seq: float, causal: bool, backward: bool,
                  curve: AttentionCurve | None = None, head_dim: float = FITTED_HEAD_DIM) -> float:
    """One attention pass of ``fwd_flops`` forward model FLOPs on ``curve`` (default: the GPU's default) at
    ``head_dim``."""
    flops = 2.0 * fwd_flops if backward else fwd_flops
    eta = flash_efficiency(curve or gpu.efficiency.attention_curve, seq, causal, backward, head_dim)
    return flops / (gpu.peak_flops_per_s(dtype) * eta) + gpu.efficiency.kernel_overhead_us * US


def _bmm(gpu: GpuSpec, groups: int, m: float, n: float, k: float) -> float:
    """``groups`` GEMMs of ``[m, k] x [k, n]`` in one batched kernel (BF16)."""
    return gemm.gemm_seconds(gpu, "bf16", m * groups, n, k, (m,) * groups)


def unfused_score_bytes(backward: bool, dropout: bool, fused_softmax: bool, causal: bool = False
                        ) -> tuple[float, ...]:
    """HBM bytes per score element of each memory-bound kernel over the scores (see the module docstring);
    ``causal``: the fused softmax reads only the scores on and below the diagonal (half of them)."""
    b = dtype_bytes("bf16")
    mask = dtype_bytes("fp8")  # a 1-byte mask
    read = 0.5 if causal and fused_softmax else 1.0  # the share of each row a fused causal softmax reads
    if not backward:
        softmax: tuple[float, ...] = (read * b + b,) if fused_softmax else (2 * b, 2 * b, 2 * b)
        return (*softmax, *((2 * b + mask,) if dropout else ()))
    softmax = (2 * read * b + b,) if fused_softmax else (3 * b, 2 * b)
    return (*((2 * b + mask,) if dropout else ()), *softmax)


def unfused_seconds(gpu: GpuSpec, memory_seconds, batch: float, seq: int, heads: int, qk_dim: int, v_dim: int,
                    backward: bool, dropout: bool, fused_softmax: bool, causal: bool = True) -> float:
    """The unfused path for ``batch`` sequences and ``heads`` local heads; ``memory_seconds(bytes, name)`` costs
    one memory-bound kernel (the cost model's, calibrated)."""
    groups = max(1, round(batch * heads))
    scores = groups * float(seq) * seq
    kernels = [memory_seconds(per * scores, "softmax") for per in unfused_score_bytes(backward, dropout,
                                                                                      fused_softmax, causal)]
    if not backward:
        gemms = _bmm(gpu, groups, seq, seq, qk_dim) + _bmm(gpu, groups, seq, v_dim, seq)
    else:
        gemms = (_bmm(gpu, groups, seq, v_dim, seq) + _bmm(gpu, groups, seq, seq, v_dim)
                 + 2 * _bmm(gpu, groups, seq, qk_dim, seq))
    return gemms + sum(kernels)
