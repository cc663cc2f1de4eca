"""Mapping DeepSeek-V3's H800 training trace to op kinds and shapes.

The trace (deepseek-ai/profile-data ``train.json``, commit 4496024, described in that repository's README) is one
DualPipe pair of a forward and a backward chunk of 4 MoE layers, EP64 TP1, 4K sequence, balanced routing,
rank 0 of 64 on H800s. Kernel arguments carry no tensor shapes (only grid and block), so shapes are inferred
from the kernel name, the annotation region that launched it (``attn(F)``, ``mlp(F)``, ``dispatch(F)``,
``combine(F)``, ``attn(B)``, ``mlp(B)``, ``dispatch(B)``, ``combine(B)``, ``attn(W)``, ``mlp(W)``, one per layer)
and the model config (``workloads/models/deepseek_v3_671b.yaml``, op shapes from :mod:`sim.model.ops`).

Inferences, each checked against the trace when the import runs:

- **Tokens per micro-batch and heads** come from the FlashAttention forward kernel: its traits
  ``Flash_fwd_kernel_traits<192, 128, 128, ...>`` give the QK head size 192 and 128-row query blocks, and its
  grid ``[32, 128, 1]`` gives 32 x 128 = 4096 tokens, 128 heads, batch 1; the template flag after the traits is
  causal. The per-token FP8 cast kernels (one CTA per token) also launch 4096 CTAs.
- **SM split**: the DeepEP ``internode`` kernels launch 20 CTAs (the communication SMs); the persistent GEMM
  kernels launch 132 - 20 = 112. A compute kernel with exactly 112 CTAs, or with more CTAs while a
  communication kernel ran for at least half its duration, is counted as running on 112 SMs; its rate is scaled
  by 132/112 (``sm_scaled``). Kernels with fewer CTAs (the router's 64-tile GEMM) are not SM-limited and are not
  scaled. Memory-bound kernels are never scaled.
- **Dense FP8 GEMMs** (``fp8_ptp128c``, DeepSeek's 1x128-activation / 128x128-weight scaled kernel) are mapped by
  their order within a region. ``attn(F)``: q_a, kv_a, q_b, kv_b, o_proj. ``attn(B)``: o_proj dgrad, the
  recomputed q_b and kv_b forwards (tech report 3.2.3), q_b, kv_b, kv_a, q_a dgrads. ``attn(W)``
  (``fp8_dptp128c_acc``): o_proj, kv_b, q_b, kv_a, q_a wgrads. Every alternative order gives a rate above
  1,400 TFLOP/s on 112 SMs for some kernel (beyond any FP8 kernel published for the H800), which rules it out.
- **The shared expert runs as separate dense GEMMs, not fused into the grouped GEMM** (this corrects an earlier
  reading of the trace, which took 36,864 = 9 x 4096 rows as 8 routed + 1 shared): ``mlp(F)`` has a
  dense GEMM before the grouped gate+up (shared gate+up, 4096 x 4096 x 7168) and one after the grouped down
  (shared down), ``mlp(B)`` the two shared dgrads, ``mlp(W)`` ten wgrads = 2 x 4 local experts + 2 shared, and
  a SwiGLU kernel over exactly 4096 rows follows the routed SwiGLU.
- **Routed rows vary by layer** (31,104 / 30,976 / 36,864 / ... in the forward): the rows of a region's grouped
  GEMMs are the grid of its per-token kernels over routed rows (the routed SwiGLU and FP8 casts, one CTA per row),
  cross-checked against ``expand_to_fused_with_scales_impl`` (16 rows per CTA). ``mlp(W)`` uses the rows of
  the same layer's ``mlp(B)``. The split of rows among the 4 local experts (256 experts / EP64) is not in the
  trace; it is taken as even (DeepSeek forced balanced routing): a grouped GEMM's ``m`` is all its rows, and an
  expert's weight gradient contracts over rows / 4.
- **Expert wgrads run on two streams at once** (streams 7 and 23 share the 112 SMs): their per-kernel durations
  are contended, so the four wgrads of one projection are recorded together, per expert: a dense GEMM
  ``(n_w, k_w, rows / 4)`` whose seconds are the union of the four kernels' intervals divided by four,
  ``contended: true``. Elsewhere, samples that overlap a kernel on the other
  compute stream are flagged and dropped when uncontended samples of the same shape exist.
- **Communication**: ``dispatch(F)`` and ``combine(B)`` run DeepEP's dispatch kernel (FP8 payload, 1x128 scales
  included), ``combine(F)`` and ``dispatch(B)`` its combine kernel (BF16), as the tech report 3.3 states. Bytes
  are the logical payload per GPU: tokens x top-k x hidden x element size. A sample's seconds are its region's
  whole communication-stream time (layout and notify handshakes, the FP8 cast of combine(B), the DeepEP
  kernel): what the operation costs inside DualPipe on this cluster, waiting for peers included
  (``includes_wait``), and the time its kernels hold their 20 SMs.
- **Memory-bound kernels** from ``attn(F)``: ``norm_residual_add``, the fused residual-add RMSNorm at width
  7168 (reads input and residual, writes output and sum: 4 x rows x width x 2 bytes); ``norm``, the plain
  RMSNorms of the q/kv latents (2 x); ``fp8_cast``, the per-token FP8 casts before each dense GEMM (width = that
  GEMM's k; bf16 in, fp8 out, an fp32 scale per 128); ``e5m6_cast`` of the attention output (1.5 bytes out);
  from ``mlp(F)`` ``swiglu_fp8_cast``, the routed SwiGLU fused with its FP8 cast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sim.calibrate.chrome_trace import Annotation, Kernel, ProfilerTrace, overlap_us, union_us
from sim.config import ModelSpec
from sim.errors import SimInputError
from sim.loading import load_cluster
from sim.model.ops import attention_ops, moe_ops

DENSE = re.compile(r"grouped_gemm::cuda::fp8_ptp128c::GemmKernel")
GROUPED = re.compile(r"m_grouped_fp8_ptp128c::GemmKernel")
WGRAD = re.compile(r"fp8_dptp128c_acc::GemmKernel")
BF16_GEMM = re.compile(r"^sm90_xmma_gemm_bf16")
FA_FWD = re.compile(r"flash::compute_attn_ws<Flash_fwd_kernel_traits<(\d+), (\d+), (\d+)")
FA_BWD_MAIN = re.compile(r"flash::FlashAttnBwd<")
FA_BWD_PARTS = re.compile(r"flash::FlashAttnBwd(Preprocess|PostprocessConvertdQ)<")
EP_DISPATCH = re.compile(r"ep::internode::dispatch<")
EP_COMBINE = re.compile(r"ep::internode::combine<")
EP_ANY = re.compile(r"dpsk::ep::|nccl", re.IGNORECASE)
LN_FWD = re.compile(r"layer_norm::ln_fwd_kernel<.*?unsigned int, (\d+)u")
TOKEN_CAST = re.compile(r"per_token_cast_to_fp8_with_channels<")
E5M6_CAST = re.compile(r"per_token_cast_to_fp8_with_fp8_special_fmt<")
ROUTED_SWIGLU = re.compile(r"swiglu_forward_with_weight_and_per_token_cast_to_fp8_with_channels_impl<[^,]+, true")
EXPAND = re.compile(r"expand_to_fused_with_scales_impl")
EXPAND_ROWS_PER_CTA = 16

#: GEMM kernels of each region, in launch order: (family, op, pass). "E" expands to one per local expert.
RECIPES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "attn(F)": (("dense", "q_a_proj", "fwd"), ("dense", "kv_a_proj", "fwd"), ("dense", "q_b_proj", "fwd"),
                ("dense", "kv_b_proj", "fwd"), ("dense", "o_proj", "fwd"), ("bf16", "router", "fwd")),
    "attn(B)": (("bf16", "router", "dgrad"), ("bf16", "router", "wgrad"), ("dense", "o_proj", "dgrad"),
                ("dense", "q_b_proj", "fwd"), ("dense", "kv_b_proj", "fwd"), ("dense", "q_b_proj", "dgrad"),
                ("dense", "kv_b_proj", "dgrad"), ("dense", "kv_a_proj", "dgrad"), ("dense", "q_a_proj", "dgrad")),
    "attn(W)": (("wgrad", "o_proj", "wgrad"), ("wgrad", "kv_b_proj", "wgrad"), ("wgrad", "q_b_proj", "wgrad"),
                ("wgrad", "kv_a_proj", "wgrad"), ("wgrad", "q_a_proj", "wgrad")),
    "mlp(F)": (("dense", "shared_up", "fwd"), ("grouped", "experts_up", "fwd"), ("grouped", "experts_down", "fwd"),
               ("dense", "shared_down", "fwd")),
    "mlp(B)": (("dense", "shared_down", "dgrad"), ("grouped", "experts_down", "dgrad"),
               ("grouped", "experts_up", "dgrad"), ("dense", "shared_up", "dgrad")),
    "mlp(W)": (("wgrad", "shared_down", "wgrad"), ("wgrad", "experts_down", "E"), ("wgrad", "experts_up", "E"),
               ("wgrad", "shared_up", "wgrad")),
}
FAMILIES = {"dense": DENSE, "grouped": GROUPED, "wgrad": WGRAD, "bf16": BF16_GEMM}


@dataclass(frozen=True, slots=True)
class Sample:
    """One measured kernel (or group of kernels) mapped to an op, a shape and its work."""

    kind: str
    dtype: str
    name: str
    gemm_pass: str | None
    shape: dict[str, float]
    work: float  # FLOPs or bytes
    seconds: float
    region: str
    layer: int  # 1-based: the chunk's layers in trace order
    stream: int
    start_us: float
    kernel: str
    sms_used: int | None = None
    contended: bool = False
    includes_wait: bool = False
    parts: tuple[float, ...] = field(default=())  # component durations (us) of a summed sample


@dataclass(frozen=True, slots=True)
class Layout:
    """What the trace and the model say about the run: streams, SMs, tokens, experts."""

    model: ModelSpec
    compute_stream: int
    other_compute: tuple[int, ...]
    comm_streams: tuple[int, ...]
    num_sms: int
    comm_sms: int
    tokens: int
    heads: int
    world_size: int
    experts_per_rank: int
    gemm_nk: dict[str, tuple[int, int]]

    @property
    def compute_sms(self) -> int:
        return self.num_sms - self.comm_sms


def fail(message: str) -> SimInputError:
    return SimInputError(f"{message}: not the DeepSeek-V3 DualPipe training profile this importer maps",
                         field="--from-trace")


def infer_layout(trace: ProfilerTrace, model: ModelSpec) -> Layout:
    comm = sorted({k.stream for k in trace.kernels if EP_ANY.search(k.name)})
    gemm_streams: dict[int, int] = {}
    for k in trace.kernels:
        if k.stream not in comm and any(p.search(k.name) for p in FAMILIES.values()):
            gemm_streams[k.stream] = gemm_streams.get(k.stream, 0) + 1
    if not comm or not gemm_streams:
        raise fail("no DeepEP communication kernels or no DeepSeek GEMM kernels")
    main = max(gemm_streams, key=lambda s: sum(1 for k in trace.kernels if k.stream == s))
    fa = next((k for k in trace.kernels if FA_FWD.search(k.name)), None)
    if fa is None or fa.grid is None:
        raise fail("no FlashAttention forward kernel")
    hdim, block_m = (int(g) for g in FA_FWD.search(fa.name).groups()[:2])  # type: ignore[union-attr]
    tokens, heads = fa.grid[0] * block_m, fa.grid[1]
    if heads != model.n_heads or hdim != model.qk_head_dim:
        raise fail(f"FlashAttention runs {heads} heads of size {hdim}; the model {model.name} has "
                   f"{model.n_heads} of size {model.qk_head_dim}")
    num_sms = int(trace.device_properties[0].get("numSms", 0)) if trace.device_properties else 0
    comm_ctas = [k.ctas for k in trace.kernels if EP_DISPATCH.search(k.name) or EP_COMBINE.search(k.name)]
    world = int(trace.distributed.get("world_size", 0))
    if not num_sms or not comm_ctas or not world or model.n_routed_experts % world:
        raise fail("missing device SM count, DeepEP kernels or a world size dividing the routed experts")
    ops = {op.name: (op.n, op.k) for op in attention_ops(model) + moe_ops(model) if op.n}
    return Layout(model, main, tuple(sorted(set(gemm_streams) - {main})), tuple(comm), num_sms, max(comm_ctas),
                  tokens, heads, world, model.n_routed_experts // world, ops)


# ------------------------------------------------------------------------------------------- samples


def collect_samples(trace: ProfilerTrace, lay: Layout) -> list[Sample]:
    by_region: dict[tuple[str, int], list[Kernel]] = {}
    for k in trace.kernels:
        if k.region is not None:
            by_region.setdefault((k.region.name, k.region.occurrence), []).append(k)
    out: list[Sample] = []
    for ann in trace.annotations:
        kernels = by_region.get((ann.name, ann.occurrence), [])
        if ann.name in RECIPES:
            out += _gemm_samples(trace, lay, ann, kernels, by_region)
        if ann.name == "attn(F)":
            out += _attention_samples(trace, lay, ann, kernels) + _memory_samples(lay, ann, kernels)
        elif ann.name == "attn(B)":
            out += _attention_samples(trace, lay, ann, kernels)
        elif ann.name == "mlp(F)":
            out += _swiglu_samples(lay, ann, kernels)
        out += _comm_samples(lay, ann, kernels)
    if not any(s.kind == "grouped_gemm" for s in out):
        raise fail("no annotated MoE regions (attn(F), mlp(F), ... per layer)")
    return out


def routed_rows(lay: Layout, ann: Annotation, kernels: list[Kernel]) -> int:
    """Rows of the region's grouped GEMMs: the grid of its per-token kernels over routed rows."""
    per_token = [k.grid[0] for k in kernels if k.grid and (TOKEN_CAST.search(k.name) or ROUTED_SWIGLU.search(k.name))
                 and k.grid[0] != lay.tokens and k.stream == lay.compute_stream]
    expand = [k.grid[0] * EXPAND_ROWS_PER_CTA for k in kernels if k.grid and EXPAND.search(k.name)]
    if not per_token or not expand or max(per_token) != expand[0]:
        raise fail(f"cannot read the routed rows of {ann.name} layer {ann.occurrence + 1} "
                   f"(per-token grids {sorted(set(per_token))}, expand grid x16 {expand})")
    return max(per_token)


def _gemm_samples(trace: ProfilerTrace, lay: Layout, ann: Annotation, kernels: list[Kernel],
                  by_region: dict[tuple[str, int], list[Kernel]]) -> list[Sample]:
    plan = [(fam, op, p) for fam, op, p in RECIPES[ann.name] for _ in range(lay.experts_per_rank if p == "E" else 1)]
    rows = 0
    if ann.name.startswith("mlp"):
        src = "mlp(B)" if ann.name == "mlp(W)" else ann.name
        rows = routed_rows(lay, ann, by_region.get((src, ann.occurrence), []))
    found: dict[str, list[Kernel]] = {f: [k for k in kernels if p.search(k.name)] for f, p in FAMILIES.items()}
    out: list[Sample] = []
    expert_wgrads: dict[str, list[Kernel]] = {}
    for fam in FAMILIES:
        wanted = [(op, p) for f, op, p in plan if f == fam]
        if len(found[fam]) != len(wanted):
            raise fail(f"{ann.name} layer {ann.occurrence + 1} has {len(found[fam])} {fam} GEMM kernels, "
                       f"expected {len(wanted)}")
        for k, (op, p) in zip(found[fam], wanted, strict=True):
            if p == "E":
                expert_wgrads.setdefault(op, []).append(k)
            else:
                out.append(_gemm_sample(trace, lay, ann, [k], op, p, rows, fam))
    out += [_gemm_sample(trace, lay, ann, ks, op, "wgrad", rows, "wgrad") for op, ks in expert_wgrads.items()]
    return out


def gemm_shape(gemm_pass: str, rows: float, n_w: int, k_w: int) -> dict[str, float]:
    """The GEMM a linear layer's pass runs, ``[m,k] x [k,n]``, for weight ``[n_w, k_w]`` over ``rows`` rows."""
    m, n, k = {"fwd": (rows, n_w, k_w), "dgrad": (rows, k_w, n_w), "wgrad": (n_w, k_w, rows)}[gemm_pass]
    return {"m": m, "n": n, "k": k}


def _gemm_sample(trace: ProfilerTrace, lay: Layout, ann: Annotation, ks: list[Kernel], op: str, gemm_pass: str,
                 rows: int, fam: str) -> Sample:
    """One GEMM kernel; or the per-expert weight gradients of one projection, recorded per expert as a dense
    GEMM whose seconds are the union of their intervals divided by their number (they share the SMs)."""
    n_w, k_w = lay.gemm_nk[op]
    first = min(ks, key=lambda x: x.ts)
    end = max(x.end for x in ks)
    streams = sorted({x.stream for x in ks})
    contended = len(streams) > 1 or any(_contended(trace, lay, x) for x in ks)
    seconds = union_us((x.ts, x.end) for x in ks) * 1e-6 / len(ks)
    kernel = _short(first.name) + (f" x{len(ks)} on streams {streams}, seconds = union / {len(ks)}"
                                   if len(ks) > 1 else "")
    grouped = op.startswith("experts_") and gemm_pass != "wgrad"
    if op.startswith("experts_"):
        per = rows / lay.experts_per_rank
        shape = gemm_shape(gemm_pass, rows if grouped else per, n_w, k_w)
    else:
        shape = gemm_shape(gemm_pass, lay.tokens, n_w, k_w)
    if grouped:
        shape["groups"] = lay.experts_per_rank
    flops = 2.0 * shape["m"] * shape["n"] * shape["k"]
    return Sample("grouped_gemm" if grouped else "gemm", "bf16" if fam == "bf16" else "fp8", op, gemm_pass, shape,
                  flops, seconds, ann.name, ann.occurrence + 1, first.stream, first.ts, kernel,
                  _sms(trace, lay, first, end), contended)


def _attention_samples(trace: ProfilerTrace, lay: Layout, ann: Annotation, kernels: list[Kernel]) -> list[Sample]:
    m = lay.model
    fwd = ann.name == "attn(F)"
    main = [k for k in kernels if (FA_FWD if fwd else FA_BWD_MAIN).search(k.name)]
    parts = [] if fwd else [k for k in kernels if FA_BWD_PARTS.search(k.name)]
    if len(main) != 1 or len(parts) != (0 if fwd else 2):
        raise fail(f"{ann.name} layer {ann.occurrence + 1} has {len(main)} FlashAttention kernels")
    ks = main + parts
    shape: dict[str, float] = {"seq": lay.tokens, "heads": lay.heads, "qk_dim": m.qk_head_dim,
                               "v_dim": m.value_head_dim, "batch": 1, "causal": 1}
    flops = 2.0 * lay.heads * (m.qk_head_dim + m.value_head_dim) * lay.tokens * lay.tokens / 2 * (1 if fwd else 2)
    k0 = main[0]
    return [Sample("attention_fwd" if fwd else "attention_bwd", "bf16",
                   "flash_attn_fwd" if fwd else "flash_attn_bwd (pre+main+post)", None, shape, flops,
                   sum(k.dur for k in ks) * 1e-6, ann.name, ann.occurrence + 1, k0.stream, k0.ts, _short(k0.name),
                   _sms(trace, lay, k0, k0.end), _contended(trace, lay, k0), parts=tuple(k.dur for k in ks))]


def _memory_samples(lay: Layout, ann: Annotation, kernels: list[Kernel]) -> list[Sample]:
    t, d = lay.tokens, lay.model.dim
    out = []
    compute = [k for k in kernels if k.stream == lay.compute_stream]
    for i, k in enumerate(compute):
        if (w := LN_FWD.search(k.name)) is not None:
            width = int(w.group(1))
            name, tensors = ("norm_residual_add", 4) if width == d else ("norm", 2)
            out.append(_mem(ann, k, name, {"rows": t, "width": width, "bytes": tensors * t * width * 2}))
        elif TOKEN_CAST.search(k.name) or E5M6_CAST.search(k.name):
            nxt = next((x for x in compute[i + 1:] if DENSE.search(x.name)), None)
            if nxt is None:
                continue
            width = _next_gemm_k(lay, compute, nxt)
            out_bytes, name = (1.5, "e5m6_cast") if E5M6_CAST.search(k.name) else (1.0, "fp8_cast")
            size = t * width * (2 + out_bytes) + t * (width // 128) * 4
            out.append(_mem(ann, k, name, {"rows": t, "width": width, "bytes": size}))
    return out


def _next_gemm_k(lay: Layout, compute: list[Kernel], gemm: Kernel) -> int:
    dense = [k for k in compute if DENSE.search(k.name)]
    ops = [op for fam, op, _ in RECIPES["attn(F)"] if fam == "dense"]
    return lay.gemm_nk[ops[dense.index(gemm)]][1]


def _swiglu_samples(lay: Layout, ann: Annotation, kernels: list[Kernel]) -> list[Sample]:
    f = lay.model.moe_inter_dim
    out = []
    for k in kernels:
        if ROUTED_SWIGLU.search(k.name) and k.grid:
            rows = k.grid[0]
            out.append(_mem(ann, k, "swiglu_fp8_cast", {"rows": rows, "width": 2 * f,
                                                        "bytes": rows * (2 * f * 2 + f + f // 128 * 4)}))
    return out


def _comm_samples(lay: Layout, ann: Annotation, kernels: list[Kernel]) -> list[Sample]:
    """One sample per all-to-all region: the region's whole communication-stream time (layout, notify
    handshake, FP8 cast and the DeepEP kernel), the time the operation holds its SMs in the real run."""
    m = lay.model
    out = []
    comm = [k for k in kernels if k.stream in lay.comm_streams]
    for k in kernels:
        kind = "dispatch" if EP_DISPATCH.search(k.name) else "combine" if EP_COMBINE.search(k.name) else None
        if kind is None:
            continue
        per_token = m.dim + m.dim // 128 * 4 if kind == "dispatch" else m.dim * 2
        size = lay.tokens * m.n_activated_experts * per_token
        shape: dict[str, float] = {"bytes": size, "ranks": lay.world_size, "tokens": lay.tokens,
                                   "topk": m.n_activated_experts, "hidden": m.dim, **_measured_links()}
        seconds = sum(c.dur for c in comm) * 1e-6
        out.append(Sample(kind, "fp8" if kind == "dispatch" else "bf16",
                          f"deepep_internode_{kind} [{ann.name}] (region: handshake + kernel)",
                          None, shape, size, seconds, ann.name, ann.occurrence + 1, k.stream, k.ts,
                          _short(k.name), k.ctas, includes_wait=True))
    return out


def _measured_links() -> dict[str, float]:
    """The achievable per-GPU link bandwidths of the cluster the trace ran on (DeepSeek's H800 cluster,
    ``hardware_profiles/clusters/deepseek_h800_2048.yaml``): the cost model separates the transfer time at
    these rates from the handshakes and waits the measured all-to-all also contains."""
    node = load_cluster("deepseek_h800_2048").node
    return {"nic_gb_per_s": node.nic_bytes_per_s_per_gpu / 1e9, "nvlink_gb_per_s": node.nvlink_achievable_gb_per_s}


def _mem(ann: Annotation, k: Kernel, name: str, shape: dict[str, float]) -> Sample:
    return Sample("memory", "bf16", name, None, shape, shape["bytes"], k.dur * 1e-6, ann.name, ann.occurrence + 1,
                  k.stream, k.ts, _short(k.name))


def _sms(trace: ProfilerTrace, lay: Layout, k: Kernel, end: float) -> int | None:
    if k.ctas == lay.compute_sms:
        return lay.compute_sms
    if k.ctas > lay.compute_sms:
        comm = [x for x in trace.on_streams(lay.comm_streams) if x.cat == "kernel"]
        if overlap_us(k.ts, end, comm) >= 0.5 * (end - k.ts):
            return lay.compute_sms
    return None


def _contended(trace: ProfilerTrace, lay: Layout, k: Kernel) -> bool:
    others = (lay.compute_stream, *lay.other_compute)
    return overlap_us(k.ts, k.end, (x for x in trace.on_streams(others) if x.stream != k.stream)) > 0


def _short(name: str) -> str:
    name = re.sub(r"^void ", "", name)
    name = re.sub(r"^cutlass::device_kernel<", "", name)
    return re.split(r"[(<]", name, maxsplit=1)[0].rstrip(">")
