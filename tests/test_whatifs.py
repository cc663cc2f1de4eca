"""Single-factor what-ifs on the default DeepSeek-V3 job and on a dense job, each against a band derived from first
principles (the reason beside each row), never from the simulator's own output.

A row changes one thing (``case``) against a reference (``ref``, the job as it is unless given) and checks the
ratio case / reference of the step time, the peak memory per GPU or the activation bytes of rank 0. Fast mode,
each scenario simulated once per session. Print the table with its observed ratios:
``python -m tests.test_whatifs``.

Facts the reasons use: DeepSeek-V3 tech report (arXiv 2412.19437) 3.2: computation to all-to-all about 1:1,
DualPipe hides it; Table 2: bubbles (PP-1)(F+B) for 1F1B, (PP-1)(F+B-2W) for ZB1P, (PP/2-1)(F&B+B-3W) for
DualPipe, the same for DualPipeV with PP/2 ranks (deepseek-ai/DualPipe README); Narayanan et al. 2021: the
interleaved bubble is (p-1)/(v m); Korthikanti et al. 2022: activation bytes with and without sequence
parallelism, full recompute adds a forward; ZeRO (Rajbhandari et al. 2020): stage 3 moves 1.5x the traffic of
stage 1 per step and more with gradient accumulation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import pytest

from sim.loading import load_scenario
from sim.step import StepResult, simulate_step

DENSE = "workloads/llama3_70b_h100.yaml"  # Llama-3-70B class, TP8 + SP, PP4 1F1B, ZeRO-1, 1,024 H100
IB_HALF = ("cluster.node.nic_gbit_per_s=200", "cluster.node.nic_achievable_gb_per_s=23")
IB_DOUBLE = ("cluster.node.nic_gbit_per_s=800", "cluster.node.nic_achievable_gb_per_s=92")
NVLINK_HALF = ("cluster.node.nvlink_gb_per_s=100", "cluster.node.nvlink_achievable_gb_per_s=80")
BF16_GEMMS = ("precision.fprop=bf16", "precision.dgrad=bf16", "precision.wgrad=bf16")
GBS16K = ("training.global_batch_size=16384",)  # 128 micro-batches: divisible by PP 16 (interleaved 1F1B)
X8 = ("cluster.num_nodes=2048", "training.global_batch_size=122880")  # 16,384 GPUs, the same work per GPU


@dataclass(frozen=True)
class Row:
    name: str
    case: tuple[str, ...]
    lo: float
    hi: float
    why: str
    ref: tuple[str, ...] = ()
    metric: str = "time"          # time | memory | activations
    job: str | None = None        # None: the default DeepSeek-V3 job
    hardware: str | None = None   # another cluster profile at the same 2,048 GPUs


ROWS = [
    # ------------------------------------------------------------------ network
    Row("IB x0.5", IB_HALF, 1.01, 1.35, "the all-to-all's IB part doubles; DualPipe hides what fits under compute "
        "(about 1:1), so the step grows, by less than the whole all-to-all (about a third of the step)"),
    Row("IB x2", IB_DOUBLE, 0.85, 1.0, "only exposed IB time can shrink: the pairs already hide most of it"),
    Row("NVLink x0.5", NVLINK_HALF, 1.0, 1.1, "NVLink carries only the in-node hop of the all-to-all (no TP): a "
        "small, hidden share"),
    # ------------------------------------------------------------------ schedules
    Row("1F1B vs DualPipe", ("parallel.schedule=1f1b",), 1.1, 1.6, "no F&B pairs: the all-to-all (about 1:1 with "
        "compute) is exposed but for what a backward overlaps with its own W, and the bubble is (PP-1)(F+B)"),
    Row("ZB1P vs DualPipe", ("parallel.schedule=zb1p",), 1.05, 1.6, "as 1F1B, with a smaller bubble (PP-1)(F+B-2W)"),
    Row("ZB1P vs 1F1B", ("parallel.schedule=zb1p",), 0.85, 1.0, "deferring W fills the cool-down bubble; the "
        "I chunk keeps the W work its all-to-all hides, so it never costs more than the full backward",
        ref=("parallel.schedule=1f1b",)),
    Row("GPipe vs 1F1B (time)", ("parallel.schedule=gpipe",), 0.97, 1.06, "the same bubble (p-1)/m; where the "
        "slowest forward and slowest backward stages differ (embedding vs head and MTP), GPipe's sweeps pay "
        "max F + max B per micro-batch where 1F1B pays max (F + B)", ref=("parallel.schedule=1f1b",)),
    Row("GPipe vs 1F1B (memory)", ("parallel.schedule=gpipe",), 2.0, 10.0, "all 120 micro-batches in flight "
        "instead of at most PP = 16", ref=("parallel.schedule=1f1b",), metric="memory"),
    Row("DualPipeV (8 ranks, 16 stages) vs DualPipe", ("parallel.schedule=dualpipev", "parallel.pp=8"), 0.97, 1.03,
        "the same 16 stages and micro-batch size: the same bubble (DualPipe README: DualPipeV on PP/2 devices)"),
    Row("DualPipeV (16 ranks, 32 stages) vs DualPipe", ("parallel.schedule=dualpipev",), 1.0, 1.2, "32 stages of "
        "~2 layers cannot balance the head+MTP stage (~3.9 layers of work): rank 0 holds ~1.2x the mean"),
    Row("interleaved (vpp 2) vs 1F1B, no MTP", (*GBS16K, "model.n_mtp_layers=0",
        "parallel.schedule=interleaved-1f1b", "parallel.vpp=2"), 0.85, 1.0, "the bubble (p-1)/(v m) halves; MTP "
        "left out so that no chunk is twice its siblings", ref=(*GBS16K, "model.n_mtp_layers=0",
                                                             "parallel.schedule=1f1b")),
    Row("interleaved vs DualPipe", (*GBS16K, "parallel.schedule=interleaved-1f1b", "parallel.vpp=2"), 1.1, 1.8,
        "no F&B pairs: the all-to-all is exposed", ref=GBS16K),
    Row("EP overlap in interleaved 1F1B", (*GBS16K, "parallel.schedule=interleaved-1f1b", "parallel.vpp=2",
        "parallel.ep_overlap=true"), 0.6, 1.0, "combined 1F1B: one micro-batch's all-to-all hides behind "
        "another's compute", ref=(*GBS16K, "parallel.schedule=interleaved-1f1b", "parallel.vpp=2")),
    Row("F&B pairs run one after the other", ("parallel.overlap_pairs=false",), 1.1, 1.6, "the all-to-all the "
        "pairs hid (about 1:1 with compute inside pairs) is exposed, less what a backward overlaps on its own"),
    # ------------------------------------------------------------------ precision
    Row("BF16 GEMMs", BF16_GEMMS, 1.03, 1.6, "FP8 tensor cores have 2x the BF16 peak; GEMMs are most of the compute "
        "(compute-bound pairs), FP8's quantization kernels and lower efficiency keep it below 2x"),
    Row("BF16 dispatch", ("precision.dispatch=bf16",), 1.0, 1.1, "dispatch bytes 2x (2 B vs 1 B + scales), mostly "
        "hidden by the pairs"),
    Row("FlashAttention-2 kernels", ("software.flash_kernel=fa2",), 1.02, 1.2, "the MLA core (~13 % of a layer's "
        "forward FLOPs at 4K) runs about 1.8x slower than FA3 on Hopper (FA3 Figs. 5-6): under +15 % of compute, "
        "and the pairs' all-to-all is unchanged"),
    # ------------------------------------------------------------------ expert parallelism
    Row("EP32 memory", ("parallel.ep=32",), 1.02, 1.5, "8 routed experts per GPU instead of 4", metric="memory"),
    Row("EP128 memory", ("parallel.ep=128",), 0.8, 1.0, "2 routed experts per GPU instead of 4", metric="memory"),
    Row("EP32 time", ("parallel.ep=32",), 0.85, 1.15, "the same rows per GPU; 4 instead of 8 nodes per group"),
    Row("EP128 time", ("parallel.ep=128",), 0.85, 1.15, "the same rows per GPU; 16 nodes per group, 4 per token"),
    Row("comm SMs 4", ("parallel.comm_sms=4",), 1.1, 3.0, "DeepEP's rate scales with its SMs: 5x fewer SMs cannot "
        "keep the all-to-all under compute"),
    Row("NCCL all-to-all vs DeepEP", ("software.a2a_library=nccl",), 1.01, 1.6, "a plain all-to-all sends each "
        "routed row to its expert's GPU (7 IB rows per token, not 3.5 node copies forwarded over NVLink): twice "
        "the IB bytes per all-to-all, of which DualPipe hides part"),
    Row("comm SMs 60", ("parallel.comm_sms=60",), 1.05, 1.6, "compute runs on 72 of 132 SMs instead of 112: up to "
        "112/72 = 1.56x slower where compute-bound"),
    Row("H100 vs H800 at 2,048 GPUs", (), 0.9, 1.0, "the same compute silicon with 2.25x the NVLink: gains at most "
        "the NVLink share (NVLink x0.5 costs about 1 %)", hardware="h100_ib_16384"),
    Row("EPLB spare slots memory", ("experts.policy=eplb",), 1.005, 1.06, "one spare expert slot per GPU (5 "
        "instead of 4): +25 % of the routed experts' weights and gradients, optimizer states spread over replicas",
        metric="memory"),
    # ------------------------------------------------------------------ recompute
    Row("no recompute: time", ("parallel.recompute=none",), 0.9, 1.0, "no norm, up-projection and SwiGLU re-run "
        "(memory-bound kernels and two GEMMs)", ref=("parallel.recompute=norm_and_up_proj",)),
    Row("no recompute: memory", ("parallel.recompute=none",), 1.1, 2.5, "norm outputs, q/k/v and SwiGLU outputs "
        "kept", ref=("parallel.recompute=norm_and_up_proj",), metric="memory"),
    Row("full vs no recompute: time", ("parallel.recompute=full",), 1.2, 1.8, "one more forward (about +1/3 of "
        "compute) and its dispatch and combine again (+1/2 of the all-to-all)", ref=("parallel.recompute=none",)),
    Row("full vs no recompute: memory", ("parallel.recompute=full",), 0.2, 0.6, "only each layer's input kept",
        ref=("parallel.recompute=none",), metric="memory"),
    Row("selective (attention core) vs none: time", ("parallel.recompute=selective",), 1.0, 1.08, "the MLA core's "
        "forward (~13 % of a layer's forward FLOPs) again", ref=("parallel.recompute=none",)),
    Row("selective vs none: memory", ("parallel.recompute=selective",), 0.85, 1.0, "the core's output is re-created "
        "(FlashAttention never stores the S x S scores)", ref=("parallel.recompute=none",), metric="memory"),
    # ------------------------------------------------------------------ data parallelism
    Row("ZeRO-0 memory", ("parallel.zero_stage=0",), 1.2, 2.0, "fp32 master weights and bf16 moments (8 B per "
        "parameter) unsharded instead of over 128 ranks", metric="memory"),
    Row("ZeRO-3 time", ("parallel.zero_stage=3",), 1.0, 1.6, "parameters gathered for every micro-batch's forward "
        "and backward (2 x 120 gathers instead of 1)"),
    Row("ZeRO-3 memory", ("parallel.zero_stage=3",), 0.8, 1.0, "working weights sharded but for the layer in use",
        metric="memory"),
    Row("gradient reduction not overlapped", ("parallel.overlap_grad_reduce=false",), 1.0, 1.05, "the stage's "
        "reduce-scatter after the last action instead of beside the last backwards (a few 10 ms per stage)"),
    Row("TP2 x EP64 memory", ("parallel.tp=2", "parallel.sequence_parallel=true"), 0.4, 0.9, "dense weights and "
        "all activations split by 2 (SP); routed experts unchanged", metric="memory"),
    # ------------------------------------------------------------------ fabric and scale
    Row("fat tree with 3:1 leaf uplinks", ("cluster.fabric={kind: fat_tree, leaf_oversubscription: 3.0}",), 1.003,
        1.3, "a node's NICs share a leaf (4 nodes per leaf, 8 per EP group): the all-to-all's IB traffic leaves "
        "over 3:1 uplinks; DualPipe hides part of the slowdown"),
    Row("rail-optimized with 3:1 leaf uplinks", ("cluster.fabric={kind: rail_optimized, leaf_oversubscription: 3.0}",),
        0.999, 1.001, "DeepEP sends over IB only to same-index GPUs: the all-to-all stays on its rail's leaf and "
        "never crosses an uplink"),
    Row("fat tree vs multi-plane at 2,048", ("cluster.topology=fat_tree",), 0.99, 1.01, "both non-blocking at this "
        "size: crossing a non-blocking uplink costs only a switch hop"),
    Row("weak scaling x8 (16,384 GPUs)", (*X8, "cluster.topology=rail_optimized"), 1.0001, 1.1, "the same work per "
        "GPU; data-parallel collectives over 8x the ranks add ring latency and switch hops, not bandwidth per GPU "
        "(slower, if only slightly: most of those collectives overlap the backward)"),
    # ------------------------------------------------------------------ dense job
    Row("dense: no sequence parallelism (activations)", ("parallel.sequence_parallel=false",), 2.6, 2.9,
        "Korthikanti: (8 + 24/t) / (32/t) at t = 8 without dropout = 2.75 (norm and first-GEMM inputs replicated)",
        metric="activations", job=DENSE),
    Row("dense: TP comm overlap", ("parallel.tp_comm_overlap=true",), 0.75, 1.0, "gathers and reduce-scatters "
        "pipelined against the GEMMs beside them: hides part of the TP traffic, never more", job=DENSE),
    Row("dense: ZeRO-3 time", ("parallel.zero_stage=3",), 1.0, 1.3, "per-layer gathers each micro-batch (2x) and "
        "reduce-scatters", job=DENSE),
    Row("dense: ZeRO-3 memory", ("parallel.zero_stage=3",), 0.6, 1.0, "weights sharded over 32 ranks",
        metric="memory", job=DENSE),
    Row("dense: CP2 activations", ("parallel.cp=2",), 0.49, 0.51, "each GPU holds half of every sequence",
        metric="activations", job=DENSE),
    Row("dense: interleaved vpp 2", ("parallel.schedule=interleaved-1f1b", "parallel.vpp=2"), 0.85, 1.0,
        "bubble (p-1)/(v m) halves: 3/16 -> 3/32 of the step", job=DENSE),
    Row("dense: full vs selective recompute", ("parallel.recompute=full",), 1.2, 1.5, "one more forward: +1/3 of "
        "compute, its TP collectives again", job=DENSE),
    Row("dense: FlashAttention-2 kernels", ("software.flash_kernel=fa2",), 1.02, 1.12, "the attention core is "
        "~7 % of a 70B layer's FLOPs at 8K (2 s d per token against 2 x 0.87B parameters) and FA2 runs it about 1.8x "
        "slower than FA3 on H100 (FA3 Figs. 5-6): about +5-8 %", job=DENSE),
    Row("dense: cuDNN attention", ("software.flash_kernel=cudnn",), 1.0, 1.03, "cuDNN's curve is within 10 % of "
        "FA3's on H100 (FA3 Figs. 5-6), on ~7 % of the FLOPs", job=DENSE),
    Row("dense: gradient reduction not overlapped", ("parallel.overlap_grad_reduce=false",), 1.0, 1.1,
        "the reduce-scatter after the backward instead of beside it", job=DENSE),
    Row("dense: data-parallel collectives at half NCCL's rate", ("software.dp_collective_efficiency=0.5",), 1.005,
        1.1, "every gradient reduction and parameter gather takes 2x: what the last backwards do not hide, and the "
        "gather after the optimizer, grow", job=DENSE),
    Row("dense: ZeRO-1 gradients all-reduced in full", ("software.zero1_grad_reduce=all_reduce",), 1.003, 1.1,
        "an all-reduce moves 2(n-1)/n of the gradient bytes per rank against the reduce-scatter's (n-1)/n", job=DENSE),
    Row("dense: tied embeddings", ("model.tie_word_embeddings=true",), 1.0003, 1.01, "the first and the last stage "
        "all-reduce the 128,256 x 8,192 / 8 embedding gradient over IB before the optimizer: ~10 ms of a ~10 s "
        "step", job=DENSE),
    Row("dense: FP32 gradient-accumulation pass", ("software.grad_accumulation=fp32_pass",), 1.02, 1.15, "after "
        "every micro-batch's backward a memory-bound pass of 18 B per stage parameter (about 2.2B per GPU: ~20 ms at "
        "2 TB/s) on the critical path of each backward", job=DENSE),
    Row("dense: 20 us per kernel launch", ("software.kernel_launch_us=20",), 1.01, 1.15, "every kernel pays 17.5 us "
        "more than the H100 profile's 2.5: a TP8 layer runs a few tens of kernels per micro-batch pass, 20 layers x "
        "32 micro-batches per rank make some 10,000-20,000 kernels, 0.2-0.35 s on a step of seconds", job=DENSE),
    Row("dense: pipeline scatter/gather under SP", ("software.pp_scatter_gather=true",), 0.9999, 1.0001,
        "sequence parallelism already splits the boundary activations by TP: nothing more to scatter", job=DENSE),
    Row("dense: FSDP2 copies under ZeRO-3", ("parallel.zero_stage=3", "software.fsdp_copies=true"), 1.01, 1.08,
        "the compute stream adds, per micro-batch and stage, memory-bound passes over the stage's 2.2B parameters "
        "per GPU (gradients into the accumulator, 6 B each in BF16: ~7 ms at 2 TB/s) beside ~180 ms of compute",
        ref=("parallel.zero_stage=3",), job=DENSE),
    Row("dense: K and V repeated to the query heads under all-gather CP", ("parallel.cp=2",
        "parallel.cp_mode=all_gather", "software.repeat_kv=true"), 1.05, 1.25, "the exposed K/V all-gathers and "
        "gradient reduce-scatters over InfiniBand carry 64 heads instead of 8 (8x the bytes: ~1 ms per layer and "
        "micro-batch beside ~9 ms of its compute)", ref=("parallel.cp=2", "parallel.cp_mode=all_gather"), job=DENSE),
    Row("dense: eager FP32 loss vs a fused one (memory, PP 1)", ("parallel.pp=1", "software.compile=false",
        "software.cross_entropy=torch_fp32"), 1.005, 1.06, "the loss keeps FP32 logits (4 B instead of 2) and its "
        "backward holds two FP32 gradients (8 B instead of 2) per logit: +8 B x 128,256 / TP 8 x 8,192 tokens, "
        "about 1 GB beside some 40-70 GB of states and activations", metric="memory",
        ref=("parallel.pp=1", "software.compile=false", "software.cross_entropy=fused"), job=DENSE),
]


@cache
def _step(job: str | None, overrides: tuple[str, ...], hardware: str | None) -> StepResult:
    s = load_scenario(job, hardware=hardware, gpus=2048 if hardware else None, overrides=list(overrides))
    return simulate_step(s, mode="fast", record_trace=False)


def _value(r: StepResult, metric: str) -> float:
    if metric == "time":
        return r.step_time_s
    if metric == "memory":
        return r.peak_memory_per_gpu_bytes
    return r.memory_per_rank[0]["activations_bytes"]


def ratio(row: Row) -> float:
    case = _step(row.job, row.case, row.hardware)
    ref = _step(row.job, row.ref, None)
    return _value(case, row.metric) / _value(ref, row.metric)


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_what_if(row: Row) -> None:
    r = ratio(row)
    assert row.lo <= r <= row.hi, f"{row.name}: {r:.3f} outside [{row.lo}, {row.hi}] ({row.why})"


@pytest.mark.parametrize("chain", [("none", "activations", "norm_and_up_proj", "full"),
                                   ("none", "activations", "alternate_matmuls", "full"),
                                   ("none", "selective", "full")])
def test_recompute_orders_time_and_memory(chain) -> None:
    """Along a chain of policies each re-running a superset of the previous one's ops: never faster, never
    more memory. (Policies off one chain need not order: re-running MLA's attention core costs more than
    DeepSeek's norms, up projections and SwiGLU at 4K tokens.)"""
    runs = [_step(None, (f"parallel.recompute={p}",), None) for p in chain]
    assert [r.step_time_s for r in runs] == sorted(r.step_time_s for r in runs)
    assert [r.peak_memory_per_gpu_bytes for r in runs] == sorted((r.peak_memory_per_gpu_bytes for r in runs),
                                                                 reverse=True)


def test_comm_sms_form_a_u() -> None:
    """Too few communication SMs starve the all-to-all, too many starve compute: 20 beats 4 and 60."""
    t = {n: _step(None, (f"parallel.comm_sms={n}",), None).step_time_s for n in (4, 20, 60)}
    assert t[20] < t[4] and t[20] < t[60]


if __name__ == "__main__":
    print(f"{'row':48} {'observed':>9}  band          reason")
    for row in ROWS:
        print(f"{row.name:48} {ratio(row):9.3f}  [{row.lo}, {row.hi}]  {row.why}")
