"""The expert all-to-all (dispatch and combine) as a mechanism: launch, handshake, SM-driven pipelined transfer.

DeepEP's normal kernels (DeepSeek-V3 tech report 3.2.2; deepseek-ai/DeepEP ``docs/legacy.md``) move a token
over InfiniBand to the GPU with its in-node index on each target node, which forwards it over NVLink to the GPUs
hosting its experts; combine runs the path backwards. Warps of the communication SMs do every step (IB send,
IB->NVLink forwarding, NVLink receive), chunk by chunk, so the three stages overlap. One phase costs::

    launch     = kernels x kernel_launch_us          (layout + notify + data kernel; 2 when cached)
    handshake  = notify: one exchange of counts (network + NVLink latency) and a barrier
                 (ceil(log2 nodes) network latencies + one NVLink latency); cached: the barrier only
    transfer   = (t_ib^p + t_nvl^p + t_sm^p)^(1/p),  t_ib = IB bytes / effective IB rate (fabric),
                 t_nvl = NVLink bytes / achievable NVLink rate, t_sm = (IB + NVLink bytes) / (SMs x per-SM rate)
    wait       = jitter_frac x preceding_compute_s x E[max of `ranks` standard normals]   (in situ only)

``transfer`` is a smooth maximum: it tends to the slowest stage and saturates at the link rates as SMs are
added; with few SMs the SMs' copy throughput paces it. The per-SM rate and the smoothness ``p`` are fitted to
DeepEP's published bandwidths (``python -m sim.calibrate.fit_alltoall``; the profile records data and errors).
``wait`` is the expected wait for the slowest of the group's ranks when each rank's arrival varies by a share
of the compute since the previous synchronisation (order statistics of a normal jitter); its share is fitted to
DeepSeek's training trace, whose notify and data kernels wait on peers (deepseek-ai/profile-data ``train.json``).
Latencies: ISCA'25 Table 5 (via ``sim.config.fabric``); launch: about 2.5 us per stream launch
(te42kyfo/gpu-benches ``gpu-small-kernels``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml
from pydantic import Field, model_validator

from sim.config.base import Frozen
from sim.config.fabric import FabricSpec
from sim.config.hardware import NodeSpec
from sim.loading import profiles_dir
from sim.network.fabric import FabricPath, fabric_path, place_group
from sim.units import GB, US


def comm_profiles_dir() -> Path:
    """``hardware_profiles/comm`` of the project (``SIM_HOME`` overrides, as for every profile)."""
    return profiles_dir() / "comm"


class A2AProfile(Frozen):
    """Parameters of an SM-driven expert all-to-all library, fitted or sourced (``sources``, ``fit``)."""

    name: str
    library: str
    smoothness: float = Field(ge=1.0, description="p of the smooth maximum of the pipelined stages")
    per_sm_gb_per_s: dict[str, float] = Field(description="per GPU architecture: IB + NVLink bytes one SM "
                                              "moves per second, GB/s")
    min_sms: int = Field(default=2, ge=1, description="fewest SMs the kernels run on")
    kernel_launch_us: float = Field(default=2.5, ge=0)
    kernels_notify: int = Field(default=3, ge=1, description="kernels of a non-cached dispatch")
    kernels_cached: int = Field(default=2, ge=1, description="kernels of a cached dispatch or a combine")
    jitter_frac: float = Field(default=0.0, ge=0, description="per-rank arrival jitter, share of the compute "
                               "since the previous synchronisation (in situ)")
    gpu_arch: dict[str, str] = Field(description="GPU profile name -> architecture key of per_sm_gb_per_s")
    sources: dict[str, str] = Field(default_factory=dict)
    fit: dict[str, str] = Field(default_factory=dict, description="what the fit used and its errors")

    @model_validator(mode="after")
    def _check(self) -> A2AProfile:
        bad = sorted(set(self.gpu_arch.values()) - set(self.per_sm_gb_per_s))
        if bad:
            raise ValueError(f"gpu_arch: architectures {bad} have no per_sm_gb_per_s entry")
        if any(v <= 0 for v in self.per_sm_gb_per_s.values()):
            raise ValueError("per_sm_gb_per_s: rates must be > 0")
        missing = [k for k in self.per_sm_gb_per_s if k not in self.sources]
        if missing:
            raise ValueError(f"sources: give a source for per_sm_gb_per_s of {', '.join(missing)}")
        return self

    def arch_of(self, gpu_name: str) -> str:
        try:
            return self.gpu_arch[gpu_name]
        except KeyError:
            raise ValueError(f"gpu.name: {gpu_name!r} has no architecture in the {self.name} profile; known: "
                             f"{', '.join(sorted(self.gpu_arch))}") from None

    def per_sm_bytes_per_s(self, arch: str) -> float:
        try:
            return self.per_sm_gb_per_s[arch] * GB
        except KeyError:
            raise ValueError(f"arch: {arch!r} not in the {self.name} profile; allowed: "
                             f"{', '.join(sorted(self.per_sm_gb_per_s))}") from None


@lru_cache(maxsize=8)
def load_a2a_profile(name: str = "deepep_v1") -> A2AProfile:
    """A profile from ``hardware_profiles/comm/<name>.yaml`` (or a path to a YAML file)."""
    folder = comm_profiles_dir()
    path = Path(name) if name.endswith(".yaml") else folder / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ValueError(f"profile: {name!r} is neither a file nor one of {', '.join(known)}")
    return A2AProfile.model_validate(yaml.safe_load(path.read_text()))


@dataclass(frozen=True, slots=True)
class A2ATraffic:
    """One phase's traffic on the busiest rank (larger direction), e.g. ``ExpertLoads.max_link_bytes``."""

    ib_bytes: float
    nvlink_bytes: float
    ranks: int       # EP group size (peers the handshake waits for)
    nodes: int       # nodes the group spans


@dataclass(frozen=True, slots=True)
class A2ALinks:
    """Rates and latencies one GPU sees during the all-to-all."""

    ib_bytes_per_s: float        # effective per GPU under symmetric load (``FabricPath.scaleout_bytes_per_s``)
    nvlink_bytes_per_s: float    # achievable per GPU and direction
    network_latency_s: float     # farthest pair over the network
    nvlink_latency_s: float
    per_sm_bytes_per_s: float


def a2a_links(node: NodeSpec, path: FabricPath, per_sm_bytes_per_s: float) -> A2ALinks:
    """Links of an EP group from its node and the fabric path of its ``all_to_all`` pattern."""
    return A2ALinks(path.scaleout_bytes_per_s, node.nvlink_bytes_per_s, path.network_latency_s,
                    node.nvlink_latency_us * US, per_sm_bytes_per_s)


@dataclass(frozen=True, slots=True)
class A2ATime:
    """Seconds of one dispatch or combine, by part, and the stage times inside the transfer."""

    launch_s: float
    handshake_s: float
    transfer_s: float
    wait_s: float
    ib_s: float
    nvlink_s: float
    sm_s: float

    @property
    def total_s(self) -> float:
        return self.launch_s + self.handshake_s + self.transfer_s + self.wait_s

    @property
    def bottleneck(self) -> str:
        stages = {"ib": self.ib_s, "nvlink": self.nvlink_s, "sm": self.sm_s}
        return max(stages, key=lambda k: stages[k])


def smooth_max(times: tuple[float, ...], p: float) -> float:
    """``(sum t^p)^(1/p)``: at least the largest, at most ``len ** (1/p)`` times it; the hard max as p grows."""
    top = max(times)
    if top <= 0:
        return 0.0
    return top * sum((t / top) ** p for t in times) ** (1.0 / p)


@lru_cache(maxsize=256)
def expected_max_normal(n: int) -> float:
    """E[max of n iid standard normals] (0 for n = 1; 0.564 for 2; 2.41 for 64), by quadrature."""
    if n < 1:
        raise ValueError(f"n: must be >= 1 (got {n})")
    if n == 1:
        return 0.0
    x = np.linspace(-10.0, 10.0, 8001)
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    dens = x * n * pdf * cdf ** (n - 1)
    return float(np.sum((dens[1:] + dens[:-1]) * 0.5 * np.diff(x)))


def handshake_seconds(nodes: int, links: A2ALinks, notify: bool) -> float:
    """Notify (counts exchange + barrier) or cached (barrier) latency; a dissemination barrier over nodes."""
    net = links.network_latency_s if nodes > 1 else 0.0
    barrier = math.ceil(math.log2(nodes)) * net + links.nvlink_latency_s if nodes > 1 else links.nvlink_latency_s
    return barrier + (net + links.nvlink_latency_s if notify else 0.0)


def a2a_seconds(traffic: A2ATraffic, links: A2ALinks, comm_sms: int, profile: A2AProfile, *, notify: bool = True,
                preceding_compute_s: float = 0.0) -> A2ATime:
    """One dispatch (``notify=True``: computes the layout and exchanges counts) or combine / cached dispatch
    (``notify=False``) on ``comm_sms`` SMs. ``preceding_compute_s`` > 0 adds the expected in-situ wait for the
    slowest of ``traffic.ranks`` ranks (see the module docstring); 0 gives the isolated kernel."""
    if traffic.ib_bytes < 0 or traffic.nvlink_bytes < 0:
        raise ValueError("traffic: bytes must be >= 0")
    if traffic.ranks < 1 or traffic.nodes < 1:
        raise ValueError("traffic: ranks and nodes must be >= 1")
    if preceding_compute_s < 0:
        raise ValueError("preceding_compute_s: must be >= 0")
    if traffic.ib_bytes == 0 and traffic.nvlink_bytes == 0:
        return A2ATime(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    if comm_sms < profile.min_sms:
        raise ValueError(f"comm_sms: the {profile.name} all-to-all runs on SMs and needs at least "
                         f"{profile.min_sms} (got {comm_sms})")
    if traffic.ib_bytes > 0 and links.ib_bytes_per_s <= 0:
        raise ValueError("links: IB bytes but no scale-out bandwidth")
    ib = traffic.ib_bytes / links.ib_bytes_per_s if traffic.ib_bytes > 0 else 0.0
    nvl = traffic.nvlink_bytes / links.nvlink_bytes_per_s
    sm = (traffic.ib_bytes + traffic.nvlink_bytes) / (comm_sms * links.per_sm_bytes_per_s)
    transfer = smooth_max((ib, nvl, sm), profile.smoothness)
    kernels = profile.kernels_notify if notify else profile.kernels_cached
    launch = kernels * profile.kernel_launch_us * US
    handshake = handshake_seconds(traffic.nodes, links, notify)
    wait = profile.jitter_frac * preceding_compute_s * expected_max_normal(traffic.ranks)
    return A2ATime(launch, handshake, transfer, wait, ib, nvl, sm)


def expert_a2a_seconds(ib_bytes: float, nvlink_bytes: float, *, ep: int, stride: int, node: NodeSpec, gpu_name: str,
                       fabric: FabricSpec, comm_sms: int, notify: bool, profile: A2AProfile | None = None,
                       preceding_compute_s: float = 0.0, arch: str | None = None) -> A2ATime:
    """One call for the cost model: an EP group of ``ep`` ranks ``stride`` apart (the TP size) on ``fabric``,
    moving the busiest rank's ``ib_bytes`` and ``nvlink_bytes`` (``ExpertLoads.max_link_bytes``). ``arch`` (the
    GPU profile's) picks the per-SM rate; without it the profile's map of GPU names does."""
    prof = profile or load_a2a_profile()
    place = place_group(ep, stride, node.gpus_per_node)
    path = fabric_path(fabric, node, place, "all_to_all")
    links = a2a_links(node, path, prof.per_sm_bytes_per_s(arch or prof.arch_of(gpu_name)))
    return a2a_seconds(A2ATraffic(ib_bytes, nvlink_bytes, ep, place.num_nodes), links, comm_sms, prof,
                       notify=notify, preceding_compute_s=preceding_compute_s)
