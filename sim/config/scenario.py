"""One training scenario: model x cluster x layout x precision x job, with its cross-field rules.

Cross-field rules raise ``ValueError`` whose message starts with the field it concerns.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from sim.config.base import Frozen
from sim.config.experts import ExpertLoadSpec
from sim.config.hardware import ClusterSpec
from sim.config.job import TrainingSpec
from sim.config.model import ModelSpec
from sim.config.parallel import ParallelSpec, PrecisionSpec
from sim.config.run import RunSpec
from sim.config.software import SoftwareSpec
from sim.pipeline import check_schedule, num_stages


class Scenario(Frozen):
    """One training scenario: model x cluster x layout x precision x job."""

    name: str
    model: ModelSpec
    cluster: ClusterSpec
    parallel: ParallelSpec
    precision: PrecisionSpec = PrecisionSpec()
    training: TrainingSpec
    experts: ExpertLoadSpec = ExpertLoadSpec()
    software: SoftwareSpec = SoftwareSpec()
    calibration: str | None = Field(default=None, description="calibration table path (YAML)")
    run: RunSpec | None = Field(default=None, description="the whole run as phases (sim estimate)")
    notes: str = ""

    @property
    def a2a_library(self) -> str:
        """The expert all-to-all's library (``software.a2a_library``, defaulting on ``comm_sms``)."""
        lib = self.software.a2a_library
        return lib if lib is not None else ("deepep_v1" if self.parallel.comm_sms > 0 else "nccl")

    @property
    def sm_partition(self) -> str:
        """How communication takes SMs from compute (``software.sm_partition``, defaulting on the library)."""
        part = self.software.sm_partition
        return part if part is not None else ("static" if self.a2a_library.startswith("deepep") else "dynamic")

    @property
    def redundant_experts(self) -> int:
        """Redundant expert slots of the EP group: ``experts.num_redundant_experts`` under policy ``eplb``, one per
        GPU of the EP group when unset (DeepSeek's prefill deployment ratio, EP32 with 32 redundant experts);
        none under other policies."""
        e = self.experts
        if e.policy != "eplb":
            return 0
        return e.num_redundant_experts if e.num_redundant_experts is not None else self.parallel.ep

    @property
    def num_gpus(self) -> int:
        return self.cluster.num_gpus

    @property
    def dp(self) -> int:
        """Data-parallel size: GPUs / (TP x PP x CP)."""
        p = self.parallel
        return p.dp if p.dp is not None else self.num_gpus // (p.tp * p.pp * p.cp)

    @property
    def grad_replicas(self) -> int:
        """Ranks of a stage holding the same dense parameters, whose gradients are reduced together: the data-
        and context-parallel ranks (Megatron-LM reduces over the DP x CP group)."""
        return self.dp * self.parallel.cp

    @property
    def fsdp_shard_size(self) -> int:
        """ZeRO shard group size: ``fsdp_shard_group`` (hybrid sharding), else every gradient replica."""
        g = self.parallel.fsdp_shard_group
        return g if g is not None else self.grad_replicas

    @property
    def fsdp_reshard(self) -> bool:
        """ZeRO-3: whether gathered parameters are freed after forward (FSDP2's default: true)."""
        r = self.parallel.fsdp_reshard_after_forward
        return True if r is None else r

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
        """Tokens of one micro-batch (all its sequences, whole)."""
        return self.parallel.micro_batch_size * self.training.seq_len

    @property
    def tokens_per_gpu(self) -> int:
        """Tokens of a micro-batch one GPU holds: its 1/CP of every sequence (before any TP/SP split)."""
        return self.tokens_per_microbatch // self.parallel.cp

    @property
    def expert_tokens_per_gpu(self) -> int:
        """Tokens each GPU routes to the experts per micro-batch: with TP the group splits its tokens for the
        dispatch (Megatron-Core's sequence-parallel MoE, expert TP 1), and CP splits each sequence."""
        return self.tokens_per_microbatch // (self.parallel.cp * self.parallel.tp)

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        p, m, t = self.parallel, self.model, self.training
        world = self.num_gpus
        if world % (p.tp * p.pp * p.cp):
            raise ValueError(f"parallel: tp x pp x cp = {p.tp} x {p.pp} x {p.cp} must divide the {world} GPUs")
        dp = world // (p.tp * p.pp * p.cp)
        if p.dp is not None and p.dp != dp:
            raise ValueError(f"parallel.dp: world size {world} = tp x pp x cp x dp needs dp = {dp} (got {p.dp})")
        if p.tp > self.cluster.node.gpus_per_node:
            raise ValueError(f"parallel.tp: {p.tp} exceeds the {self.cluster.node.gpus_per_node} GPUs of a "
                             "node (tensor parallelism stays inside the NVLink domain)")
        if m.n_heads % p.tp:
            raise ValueError(f"parallel.tp: must divide n_heads {m.n_heads} (got {p.tp})")
        if m.attention == "gqa" and m.kv_heads % p.tp and p.tp % m.kv_heads:
            raise ValueError(f"parallel.tp: must divide or be a multiple of n_kv_heads {m.kv_heads}")
        self._check_sequence()
        self._check_experts(dp)
        self._check_batch(dp)
        self._check_stages()
        self._check_sharding(dp)
        self._check_overlap()
        if p.comm_sms >= self.cluster.gpu.num_sms:
            raise ValueError(f"parallel.comm_sms: must be < the GPU's {self.cluster.gpu.num_sms} SMs")
        if self.precision.uses_fp8 and not self.cluster.gpu.supports_fp8:
            raise ValueError(f"precision: {self.cluster.gpu.name} has no FP8 tensor cores; "
                             "use bf16 for fprop, dgrad, wgrad, attention, dispatch and combine")
        if t.batch_ramp and t.batch_ramp.start_global_batch_size > t.global_batch_size:
            raise ValueError("training.batch_ramp.start_global_batch_size: must be <= global_batch_size")
        return self

    def _check_sequence(self) -> None:
        """Context parallelism splits each sequence into 2 x CP chunks (zig-zag load balancing, Megatron-LM
        ``get_batch_on_this_cp_rank``; Llama 3's all-gather CP likewise); sequence parallelism splits each
        GPU's tokens over the TP group (Megatron-LM requires the sequence divisible by TP)."""
        p, seq = self.parallel, self.training.seq_len
        if p.cp > 1 and seq % (2 * p.cp):
            raise ValueError(f"parallel.cp: the sequence ({seq} tokens) must divide into 2 x cp = {2 * p.cp} "
                             "chunks (zig-zag load balancing)")
        if p.sequence_parallel and p.tp > 1 and (seq // p.cp) % p.tp:
            raise ValueError(f"parallel.sequence_parallel: each GPU's {seq // p.cp} tokens of a sequence must "
                             f"divide by tp {p.tp}")

    def _check_experts(self, dp: int) -> None:
        p, m = self.parallel, self.model
        if p.ep > 1 and not m.is_moe:
            raise ValueError("parallel.ep: expert parallelism needs an MoE model (n_routed_experts > 0)")
        if not m.is_moe:
            return
        if p.ep > m.n_routed_experts:
            raise ValueError(f"parallel.ep: {p.ep} exceeds the {m.n_routed_experts} routed experts")
        if m.n_routed_experts % p.ep:
            raise ValueError(f"parallel.ep: must divide n_routed_experts {m.n_routed_experts} (got {p.ep})")
        span = dp * p.tp * p.cp
        if span % p.ep:
            raise ValueError(f"parallel.ep: must divide dp x tp x cp = {span} (expert parallelism spans the data-, "
                             f"tensor- and context-parallel ranks of a stage; got {p.ep})")
        if p.tp > 1 and not p.sequence_parallel:
            raise ValueError("parallel.sequence_parallel: an MoE model with tp > 1 needs sequence parallelism "
                             "(each TP rank dispatches its share of the tokens; Megatron-LM MoE README)")
        redundant = self.experts.num_redundant_experts
        if redundant is not None and redundant % p.ep:
            raise ValueError(f"experts.num_redundant_experts: must be a multiple of the EP size {p.ep} (every GPU "
                             f"gets the same number of slots; got {redundant})")

    def _check_stages(self) -> None:
        p, m = self.parallel, self.model
        stages = num_stages(p.schedule, p.pp, p.vpp)
        layers = m.n_layers + m.n_mtp_layers
        if p.stage_layers is None:
            if stages > layers:
                raise ValueError(f"parallel.pp: {stages} pipeline stages exceed the {layers} transformer layers "
                                 "(give parallel.stage_layers with zeros for embedding- or head-only stages)")
            return
        if len(p.stage_layers) != stages:
            raise ValueError(f"parallel.stage_layers: needs {stages} entries, one per stage "
                             f"(got {len(p.stage_layers)})")
        if sum(p.stage_layers) != layers or min(p.stage_layers) < 0:
            raise ValueError(f"parallel.stage_layers: must be non-negative and sum to {layers} "
                             f"(n_layers + n_mtp_layers; got {sum(p.stage_layers)})")
        if p.stage_layers[-1] < m.n_mtp_layers:
            raise ValueError(f"parallel.stage_layers: the last stage must hold the {m.n_mtp_layers} "
                             "MTP layers (they share the output head)")
        empty = [i for i, n in enumerate(p.stage_layers[1:-1], start=1) if n == 0]
        if empty:
            raise ValueError(f"parallel.stage_layers: stage {empty[0]} would hold nothing; only the first stage "
                             "(embedding) and the last (output head) may have zero layers")

    def _check_sharding(self, dp: int) -> None:
        p, prec = self.parallel, self.precision
        if prec.fp8_weight_gather and (p.zero_stage != 3 or prec.fprop != "fp8" or prec.fp8_scaling != "tensorwise"):
            raise ValueError("precision.fp8_weight_gather: gathers FP8 weights under ZeRO-3; needs zero_stage 3, "
                             f"fprop fp8 and fp8_scaling tensorwise (got zero_stage {p.zero_stage}, fprop "
                             f"{prec.fprop}, fp8_scaling {prec.fp8_scaling})")
        if p.zero_stage != 3:
            for key in ("fsdp_shard_group", "fsdp_reshard_after_forward"):
                if getattr(p, key) is not None:
                    raise ValueError(f"parallel.{key}: applies to FSDP / ZeRO-3 (zero_stage: 3); got zero_stage "
                                     f"{p.zero_stage}")
            return
        replicas = dp * p.cp
        g = p.fsdp_shard_group
        if g is not None and (g > replicas or replicas % g):
            raise ValueError(f"parallel.fsdp_shard_group: must divide the {replicas} data- x context-parallel "
                             f"ranks that hold the same parameters (got {g})")

    def _check_overlap(self) -> None:
        p, m = self.parallel, self.model
        if p.tp_comm_overlap and (p.tp < 2 or not p.sequence_parallel):
            raise ValueError(f"parallel.tp_comm_overlap: needs tp >= 2 and sequence_parallel: true (got tp {p.tp}, "
                             f"sequence_parallel {p.sequence_parallel}; Megatron-Bridge's gating)")
        if p.ep_overlap:
            if not (m.is_moe and p.ep > 1):
                raise ValueError("parallel.ep_overlap: overlaps the expert all-to-all; needs an MoE model with ep > 1")
            if p.schedule not in ("1f1b", "interleaved-1f1b"):
                raise ValueError(f"parallel.ep_overlap: applies to 1f1b and interleaved-1f1b (got {p.schedule}; "
                                 "dualpipe and dualpipev overlap their own F&B pairs)")
            if p.schedule == "1f1b" and p.pp > 1:
                raise ValueError(f"parallel.ep_overlap: with pipeline parallelism (pp {p.pp}) needs "
                                 "interleaved-1f1b (Megatron-Core's combined 1F1B requires virtual stages when "
                                 "pp > 1: a pair's backward output would wait for the next forward's)")

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


def evolve(scenario: Scenario, changes: dict[str, object]) -> Scenario:
    """``scenario`` with dotted-path fields replaced (``{"experts.skew": "balanced"}``), validated again."""
    data = scenario.model_dump()
    for path, value in changes.items():
        node = data
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise KeyError(f"{path}: no such field")
        node[leaf] = value
    return Scenario.model_validate(data)
