"""The software stack a job runs on: which kernels implement its attention, what it fuses, its dropout, its
communication libraries and its per-kernel and per-step overheads. Named stacks live in
``hardware_profiles/software/<name>.yaml`` (a job names one, ``software: megatron_core_2024``, and may override
fields with ``--set software.compile=true``); every field has a default, so a job may also inline them."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from sim.config.base import Frozen

A2aLibrary = Literal["deepep_v1", "deepep_v2", "nccl"]


class SoftwareSpec(Frozen):
    name: str = Field(default="default", max_length=200)
    attention: Literal["flash", "unfused"] = Field(
        default="flash", description="flash: FlashAttention-class fused kernels (scores never reach HBM); unfused: "
        "QK^T and PV as batched GEMMs with the s x s scores materialized, softmax and dropout as kernels of "
        "their own (Megatron-LM before FlashAttention)")
    flash_kernel: Literal["default", "fa2", "fa3", "cudnn"] = Field(
        default="default", description="which FlashAttention-class kernel runs attention (with attention: flash): "
        "fa2 (FlashAttention-2; PyTorch SDPA's FLASH backend), fa3 (FlashAttention-3, Hopper only), cudnn "
        "(cuDNN fused attention; Transformer Engine on Hopper); default: the GPU profile's default curve, the "
        "architecture's best kernel (fa3 on Hopper, fa2 on Ampere). A kernel the GPU profile has no curve for "
        "falls back to the default curve with a note; fa3 off Hopper is refused")
    attention_dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout probability on the "
                                     "attention probabilities (costs a mask kernel and saved masks when > 0)")
    hidden_dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout probability after the attention "
                                  "and MLP blocks")
    fused_kernels: bool = Field(default=True, description="bias + activation, bias + dropout + residual add and "
                                "scale + mask + softmax each run as one kernel (Megatron-LM's fusions)")
    compile: bool = Field(default=False, description="torch.compile fuses each chain of memory-bound kernels "
                          "between GEMMs into one (in the ops compile_scope covers)")
    compile_scope: Literal["layers", "layers_and_loss", "model"] = Field(
        default="model", description="what torch.compile covers when compile is on: model (the whole model); "
        "layers (each transformer layer compiled on its own, as torchtitan's apply_compile does: the final norm "
        "and the loss outside the layers run eager); layers_and_loss (the loss function compiled too)")
    eager_fp32: bool = Field(default=False, description="unfused RMSNorm and rotary embeddings compute in FP32 "
                             "(Meta's Llama reference code, as in torchtitan: x.float(), the chain, .type_as(x)): "
                             "more kernels moving 4-byte values; no effect when fused_kernels or compile fuses them")
    cross_entropy: Literal["fused", "megatron_fp32", "torch_fp32"] = Field(
        default="fused", description="the loss over the vocabulary: fused (one kernel reads the BF16 logits and "
        "writes their gradient; torch.compile or a fused loss); megatron_fp32 (Megatron-LM's vocabulary-parallel "
        "cross entropy as separate FP32 kernels: upcast, max, subtract, exp, sum, normalize, the softmax kept "
        "for the backward); torch_fp32 (logits.float() and F.cross_entropy: log-softmax and its backward in "
        "FP32); compile fuses either")
    kernel_launch_us: float | None = Field(default=None, ge=0, le=1000, description="time between kernels on a "
                                           "busy stream; default: the GPU profile's kernel_overhead_us")
    dp_collective_efficiency: float = Field(
        default=1.0, gt=0, le=1, description="the fraction of NCCL's modelled bandwidth that the stack's data-"
        "parallel collectives (gradient reductions, ZeRO/FSDP parameter gathers) reach: 1 for stacks that hand "
        "NCCL large flat buckets (Megatron-LM, FSDP2); lower for stacks whose collectives run per parameter "
        "through Python hooks. A property of the software, fitted where no mechanism explains it (see the "
        "profile's sources)")
    pytorch_cp_step_efficiency: float = Field(
        default=1.0, gt=0, le=1, description="context parallelism as PyTorch's context_parallel runs it (parallel."
        "cp_mode pytorch): the fraction of the attention kernel's modelled rate that each ring step after the "
        "diagonal reaches (its SDPA call, forward and backward; not the diagonal step, the exchanges or the "
        "bookkeeping kernels): 1 = the kernel's curve. A property of the software, fitted where no mechanism "
        "explains it (see the profile's sources)")
    zero3_max_live_params: float | None = Field(
        default=None, gt=0, le=1e13, description="ZeRO-3 that gathers module by module (DeepSpeed's "
        "stage3_max_live_parameters): the parameters it keeps gathered at once, or its largest module when that "
        "is bigger; None: FSDP, which gathers whole units (a layer) and holds fsdp_prefetch + 1 of them")
    pp_scatter_gather: bool = Field(
        default=False, description="with tensor parallelism and no sequence parallelism, each TP rank sends 1/tp of "
        "a stage-boundary activation (or its gradient) and the receiving TP group all-gathers it over NVLink "
        "(Megatron-LM's scatter/gather optimization, Narayanan et al. 2021 section 4.1, on by default; DeepSpeed's "
        "pipeline engine partitions them likewise when TP > 1); without it every TP rank sends the whole tensor")
    grad_accumulation: Literal["fused", "fp32_pass"] = Field(
        default="fused", description="how micro-batch gradients accumulate: fused (the weight-gradient GEMM adds "
        "into the FP32 main gradient, Megatron-LM's gradient_accumulation_fusion, or gradients accumulate in "
        "their own buffer); fp32_pass (after every micro-batch's backward a separate pass adds each BF16 gradient "
        "into an FP32 copy: DeepSpeed's BF16 optimizer, update_hp_grads; 18 B per parameter of the stage)")
    repeat_kv: bool = Field(
        default=False, description="grouped-query attention's keys and values are repeated to the query heads "
        "before the attention kernel (torchtitan's Llama: repeat_kv, then F.scaled_dot_product_attention), so "
        "context-parallel exchanges move n_heads, not n_kv_heads, heads of K and V")
    fsdp_copies: bool = Field(
        default=False, description="ZeRO-3 as PyTorch FSDP2 (fully_shard) runs it: each gathered layer group is "
        "copied out of the all-gather buffer into its parameters (split_with_sizes_copy: read and write the "
        "unsharded parameters) and each layer group's gradients are copied into the reduce-scatter buffer in "
        "precision.grad_reduce (chunk_cat: read the gradients, write them cast), on the compute stream; while "
        "gradient sync is off (a pipeline's micro-batches before a stage's last backward) each unit's gradients are "
        "added into an accumulator in precision.grad_reduce instead; stacks with flat parameter and gradient "
        "buffers (FSDP1, Megatron-LM, DeepSpeed) gather and reduce in place")
    zero1_grad_reduce: Literal["reduce_scatter", "all_reduce"] = Field(
        default="reduce_scatter", description="ZeRO-1 gradient reduction: reduce_scatter (each rank receives the "
        "reduced shard it updates: Megatron-LM's distributed optimizer, DeepSpeed ZeRO-1 in fp16) or all_reduce "
        "(the whole gradient is all-reduced and each rank updates its shard: DeepSpeed's BF16 optimizer under "
        "its pipeline engine, as BLOOM-176B ran); no effect at other ZeRO stages")
    step_overhead_s: float = Field(default=0.0, ge=0, le=3600, description="host work per step that the GPU "
                                   "waits for: data loading, logging, synchronization")
    a2a_library: A2aLibrary | None = Field(default=None, description="expert all-to-all: DeepEP (kernels on "
                                           "parallel.comm_sms SMs) or NCCL all-to-all; default: deepep_v1 when "
                                           "comm_sms > 0, else nccl")
    sm_partition: Literal["static", "dynamic"] | None = Field(
        default=None, description="static: parallel.comm_sms SMs are reserved for communication all step and "
        "compute kernels run on the rest (DeepEP with DeepGEMM: 112 of 132 SMs in DeepSeek's trace); dynamic: "
        "communication takes them only while it runs (NCCL); default: static with DeepEP, else dynamic")
    sources: dict[str, str] = Field(default_factory=dict)

    #: Blocks of ops outside the transformer layers (``sim.model.ops``): the embedding, and the final norm, output
    #: projection and loss.
    OUTSIDE_LAYERS: ClassVar[frozenset[str]] = frozenset({"embed", "head"})

    def compiles(self, block: str, name: str) -> bool:
        """Whether torch.compile covers the op ``name`` of ``block`` (``compile``, ``compile_scope``)."""
        if not self.compile:
            return False
        if self.compile_scope == "model" or block not in self.OUTSIDE_LAYERS:
            return True
        return self.compile_scope == "layers_and_loss" and name == "cross_entropy"

    @property
    def loss_compiled(self) -> bool:
        return self.compiles("head", "cross_entropy")
