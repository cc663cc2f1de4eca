"""How a job is laid out on the cluster (parallelism, schedule, recompute) and which dtypes it uses.

Sources of the layout keys: Megatron-LM (tensor, sequence, pipeline, context parallelism; the distributed
optimizer; ``--recompute-granularity``/``--recompute-modules``; ``--tp-comm-overlap``;
``--overlap-moe-expert-parallel-comm``), ZeRO (Rajbhandari et al. 2020) and PyTorch FSDP2 ``fully_shard``
(``reshard_after_forward``, hybrid sharding over a 2-D mesh), Korthikanti et al. 2022 (selective recompute).
Cross-field rules (which combinations are possible) live in :mod:`sim.config.scenario`.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, field_validator

from sim.config.base import Frozen
from sim.pipeline import ScheduleName

RecomputePolicy = Literal["none", "selective", "activations", "norm_and_up_proj", "alternate_matmuls", "full"]
RECOMPUTE_POLICIES: tuple[str, ...] = get_args(RecomputePolicy)
#: Module names a per-op recompute list may use besides op names (Megatron-LM ``--recompute-modules``, plus
#: ``norms``, ``up_proj`` and ``activations``): what each stands for is in :mod:`sim.model.parallelism`.
RECOMPUTE_MODULES: tuple[str, ...] = ("core_attn", "layernorm", "norms", "mla_up_proj", "up_proj", "moe_act",
                                      "activations", "mlp", "moe", "shared_experts")


class ParallelSpec(Frozen):
    """How the job is laid out. ``pp`` counts pipeline ranks (devices); stages may be more (interleaved)."""

    tp: int = Field(default=1, ge=1)
    pp: int = Field(default=1, ge=1)
    dp: int | None = Field(default=None, ge=1, description="derived from the GPU count when omitted")
    ep: int = Field(default=1, ge=1, description="expert parallel size, spanning data-parallel ranks")
    cp: int = Field(default=1, ge=1, description="context parallel size: each sequence split over cp GPUs")
    cp_mode: Literal["ring", "all_gather", "pytorch"] = Field(
        default="ring", description="ring: KV blocks passed around the CP group, overlapped with attention "
        "(Megatron-Core); all_gather: K and V all-gathered before attention, exposed, their gradients reduce-"
        "scattered after it (Llama 3); pytorch: PyTorch's context_parallel (torch 2.5-2.6, rotate_method "
        "allgather; torchtitan): K and V all-gathered once per pass beside the diagonal step, their gradients "
        "passed around the ring in FP32, each beside the next step")
    sequence_parallel: bool = False
    schedule: ScheduleName = "1f1b"
    vpp: int = Field(default=1, ge=1, description="virtual stages per rank (interleaved-1f1b)")
    micro_batch_size: int = Field(default=1, ge=1, description="sequences per micro-batch")
    num_microbatches: int | None = Field(default=None, ge=1, description="per pipeline and step; "
                                         "derived from the global batch when omitted")
    zero_stage: Literal[0, 1, 2, 3] = Field(default=1, description="0: DDP all-reduce; 1: optimizer states "
                                            "sharded; 2: and gradients (reduce-scattered every micro-batch); "
                                            "3: and parameters (FSDP: gathered per layer group)")
    fsdp_shard_group: int | None = Field(default=None, ge=1, description="ZeRO-3/FSDP: GPUs a parameter is "
                                         "sharded over (hybrid sharding: replicated across groups); default: "
                                         "every data- and context-parallel rank")
    fsdp_reshard_after_forward: bool | None = Field(default=None, description="ZeRO-3/FSDP: free gathered "
                                                    "parameters after forward and gather again in backward "
                                                    "(default true, FSDP2's default)")
    fsdp_prefetch: int = Field(default=1, ge=0, le=8, description="ZeRO-3/FSDP: layer groups gathered ahead "
                               "of the one computing (0: each gather waits for the previous group)")
    recompute: RecomputePolicy | tuple[str, ...] = Field(
        default="none", description="none; selective (the attention core, Korthikanti et al. 2022); "
        "activations (activation functions); norm_and_up_proj (DeepSeek-V3); full; or a list of op and module "
        "names")
    grad_bucket_mb: float | None = Field(default=None, gt=0, le=1e5, description="gradient bucket size in MB "
                                         "(1e6 bytes) for overlapped gradient reduction; default Megatron-Core's "
                                         "max(40M, 1M x data-parallel size) gradients (PyTorch DDP: 25)")
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
    tp_comm_overlap: bool = Field(default=False, description="overlap tensor-parallel all-gathers and "
                                  "reduce-scatters with the GEMMs next to them, chunk by chunk (TE userbuffers, "
                                  "PyTorch async TP); needs tp >= 2 and sequence parallelism")
    ep_overlap: bool = Field(default=False, description="interleaved-1f1b, or 1f1b without a pipeline: run each "
                             "backward together with the next forward, layer by layer, so one's expert "
                             "all-to-all hides behind the other's compute (Megatron-Core combined 1F1B)")

    @field_validator("recompute", mode="before")
    @classmethod
    def _recompute_list(cls, v: object) -> object:
        """A list of op and module names becomes a tuple; its entries are checked against the model's ops when
        the scenario is built (:func:`sim.model.parallelism.check_recompute`)."""
        if isinstance(v, str) and v not in RECOMPUTE_POLICIES:
            raise ValueError(f"got {v!r}; allowed: {', '.join(RECOMPUTE_POLICIES)}, or a list of op and module "
                             f"names (modules: {', '.join(RECOMPUTE_MODULES)})")
        if isinstance(v, list | tuple):
            names = tuple(v)
            if not names or not all(isinstance(x, str) and x for x in names):
                raise ValueError("a recompute list needs one or more op or module names "
                                 f"(modules: {', '.join(RECOMPUTE_MODULES)})")
            return names
        return v

    @property
    def recompute_label(self) -> str:
        """The policy as text: its name, or its op list joined by '+'."""
        r = self.recompute
        return r if isinstance(r, str) else "+".join(r)


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
    weight_block: int = Field(default=128, ge=1, description="N x N weight quantization block: one FP32 scale per "
                              "block, written with the FP8 weights when a tilewise recipe re-quantizes them")
    fp8_scaling: Literal["tilewise", "tensorwise"] = Field(
        default="tilewise", description="how FP8 GEMM operands are scaled: tilewise (DeepSeek-V3: activations "
        "quantized in 1 x N tiles by the cast kernel itself, weights re-quantized once per step after the "
        "optimizer); tensorwise (torchao Float8Linear with dynamic scaling under torch.compile, as torchtitan: "
        "the weights are reduced to their absolute maximum and cast in every forward, and the input- and weight-"
        "gradient GEMMs re-lay their cached FP8 operands out)")
    fp8_weight_gather: bool = Field(
        default=False, description="ZeRO-3 gathers the weights of the FP8 GEMMs in FP8, each rank casting its shard "
        "before the all-gather, so the forward casts no weight (torchao's enable_fsdp_float8_all_gather with "
        "precompute_float8_dynamic_scale_for_fsdp); needs fp8_scaling tensorwise, fprop fp8 and zero_stage 3")

    @property
    def uses_fp8(self) -> bool:
        return "fp8" in (self.fprop, self.dgrad, self.wgrad, self.attention, self.dispatch, self.combine)

