"""Seconds for each kernel on one GPU: the shape models, corrected by a calibration table where it has one.

- GEMMs: :mod:`sim.costs.gemm` (math at a shape-dependent efficiency, memory traffic, launch). On a GPU with
  FP8 tensor cores an FP8 GEMM is never slower than the BF16 GEMM of the same shape (a stack can always run it
  in BF16).
- Attention is costed in model FLOPs: forward ``4 B H S_q S_k D`` (``D`` the mean of the query/key and value
  head sizes) halved for causal masks, backward twice the forward. FlashAttention's backward also recomputes
  the scores (2.5x in hardware FLOPs); the achievable fractions and calibrated rates are stated in the same
  model-FLOP convention, so that work is in the rate, not the count. The software stack's kernel
  (``software.flash_kernel``) picks the efficiency curve (:func:`sim.costs.attention.flash_curve`).
- Norms, activations, casts and the optimizer are memory-bound: bytes over achievable HBM bandwidth plus a
  launch.
- FP8 (DeepSeek-V3 tech report 3.3): activations are quantized in 1 x 128 tiles before each FP8 GEMM (read
  BF16, write FP8 plus scales), the output gradient likewise before Dgrad, and Wgrad needs both operands
  transposed into 128 x 1 tiles (read, write again). These casts are memory-bound kernels of their own.

Each modelled time is divided by the calibration correction for its kind and shape
(:mod:`sim.costs.calibration`); ``provenance`` records, per kind, how far the corrections reached from
measured shapes (the notes a run reports). A table's attention corrections apply to the GPU's default curve
only: they were measured with the architecture's default kernel (DeepSeek's H800 trace: FlashAttention-3-class
``flash::compute_attn_ws``), and a ratio measured on one kernel says nothing about another's, so a job on
another kernel's curve (``software.flash_kernel: fa2`` on Hopper) takes that curve uncorrected, with a note.

Costs are memoized per kernel shape; :func:`cost_model` shares the memo between cost models of the same GPU,
precision and table (a sweep re-costs only the shapes it has not seen). Each memo entry keeps what computing
it recorded (provenance, notes) and replays it on a hit, so every cost model's notes are its own queries'.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from sim.calibrate.table import CalibrationTable
from sim.config import GpuSpec, PrecisionSpec, Scenario
from sim.costs import gemm
from sim.costs.attention import FlashChoice, flash_curve, flash_efficiency, flash_seconds, unfused_seconds
from sim.costs.calibration import Calibration, Correction, attention_fwd_flops, memory_model_seconds
from sim.units import dtype_bytes

Pass = Literal["fwd", "dgrad", "wgrad"]
_NONE = Correction(1.0, math.inf)


@dataclass
class CostModel:
    """Cost functions for one GPU type under one precision recipe, optionally with a calibration table
    measured on ``source`` (a GPU of the same compute silicon)."""

    gpu: GpuSpec
    precision: PrecisionSpec
    table: CalibrationTable | None = None
    source: GpuSpec | None = None
    _cache: dict[tuple, tuple[float, tuple[Any, ...]]] = field(default_factory=dict, repr=False)
    provenance: dict[str, float] = field(default_factory=dict, repr=False)  # kind -> farthest log distance
    _kernels: dict[str, FlashChoice] = field(default_factory=dict, repr=False)
    _notes: dict[str, None] = field(default_factory=dict, repr=False)  # other notes, in order, once each
    _effects: list[list[Any]] = field(default_factory=list, repr=False)  # what memo misses being computed record

    def __post_init__(self) -> None:
        self.calibration = Calibration(self.table, self.source or self.gpu) if self.table is not None else None

    # ------------------------------------------------------------------ memo
    def _hit(self, key: tuple) -> float | None:
        """The memoized seconds of ``key``, replaying what computing them recorded; None on a miss (then the
        caller computes the value and stores it with :meth:`_store`)."""
        hit = self._cache.get(key)
        if hit is None:
            self._effects.append([])
            return None
        for effect in hit[1]:
            self._apply(effect)
        return hit[0]

    @contextmanager
    def _computing(self) -> Iterator[None]:
        """Around computing a miss: on an error, drop what it recorded so far (nothing is stored)."""
        try:
            yield
        except BaseException:
            self._effects.pop()
            raise

    def _store(self, key: tuple, seconds: float) -> float:
        effects = self._effects.pop()
        if self._effects:
            self._effects[-1].extend(effects)
        self._cache[key] = (seconds, tuple(effects))
        return seconds

    def _apply(self, effect: tuple[Any, ...]) -> None:
        if effect[0] == "note":
            self._notes[effect[1]] = None
        else:
            self.provenance[effect[1]] = max(self.provenance.get(effect[1], 0.0), effect[2])
        if self._effects:
            self._effects[-1].append(effect)

    # ------------------------------------------------------------------ provenance
    def _record(self, kind: str, c: Correction) -> None:
        if self.calibration is not None:
            self._apply(("provenance", kind, c.distance))

    def _note(self, text: str) -> None:
        self._apply(("note", text))

    @property
    def notes(self) -> list[str]:
        """How far from measured shapes each kind's calibration reached (log distance 0: a measured shape;
        0.69: a factor of 2 along one axis); kinds without any measurement use the profile alone."""
        out = []
        for kind, d in sorted(self.provenance.items()):
            if math.isinf(d):
                out.append(f"{kind}: not in the calibration table; profile efficiency used")
            elif d > 0.01:
                out.append(f"{kind}: calibrated, up to {math.exp(d):.1f}x from the nearest measured shape")
        return [*out, *self._notes]

    # ------------------------------------------------------------------ dtypes
    def gemm_dtype(self, pass_: Pass, precision_class: str) -> str:
        if precision_class != "linear":
            return "bf16"
        return {"fwd": self.precision.fprop, "dgrad": self.precision.dgrad, "wgrad": self.precision.wgrad}[pass_]

    # ------------------------------------------------------------------ GEMMs
    def _gemm_corrected(self, m: float, n: float, k: float, dtype: str, group_rows: tuple[float, ...] | None,
                        pass_: Pass | None) -> float:
        t = gemm.gemm_seconds(self.gpu, dtype, m, n, k, group_rows, pass_)
        if self.calibration is None:
            return t
        groups = len(group_rows) if group_rows else 1
        c = self.calibration.gemm(dtype, pass_, m / groups if groups > 1 else m, n, k)
        self._record(f"gemm {dtype} {pass_ or ''}".strip(), c)
        return t / c.kappa

    def gemm_seconds(self, m: float, n: int, k: int, dtype: str, group_rows: tuple[float, ...] | None = None,
                     pass_: Pass | None = None) -> float:
        """One (grouped) GEMM ``[m, k] x [k, n]``: ``m`` rows in total (``group_rows`` per group if grouped)."""
        if m <= 0:
            return 0.0
        key = ("gemm", round(m, 3), n, k, dtype, group_rows, pass_)
        hit = self._hit(key)
        if hit is not None:
            return hit
        with self._computing():
            secs = self._gemm_corrected(m, n, k, dtype, group_rows, pass_)
            if dtype == "fp8":
                secs = min(secs, self._gemm_corrected(m, n, k, "bf16", group_rows, pass_))
        return self._store(key, secs)

    def gemm_pass_seconds(self, pass_: Pass, m: float, n: int, k: int, precision_class: str,
                          group_rows: tuple[float, ...] | None = None) -> float:
        """A linear layer's pass with weight ``[n, k]`` over ``m`` rows, FP8 casts included.

        fwd: ``m x n x k``; dgrad: ``m x k x n``; wgrad: ``n x k x m`` (contraction over the rows).
        """
        dtype = self.gemm_dtype(pass_, precision_class)
        if pass_ == "fwd":
            t = self.gemm_seconds(m, n, k, dtype, group_rows, "fwd")
        elif pass_ == "dgrad":
            t = self.gemm_seconds(m, k, n, dtype, group_rows, "dgrad")
        else:
            t = self._wgrad_seconds(m, n, k, dtype, group_rows)
        if dtype == "fp8":
            weights = len(group_rows) if group_rows else 1  # one weight per expert of a grouped GEMM
            if pass_ == "fwd" and self.precision.fp8_weight_gather:
                weights = 0  # the weight arrives in FP8 from the ZeRO-3 gather: the forward casts the input only
            t += self.memory_seconds(fp8_cast_bytes(pass_, m, n, k, self.precision.fp8_scaling, weights), "fp8_cast")
        return t

    def _wgrad_seconds(self, m: float, n: int, k: int, dtype: str, group_rows: tuple[float, ...] | None) -> float:
        if not group_rows or len(group_rows) == 1:
            return self.gemm_seconds(n, k, round(m) or 1, dtype, None, "wgrad")
        # One n x k weight gradient per expert, contracting over that expert's rows.
        return sum(self.gemm_seconds(n, k, round(r), dtype, None, "wgrad") for r in group_rows if r > 0)

    # ------------------------------------------------------------------ attention
    def flash_kernel(self, kernel: str = "default") -> FlashChoice:
        """The curve of ``kernel`` (``software.flash_kernel``) on this GPU, its fallback noted once."""
        choice = self._kernels.get(kernel)
        if choice is None:
            choice = self._kernels[kernel] = flash_curve(self.gpu, kernel)
        if choice.note:
            self._note(choice.note)
        return choice

    def attention_seconds(self, pass_: Pass, tokens: float, seq_len: int, heads: int, qk_dim: int, v_dim: int,
                          causal: bool = True, kernel: str = "default") -> float:
        """FlashAttention-class ``kernel`` over ``tokens`` query tokens in sequences of ``seq_len`` (heads
        already per GPU)."""
        if pass_ == "wgrad" or tokens <= 0:
            return 0.0
        key = ("attention", pass_, tokens, seq_len, heads, qk_dim, v_dim, causal, kernel)
        hit = self._hit(key)
        if hit is not None:
            return hit
        backward = pass_ != "fwd"
        dtype = self.precision.attention
        with self._computing():
            choice = self.flash_kernel(kernel)
            fwd = attention_fwd_flops(seq_len, heads, qk_dim, v_dim, causal, tokens / seq_len)
            t = flash_seconds(self.gpu, dtype, fwd, seq_len, causal, backward, choice.curve, qk_dim)
            if self.calibration is not None and choice.default:
                c = self.calibration.attention(dtype, backward, seq_len, heads, qk_dim, v_dim)
                self._record(f"attention {'bwd' if backward else 'fwd'}", c)
                t /= c.kappa
            elif self.calibration is not None:
                self._note(f"attention: the calibration table's attention (measured with the default kernel) "
                           f"not applied to {kernel}; the profile's {kernel} curve used")
        return self._store(key, t)

    def noncausal_share(self, pass_: Pass, seq_len: int, kernel: str = "default") -> float:
        """The time a non-causal call of the FlashAttention-class ``kernel`` takes for some work, as a share of a
        causal call's time for the same work (at most 1): a context-parallel ring's blocks after the diagonal
        are whole, unmasked ones (``is_causal=False``), free of the causal kernels' partly masked tiles and
        unequal query blocks. The share is the curve's causal factor, ``causal_frac x s / (s + causal_waste)``,
        the same for both passes (``seq_half`` cancels); for the backward it rests on the forward's causal
        measurements (no causal backward is measured)."""
        backward = pass_ != "fwd"
        curve = self.flash_kernel(kernel).curve
        return (flash_efficiency(curve, seq_len, True, backward)
                / flash_efficiency(curve, seq_len, False, backward))

    def unfused_attention_seconds(self, pass_: Pass, tokens: float, seq_len: int, heads: int, qk_dim: int,
                                  v_dim: int, dropout: bool, fused_softmax: bool, causal: bool = True) -> float:
        """Attention as batched GEMMs over materialized scores (:mod:`sim.costs.attention`)."""
        if pass_ == "wgrad" or tokens <= 0:
            return 0.0
        key = ("unfused_attention", pass_, tokens, seq_len, heads, qk_dim, v_dim, dropout, fused_softmax, causal)
        hit = self._hit(key)
        if hit is not None:
            return hit
        with self._computing():
            t = unfused_seconds(self.gpu, self.memory_seconds, tokens / seq_len, seq_len, heads, qk_dim, v_dim,
                                pass_ != "fwd", dropout, fused_softmax, causal)
        return self._store(key, t)

    # ------------------------------------------------------------------ memory-bound
    def memory_seconds(self, bytes_: float, name: str = "elementwise") -> float:
        """A memory-bound kernel ``name`` moving ``bytes_`` (reads plus writes)."""
        if bytes_ <= 0:
            return 0.0
        key = ("memory", name, bytes_)
        hit = self._hit(key)
        if hit is not None:
            return hit
        with self._computing():
            t = memory_model_seconds(self.gpu, bytes_)
            if self.calibration is not None:
                c = self.calibration.memory(name, bytes_)
                self._record("memory-bound kernels", c)
                t /= c.kappa
        return self._store(key, t)


def fp8_cast_bytes(pass_: Pass, m: float, n: int, k: int, scaling: str, weights: int = 1) -> float:
    """HBM bytes of the FP8 casts around one pass of a linear layer with weights of ``[n, k]`` over ``m`` rows;
    ``weights``: how many weights the pass casts or re-lays out (the experts of a grouped GEMM; 0 when they
    arrive in FP8). A cast reads BF16 and writes FP8 (3 B per element), a re-layout reads and writes FP8 (2 B),
    an absolute-maximum reduction reads BF16 (2 B).

    tilewise (DeepSeek-V3 3.3): fwd casts the input (3 m k); dgrad the output gradient (3 m n); wgrad transposes
    the cached FP8 input (2 m k) and casts the output gradient in 128 x 1 tiles (3 m n); the weights are
    re-quantized once per step with the optimizer (:mod:`sim.program.tail`).
    tensorwise (torchao 0.7 ``Float8Linear``, dynamic scaling, under torch.compile as torchtitan runs it): the
    activations' and gradients' maxima are reduced in their producers' kernels, so their casts cost as above;
    the weight is reduced and cast in every forward (2 + 3 per element) and its cached FP8 copy re-laid out
    column-major for ``torch._scaled_mm`` in dgrad (2); wgrad re-lays out the cached FP8 output gradient and
    input (2 m n + 2 m k) instead of casting again. With ``precision.fp8_weight_gather`` the weight arrives in
    FP8 from the ZeRO-3 gather (cast on the shard, before it), so the caller passes no weight to the forward."""
    cast, relayout, amax = dtype_bytes("bf16") + dtype_bytes("fp8"), 2 * dtype_bytes("fp8"), dtype_bytes("bf16")
    weight = weights * n * k
    if pass_ == "fwd":
        return cast * m * k + ((amax + cast) * weight if scaling == "tensorwise" else 0.0)
    if pass_ == "dgrad":
        return cast * m * n + (relayout * weight if scaling == "tensorwise" else 0.0)
    return relayout * m * k + (relayout if scaling == "tensorwise" else cast) * m * n


def stack_gpu(scenario: Scenario) -> GpuSpec:
    """The GPU as the job's software stack drives it: ``software.kernel_launch_us``, when set, replaces the GPU
    profile's per-kernel overhead (``efficiency.kernel_overhead_us``, the launch and tail every kernel's cost
    adds), e.g. an eager stack whose host launches kernels more slowly than they run."""
    gpu = scenario.cluster.gpu
    launch = scenario.software.kernel_launch_us
    if launch is None or launch == gpu.efficiency.kernel_overhead_us:
        return gpu
    return gpu.model_copy(update={"efficiency": gpu.efficiency.model_copy(update={"kernel_overhead_us": launch})})


#: Memos shared by cost models of the same content (see :func:`cost_model`), least recently used first out.
_SHARED: OrderedDict[tuple, tuple[CalibrationTable | None, dict]] = OrderedDict()
SHARED_MAX = 32


def cost_model(gpu: GpuSpec, precision: PrecisionSpec, table: CalibrationTable | None = None,
               source: GpuSpec | None = None) -> CostModel:
    """A :class:`CostModel` whose memo is shared with the others of the same GPU, precision recipe and table
    (the table by identity: :func:`sim.calibrate.table.load_table` returns one object per file content); its
    provenance and notes are its own."""
    key = (gpu.model_dump_json(), precision.model_dump_json(), id(table),
           source.model_dump_json() if source is not None else None)
    hit = _SHARED.get(key)
    if hit is None or hit[0] is not table:
        hit = _SHARED[key] = (table, {})
        if len(_SHARED) > SHARED_MAX:
            _SHARED.popitem(last=False)
    else:
        _SHARED.move_to_end(key)
    return CostModel(gpu, precision, table, source, _cache=hit[1])


def clear_shared() -> None:
    """Forget the shared memos (:func:`sim.step.clear_caches`)."""
    _SHARED.clear()
