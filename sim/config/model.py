"""A dense or MoE decoder-only transformer architecture (``workloads/models/*.yaml``).

Field names follow DeepSeek's public ``config_671B.json`` (deepseek-ai/DeepSeek-V3, ``inference/configs``)
where a field exists there.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sim.config import limits as L
from sim.config.base import Frozen


class ModelSpec(Frozen):
    """A dense or MoE decoder-only transformer."""

    name: str = Field(min_length=1, max_length=200)
    n_layers: int = Field(ge=1, le=L.N_LAYERS_MAX)
    dim: int = Field(ge=1, le=L.DIM_MAX)
    n_heads: int = Field(ge=1, le=L.HEADS_MAX)
    vocab_size: int = Field(ge=1, le=L.VOCAB_MAX)
    attention: Literal["mha", "gqa", "mla"] = "mha"
    n_kv_heads: int | None = Field(default=None, ge=1, le=L.HEADS_MAX,
                                   description="GQA key/value heads; MHA uses n_heads")
    head_dim: int | None = Field(default=None, ge=1, le=L.HEAD_DIM_MAX,
                                 description="MHA/GQA head size; default dim / n_heads")
    # MLA (DeepSeek-V2/V3); q_lora_rank 0 means no query compression (DeepSeek-V2-Lite).
    q_lora_rank: int = Field(default=0, ge=0, le=L.LORA_RANK_MAX)
    kv_lora_rank: int = Field(default=0, ge=0, le=L.LORA_RANK_MAX)
    qk_nope_head_dim: int = Field(default=0, ge=0, le=L.HEAD_DIM_MAX)
    qk_rope_head_dim: int = Field(default=0, ge=0, le=L.HEAD_DIM_MAX)
    v_head_dim: int = Field(default=0, ge=0, le=L.HEAD_DIM_MAX)
    # Feed-forward.
    inter_dim: int = Field(ge=1, le=L.INTER_DIM_MAX, description="dense FFN intermediate size")
    ffn_activation: Literal["swiglu", "gelu"] = "swiglu"
    # Mixture of experts: layers [0, n_dense_layers) are dense, the rest MoE, when n_routed_experts > 0.
    n_dense_layers: int = Field(default=0, ge=0, le=L.N_LAYERS_MAX)
    moe_inter_dim: int = Field(default=0, ge=0, le=L.INTER_DIM_MAX)
    n_routed_experts: int = Field(default=0, ge=0, le=L.EXPERTS_MAX)
    n_shared_experts: int = Field(default=0, ge=0, le=L.SHARED_EXPERTS_MAX)
    n_activated_experts: int = Field(default=0, ge=0, le=L.EXPERTS_MAX, description="routed experts per token "
                                     "(top-k)")
    n_expert_groups: int = Field(default=1, ge=1, le=L.EXPERTS_MAX)
    n_limited_groups: int = Field(default=1, ge=1, le=L.EXPERTS_MAX, description="groups (nodes) a token may reach")
    score_func: Literal["softmax", "sigmoid"] = "softmax"
    route_scale: float = Field(default=1.0, gt=0, le=L.ROUTE_SCALE_MAX)
    # Embeddings, norms, positions, multi-token prediction.
    tie_word_embeddings: bool = False
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    bias: bool = Field(default=False, description="linear layers carry biases (GPT-2/3 style)")
    position_embedding: Literal["rope", "learned", "alibi"] = "rope"
    max_seq_len: int = Field(default=4096, ge=1, le=L.SEQ_LEN_MAX, description="rows of a learned position "
                             "table; when stated (or positions are learned), the longest sequence a job may use")
    n_mtp_layers: int = Field(default=0, ge=0, le=L.MTP_LAYERS_MAX,
                              description="MTP depth (HF num_nextn_predict_layers)")

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

