"""The scenario model: frozen, validated descriptions of a model, the hardware, the layout and the job.

Field names of model architectures follow DeepSeek's public ``config_671B.json`` (deepseek-ai/DeepSeek-V3,
``inference/configs``) where a field exists there. Hardware fields carry human units in their names
(``hbm_bandwidth_tb_per_s``); SI values are exposed as properties (``hbm_bandwidth_bytes_per_s``).
Cross-field rules raise ``ValueError`` whose message starts with the field it concerns.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sim import units
from sim.schedules.preconditions import ScheduleName, check_schedule, num_stages


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ----------------------------------------------------------------------------------------------- model


class ModelSpec(Frozen):
    """A dense or MoE decoder-only transformer."""

    name: str
    n_layers: int = Field(ge=1)
    dim: int = Field(ge=1)
    n_heads: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    attention: Literal["mha", "gqa", "mla"] = "mha"
    n_kv_heads: int | None = Field(default=None, ge=1, description="GQA key/value heads; MHA uses n_heads")
    head_dim: int | None = Field(default=None, ge=1, description="MHA/GQA head size; default dim / n_heads")
    # MLA (DeepSeek-V2/V3); q_lora_rank 0 means no query compression (DeepSeek-V2-Lite).
    q_lora_rank: int = Field(default=0, ge=0)
    kv_lora_rank: int = Field(default=0, ge=0)
    qk_nope_head_dim: int = Field(default=0, ge=0)
    qk_rope_head_dim: int = Field(default=0, ge=0)
    v_head_dim: int = Field(default=0, ge=0)
    # Feed-forward.
    inter_dim: int = Field(ge=1, description="dense FFN intermediate size")
    ffn_activation: Literal["swiglu", "gelu"] = "swiglu"
    # Mixture of experts: layers [0, n_dense_layers) are dense, the rest MoE, when n_routed_experts > 0.
    n_dense_layers: int = Field(default=0, ge=0)
    moe_inter_dim: int = Field(default=0, ge=0)
    n_routed_experts: int = Field(default=0, ge=0)
    n_shared_experts: int = Field(default=0, ge=0)
    n_activated_experts: int = Field(default=0, ge=0, description="routed experts per token (top-k)")
    n_expert_groups: int = Field(default=1, ge=1)
    n_limited_groups: int = Field(default=1, ge=1, description="groups (nodes) a token may reach")
    score_func: Literal["softmax", "sigmoid"] = "softmax"
    route_scale: float = 1.0
    # Embeddings, norms, positions, multi-token prediction.
    tie_word_embeddings: bool = False
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    bias: bool = Field(default=False, description="linear layers carry biases (GPT-2/3 style)")
    position_embedding: Literal["rope", "learned", "alibi"] = "rope"
    max_seq_len: int = Field(default=4096, ge=1, description="rows of a learned position table")
    n_mtp_layers: int = Field(default=0, ge=0, description="MTP depth (HF num_nextn_predict_layers)")

    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts > 0

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.attention == "gqa" and self.n_kv_heads else self.n_heads

    @property
    def attn_head_dim(self) -> int:
        return self.head_dim or self.dim // self.n_heads

    @property
    def qk_head_dim(self) -> int:
        """Query/key size per head that enters Q K^T."""
        if self.attention == "mla":
            return self.qk_nope_head_dim + self.qk_rope_head_dim
        return self.attn_head_dim

    @property
    def value_head_dim(self) -> int:
        return self.v_head_dim if self.attention == "mla" else self.attn_head_dim

    def is_moe_layer(self, layer: int) -> bool:
        return self.is_moe and layer >= self.n_dense_layers

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.attention == "mla":
            for f in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
                if getattr(self, f) <= 0:
                    raise ValueError(f"{f}: must be > 0 for attention 'mla'")
        else:
            for f in ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
                if getattr(self, f):
                    raise ValueError(f"{f}: applies only to attention 'mla' (attention is {self.attention!r})")
            if self.head_dim is None and self.dim % self.n_heads:
                raise ValueError(f"head_dim: dim {self.dim} is not divisible by n_heads {self.n_heads}; "
                                 "set head_dim")
        if self.attention == "gqa":
            if self.n_kv_heads is None:
                raise ValueError("n_kv_heads: required for attention 'gqa'")
            if self.n_heads % self.n_kv_heads:
                raise ValueError(f"n_kv_heads: must divide n_heads {self.n_heads} (got {self.n_kv_heads})")
        elif self.n_kv_heads is not None and self.n_kv_heads != self.n_heads:
            raise ValueError(f"n_kv_heads: only 'gqa' may set fewer key/value heads than n_heads "
                             f"(attention is {self.attention!r})")
        if self.is_moe:
            if self.moe_inter_dim <= 0:
                raise ValueError("moe_inter_dim: must be > 0 when n_routed_experts > 0")
            if not 1 <= self.n_activated_experts <= self.n_routed_experts:
                raise ValueError(f"n_activated_experts: must be in [1, n_routed_experts={self.n_routed_experts}]"
                                 f" (got {self.n_activated_experts})")
            if self.n_routed_experts % self.n_expert_groups:
                raise ValueError(f"n_expert_groups: must divide n_routed_experts {self.n_routed_experts} "
                                 f"(got {self.n_expert_groups})")
            if self.n_limited_groups > self.n_expert_groups:
                raise ValueError(f"n_limited_groups: must be <= n_expert_groups {self.n_expert_groups} "
                                 f"(got {self.n_limited_groups})")
            per_group = self.n_routed_experts // self.n_expert_groups
            if self.n_activated_experts > self.n_limited_groups * per_group:
                raise ValueError("n_activated_experts: more than the experts in n_limited_groups groups "
                                 f"({self.n_limited_groups} x {per_group})")
            if self.n_dense_layers >= self.n_layers:
                raise ValueError(f"n_dense_layers: must be < n_layers {self.n_layers} for an MoE model")
        else:
            for f in ("n_shared_experts", "n_activated_experts", "moe_inter_dim"):
                if getattr(self, f):
                    raise ValueError(f"{f}: set n_routed_experts > 0 for an MoE model (it is 0)")
        return self


# -------------------------------------------------------------------------------------------- hardware


class PeakTflops(Frozen):
    """Dense (no 2:4 sparsity) tensor-core peaks; fp32 is the vector rate. ``fp8`` is None without FP8."""

    fp8: float | None = Field(default=None, gt=0)
    bf16: float = Field(gt=0)
    tf32: float = Field(gt=0)
    fp32: float = Field(gt=0)


class GpuEfficiency(Frozen):
    """Achievable fractions of peak, used when no calibration table covers an op. Attention fractions count
    model FLOPs (backward = 2 x forward); ``hbm_frac`` is what typical fused memory-bound training kernels
    reach, not a streaming copy's best."""

    gemm_bf16_frac: float = Field(gt=0, le=1)
    gemm_fp8_frac: float | None = Field(default=None, gt=0, le=1, description="None without FP8")
    attention_fwd_frac: float = Field(gt=0, le=1)
    attention_bwd_frac: float = Field(gt=0, le=1)
    hbm_frac: float = Field(gt=0, le=1)
    gemm_tile_m: int = Field(default=128, ge=1, description="output tile rows for wave quantization")
    gemm_tile_n: int = Field(default=128, ge=1)
    kernel_overhead_us: float = Field(default=4.0, ge=0, description="launch + tail per kernel")


class GpuSpec(Frozen):
    name: str
    peak_tflops: PeakTflops
    hbm_gb: float = Field(gt=0)
    hbm_bandwidth_tb_per_s: float = Field(gt=0)
    num_sms: int = Field(ge=1)
    tdp_w: float = Field(gt=0)
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
        missing = [f for f in GpuEfficiency.model_fields if f not in self.efficiency_sources
                   and f.endswith("_frac") and getattr(self.efficiency, f) is not None]
        if missing:
            raise ValueError(f"efficiency_sources: give a source for {', '.join(missing)}")
        if self.supports_fp8 and self.efficiency.gemm_fp8_frac is None:
            raise ValueError("efficiency.gemm_fp8_frac: required when peak_tflops.fp8 is set")
        return self


class NodeSpec(Frozen):
    """GPUs sharing one NVLink domain and their network interfaces. Bandwidths are per GPU, per direction."""

    name: str
    gpus_per_node: int = Field(ge=1)
    nvlink_gb_per_s: float = Field(gt=0, description="nominal, per direction")
    nvlink_achievable_gb_per_s: float = Field(gt=0)
    nvlink_latency_us: float = Field(default=3.33, ge=0)
    nics_per_node: int = Field(ge=0)
    nic_gbit_per_s: float = Field(gt=0, description="line rate of one NIC")
    nic_achievable_gb_per_s: float = Field(gt=0)
    pcie_gb_per_s: float = Field(gt=0, description="host link, per direction")
    node_overhead_w: float = Field(default=0.0, ge=0, description="CPUs, NICs, fans: node power beyond GPUs")
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
    name: str
    gpu: GpuSpec
    node: NodeSpec
    num_nodes: int = Field(ge=1)
    topology: Literal["fat_tree", "rail_optimized", "multi_plane_fat_tree"] = "fat_tree"
    ib_latency_us: float = Field(default=3.7, ge=0, description="small-message latency between the "
                                 "farthest nodes, end to end")
    usd_per_gpu_hour: float = Field(default=2.0, ge=0)
    pue: float = Field(default=1.2, ge=1.0, description="facility power / IT power")
    sources: dict[str, str] = Field(default_factory=dict)

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.node.gpus_per_node

    @property
    def ib_latency_s(self) -> float:
        return self.ib_latency_us * units.US


# ---------------------------------------------------------------------------------------------- layout


class ParallelSpec(Frozen):
    """How the job is laid out. ``pp`` counts pipeline ranks (devices); stages may be more (interleaved)."""

    tp: int = Field(default=1, ge=1)
    pp: int = Field(default=1, ge=1)
    dp: int | None = Field(default=None, ge=1, description="derived from the GPU count when omitted")
    ep: int = Field(default=1, ge=1, description="expert parallel size, spanning data-parallel ranks")
    sequence_parallel: bool = False
    schedule: ScheduleName = "1f1b"
    vpp: int = Field(default=1, ge=1, description="virtual stages per rank (interleaved-1f1b)")
    micro_batch_size: int = Field(default=1, ge=1, description="sequences per micro-batch")
    num_microbatches: int | None = Field(default=None, ge=1, description="per pipeline and step; "
                                         "derived from the global batch when omitted")
    zero_stage: Literal[0, 1, 2, 3] = 1
    recompute: Literal["none", "selective", "full", "norm_and_up_proj"] = "none"
    comm_sms: int = Field(default=0, ge=0, description="SMs held by communication kernels")
    stage_layers: tuple[int, ...] | None = Field(default=None, description="transformer layers per "
                                                 "stage (MTP layers last); overrides stage_split")
    stage_split: Literal["balanced", "uniform"] = Field(default="balanced", description="balanced: "
                                                        "least arithmetic on the heaviest stage; uniform: "
                                                        "equal layer counts (Megatron-LM)")
    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = True
    overlap_pairs: bool = Field(default=True, description="run a schedule's F&B pairs interleaved (DualPipe); "
                                "false runs each pair's chunks one after the other")


class PrecisionSpec(Frozen):
    """Which dtype each pass, state and transfer uses (DeepSeek-V3 tech report section 3.3)."""

    fprop: Literal["fp8", "bf16"] = "bf16"
    dgrad: Literal["fp8", "bf16"] = "bf16"
    wgrad: Literal["fp8", "bf16"] = "bf16"
    attention: Literal["bf16", "fp8"] = "bf16"
    weights: Literal["bf16", "fp32"] = "bf16"
    master_weights: Literal["fp32", "bf16"] = "fp32"
    grads: Literal["fp32", "bf16"] = "fp32"
    grad_reduce: Literal["fp32", "bf16"] = "fp32"
    optimizer_states: Literal["fp32", "bf16"] = "fp32"
    dispatch: Literal["fp8", "bf16"] = "bf16"
    combine: Literal["bf16", "fp8"] = "bf16"
    activation_tile: int = Field(default=128, ge=1, description="1 x N activation quantization tile")
    weight_block: int = Field(default=128, ge=1, description="N x N weight quantization block")

    @property
    def uses_fp8(self) -> bool:
        return "fp8" in (self.fprop, self.dgrad, self.wgrad, self.attention, self.dispatch, self.combine)


# -------------------------------------------------------------------------------------------- experts


class ExpertLoadSpec(Frozen):
    """How routed tokens spread over experts, and how that spread is balanced (``sim.experts``).

    ``balanced`` gives every expert the same load (DeepSeek's profile forced this). Skewed loads come from a
    Zipf law over expert popularity or a Dirichlet draw, optionally drifting over steps, or from a recorded
    histogram (CSV of loads per layer and expert). The policy acts on that skew: ``bias`` is DeepSeek-V3's
    auxiliary-loss-free bias update, ``aux`` a sequence-wise auxiliary loss, ``eplb`` redundant experts.
    """

    skew: Literal["balanced", "zipf", "dirichlet", "histogram"] = "balanced"
    zipf_exponent: float = Field(default=1.0, ge=0)
    dirichlet_concentration: float = Field(default=1.0, gt=0)
    drift_per_step: float = Field(default=0.0, ge=0, description="random-walk step of log popularity")
    histogram: str | None = Field(default=None, description="CSV of loads per layer and expert")
    policy: Literal["none", "bias", "aux", "eplb"] = "bias"
    bias_update_speed: float = Field(default=0.001, ge=0, description="gamma (tech report 4.2: 0.001)")
    balancing_steps: int = Field(default=300, ge=0, description="steps of balancing before the measured step")
    aux_loss_alpha: float = Field(default=0.0001, ge=0, description="sequence-wise balance loss weight")
    num_redundant_experts: int = Field(default=0, ge=0, description="extra expert slots for eplb")
    seed: int = 0
    aux_skew_reduction: float = Field(default=0.5, ge=0, le=1, description="policy aux: fraction by which "
                                      "the auxiliary loss shrinks log-popularity towards uniform (assumption)")
    eplb_interval_steps: int = Field(default=10, ge=1, description="policy eplb: steps between rearrangements, "
                                     "each from the mean load since the previous one")

    @model_validator(mode="after")
    def _check(self) -> ExpertLoadSpec:
        if self.skew == "histogram" and not self.histogram:
            raise ValueError("histogram: required when skew is 'histogram' (a CSV of loads per layer and expert)")
        return self


# ------------------------------------------------------------------------------------------------ job


class BatchRamp(Frozen):
    start_global_batch_size: int = Field(ge=1)
    ramp_tokens: float = Field(gt=0, description="tokens over which the batch grows to its full size")


class TrainingPhase(Frozen):
    name: str
    seq_len: int = Field(ge=1)
    global_batch_size: int = Field(ge=1)
    steps: int = Field(ge=1)


class TrainingSpec(Frozen):
    seq_len: int = Field(ge=1)
    global_batch_size: int = Field(ge=1, description="sequences per optimizer step")
    total_tokens: float = Field(gt=0)
    batch_ramp: BatchRamp | None = None
    phases: tuple[TrainingPhase, ...] = Field(default=(), description="later phases, e.g. long context")

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.global_batch_size


class Scenario(Frozen):
    """One training scenario: model x cluster x layout x precision x job."""

    name: str
    model: ModelSpec
    cluster: ClusterSpec
    parallel: ParallelSpec
    precision: PrecisionSpec = PrecisionSpec()
    training: TrainingSpec
    experts: ExpertLoadSpec = ExpertLoadSpec()
    calibration: str | None = Field(default=None, description="calibration table path (YAML)")
    notes: str = ""

    @property
    def num_gpus(self) -> int:
        return self.cluster.num_gpus

    @property
    def dp(self) -> int:
        p = self.parallel
        return p.dp if p.dp is not None else self.num_gpus // (p.tp * p.pp)

    @property
    def num_microbatches(self) -> int:
        p = self.parallel
        if p.num_microbatches is not None:
            return p.num_microbatches
        return self.training.global_batch_size // (self.dp * p.micro_batch_size)

    @property
    def num_stages(self) -> int:
        return num_stages(self.parallel.schedule, self.parallel.pp, self.parallel.vpp)

    @property
    def tokens_per_microbatch(self) -> int:
        return self.parallel.micro_batch_size * self.training.seq_len

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        p, m, t = self.parallel, self.model, self.training
        world = self.num_gpus
        if world % (p.tp * p.pp):
            raise ValueError(f"parallel: tp x pp = {p.tp} x {p.pp} must divide the {world} GPUs")
        dp = world // (p.tp * p.pp)
        if p.dp is not None and p.dp != dp:
            raise ValueError(f"parallel.dp: world size {world} = tp x pp x dp needs dp = {dp} (got {p.dp})")
        if p.tp > self.cluster.node.gpus_per_node:
            raise ValueError(f"parallel.tp: {p.tp} exceeds the {self.cluster.node.gpus_per_node} GPUs of a "
                             "node (tensor parallelism stays inside the NVLink domain)")
        if m.n_heads % p.tp:
            raise ValueError(f"parallel.tp: must divide n_heads {m.n_heads} (got {p.tp})")
        if m.attention == "gqa" and m.kv_heads % p.tp and p.tp % m.kv_heads:
            raise ValueError(f"parallel.tp: must divide or be a multiple of n_kv_heads {m.kv_heads}")
        if p.ep > 1 and not m.is_moe:
            raise ValueError("parallel.ep: expert parallelism needs an MoE model (n_routed_experts > 0)")
        if m.is_moe:
            if p.ep > m.n_routed_experts:
                raise ValueError(f"parallel.ep: {p.ep} exceeds the {m.n_routed_experts} routed experts")
            if m.n_routed_experts % p.ep:
                raise ValueError(f"parallel.ep: must divide n_routed_experts {m.n_routed_experts} (got {p.ep})")
            if (dp * p.tp) % p.ep:
                raise ValueError(f"parallel.ep: must divide dp x tp = {dp * p.tp} (expert parallelism spans "
                                 f"the data-parallel ranks of a stage; got {p.ep})")
        self._check_batch(dp)
        stages = num_stages(p.schedule, p.pp, p.vpp)
        layers = m.n_layers + m.n_mtp_layers
        if stages > layers:
            raise ValueError(f"parallel.pp: {stages} pipeline stages exceed the {layers} transformer layers")
        if p.stage_layers is not None:
            if len(p.stage_layers) != stages:
                raise ValueError(f"parallel.stage_layers: needs {stages} entries, one per stage "
                                 f"(got {len(p.stage_layers)})")
            if sum(p.stage_layers) != layers or min(p.stage_layers) < 0:
                raise ValueError(f"parallel.stage_layers: must be non-negative and sum to {layers} "
                                 f"(n_layers + n_mtp_layers; got {sum(p.stage_layers)})")
            if p.stage_layers[-1] < m.n_mtp_layers:
                raise ValueError(f"parallel.stage_layers: the last stage must hold the {m.n_mtp_layers} "
                                 "MTP layers (they share the output head)")
        if p.comm_sms >= self.cluster.gpu.num_sms:
            raise ValueError(f"parallel.comm_sms: must be < the GPU's {self.cluster.gpu.num_sms} SMs")
        if self.precision.uses_fp8 and not self.cluster.gpu.supports_fp8:
            raise ValueError(f"precision: {self.cluster.gpu.name} has no FP8 tensor cores; "
                             "use bf16 for fprop, dgrad, wgrad, attention, dispatch and combine")
        if t.batch_ramp and t.batch_ramp.start_global_batch_size > t.global_batch_size:
            raise ValueError("training.batch_ramp.start_global_batch_size: must be <= global_batch_size")
        return self

    def _check_batch(self, dp: int) -> None:
        p, t = self.parallel, self.training
        if p.num_microbatches is None:
            per_step = dp * p.micro_batch_size
            if t.global_batch_size % per_step:
                raise ValueError(f"training.global_batch_size: {t.global_batch_size} sequences must divide "
                                 f"into dp x micro_batch_size = {dp} x {p.micro_batch_size}")
            n = t.global_batch_size // per_step
        else:
            n = p.num_microbatches
            if n * dp * p.micro_batch_size != t.global_batch_size:
                raise ValueError(f"parallel.num_microbatches: {n} x dp {dp} x micro_batch_size "
                                 f"{p.micro_batch_size} must equal global_batch_size {t.global_batch_size}")
        problem = check_schedule(p.schedule, p.pp, n, p.vpp)
        if problem:
            raise ValueError(f"parallel.schedule: {problem}")
