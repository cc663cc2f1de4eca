"""Hardware: GPUs, nodes (an NVLink domain and its NICs) and clusters. Human units in YAML keys
(``hbm_bandwidth_tb_per_s``); SI values as properties (``hbm_bandwidth_bytes_per_s``).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sim import units
from sim.config import limits as L
from sim.config.base import Frozen
from sim.config.fabric import PRESETS, FabricSpec, check_fits, default_fabric


class PeakTflops(Frozen):
    """Dense (no 2:4 sparsity) tensor-core peaks; fp32 is the vector rate. ``fp8`` is None without FP8."""

    fp8: float | None = Field(default=None, gt=0, le=L.PEAK_TFLOPS_MAX)
    bf16: float = Field(gt=0, le=L.PEAK_TFLOPS_MAX)
    tf32: float = Field(gt=0, le=L.PEAK_TFLOPS_MAX)
    fp32: float = Field(gt=0, le=L.PEAK_TFLOPS_MAX)

    @model_validator(mode="after")
    def _order(self) -> PeakTflops:
        # Every tensor core known runs FP8 at least as fast as BF16, and BF16 at least as fast as TF32 and
        # the FP32 vector units; a lower FP8 peak is a typo, and it would make FP8 MFU exceed 100 %
        # (FP8 GEMMs never run slower than BF16 ones in the cost model).
        if self.fp8 is not None and self.fp8 < self.bf16:
            raise ValueError(f"fp8: {self.fp8:g} is below bf16 {self.bf16:g}; an FP8 tensor-core peak is at least "
                             "the BF16 one on every GPU (set both to model a slower GPU)")
        for name in ("tf32", "fp32"):
            if getattr(self, name) > self.bf16:
                raise ValueError(f"{name}: {getattr(self, name):g} exceeds bf16 {self.bf16:g}; the BF16 tensor-core "
                                 "peak is the higher one on every GPU")
        return self


#: GEMMs inside a training step run slower than the same shapes in an isolated benchmark loop, by pass: the
#: geometric mean of (shape model / measured) over the GEMMs of DeepSeek-V3's H800 training trace (46 kernels,
#: FP8 and BF16; ``python -m sim.calibrate.fit_in_training`` recomputes these from the shipped table). Causes
#: the benchmark loop does not see: communication kernels sharing SMs, L2 and HBM; clocks under the power
#: draw of a whole training step; weight-gradient epilogues that read and write FP32 gradient buffers. Measured
#: on one GPU and one stack; assumed for every GPU profile (none has an in-training trace of its own).
#: The weight-gradient factor is mostly the epilogue of DeepSeek's accumulating kernels (``fp8_dptp128c_acc``,
#: cuBLAS ``bf16f32_..._f32``): reading and writing the FP32 gradient, 8 B per weight element, costed at the
#: memory-bound rate, leaves 0.886, like the other passes. It stays one factor for every stack until a trace of
#: another stack shows the split: splitting it would run the weight gradients of stacks that write them in BF16
#: without accumulating (FSDP2) about a quarter faster on the strength of one trace.
GEMM_IN_TRAINING: dict[str, float] = {"fwd": 0.863, "dgrad": 0.896, "wgrad": 0.638}

FlashKernel = Literal["fa2", "fa3", "cudnn"]
FLASH_KERNELS: tuple[str, ...] = ("fa2", "fa3", "cudnn")

#: Architectures a FlashAttention-class kernel can run on, for kernels that cannot run on every one. FA3 is
#: written for Hopper's warpgroup MMA (``wgmma``) and TMA, ``sm_90a`` instructions that neither Ampere nor
#: Blackwell (``tcgen05``) has; FA2 (``mma.sync``) and cuDNN's fused attention run on sm80 and later.
FLASH_KERNEL_ARCHS: dict[str, tuple[str, ...]] = {"fa3": ("sm90",)}


def flash_kernel_problem(kernel: str, arch: str | None) -> str | None:
    """Why ``kernel`` cannot run on ``arch`` (None when it can, or when the architecture is unknown)."""
    archs = FLASH_KERNEL_ARCHS.get(kernel)
    if archs is None or arch is None or arch in archs:
        return None
    allowed = [k for k in FLASH_KERNELS if k not in FLASH_KERNEL_ARCHS or arch in FLASH_KERNEL_ARCHS[k]]
    return (f"{kernel} runs only on {', '.join(archs)} (FlashAttention-3 is built on Hopper's wgmma and TMA), "
            f"not on {arch}; allowed there: default, {', '.join(allowed)}")


class AttentionCurve(Frozen):
    """One FlashAttention-class kernel's efficiency curve (:mod:`sim.costs.attention`): in model FLOPs
    (backward = 2 x forward), ``eta = frac x s / (s + seq_half) x [causal: causal_frac x s / (s + causal_waste)]``,
    with the backward's own ``seq_half_bwd`` when given."""

    fwd_frac: float = Field(gt=0, le=1, description="asymptotic fraction of the dense peak, forward")
    bwd_frac: float = Field(gt=0, le=1, description="asymptotic fraction of the dense peak, backward")
    seq_half: float = Field(ge=0, le=1e6, description="sequence length at which the kernel reaches half its "
                            "asymptotic efficiency")
    seq_half_bwd: float | None = Field(default=None, ge=0, le=1e6, description="the same for the backward "
                                       "kernel (default: seq_half)")
    causal_waste: float = Field(ge=0, le=1e6, description="keys' work wasted per query block row by causal "
                                "masks (partly masked tiles)")
    causal_frac: float = Field(default=1.0, gt=0, le=1, description="what a causal kernel keeps of the "
                               "non-causal rate at long sequences (query blocks of unequal work)")
    head_dim_fwd: dict[int, float] = Field(default_factory=dict, description="the forward's rate at other head "
                                           "dims, as a multiple of the curve's (fitted at head dim 128): head dim "
                                           "-> factor; between them linear in log2(head dim), flat beyond; none: "
                                           "the same rate at every head dim")
    head_dim_bwd: dict[int, float] = Field(default_factory=dict, description="the same for the backward")

    @field_validator("head_dim_fwd", "head_dim_bwd")
    @classmethod
    def _factors(cls, v: dict[int, float]) -> dict[int, float]:
        return check_head_dim_factors(v)


#: The head dim an attention curve's other parameters are fitted at (Llama's, GPT-3-class models', DeepSeek's MLA
#: values): factor 1 by definition.
FITTED_HEAD_DIM = 128
#: Head dims a factor may be given at, and the range of a factor (a kernel at most twice as fast, or 20 times
#: slower, than at the fitted head dim).
HEAD_DIM_RANGE = (8, 1024)
HEAD_DIM_FACTOR_RANGE = (0.05, 2.0)


def check_head_dim_factors(v: dict[int, float]) -> dict[int, float]:
    lo, hi = HEAD_DIM_RANGE
    flo, fhi = HEAD_DIM_FACTOR_RANGE
    for d, f in v.items():
        if d == FITTED_HEAD_DIM:
            raise ValueError(f"head dim {d} is the curve's own (factor 1 by definition); give other head dims")
        if not lo <= d <= hi:
            raise ValueError(f"head dim {d} is outside {lo}-{hi}")
        if not flo <= f <= fhi:
            raise ValueError(f"the factor at head dim {d} is {f}; allowed {flo}-{fhi}")
    return dict(sorted(v.items()))


class GpuEfficiency(Frozen):
    """Achievable fractions of peak, used when no calibration table covers an op. Attention fractions count
    model FLOPs (backward = 2 x forward); ``hbm_frac`` is what typical fused memory-bound training kernels
    reach, not a streaming copy's best."""

    gemm_bf16_frac: float = Field(gt=0, le=1)
    gemm_fp8_frac: float | None = Field(default=None, gt=0, le=1, description="None without FP8")
    attention_fwd_frac: float = Field(gt=0, le=1)
    attention_bwd_frac: float = Field(gt=0, le=1)
    hbm_frac: float = Field(gt=0, le=1)
    attention_seq_half: float = Field(default=0.0, ge=0, le=1e6, description="sequence length at which "
                                      "FlashAttention reaches half its asymptotic efficiency")
    attention_seq_half_bwd: float | None = Field(default=None, ge=0, le=1e6, description="the same for the "
                                                 "backward kernel (default: attention_seq_half)")
    attention_causal_waste: float = Field(default=0.0, ge=0, le=1e6, description="causal masks waste about "
                                          "this many keys' work per query block row (partly masked tiles)")
    attention_causal_frac: float = Field(default=1.0, gt=0, le=1, description="what a causal kernel keeps of "
                                         "the non-causal rate at long sequences (query blocks of unequal work)")
    attention_head_dim_fwd: dict[int, float] = Field(default_factory=dict, description="the default curve's "
                                                     "forward rate at other head dims (AttentionCurve.head_dim_fwd)")
    attention_head_dim_bwd: dict[int, float] = Field(default_factory=dict, description="the same, backward")
    gemm_tile_m: int = Field(default=128, ge=1, le=4096, description="output tile rows for wave quantization")
    gemm_tile_n: int = Field(default=128, ge=1, le=4096)
    gemm_k_fill: float = Field(default=0.0, ge=0, le=65536, description="K elements of main-loop fill and "
                               "drain per tile: math efficiency scales by k / (k + gemm_k_fill)")
    gemm_k_fill_fp8: float | None = Field(default=None, ge=0, le=65536, description="gemm_k_fill of FP8 GEMMs "
                                          "(fine-grained scaling promotes partial sums per K block); default "
                                          "gemm_k_fill")
    gemm_exposed_frac: float = Field(default=0.0, ge=0, le=1, description="fraction of the shorter of a GEMM's "
                                     "math and memory time not hidden behind the longer")
    gemm_hbm_frac: float | None = Field(default=None, gt=0, le=1, description="achievable HBM fraction when a "
                                        "GEMM streams its operands (default: hbm_frac)")
    kernel_overhead_us: float = Field(default=4.0, ge=0, le=1000, description="launch + tail per kernel")
    gemm_training_fwd: float = Field(default=GEMM_IN_TRAINING["fwd"], gt=0, le=1, description="a forward GEMM "
                                     "inside a training step runs at this fraction of its isolated-benchmark "
                                     "rate (see GEMM_IN_TRAINING)")
    gemm_training_dgrad: float = Field(default=GEMM_IN_TRAINING["dgrad"], gt=0, le=1, description="the same, "
                                       "input-gradient GEMMs")
    gemm_training_wgrad: float = Field(default=GEMM_IN_TRAINING["wgrad"], gt=0, le=1, description="the same, "
                                       "weight-gradient GEMMs (they accumulate into FP32 gradient buffers)")
    attention_kernel: FlashKernel | None = Field(default=None, description="the kernel the attention_* curve "
                                                 "above was fitted to (the architecture's best: fa3 on Hopper, "
                                                 "fa2 on Ampere); None: assumed, of no named kernel")
    attention_kernels: dict[FlashKernel, AttentionCurve] = Field(
        default_factory=dict, description="curves of other attention kernels on this GPU "
        "(software.flash_kernel picks one; the attention_* fields are the default)")

    @property
    def attention_curve(self) -> AttentionCurve:
        """The default curve: the ``attention_*`` fields (validated by their own bounds)."""
        return AttentionCurve.model_construct(fwd_frac=self.attention_fwd_frac, bwd_frac=self.attention_bwd_frac,
                                              seq_half=self.attention_seq_half,
                                              seq_half_bwd=self.attention_seq_half_bwd,
                                              causal_waste=self.attention_causal_waste,
                                              causal_frac=self.attention_causal_frac,
                                              head_dim_fwd=self.attention_head_dim_fwd,
                                              head_dim_bwd=self.attention_head_dim_bwd)

    @field_validator("attention_head_dim_fwd", "attention_head_dim_bwd")
    @classmethod
    def _head_dim_factors(cls, v: dict[int, float]) -> dict[int, float]:
        return check_head_dim_factors(v)

    @model_validator(mode="after")
    def _one_curve_per_kernel(self) -> GpuEfficiency:
        if self.attention_kernel is not None and self.attention_kernel in self.attention_kernels:
            raise ValueError(f"attention_kernels.{self.attention_kernel}: is the default curve's kernel "
                             "(attention_kernel); give its curve in the attention_* fields only")
        return self


class GpuSpec(Frozen):
    name: str = Field(min_length=1, max_length=200)
    arch: Literal["sm80", "sm90", "sm100"] | None = Field(default=None, description="CUDA architecture (per-SM "
                                                           "communication throughput is looked up by it)")
    silicon: str | None = Field(default=None, max_length=200, description="compute silicon (die and SM "
                                "configuration); GPUs that share it share calibration tables, e.g. 'GH100 132 SMs'")
    peak_tflops: PeakTflops
    hbm_gb: float = Field(gt=0, le=L.HBM_GB_MAX)
    hbm_bandwidth_tb_per_s: float = Field(gt=0, le=L.HBM_TB_PER_S_MAX)
    num_sms: int = Field(ge=1, le=L.NUM_SMS_MAX)
    tdp_w: float = Field(gt=0, le=L.TDP_W_MAX)
    idle_w: float | None = Field(default=None, ge=0, description="board power with no kernels running: the floor "
                                 "of the power model (sim.estimate); None: the estimate assumes TDP throughout")
    efficiency: GpuEfficiency
    efficiency_sources: dict[str, str] = Field(description="a source for every efficiency field")

    @property
    def hbm_bytes(self) -> float:
        return self.hbm_gb * units.GB

    @property
    def hbm_bandwidth_bytes_per_s(self) -> float:
        return self.hbm_bandwidth_tb_per_s * units.TB

    def peak_flops_per_s(self, dtype: str) -> float:
        value = getattr(self.peak_tflops, "bf16" if dtype == "fp16" else dtype, None)
        if value is None:
            raise ValueError(f"{self.name} has no {dtype} tensor-core peak")
        return units.tflops(value)

    @property
    def supports_fp8(self) -> bool:
        return self.peak_tflops.fp8 is not None

    @model_validator(mode="after")
    def _check(self) -> GpuSpec:
        given = self.efficiency.model_fields_set
        missing = [f for f in GpuEfficiency.model_fields if f not in self.efficiency_sources and f in given
                   and (f.endswith("_frac") or f.startswith("gemm_k")) and getattr(self.efficiency, f) is not None]
        missing += [f"attention_kernels.{k}" for k in self.efficiency.attention_kernels
                    if f"attention_kernels.{k}" not in self.efficiency_sources]
        if missing:
            raise ValueError(f"efficiency_sources: give a source for {', '.join(missing)}")
        named = {f"attention_kernels.{k}": k for k in self.efficiency.attention_kernels}
        if self.efficiency.attention_kernel:
            named["attention_kernel"] = self.efficiency.attention_kernel
        for where, kernel in named.items():
            problem = flash_kernel_problem(kernel, self.arch)
            if problem:
                raise ValueError(f"efficiency.{where}: {problem}")
        if self.supports_fp8 and self.efficiency.gemm_fp8_frac is None:
            raise ValueError("efficiency.gemm_fp8_frac: required when peak_tflops.fp8 is set")
        if self.idle_w is not None and self.idle_w > self.tdp_w:
            raise ValueError(f"idle_w: cannot exceed tdp_w {self.tdp_w}")
        return self


class NodeSpec(Frozen):
    """GPUs sharing one NVLink domain and their network interfaces. Bandwidths are per GPU, per direction."""

    name: str = Field(min_length=1, max_length=200)
    gpus_per_node: int = Field(ge=1, le=L.GPUS_PER_NODE_MAX)
    nvlink_gb_per_s: float = Field(gt=0, le=L.NVLINK_GB_PER_S_MAX, description="nominal, per direction")
    nvlink_achievable_gb_per_s: float = Field(gt=0, le=L.NVLINK_GB_PER_S_MAX)
    nvlink_latency_us: float = Field(default=3.33, ge=0, le=L.LATENCY_US_MAX, description=(
        "latency of a point-to-point NVLink transfer (pipeline sends, expert all-to-all); NCCL collectives take "
        "NCCL's own per-protocol latencies (the NCCL profile, hardware_profiles/comm/nccl.yaml), not this field"))
    nics_per_node: int = Field(ge=0, le=L.NICS_PER_NODE_MAX)
    nic_gbit_per_s: float = Field(gt=0, le=L.NIC_GBIT_PER_S_MAX, description="line rate of one NIC")
    nic_achievable_gb_per_s: float = Field(gt=0, le=L.NIC_GB_PER_S_MAX)
    pcie_gb_per_s: float = Field(gt=0, le=L.PCIE_GB_PER_S_MAX, description="host link, per direction")
    nvlink_sharp: bool = Field(default=False, description="NVSwitch reduces in the switch (NVLS): NCCL all-reduce "
                               "inside the node can use it (NVSwitch gen3 and later)")
    node_overhead_w: float = Field(default=0.0, ge=0, le=L.NODE_W_MAX,
                                   description="CPUs, NICs, fans: node power beyond GPUs")
    sources: dict[str, str] = Field(default_factory=dict)

    @property
    def nvlink_bytes_per_s(self) -> float:
        return self.nvlink_achievable_gb_per_s * units.GB

    @property
    def nic_bytes_per_s_per_gpu(self) -> float:
        """Achievable scale-out bandwidth per GPU, NICs shared evenly among the node's GPUs."""
        return self.nic_achievable_gb_per_s * units.GB * self.nics_per_node / self.gpus_per_node

    @model_validator(mode="after")
    def _check(self) -> NodeSpec:
        if self.nvlink_achievable_gb_per_s > self.nvlink_gb_per_s:
            raise ValueError("nvlink_achievable_gb_per_s: cannot exceed nvlink_gb_per_s")
        if self.nic_achievable_gb_per_s * units.GB > units.gbit_per_s(self.nic_gbit_per_s) * 1.0001:
            raise ValueError("nic_achievable_gb_per_s: cannot exceed the line rate nic_gbit_per_s / 8")
        return self


class ClusterSpec(Frozen):
    name: str = Field(min_length=1, max_length=200)
    gpu: GpuSpec
    node: NodeSpec
    num_nodes: int = Field(ge=1, le=L.NUM_NODES_MAX)
    topology: Literal["fat_tree", "rail_optimized", "multi_plane_fat_tree", "nvlink_domain_only"] = "fat_tree"
    fabric: FabricSpec | None = Field(default=None, description="the scale-out fabric (a preset name or a "
                                      "mapping); default: the smallest non-blocking tree of the topology")
    usd_per_gpu_hour: float = Field(default=2.0, ge=0, le=L.USD_PER_GPU_HOUR_MAX)
    pue: float = Field(default=1.2, ge=1.0, le=L.PUE_MAX, description="facility power / IT power")
    network_w_per_gpu: float = Field(default=0.0, ge=0, le=L.TDP_W_MAX,
                                     description="scale-out switches and their optics, per GPU")
    sources: dict[str, str] = Field(default_factory=dict)

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.node.gpus_per_node

    @field_validator("fabric", mode="before")
    @classmethod
    def _preset(cls, value: object) -> object:
        if isinstance(value, str):
            if value not in PRESETS:
                raise ValueError(f"unknown fabric {value!r}; presets: {', '.join(sorted(PRESETS))}")
            return PRESETS[value]
        return value

    @property
    def fabric_spec(self) -> FabricSpec:
        """The fabric: as given, else the topology's default for this many NIC ports."""
        return self.fabric or default_fabric(self.topology, self.num_nodes * self.node.nics_per_node)

    @model_validator(mode="after")
    def _check(self) -> ClusterSpec:
        problem = check_fits(self.fabric_spec, self.num_nodes, self.node.gpus_per_node, self.node.nics_per_node)
        if problem:
            raise ValueError(problem.removeprefix("cluster."))
        return self


_VENDOR_WORDS = re.compile(r"\b(nvidia|tesla|geforce|amd|instinct)\b")


def gpu_model_token(name: str) -> str:
    """The model part of a GPU name: 'NVIDIA H800' and 'H800-SXM-80GB' both give 'h800'."""
    text = _VENDOR_WORDS.sub(" ", name.lower())
    for token in re.split(r"[^a-z0-9]+", text):
        if re.fullmatch(r"[a-z]+\d+[a-z]*", token):
            return token
    return re.sub(r"[^a-z0-9]", "", text)
