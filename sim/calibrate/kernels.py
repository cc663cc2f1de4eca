"""Kernel measurements: each function times one kind of kernel over a preset's shapes and returns table entries.

- Dense GEMMs in the linear layer's three passes (``torch.mm`` on ``[m,k]x[k,n]``, ``[m,n]x[n,k]``,
  ``[n,m]x[m,k]``; weights stored ``[n, k]`` as ``nn.Linear`` does).
- Grouped expert GEMMs with ``torch._grouped_mm`` (2-D x 3-D with int32 cumulative ``offs``; the weight-gradient
  form 2-D x 2-D; the ``torch.nn.functional.grouped_mm`` docstring, torch 2.13), equal rows per expert.
- FP8 GEMMs with ``torch._scaled_mm`` (e4m3 operands, row-wise float32 scales, BF16 output; the first operand
  row-major, the second column-major: a contiguous ``[out, inner]`` tensor transposed; inner and outer
  dimensions multiples of 16: :func:`check_fp8_shape` enforces on every device the CUDA rules of PyTorch's
  ``aten/src/ATen/native/cuda/Blas.cpp``, which a CPU run does not check).
- Attention: ``F.scaled_dot_product_attention(is_causal=True)`` forward, and its backward alone
  (``torch.autograd.grad`` on a retained graph), with the first backend that runs (PyTorch's
  ``torch.nn.attention.sdpa_kernel`` and ``SDPBackend``).
- Memory-bound kernels, named as the cost model asks for them: ``norm`` (the model's RMSNorm or LayerNorm),
  ``swiglu``, ``fp8_cast`` (per token, 1 x 128 groups), ``copy``, ``transpose``; bytes count each tensor read or
  written once. The AdamW step: 28 bytes per parameter (FP32 parameter, gradient and two moments read;
  parameter and moments written).

GEMM shapes follow :mod:`sim.calibrate.table`: the GEMM as run, ``[m,k] x [k,n]``.

A measurement that raises (an op the device or this torch lacks) is skipped and reported, never faked.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from sim.calibrate.presets import Preset
from sim.calibrate.table import Entry
from sim.calibrate.timing import Timer, Timing

MATH_MAX_SEQ = 4096
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
Skipped = list[str]


def entry(kind: str, dtype: str, name: str, shape: dict[str, float], t: Timing, work: float,
          gemm_pass: str | None = None, note: str = "") -> Entry:
    compute = kind in ("gemm", "grouped_gemm", "attention_fwd", "attention_bwd")
    median = sig(t.median_s)
    rate = sig(work / median)
    return Entry(kind=kind, dtype=dtype, name=name, gemm_pass=gemm_pass, shape=shape,  # type: ignore[arg-type]
                 seconds=median, spread_s=(sig(t.p20_s), sig(t.p80_s)), samples=t.samples,
                 flops=work if compute else None, bytes=None if compute else work,
                 achieved_flops_per_s=rate if compute else None, achieved_bytes_per_s=None if compute else rate,
                 note=note)


def sig(x: float, digits: int = 5) -> float:
    """``x`` to ``digits`` significant digits (timings are not more precise than that)."""
    return float(f"{x:.{digits}g}")


def _pass_operands(m: int, n: int, k: int, gemm_pass: str) -> tuple[int, int, int]:
    """(rows, inner, out) of the GEMM a pass runs, in the linear layer's (m, n, k)."""
    return {"fwd": (m, k, n), "dgrad": (m, n, k), "wgrad": (n, m, k)}[gemm_pass]


def dense_gemms(p: Preset, timer: Timer, device: str, skipped: Skipped) -> list[Entry]:
    dt = TORCH_DTYPES[p.dtype]
    out = []
    for g in p.gemms:
        for m in p.tokens:
            for gp in p.passes:
                rows, inner, cols = _pass_operands(m, g.n, g.k, gp)
                try:
                    a = torch.randn(rows, inner, dtype=dt, device=device)
                    b = torch.randn(cols, inner, dtype=dt, device=device).t()
                    c = torch.empty(rows, cols, dtype=dt, device=device)
                    t = timer.time(partial(torch.mm, a, b, out=c))
                except RuntimeError as e:  # out of memory
                    skipped.append(f"gemm {g.name} {gp} m={m}: {_first_line(e)}")
                    continue
                out.append(entry("gemm", p.dtype, g.name, {"m": rows, "n": cols, "k": inner}, t,
                                 2.0 * rows * cols * inner, gp, "torch.mm"))
                del a, b, c
    return out


def grouped_gemm_fn(rows: int, n: int, k: int, groups: int, gemm_pass: str, dtype: torch.dtype,
                    device: str) -> Callable[[], torch.Tensor]:
    """A ``torch._grouped_mm`` call for one pass of ``groups`` experts with ``rows`` rows each."""
    offs = torch.arange(1, groups + 1, dtype=torch.int32, device=device) * rows
    total = rows * groups
    if gemm_pass == "wgrad":
        dy = torch.randn(total, n, dtype=dtype, device=device)
        x = torch.randn(total, k, dtype=dtype, device=device)
        return lambda: torch._grouped_mm(dy.t(), x, offs=offs)
    inner, cols = (k, n) if gemm_pass == "fwd" else (n, k)
    a = torch.randn(total, inner, dtype=dtype, device=device)
    w = torch.randn(groups, cols, inner, dtype=dtype, device=device)  # per expert [out, inner], row-major
    return lambda: torch._grouped_mm(a, w.transpose(-2, -1), offs=offs)


def grouped_gemms(p: Preset, timer: Timer, device: str, skipped: Skipped) -> list[Entry]:
    if not p.experts or not hasattr(torch, "_grouped_mm"):
        skipped.append("grouped_gemm: no routed experts" if not p.experts else "grouped_gemm: no torch._grouped_mm")
        return []
    out = []
    for g in p.experts:
        for rows in p.loads:
            for gp in p.passes:
                try:
                    fn = grouped_gemm_fn(rows, g.n, g.k, p.groups, gp, TORCH_DTYPES[p.dtype], device)
                    t = timer.time(fn)
                except (RuntimeError, NotImplementedError) as e:
                    skipped.append(f"grouped_gemm {g.name} {gp} rows={rows}: {_first_line(e)}")
                    continue
                out.append(_grouped_entry(p, g.name, g.n, g.k, rows, gp, t))
    return out


def _grouped_entry(p: Preset, name: str, n_w: int, k_w: int, rows: int, gemm_pass: str, t: Timing) -> Entry:
    """Forward and input gradient: one grouped GEMM over all groups' rows. Weight gradient: per expert, a
    ``(n_w, k_w, rows)`` GEMM taking 1/groups of the grouped kernel's time (the table's convention)."""
    if gemm_pass == "wgrad":
        per = Timing(t.median_s / p.groups, t.p20_s / p.groups, t.p80_s / p.groups, t.samples)
        return entry("gemm", p.dtype, name, {"m": n_w, "n": k_w, "k": rows}, per, 2.0 * n_w * k_w * rows,
                     gemm_pass, f"one torch._grouped_mm over {p.groups} groups; seconds per group")
    total = rows * p.groups
    n, k = (n_w, k_w) if gemm_pass == "fwd" else (k_w, n_w)
    return entry("grouped_gemm", p.dtype, name, {"m": total, "n": n, "k": k, "groups": p.groups}, t,
                 2.0 * total * n * k, gemm_pass, "torch._grouped_mm, equal rows per group")


def check_fp8_shape(inner: int, cols: int) -> None:
    """CUDA ``_scaled_mm`` rules, enforced on every device (a CPU run does not check them)."""
    if inner % 16 or cols % 16:
        raise ValueError(f"FP8 GEMM needs inner and output dimensions divisible by 16 (got {inner}, {cols})")


def fp8_gemm_fn(rows: int, inner: int, cols: int, device: str) -> Callable[[], torch.Tensor]:
    """``torch._scaled_mm`` with e4m3 operands, row-wise scales, BF16 output; ``b`` column-major."""
    check_fp8_shape(inner, cols)
    fp8 = torch.float8_e4m3fn
    a = torch.randn(rows, inner, device=device).to(fp8)
    b = torch.randn(cols, inner, device=device).to(fp8).t()  # [inner, cols], column-major
    if not (a.is_contiguous() and b.t().is_contiguous()):
        raise ValueError("FP8 GEMM layout: first operand row-major, second column-major")
    sa = torch.ones(rows, 1, dtype=torch.float32, device=device)
    sb = torch.ones(1, cols, dtype=torch.float32, device=device)
    return lambda: torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)


def fp8_gemms(p: Preset, timer: Timer, device: str, skipped: Skipped) -> list[Entry]:
    out = []
    for g in p.gemms:
        for m in p.fp8_tokens:
            for gp in p.passes:
                rows, inner, cols = _pass_operands(m, g.n, g.k, gp)
                try:
                    t = timer.time(fp8_gemm_fn(rows, inner, cols, device))
                except (RuntimeError, ValueError) as e:
                    skipped.append(f"fp8 gemm {g.name} {gp} m={m}: {_first_line(e)}")
                    continue
                out.append(entry("gemm", "fp8", g.name, {"m": rows, "n": cols, "k": inner}, t,
                                 2.0 * rows * cols * inner, gp, "torch._scaled_mm e4m3, row-wise scales, bf16 out"))
    return out


def fp8_grouped_gemms(p: Preset, timer: Timer, device: str, skipped: Skipped) -> list[Entry]:
    """Forward FP8 grouped GEMMs with ``torch._scaled_grouped_mm`` (row-wise scales, CUDA compute capability 9.0
    only: "only supported on CUDA devices with compute capability = 9.0", quoted in pytorch/torchtitan PR #1276);
    any failure is reported as skipped."""
    if not p.experts or not hasattr(torch, "_scaled_grouped_mm"):
        skipped.append("fp8 grouped_gemm: no routed experts or no torch._scaled_grouped_mm")
        return []
    fp8 = torch.float8_e4m3fn
    out = []
    for g in p.experts:
        for rows in p.loads:
            total = rows * p.groups
            try:
                check_fp8_shape(g.k, g.n)
                a = torch.randn(total, g.k, device=device).to(fp8)
                w = torch.randn(p.groups, g.n, g.k, device=device).to(fp8)
                offs = torch.arange(1, p.groups + 1, dtype=torch.int32, device=device) * rows
                sa = torch.ones(total, dtype=torch.float32, device=device)
                sb = torch.ones(p.groups, g.n, dtype=torch.float32, device=device)
                t = timer.time(partial(torch._scaled_grouped_mm, a, w.transpose(-2, -1), sa, sb, offs=offs,
                                       out_dtype=torch.bfloat16))
            except (RuntimeError, ValueError, TypeError) as e:
                skipped.append(f"fp8 grouped_gemm {g.name} rows={rows}: {_first_line(e)}")
                continue
            out.append(entry("grouped_gemm", "fp8", g.name, {"m": total, "n": g.n, "k": g.k, "groups": p.groups}, t,
                             2.0 * total * g.n * g.k, "fwd", "torch._scaled_grouped_mm e4m3, row-wise scales"))
    return out


def _sdpa_backend(device: str, dtype: torch.dtype, qk: int, v: int) -> object | None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = ([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
             if device == "cuda" else [SDPBackend.FLASH_ATTENTION]) + [SDPBackend.MATH]
    q = torch.randn(1, 2, 128, qk, dtype=dtype, device=device, requires_grad=True)
    k = torch.randn(1, 2, 128, qk, dtype=dtype, device=device, requires_grad=True)
    val = torch.randn(1, 2, 128, v, dtype=dtype, device=device, requires_grad=True)
    for backend in order:
        try:
            with sdpa_kernel([backend]), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                F.scaled_dot_product_attention(q, k, val, is_causal=True).sum().backward()
            return backend
        except RuntimeError:
            continue
    return None


def attention(p: Preset, timer: Timer, device: str, skipped: Skipped) -> list[Entry]:
    from torch.nn.attention import SDPBackend

    dt = TORCH_DTYPES[p.dtype]
    backend = _sdpa_backend(device, dt, p.qk_dim, p.v_dim)
    if backend is None:
        skipped.append("attention: no SDPA backend runs these head sizes")
        return []
    label = f"sdpa[{getattr(backend, 'name', backend)}]"
    seqs = p.seqs
    if backend == SDPBackend.MATH and device == "cuda":
        seqs = tuple(s for s in seqs if s <= MATH_MAX_SEQ)  # the unfused path materializes heads x S x S
        skipped.append(f"attention: only the unfused MATH backend runs these head sizes; seq > {MATH_MAX_SEQ} skipped")
    out = []
    for s in seqs:
        try:
            out += _attention_at(p, timer, device, backend, label, s)
        except RuntimeError as e:  # out of memory, a backend limit
            skipped.append(f"attention seq={s}: {_first_line(e)}")
    return out


def _attention_at(p: Preset, timer: Timer, device: str, backend: object, label: str, s: int) -> list[Entry]:
    from torch.nn.attention import sdpa_kernel

    dt = TORCH_DTYPES[p.dtype]
    q = torch.randn(1, p.heads, s, p.qk_dim, dtype=dt, device=device, requires_grad=True)
    k = torch.randn(1, p.heads, s, p.qk_dim, dtype=dt, device=device, requires_grad=True)
    v = torch.randn(1, p.heads, s, p.v_dim, dtype=dt, device=device, requires_grad=True)
    shape: dict[str, float] = {"seq": s, "heads": p.heads, "qk_dim": p.qk_dim, "v_dim": p.v_dim, "batch": 1,
                               "causal": 1}
    fwd_flops = 2.0 * p.heads * (p.qk_dim + p.v_dim) * s * s / 2
    with sdpa_kernel([backend]):  # type: ignore[list-item]
        t_fwd = timer.time(partial(F.scaled_dot_product_attention, q, k, v, is_causal=True))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        grad = torch.randn_like(o)
        t_bwd = timer.time(partial(torch.autograd.grad, o, (q, k, v), grad, retain_graph=True))
    return [entry("attention_fwd", p.dtype, label, shape, t_fwd, fwd_flops, note="causal"),
            entry("attention_bwd", p.dtype, label, shape, t_bwd, 2 * fwd_flops,
                  note="backward kernels only; model FLOPs = 2 x forward")]


def memory_kernels(p: Preset, timer: Timer, device: str, skipped: Skipped) -> list[Entry]:
    dt = TORCH_DTYPES[p.dtype]
    es = torch.finfo(dt).bits // 8
    w = p.width
    group = 128 if w % 128 == 0 else w
    norm = F.layer_norm if p.norm == "layernorm" else F.rms_norm
    out = []
    for rows in p.rows:
        x = torch.randn(rows, w, dtype=dt, device=device)
        x2 = torch.randn(rows, 2 * w, dtype=dt, device=device)
        gamma = torch.ones(w, dtype=dt, device=device)
        n = rows * w
        cases: list[tuple[str, Callable[[], object], float]] = [
            ("norm", partial(norm, x, (w,), gamma), 2 * n * es),
            ("swiglu", partial(_swiglu, x2), 3 * n * es),
            ("fp8_cast", partial(_fp8_cast, x, group), n * (es + 1) + n // group * 4),
            ("copy", x.clone, 2 * n * es),
            ("transpose", partial(_transpose, x), 2 * n * es),
        ]
        for name, fn, size in cases:
            t = timer.time(fn)
            out.append(entry("memory", p.dtype, name, {"bytes": size, "rows": float(rows), "width": float(w)}, t, size,
                             note=f"F.{norm.__name__}" if name == "norm" else ""))
        del x, x2
    return out


def _swiglu(x2: torch.Tensor) -> torch.Tensor:
    gate, up = x2.chunk(2, dim=-1)
    return F.silu(gate) * up


def _transpose(x: torch.Tensor) -> torch.Tensor:
    return x.t().contiguous()


def _fp8_cast(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = x.view(x.shape[0], -1, group)
    scale = g.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / 448.0
    return (g / scale).to(torch.float8_e4m3fn), scale


def optimizer_step(p: Preset, timer: Timer, device: str, skipped: Skipped) -> list[Entry]:
    out = []
    for n in p.optimizer_params:
        param = torch.nn.Parameter(torch.randn(n, device=device))
        param.grad = torch.randn(n, device=device)
        try:
            opt = torch.optim.AdamW([param], lr=1e-4, fused=True)
            label = "adamw[fused]"
            opt.step()
        except (RuntimeError, TypeError):
            opt = torch.optim.AdamW([param], lr=1e-4, foreach=True)
            label = "adamw[foreach]"
        t = timer.time(opt.step)
        out.append(entry("optimizer", "fp32", label, {"bytes": 28.0 * n, "params": float(n)}, t, 28.0 * n,
                         note="fp32 parameter, gradient and moments"))
        del param, opt
    return out


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
