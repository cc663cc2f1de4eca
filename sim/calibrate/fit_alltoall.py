"""Fit the expert all-to-all model (``sim.network.alltoall``) to DeepEP's published figures and DeepSeek's trace.

Run ``python -m sim.calibrate.fit_alltoall`` to print the parameters, the data each was fitted on and the
errors on held-out data; ``--write`` regenerates ``hardware_profiles/comm/deepep_v1.yaml`` and ``deepep_v2.yaml``.

Data (transcribed below with sources):

- DeepEP V1 normal kernels on H800 + CX7 400G, 4,096 tokens, hidden 7,168, top-8, FP8 dispatch, BF16 combine
  (deepseek-ai/DeepEP ``docs/legacy.md``, table of commit 3b1045d): intranode EP8 153/158 GB/s (NVLink),
  internode EP16/32/64 43/43, 58/57, 51/50 GB/s (RDMA), at ``Buffer.num_sms`` = 20 (V1 default; the README
  example uses 24: ``--bench-sms 24`` shows the sensitivity).
- DeepEP V2 (current README), 8,192 tokens: SM90 + CX7 EP 8x2 90/81 GB/s on 12 SMs, 8x4 61/61 on 6 SMs;
  SM100 EP8 over NVLink 643/675 on 24 SMs and 726/740 on 64 SMs.
- DeepSeek's H800 training trace (deepseek-ai/profile-data ``train.json``; the regions table
  ``hardware_profiles/calibrated/h800_deepseek_trace_regions.csv``): per layer the communication stream's time
  of every dispatch/combine region at EP64 on 20 SMs.

How a published bandwidth becomes a time: DeepEP's tests divide *logical* bytes by the time. Intranode they
count every received token (own rank included): ``T x G x b``; internode the RDMA bytes per distinct target
node, own node included: ``T x N x b`` (G, N: distinct GPUs and nodes per token under the test's routing:
uniform top-8 of 256 experts, node groups, top-min(nodes, 4) groups). The bytes on the wires of the busiest
rank (what ``sim.experts.loads`` gives the simulator) are ``T N (n-1)/n b`` over IB and ``T G (g-1)/g b`` over
NVLink (n nodes, g GPUs per node) [DERIVED; the tests' definitions are read from DeepEP's tests, not checked
here]. V2's "logical" figures are read the same way; V2's SM90 EP 8x2 result needs more NVLink bandwidth than
an H800 has (255 GB/s forwarded), so its machine is taken as an H100-class node (370 GB/s) [ASSUMED].

Fit: ``p`` (smoothness) and V1's per-SM rate on EP8, EP32, EP64 (held out: EP16); V2's per-SM rates with the
same ``p``: SM100 on 24 SMs (held out: 64 SMs), SM90 on 6 SMs (held out: EP 8x2 on 12 SMs). In-situ jitter:
trace layers 1-2 (held out: layers 3-4). Errors are of the time, in percent.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from math import comb
from pathlib import Path

import numpy as np
import yaml

from sim.config.fabric import PRESETS
from sim.config.hardware import NodeSpec
from sim.experts.fanout import reach_probability
from sim.loading import profiles_dir
from sim.network.alltoall import (
    A2ALinks,
    A2AProfile,
    A2ATraffic,
    a2a_links,
    a2a_seconds,
    expected_max_normal,
    handshake_seconds,
)
from sim.network.fabric import fabric_path, place_group
from sim.units import GB, US

HIDDEN = 7168
LAUNCH_US = 2.5       # per stream kernel launch (te42kyfo/gpu-benches gpu-small-kernels)
KERNELS_CACHED = 2    # cached_notify + data kernel
FP8_TOKEN_BYTES = HIDDEN + 4.0 * HIDDEN / 128   # FP8 values + one fp32 scale per 128 (DeepEP fp8_factor)
BF16_TOKEN_BYTES = 2.0 * HIDDEN
LEGACY = "deepseek-ai/DeepEP docs/legacy.md (normal kernels, commit 3b1045d)"
V2_README = "deepseek-ai/DeepEP README (EPv2 table)"


@dataclass(frozen=True)
class Bench:
    name: str
    library: str        # "v1" | "v2"
    arch: str
    node: str           # hardware_profiles/nodes/<node>.yaml
    ep: int
    sms: int
    tokens: int
    phase: str          # "dispatch" | "combine"
    gb_per_s: float     # published logical bandwidth
    source: str


def benches(v1_sms: int = 20) -> list[Bench]:
    out = []
    for ep, d, c in ((8, 153, 158), (16, 43, 43), (32, 58, 57), (64, 51, 50)):
        for phase, bw in (("dispatch", d), ("combine", c)):
            out.append(Bench(f"v1 EP{ep} {phase}", "v1", "sm90", "hgx_h800", ep, v1_sms, 4096, phase, bw, LEGACY))
    for ep, sms, d, c in ((16, 12, 90, 81), (32, 6, 61, 61)):
        for phase, bw in (("dispatch", d), ("combine", c)):
            out.append(Bench(f"v2 SM90 EP8x{ep // 8} {sms} SMs {phase}", "v2", "sm90", "hgx_h100", ep, sms, 8192,
                             phase, bw, V2_README))
    for sms, d, c in ((24, 643, 675), (64, 726, 740)):
        for phase, bw in (("dispatch", d), ("combine", c)):
            out.append(Bench(f"v2 SM100 EP8 {sms} SMs {phase}", "v2", "sm100", "dgx_b200", 8, sms, 8192, phase,
                             bw, V2_README))
    return out


V1_FIT = ("v1 EP8", "v1 EP32", "v1 EP64")
V2_FIT = ("v2 SM100 EP8 24 SMs", "v2 SM90 EP8x4 6 SMs")


def reach(ep: int, experts: int = 256, top_k: int = 8) -> tuple[float, float]:
    """Distinct nodes and GPUs per token under DeepEP's test routing (see the module docstring)."""
    nodes = max(1, ep // 8)
    groups = min(nodes, 4)
    if groups == nodes:  # every group selected: a uniform top-k subset
        per_node = 1 - comb(experts - experts // nodes, top_k) / comb(experts, top_k)
        per_gpu = 1 - comb(experts - experts // ep, top_k) / comb(experts, top_k)
    else:
        per_group = experts // nodes
        per_node = reach_probability({0: per_group}, nodes, per_group, groups, top_k)
        per_gpu = reach_probability({0: experts // ep}, nodes, per_group, groups, top_k)
    return nodes * per_node, ep * per_gpu


def node_spec(name: str) -> NodeSpec:
    return NodeSpec.model_validate(yaml.safe_load((profiles_dir() / "nodes" / f"{name}.yaml").read_text()))


def links_for(node: NodeSpec, ep: int, per_sm: float = 1.0) -> tuple[A2ALinks, int]:
    place = place_group(ep, 1, node.gpus_per_node)
    path = fabric_path(PRESETS["deepseek_mpft"], node, place, "all_to_all")
    return a2a_links(node, path, per_sm), place.num_nodes


@dataclass(frozen=True)
class Case:
    bench: Bench
    traffic: A2ATraffic
    links: A2ALinks
    measured_s: float


def case(b: Bench) -> Case:
    nodes, gpus = reach(b.ep)
    n_nodes, gpn = max(1, b.ep // 8), min(8, b.ep)
    token = FP8_TOKEN_BYTES if b.phase == "dispatch" else BF16_TOKEN_BYTES
    ib = b.tokens * nodes * (n_nodes - 1) / n_nodes * token
    nvl = b.tokens * gpus * (gpn - 1) / gpn * token
    logical = b.tokens * (gpus if n_nodes == 1 else nodes) * token
    links, _ = links_for(node_spec(b.node), b.ep)
    return Case(b, A2ATraffic(ib, nvl, b.ep, n_nodes), links, logical / (b.gb_per_s * GB))


def _grid_times(cases: list[Case], p: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Isolated model times [p, beta, case] by broadcasting (same formula as ``a2a_seconds``, cached kernels)."""
    out = []
    for c in cases:
        t, lk = c.traffic, c.links
        ib = t.ib_bytes / lk.ib_bytes_per_s if t.ib_bytes else 0.0
        nvl = t.nvlink_bytes / lk.nvlink_bytes_per_s
        sm = (t.ib_bytes + t.nvlink_bytes) / (c.bench.sms * beta[None, :])
        top = np.maximum(np.maximum(ib, nvl), sm)
        pp = p[:, None]
        smooth = top * ((ib / top) ** pp + (nvl / top) ** pp + (sm / top) ** pp) ** (1.0 / pp)
        fixed = KERNELS_CACHED * LAUNCH_US * US + handshake_seconds(t.nodes, lk, notify=False)
        out.append(smooth + fixed)
    return np.stack(out, axis=-1)


def _fit(cases: list[Case], p_grid: np.ndarray, beta_grid: np.ndarray) -> tuple[float, float]:
    """Least squares on log time over the grids, then a finer grid around the optimum."""
    for _ in range(3):
        err = np.log(_grid_times(cases, p_grid, beta_grid) / np.array([c.measured_s for c in cases]))
        i, j = np.unravel_index(np.argmin(np.mean(err**2, axis=-1)), err.shape[:2])
        p_best, b_best = float(p_grid[i]), float(beta_grid[j])
        if len(p_grid) > 1:
            step = p_grid[1] - p_grid[0]
            p_grid = np.linspace(max(1.0, p_best - step), p_best + step, 41)
        ratio = beta_grid[1] / beta_grid[0]
        beta_grid = np.geomspace(b_best / ratio, b_best * ratio, 81)
    return p_best, b_best


def predict(c: Case, p: float, per_sm_bytes_per_s: float) -> float:
    prof = _profile("fit", p, {c.bench.arch: per_sm_bytes_per_s / GB}, 0.0)
    links = A2ALinks(c.links.ib_bytes_per_s, c.links.nvlink_bytes_per_s, c.links.network_latency_s,
                     c.links.nvlink_latency_s, per_sm_bytes_per_s)
    return a2a_seconds(c.traffic, links, c.bench.sms, prof, notify=False).total_s


def _profile(name: str, p: float, per_sm: dict[str, float], jitter: float) -> A2AProfile:
    return A2AProfile(name=name, library=name, smoothness=p, per_sm_gb_per_s=per_sm, jitter_frac=jitter,
                      gpu_arch={}, sources={k: "fit" for k in per_sm})


# --------------------------------------------------------------------------- the trace (in situ)
#: (comm region, kernel, preceding compute region and its layer offset): DeepSeek's DualPipe F&B pair.
TRACE_REGIONS = {"dispatch(F)": ("dispatch", True, "attn(F)", 0), "combine(F)": ("combine", False, "mlp(F)", 0),
                 "dispatch(B)": ("combine", False, "mlp(B)", 0), "combine(B)": ("dispatch", False, "attn(B)", -1)}


def trace_rows(path: Path) -> list[dict[str, float | str]]:
    """Comm regions with their measured time and the compute block before them (combine(B) of layer 1 has none
    in the trace and is left out). Bytes: DeepSeek-V3 EP64 balanced routing, 4,096 tokens, 4 nodes and 7.46 GPUs
    per token (``sim.experts.fanout``), FP8 dispatch and BF16 combine/gradients."""
    with path.open() as f:
        rows = list(csv.DictReader(f))
    busy = {(r["region"], int(r["layer"])): float(r["compute_stream7_busy_us"]) for r in rows}
    out: list[dict[str, float | str]] = []
    for r in rows:
        if r["region"] not in TRACE_REGIONS:
            continue
        kind, notify, before, offset = TRACE_REGIONS[r["region"]]
        layer = int(r["layer"])
        if (before, layer + offset) not in busy:
            continue
        out.append({"region": r["region"], "layer": layer, "kind": kind, "notify": notify,
                    "measured_s": float(r["comm_stream27_busy_us"]) * US,
                    "preceding_s": busy[before, layer + offset] * US})
    return out


def v3_traffic(kind: str, tokens: int = 4096, ep: int = 64) -> A2ATraffic:
    nodes, gpus = 4.0, 7.460  # sim.experts.fanout for DeepSeek-V3 at EP64 on 8-GPU nodes (node-limited M = 4)
    n_nodes = ep // 8
    token = FP8_TOKEN_BYTES if kind == "dispatch" else BF16_TOKEN_BYTES
    return A2ATraffic(tokens * nodes * (n_nodes - 1) / n_nodes * token, tokens * gpus * 7 / 8 * token, ep, n_nodes)


def fit_jitter(rows: list[dict[str, float | str]], prof: A2AProfile, layers: tuple[int, ...]) -> float:
    node = node_spec("hgx_h800")
    links, _ = links_for(node, 64, prof.per_sm_bytes_per_s("sm90"))
    mu = expected_max_normal(64)
    num = den = 0.0
    for r in rows:
        if r["layer"] not in layers:
            continue
        iso = a2a_seconds(v3_traffic(str(r["kind"])), links, 20, prof, notify=bool(r["notify"])).total_s
        x = float(r["preceding_s"]) * mu
        num += (float(r["measured_s"]) - iso) * x
        den += x * x
    return num / den


def trace_errors(rows: list[dict[str, float | str]], prof: A2AProfile, layers: tuple[int, ...]
                 ) -> tuple[float, float]:
    """Mean absolute error (%) of the region time with and without the in-situ wait."""
    links, _ = links_for(node_spec("hgx_h800"), 64, prof.per_sm_bytes_per_s("sm90"))
    with_wait, without = [], []
    for r in rows:
        if r["layer"] not in layers:
            continue
        t = a2a_seconds(v3_traffic(str(r["kind"])), links, 20, prof, notify=bool(r["notify"]),
                        preceding_compute_s=float(r["preceding_s"]))
        m = float(r["measured_s"])
        with_wait.append(abs(t.total_s / m - 1))
        without.append(abs((t.total_s - t.wait_s) / m - 1))
    return 100 * float(np.mean(with_wait)), 100 * float(np.mean(without))


# --------------------------------------------------------------------------- the whole fit
GPU_ARCH = {"A100-SXM-80GB": "sm80", "H100-SXM-80GB": "sm90", "H800-SXM-80GB": "sm90", "H200-SXM-141GB": "sm90",
            "H20-96GB": "sm90", "B200-180GB": "sm100", "GB200-186GB": "sm100"}
TRACE_CSV = "calibrated/h800_deepseek_trace_regions.csv"


@dataclass(frozen=True)
class FitResult:
    p: float
    per_sm: dict[str, float]          # "v1 sm90", "v2 sm90", "v2 sm100" -> bytes/s per SM
    jitter: float
    rows: list[tuple[str, str, float, float]]  # (case, "fit" | "held out", measured s, predicted s)
    trace_fit_err: tuple[float, float]
    trace_held_err: tuple[float, float]
    v1_sms: int

    def error(self, role: str, prefix: str = "") -> float:
        errs = [abs(pr / m - 1) for name, r, m, pr in self.rows if r == role and name.startswith(prefix)]
        return 100 * float(np.mean(errs)) if errs else float("nan")


def run(v1_sms: int = 20) -> FitResult:
    cases = [case(b) for b in benches(v1_sms)]
    v1 = [c for c in cases if c.bench.library == "v1"]
    v1_fit = [c for c in v1 if c.bench.name.startswith(V1_FIT)]
    p, beta_v1 = _fit(v1_fit, np.arange(1.5, 32.01, 0.5), np.geomspace(1 * GB, 400 * GB, 121))
    per_sm = {"v1 sm90": beta_v1}
    fixed_p = np.array([p])
    for arch in ("sm100", "sm90"):
        fit = [c for c in cases if c.bench.library == "v2" and c.bench.arch == arch and c.bench.name.startswith(V2_FIT)]
        per_sm[f"v2 {arch}"] = _fit(fit, fixed_p, np.geomspace(1 * GB, 2000 * GB, 161))[1]
    rows = []
    for c in cases:
        b = c.bench
        role = "fit" if b.name.startswith(V1_FIT + V2_FIT) else "held out"
        rows.append((b.name, role, c.measured_s, predict(c, p, per_sm[f"{b.library} {b.arch}"])))
    prof = _profile("v1", p, {"sm90": beta_v1 / GB}, 0.0)
    trace = trace_rows(profiles_dir() / TRACE_CSV)
    jitter = fit_jitter(trace, prof, (1, 2))
    prof = _profile("v1", p, {"sm90": beta_v1 / GB}, jitter)
    return FitResult(p, per_sm, jitter, rows, trace_errors(trace, prof, (1, 2)), trace_errors(trace, prof, (3, 4)),
                     v1_sms)


def report(r: FitResult) -> str:
    lines = [f"smoothness p = {r.p:.2f}   (fitted with V1 on: {', '.join(V1_FIT)}; V1 at {r.v1_sms} SMs)"]
    lines += [f"per-SM rate {k}: {v / GB:.2f} GB/s" for k, v in r.per_sm.items()]
    lines.append(f"in-situ jitter_frac = {r.jitter:.4f} (trace layers 1-2; E[max of 64 normals] = "
                 f"{expected_max_normal(64):.3f})")
    lines.append(f"{'case':34s} {'role':8s} {'measured ms':>11s} {'model ms':>9s} {'error':>7s}")
    for name, role, m, pr in r.rows:
        lines.append(f"{name:34s} {role:8s} {m * 1e3:11.3f} {pr * 1e3:9.3f} {100 * (pr / m - 1):+6.1f}%")
    lines.append(f"mean |error|: V1 fit {r.error('fit', 'v1'):.1f}%, V1 held out {r.error('held out', 'v1'):.1f}%; "
                 f"V2 fit {r.error('fit', 'v2'):.1f}%, V2 held out {r.error('held out', 'v2'):.1f}%")
    lines.append(f"trace region time, mean |error| with / without the in-situ wait: fit layers 1-2 "
                 f"{r.trace_fit_err[0]:.1f}% / {r.trace_fit_err[1]:.1f}%, held-out layers 3-4 "
                 f"{r.trace_held_err[0]:.1f}% / {r.trace_held_err[1]:.1f}%")
    return "\n".join(lines)


def _round(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def profiles(r: FitResult) -> dict[str, dict[str, object]]:
    """The profile files' contents (``--write``), with the provenance of every number."""
    cmd = "python -m sim.calibrate.fit_alltoall"
    fit_common = {"command": cmd, "smoothness": f"fitted with V1's per-SM rate on {', '.join(V1_FIT)} ({LEGACY})",
                  "held_out": f"V1 EP16: mean |error| {r.error('held out', 'v1'):.1f}% "
                              f"(fit {r.error('fit', 'v1'):.1f}%)"}
    launch = "about 2.5 us per stream kernel launch (te42kyfo/gpu-benches @1c36d50, gpu-small-kernels)"
    kernels = ("non-cached dispatch: layout + notify_dispatch + dispatch; cached: cached_notify + kernel "
               "(kernel names in deepseek-ai/profile-data train.json)")
    kernel_fields = {"min_sms": 2, "kernel_launch_us": LAUNCH_US, "kernels_notify": 3, "kernels_cached": KERNELS_CACHED}
    v1 = {
        "name": "deepep_v1", "library": "DeepEP V1 normal kernels (NVSHMEM), as in DeepSeek-V3 pre-training",
        "smoothness": _round(r.p), **kernel_fields,
        "per_sm_gb_per_s": {"sm90": _round(r.per_sm["v1 sm90"] / GB), "sm100": _round(r.per_sm["v1 sm90"] / GB),
                            "sm80": _round(r.per_sm["v1 sm90"] / GB)},
        "jitter_frac": _round(r.jitter),
        "gpu_arch": GPU_ARCH,
        "sources": {"sm90": f"fitted on {', '.join(V1_FIT)} at {r.v1_sms} SMs ({LEGACY})",
                    "sm100": "ASSUMED equal to sm90: no V1 measurement on SM100",
                    "sm80": "ASSUMED equal to sm90: no V1 measurement on SM80",
                    "min_sms": "DeepEP: the SM count must be even (deepseek-ai/DeepEP deep_ep/buffer.py)",
                    "kernel_launch_us": launch, "kernels": kernels,
                    "jitter_frac": "fitted on DeepSeek's H800 trace regions, layers 1-2 (hardware_profiles/"
                                   "calibrated/h800_deepseek_trace_regions.csv; deepseek-ai/profile-data train.json)"},
        "fit": {**fit_common,
                "trace": f"region time mean |error| with the wait: layers 1-2 {r.trace_fit_err[0]:.1f}%, held-out "
                         f"layers 3-4 {r.trace_held_err[0]:.1f}% (without it: {r.trace_fit_err[1]:.1f}% / "
                         f"{r.trace_held_err[1]:.1f}%)",
                "benchmark_sms": f"V1 benchmark taken at {r.v1_sms} SMs (Buffer.num_sms default); at 24 SMs the "
                                 "per-SM rate is about 15% lower"},
    }
    v2 = {
        "name": "deepep_v2", "library": "DeepEP V2 (EPv2) normal kernels",
        "smoothness": _round(r.p), **kernel_fields,
        "per_sm_gb_per_s": {"sm90": _round(r.per_sm["v2 sm90"] / GB), "sm100": _round(r.per_sm["v2 sm100"] / GB)},
        "jitter_frac": 0.0,
        "gpu_arch": {k: v for k, v in GPU_ARCH.items() if v != "sm80"},
        "sources": {"sm90": f"fitted on EP 8x4 at 6 SMs ({V2_README}); saturated there, so a lower bound; the "
                            "machine taken as an H100-class node (370 GB/s NVLink), ASSUMED",
                    "sm100": f"fitted on SM100 EP8 NVLink at 24 SMs ({V2_README}), 8K tokens and a DGX B200 node "
                             "ASSUMED",
                    "smoothness": "V1's (same pipelined-copy shape assumed)",
                    "kernel_launch_us": launch, "kernels": "ASSUMED as V1",
                    "jitter_frac": "0: no in-situ measurement of V2"},
        "fit": {**fit_common, "held_out": f"SM100 EP8 at 64 SMs and SM90 EP 8x2 at 12 SMs: mean |error| "
                                          f"{r.error('held out', 'v2'):.1f}% (fit {r.error('fit', 'v2'):.1f}%)"},
    }
    return {"deepep_v1": v1, "deepep_v2": v2}


HEADER = ("# Generated by `python -m sim.calibrate.fit_alltoall --write`: regenerate rather than edit.\n"
          "# Model: sim/network/alltoall.py; data, sources and errors: the fit script and the `fit` block.\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sim.calibrate.fit_alltoall", description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="regenerate hardware_profiles/comm/deepep_v*.yaml")
    parser.add_argument("--bench-sms", type=int, default=20, help="SMs of DeepEP V1's published benchmark")
    args = parser.parse_args(argv)
    result = run(args.bench_sms)
    print(report(result))
    if args.write:
        folder = profiles_dir() / "comm"
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in profiles(result).items():
            A2AProfile.model_validate(data)
            (folder / f"{name}.yaml").write_text(HEADER + yaml.safe_dump(data, sort_keys=False, width=110))
            print(f"wrote {folder / name}.yaml")


if __name__ == "__main__":
    main()
