"""Legality of a point before anything is built: the scenario's own rules on plain integers, fast enough for
millions of points.

Each rule is one that ``sim.config.Scenario`` (and the cluster profile, and ``sim.pipeline.check_schedule``)
enforces; checking them here on a few integers costs microseconds where validating a scenario costs a
fraction of a millisecond. The rules are a subset of the validators, never more: a point that passes here is
still validated in full before it is simulated, and one the validators refuse is reported there with their
message. Rule names in the results:

- ``hardware``: the GPU count is not whole nodes, or the cluster's fabric cannot hold it;
- ``layout``: divisibility and placement (``tp x pp`` divides the GPUs, TP inside a node and dividing the
  heads, EP dividing the experts and ``dp x tp``, no more stages than layers, FP8 only on GPUs that have it);
- ``batch``: the global batch does not split into ``dp x micro_batch_size`` micro-batches;
- ``n/a``: no configuration: a swept ``vpp`` > 1 with a schedule that has no virtual stages, or interleaved
  1F1B at vpp 1 (the product of the ``schedule`` and ``vpp`` axes makes these);
- ``schedule``: a schedule precondition (DualPipe's even micro-batches >= 2 pp, interleaving's vpp >= 2 and
  micro-batches divisible by pp; deepseek-ai/DualPipe, Megatron-LM).

Example: DeepSeek-V3 (61 layers + 1 MTP, 256 experts) on 2,048 GPUs at TP16 is ``layout`` ("parallel.tp: 16
exceeds the 8 GPUs of a node"); DualPipe at PP16 x DP128 with a 3,072-sequence batch is ``schedule`` (24
micro-batches < 2 x 16).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from pydantic import ValidationError

from sim.config import ClusterSpec, PrecisionSpec
from sim.errors import format_validation_error
from sim.pipeline import check_schedule, num_stages
from sim.sweep.space import Space

Verdict = tuple[str, str]  # (rule, reason)
#: The rule of a point that is no configuration at all (:meth:`Rules.not_a_configuration`): the product of the
#: axes paired a schedule without virtual stages with a swept vpp > 1 (the same configuration is the point at
#: vpp 1), or interleaved 1F1B with vpp 1 (which is 1F1B). It takes precedence over every other rule.
NOT_A_CONFIGURATION = "n/a"
#: Axes the first group of rules reads (:meth:`Rules.prefix`): when they lead the enumeration, a verdict on
#: them covers every point that shares them.
PREFIX = ("hardware", "gpus", "tp", "pp", "dp", "ep", "cp")


@dataclass(frozen=True, slots=True)
class Layout:
    """The integers of one point that the rules and the memory model read."""

    hardware: str
    gpus: int
    tp: int
    pp: int
    dp: int
    ep: int
    cp: int
    schedule: str
    vpp: int
    micro_batch_size: int
    num_microbatches: int
    zero_stage: int
    recompute: str
    precision: str
    seq_len: int
    global_batch_size: int


class Rules:
    """The rules of one space, with what they read cached per hardware and GPU count."""

    def __init__(self, space: Space) -> None:
        self.space = space
        b = space.base
        self.model = space.base_scenario.model
        self.par = b["parallel"]
        self.training = b["training"]
        self._clusters: dict[tuple[Any, ...], ClusterSpec | str] = {}
        self._fp8: dict[Any, bool] = {}
        self._sched: dict[tuple[str, int, int, int], str | None] = {}
        idx = space.index
        self._cluster_axes = [i for i, a in enumerate(space.axes) if a.name.startswith("cluster.")]
        self._get = {name: idx.get(name) for name in ("tp", "pp", "dp", "ep", "cp", "schedule", "vpp",
                                                      "micro_batch_size", "num_microbatches", "zero_stage",
                                                      "recompute", "precision", "training.seq_len",
                                                      "training.global_batch_size", "sequence_parallel")}

    def cluster(self, point: tuple[Any, ...]) -> ClusterSpec | str:
        """The point's cluster, or why there is none."""
        hw, gpus = self.space.hardware_of(point), self.space.num_gpus(point)
        key = (hw, gpus, *(point[i] for i in self._cluster_axes))
        hit = self._clusters.get(key)
        if hit is None:
            data = self.space.cluster_data(point)
            gpn = data["node"]["gpus_per_node"]
            if gpus < 1 or gpus % gpn:
                hit = f"gpus: {gpus} is not a whole number of {gpn}-GPU nodes"
            else:
                try:
                    hit = ClusterSpec.model_validate(data)
                except ValidationError as e:
                    hit = "cluster." + format_validation_error(e, ClusterSpec).replace("\n", "; ")
            self._clusters[key] = hit
        return hit

    def _v(self, point: tuple[Any, ...], name: str, default: Any) -> Any:
        i = self._get[name]
        return point[i] if i is not None else default

    def layout(self, point: tuple[Any, ...], gpus: int) -> Layout:
        p, t, v = self.par, self.training, self._v
        tp, pp, cp = v(point, "tp", p["tp"]), v(point, "pp", p["pp"]), v(point, "cp", p.get("cp", 1) or 1)
        mbs = v(point, "micro_batch_size", p["micro_batch_size"])
        gbs = v(point, "training.global_batch_size", t["global_batch_size"])
        dp = v(point, "dp", None) or gpus // (tp * pp * cp)
        nmb = v(point, "num_microbatches", None) or (gbs // (dp * mbs) if dp * mbs else 0)
        return Layout(self.space.hardware_of(point), gpus, tp, pp, dp, v(point, "ep", p["ep"]), cp,
                      v(point, "schedule", p["schedule"]), v(point, "vpp", p["vpp"]), mbs, nmb,
                      v(point, "zero_stage", p["zero_stage"]), v(point, "recompute", p["recompute"]),
                      v(point, "precision", "base"), v(point, "training.seq_len", t["seq_len"]), gbs)

    def uses_fp8(self, point: tuple[Any, ...]) -> bool:
        label = self._v(point, "precision", None)
        hit = self._fp8.get(label)
        if hit is None:
            axis = self.space.axes[cast(int, self._get["precision"])] if label is not None else None
            change = axis.changes[label] if axis is not None and axis.changes else {}
            hit = PrecisionSpec.model_validate({**self.space.base["precision"], **change}).uses_fp8
            self._fp8[label] = hit
        return hit

    def not_a_configuration(self, schedule: str, vpp: int) -> str | None:
        """Why a (schedule, vpp) pair of the axes' product is no configuration, or None: a schedule without
        virtual stages at vpp > 1 when the vpp axis also holds 1 (that point is the configuration), or
        interleaved 1F1B at vpp 1 (which is 1F1B) when the axis holds a vpp >= 2. Without such a partner the
        pair is a configuration the schedule rule refuses."""
        i = self._get["vpp"]
        if i is None:
            return None
        vpps = self.space.axes[i].values
        if schedule != "interleaved-1f1b" and vpp != 1 and 1 in vpps:
            return (f"parallel.vpp: {vpp} virtual stages per rank apply only to interleaved-1f1b; {schedule} "
                    "is swept at vpp 1")
        if schedule == "interleaved-1f1b" and vpp == 1 and any(x >= 2 for x in vpps):
            return "parallel.vpp: interleaved-1f1b with one virtual stage per rank is 1f1b; it is swept at vpp >= 2"
        return None

    def check(self, point: tuple[Any, ...]) -> tuple[Verdict | None, Layout | None, ClusterSpec | None]:
        """(rule, reason) of the first rule the point breaks, or None; with its layout and cluster."""
        na = self.not_a_configuration(self._v(point, "schedule", self.par["schedule"]),
                                      self._v(point, "vpp", self.par["vpp"]))
        if na is not None:
            return (NOT_A_CONFIGURATION, na), None, None
        verdict, cluster = self.prefix(point)
        if verdict is not None or cluster is None:
            return verdict, None, None
        lay = self.layout(point, cluster.num_gpus)
        return self.rest(point, lay, cluster), lay, cluster

    def prefix(self, point: tuple[Any, ...]) -> tuple[Verdict | None, ClusterSpec | None]:
        """The rules that read only the hardware, the GPU count and TP, PP, DP, EP, CP (:data:`PREFIX`)."""
        cluster = self.cluster(point)
        if isinstance(cluster, str):
            return ("hardware", cluster), None
        v, p = self._v, self.par
        m, gpus = self.model, cluster.num_gpus
        tp, pp, ep = v(point, "tp", p["tp"]), v(point, "pp", p["pp"]), v(point, "ep", p["ep"])
        cp = v(point, "cp", p.get("cp", 1) or 1)
        gpn = cluster.node.gpus_per_node
        if gpus % (tp * pp * cp):
            return ("layout", f"parallel: tp x pp = {tp} x {pp} must divide the {gpus} GPUs"), cluster
        dp = gpus // (tp * pp * cp)
        given = v(point, "dp", None)
        if given is not None and given != dp:
            return ("layout", f"parallel.dp: world size {gpus} = tp x pp x dp needs dp = {dp} (got {given})"), cluster
        if tp > gpn:
            return ("layout", f"parallel.tp: {tp} exceeds the {gpn} GPUs of a node"), cluster
        if m.n_heads % tp:
            return ("layout", f"parallel.tp: must divide n_heads {m.n_heads} (got {tp})"), cluster
        if m.attention == "gqa" and m.kv_heads % tp and tp % m.kv_heads:
            return ("layout", f"parallel.tp: must divide or be a multiple of n_kv_heads {m.kv_heads}"), cluster
        if ep > 1 and not m.is_moe:
            return ("layout", "parallel.ep: expert parallelism needs an MoE model"), cluster
        if m.is_moe:
            if ep > m.n_routed_experts or m.n_routed_experts % ep:
                return ("layout", f"parallel.ep: must divide n_routed_experts {m.n_routed_experts} (got {ep})"), cluster
            if (dp * tp * cp) % ep:
                return ("layout", f"parallel.ep: must divide dp x tp x cp = {dp * tp * cp} (got {ep})"), cluster
            if tp > 1 and v(point, "sequence_parallel", True) is False:
                return ("layout", "parallel.sequence_parallel: an MoE model with tp > 1 needs sequence "
                                  "parallelism"), cluster
        return None, cluster

    def rest(self, point: tuple[Any, ...], lay: Layout, cluster: ClusterSpec) -> Verdict | None:
        """The rules that read the rest of the point (batch, schedule, stages, SMs, FP8), once :meth:`prefix`
        passed."""
        m, pp, dp = self.model, lay.pp, lay.dp
        na = self.not_a_configuration(lay.schedule, lay.vpp)
        if na is not None:
            return NOT_A_CONFIGURATION, na
        if self._get["num_microbatches"] is None:
            if lay.global_batch_size % (dp * lay.micro_batch_size):
                return "batch", (f"training.global_batch_size: {lay.global_batch_size} sequences must divide "
                                 f"into dp x micro_batch_size = {dp} x {lay.micro_batch_size}")
        elif lay.num_microbatches * dp * lay.micro_batch_size != lay.global_batch_size:
            return "batch", (f"parallel.num_microbatches: {lay.num_microbatches} x dp {dp} x micro_batch_size "
                             f"{lay.micro_batch_size} must equal global_batch_size {lay.global_batch_size}")
        key = (lay.schedule, pp, lay.num_microbatches, lay.vpp)
        problem = self._sched.get(key, "")
        if problem == "":
            problem = self._sched[key] = check_schedule(*key)
        if problem:
            return "schedule", f"parallel.schedule: {problem}"
        stages = num_stages(lay.schedule, pp, lay.vpp)
        layers = m.n_layers + m.n_mtp_layers
        if stages > layers:
            return "layout", f"parallel.pp: {stages} pipeline stages exceed the {layers} transformer layers"
        if self.par.get("comm_sms", 0) >= cluster.gpu.num_sms:
            return "layout", f"parallel.comm_sms: must be < the GPU's {cluster.gpu.num_sms} SMs"
        if not cluster.gpu.supports_fp8 and self.uses_fp8(point):
            return "layout", f"precision: {cluster.gpu.name} has no FP8 tensor cores"
        return None
