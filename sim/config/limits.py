"""Physical ranges of the configuration: a sane multiple of the best hardware and the largest jobs known.

A value beyond these is a typo or a unit mistake (``hbm_gb: 80000``), never a what-if the models were built for;
validation refuses it naming the field. Ceilings are about 10x the best known in 2025 (NVIDIA B300/GB300:
~5 PFLOP/s dense FP8, 288 GB HBM3e at 8 TB/s, NVLink 5 at 900 GB/s per direction, 800 Gbit/s NICs, PCIe 6,
1.4 kW; 576-GPU NVLink domains announced), or about 100x the largest published job (DeepSeek-V3's 14.8T tokens,
Llama 3's 126 layers, 256K vocabularies, 384 routed experts).
"""

from __future__ import annotations

PEAK_TFLOPS_MAX = 50_000.0
HBM_GB_MAX = 3_000.0
HBM_TB_PER_S_MAX = 80.0
NUM_SMS_MAX = 2_048
TDP_W_MAX = 15_000.0
NVLINK_GB_PER_S_MAX = 9_000.0
NIC_GBIT_PER_S_MAX = 8_000.0
NIC_GB_PER_S_MAX = NIC_GBIT_PER_S_MAX / 8
PCIE_GB_PER_S_MAX = 1_300.0
GPUS_PER_NODE_MAX = 4_096
NICS_PER_NODE_MAX = 4_096
NUM_NODES_MAX = 1_000_000_000
NODE_W_MAX = 2_000_000.0
LATENCY_US_MAX = 1_000.0
SWITCH_RADIX_MAX = 4_096
PLANES_MAX = 64
OVERSUBSCRIPTION_MAX = 64.0
USD_PER_GPU_HOUR_MAX = 1_000.0
PUE_MAX = 5.0

N_LAYERS_MAX = 4_096
DIM_MAX = 262_144
HEADS_MAX = 16_384
HEAD_DIM_MAX = 4_096
VOCAB_MAX = 16_777_216
INTER_DIM_MAX = 1_048_576
LORA_RANK_MAX = 65_536
EXPERTS_MAX = 65_536
SHARED_EXPERTS_MAX = 1_024
MTP_LAYERS_MAX = 64
SEQ_LEN_MAX = 2**24  # the longest published context is 10M tokens
ROUTE_SCALE_MAX = 1_000.0

GLOBAL_BATCH_MAX = 1_000_000_000  # sequences per step
TOKENS_MAX = 1e17
STEPS_MAX = 1_000_000_000
BALANCING_STEPS_MAX = 10_000_000
GPU_HOURS_MAX = 1e12
USD_MAX = 1e15
SECONDS_MAX = 1e10  # ~300 years
