"""What a validation case compares, and how a simulated step becomes that number in the source's accounting.

Published runs report iteration time, tokens/s, TFLOP/s, MFU or GPU-hours, each with its own FLOP accounting.
The simulator predicts a step time; each metric below converts it with the formula the source used:

- ``step_time_s``: seconds per optimizer step (iteration), as logged.
- ``tokens_per_s_per_gpu``: global tokens per step / (step time x GPUs) (torchtitan's ``wps``).
- ``tflops_per_gpu_with_recompute``: Narayanan et al. 2021 (arXiv 2104.04473) Eq. 3,
  ``F = 96 B s l h^2 (1 + s/6h + V/16lh)`` FLOPs per iteration, counting four passes of the transformer layers
  (forward, recomputed forward, two backward GEMMs) and three of the logit layer; BLOOM's Megatron-DeepSpeed
  ``throughput_calculator`` uses the same formula (24 x 4 with 4 the checkpoint-activations factor).
  Divided by step time x GPUs, in TFLOP/s.
- ``tflops_per_gpu_model``: Megatron-LM's ``num_floating_point_operations`` (megatron/training/training.py, as
  in core r0.8): model FLOPs of forward and backward, no recompute, attention non-causal (full ``s^2``)::

      12 B s l h^2 [ (1 + g/a + s/h) q/h  +  (f/h) k m  +  V / (2 l h) ]

  with ``a`` heads, ``g`` key/value groups, ``q = heads x head size``, ``f`` the FFN size, ``k`` experts per token
  (1 for a dense model), ``m`` 3/2 for a gated (SwiGLU) MLP else 1. For MHA and ``f = 4h`` this is
  ``72 B s l h^2 (1 + s/6h + V/12lh)``.
- ``mfu``: ``tflops_per_gpu_model`` over the source's per-GPU peak (``measured.peak_tflops``), a fraction.
- ``gpu_hours_per_trillion_tokens``: ``1e12 / tokens_per_s_per_gpu / 3600``, wall-clock GPU-hours (DeepSeek-V3
  tech report, arXiv 2412.19437, section 1).

Every formula takes the scenario's own model and batch: ``B`` global batch in sequences, ``s`` sequence length,
``l`` layers, ``h`` hidden size, ``V`` the (padded) vocabulary the model multiplies by.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from sim.config import Scenario
from sim.units import SECONDS_PER_HOUR, TERA

MetricName = Literal["step_time_s", "tokens_per_s_per_gpu", "tflops_per_gpu_with_recompute", "tflops_per_gpu_model",
                     "mfu", "gpu_hours_per_trillion_tokens"]
METRICS: tuple[str, ...] = get_args(MetricName)

#: The unit a case file must state for each metric (so a percentage is never read as a fraction).
UNITS: dict[str, str] = {
    "step_time_s": "s",
    "tokens_per_s_per_gpu": "tokens/s/GPU",
    "tflops_per_gpu_with_recompute": "TFLOP/s/GPU",
    "tflops_per_gpu_model": "TFLOP/s/GPU",
    "mfu": "fraction",
    "gpu_hours_per_trillion_tokens": "GPU-h/1e12 tokens",
}

#: Short labels for tables.
LABELS: dict[str, str] = {
    "step_time_s": "step time s",
    "tokens_per_s_per_gpu": "tokens/s/GPU",
    "tflops_per_gpu_with_recompute": "TFLOP/s/GPU Eq.3",
    "tflops_per_gpu_model": "TFLOP/s/GPU model",
    "mfu": "MFU",
    "gpu_hours_per_trillion_tokens": "GPU-h per 1T tok",
}



def narayanan_eq3_flops(batch: int, seq: int, layers: int, hidden: int, vocab: int) -> float:
    """FLOPs per iteration with activation recompute, Narayanan et al. 2021 (arXiv 2104.04473) Eq. 3:
    ``96 B s l h^2 (1 + s/6h + V/16lh)``."""
    b, s, n, h, v = float(batch), float(seq), float(layers), float(hidden), float(vocab)
    return 96.0 * b * s * n * h * h * (1.0 + s / (6.0 * h) + v / (16.0 * n * h))


@dataclass(frozen=True, slots=True)
class MegatronShape:
    """The model arguments Megatron-LM's FLOP formula reads."""

    layers: int
    hidden: int
    heads: int
    kv_groups: int
    head_dim: int
    ffn_hidden: int
    vocab: int
    gated: bool = False
    experts_per_token: int = 1


def megatron_model_flops(batch: int, seq: int, m: MegatronShape) -> float:
    """Model FLOPs per iteration, Megatron-LM ``num_floating_point_operations`` (megatron/training/training.py,
    core r0.8): ``12 B s l h^2 [(1 + g/a + s/h) q/h + (f/h) k m + V/(2lh)]``; no recompute, non-causal."""
    b, s, n, h = float(batch), float(seq), float(m.layers), float(m.hidden)
    q_ratio = m.heads * m.head_dim / h
    attention = (1.0 + m.kv_groups / m.heads + s / h) * q_ratio
    mlp = (m.ffn_hidden / h) * m.experts_per_token * (1.5 if m.gated else 1.0)
    logit = m.vocab / (2.0 * n * h)
    return 12.0 * b * s * n * h * h * (attention + mlp + logit)


def megatron_shape(scenario: Scenario) -> MegatronShape:
    m = scenario.model
    ffn = m.moe_inter_dim if m.is_moe else m.inter_dim
    return MegatronShape(layers=m.n_layers, hidden=m.dim, heads=m.n_heads, kv_groups=m.kv_heads,
                         head_dim=m.attn_head_dim, ffn_hidden=ffn, vocab=m.vocab_size,
                         gated=m.ffn_activation == "swiglu",
                         experts_per_token=m.n_activated_experts if m.is_moe else 1)


def tflops_per_gpu(flops_per_step: float, step_time_s: float, num_gpus: int) -> float:
    return flops_per_step / (step_time_s * num_gpus) / TERA


def predict(metric: str, scenario: Scenario, step_time_s: float, tokens_per_s_per_gpu: float,
            peak_tflops: float | None = None) -> float:
    """The case's metric from a simulated step, in the source's accounting (module docstring)."""
    t = scenario.training
    gpus = scenario.num_gpus
    if metric == "step_time_s":
        return step_time_s
    if metric == "tokens_per_s_per_gpu":
        return tokens_per_s_per_gpu
    if metric == "gpu_hours_per_trillion_tokens":
        return TERA / tokens_per_s_per_gpu / SECONDS_PER_HOUR
    if metric == "tflops_per_gpu_with_recompute":
        m = scenario.model
        f = narayanan_eq3_flops(t.global_batch_size, t.seq_len, m.n_layers, m.dim, m.vocab_size)
        return tflops_per_gpu(f, step_time_s, gpus)
    if metric in ("tflops_per_gpu_model", "mfu"):
        tf = tflops_per_gpu(megatron_model_flops(t.global_batch_size, t.seq_len, megatron_shape(scenario)),
                            step_time_s, gpus)
        if metric == "tflops_per_gpu_model":
            return tf
        if peak_tflops is None:
            raise ValueError("metric mfu needs measured.peak_tflops")
        return tf / peak_tflops
    raise ValueError(f"unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
