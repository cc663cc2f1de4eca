"""``sim calibrate --from-trace``: a profiler trace -> a calibration table, a per-region summary, kernel samples.

The mapping of kernels to ops and shapes is :mod:`sim.calibrate.deepseek_trace` (DeepSeek-V3's H800 trace).
Samples of one (kind, dtype, op, pass, shape, SM count) become one entry: the median and (p20, p80) of their
durations, preferring samples that did not share the SMs with a kernel on another compute stream. The output
is deterministic (its ``created`` date is the trace's own), so re-importing reproduces the committed table.

The region summary gives, per annotation region and layer, the busy time of each stream (union of its kernel
intervals) over the kernels that region launched; the engine's tests use it as an oracle (e.g. the 4-layer
F&B pair spans 129.0 ms with the compute stream ~92% busy, as measured from deepseek-ai/profile-data
``train.json``).
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sim.calibrate.chrome_trace import ProfilerTrace, read_trace, union_us
from sim.calibrate.deepseek_trace import Layout, Sample, collect_samples, infer_layout
from sim.calibrate.table import COMPUTE_KINDS, SCHEMA_VERSION, CalibrationTable, DeviceInfo, Entry
from sim.config import ModelSpec

REGION_ORDER = ("attn(F)", "mlp(F)", "dispatch(F)", "combine(F)", "attn(B)", "mlp(B)", "dispatch(B)",
                "combine(B)", "attn(W)", "mlp(W)")


@dataclass(frozen=True, slots=True)
class RegionRow:
    region: str
    layer: int
    kernels: int
    start_us: float  # relative to the trace's first GPU activity
    end_us: float
    compute_busy_us: float
    compute2_busy_us: float
    comm_busy_us: float


@dataclass(frozen=True, slots=True)
class TraceImport:
    table: CalibrationTable
    samples: tuple[Sample, ...]
    regions: tuple[RegionRow, ...]
    totals: dict[str, float]
    layout: Layout

    def regions_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["region", "layer", "kernels", "window_start_us", "window_end_us", "window_us",
                    f"compute_stream{self.layout.compute_stream}_busy_us",
                    f"compute_stream{'+'.join(map(str, self.layout.other_compute)) or '-'}_busy_us",
                    f"comm_stream{'+'.join(map(str, self.layout.comm_streams))}_busy_us"])
        for r in self.regions:
            w.writerow([r.region, r.layer, r.kernels, _g(r.start_us), _g(r.end_us), _g(r.end_us - r.start_us),
                        _g(r.compute_busy_us), _g(r.compute2_busy_us), _g(r.comm_busy_us)])
        return buf.getvalue()

    def kernels_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["region", "layer", "op", "pass", "kind", "dtype", "m", "n", "k", "groups", "bytes", "stream",
                    "start_us", "dur_us", "sms_used", "contended", "includes_wait", "kernel"])
        for s in sorted(self.samples, key=lambda s: s.start_us):
            sh = s.shape
            w.writerow([s.region, s.layer, s.name, s.gemm_pass or "", s.kind, s.dtype, _g(sh.get("m", "")),
                        _g(sh.get("n", "")), _g(sh.get("k", "")), _g(sh.get("groups", "")), _g(sh.get("bytes", "")),
                        s.stream, _g(s.start_us - self.layout_start), _g(s.seconds * 1e6), s.sms_used or "",
                        int(s.contended), int(s.includes_wait), s.kernel])
        return buf.getvalue()

    @property
    def layout_start(self) -> float:
        return self.totals["trace_start_us"]


def import_trace_file(path: str | Path, model: ModelSpec) -> TraceImport:
    p = Path(path)
    return import_trace(read_trace(p), model, p.name)


def import_trace(trace: ProfilerTrace, model: ModelSpec, file_label: str) -> TraceImport:
    lay = infer_layout(trace, model)
    samples = collect_samples(trace, lay)
    regions = region_summary(trace, lay)
    totals = trace_totals(trace, lay, regions)
    entries = build_entries(samples, lay.num_sms)
    props = trace.device_properties[0]
    created = datetime.fromtimestamp(trace.start_us * 1e-6, tz=UTC).date().isoformat()
    device = DeviceInfo(
        name=str(props.get("name", "unknown GPU")), kind="trace", num_sms=lay.num_sms, sms_used=lay.compute_sms,
        compute_capability=f"{props.get('computeMajor', '?')}.{props.get('computeMinor', '?')}",
        memory_bytes=float(props["totalGlobalMem"]) if props.get("totalGlobalMem") else None,
        source=f"sim calibrate --from-trace {file_label} ({trace.name}; model {model.name})", created=created,
        settings={"tokens_per_microbatch": lay.tokens, "world_size": lay.world_size,
                  "experts_per_rank": lay.experts_per_rank, "comm_sms": lay.comm_sms})
    table = CalibrationTable(schema_version=SCHEMA_VERSION, device=device, entries=tuple(entries),
                             notes=_notes(trace, lay, regions, totals))
    return TraceImport(table, tuple(samples), tuple(regions), totals, lay)


def build_entries(samples: Sequence[Sample], num_sms: int) -> list[Entry]:
    groups: dict[tuple[object, ...], list[Sample]] = {}
    for s in samples:
        key = (s.kind, s.dtype, s.name, s.gemm_pass, tuple(sorted(s.shape.items())), s.sms_used)
        groups.setdefault(key, []).append(s)
    entries = []
    for group in groups.values():
        clean = [s for s in group if not s.contended]
        chosen = clean or group
        entries.append(_entry(chosen, num_sms, contended=not clean, dropped=len(group) - len(chosen)))
    order = {k: i for i, k in enumerate(("gemm", "grouped_gemm", "attention_fwd", "attention_bwd", "memory",
                                         "dispatch", "combine"))}
    entries.sort(key=lambda e: (order.get(e.kind, 99), e.dtype, e.name, e.gemm_pass or "",
                                tuple(sorted(e.shape.items()))))
    return entries


def _entry(chosen: list[Sample], num_sms: int, contended: bool, dropped: int) -> Entry:
    s0 = chosen[0]
    secs = sorted(s.seconds for s in chosen)
    med = statistics.median(secs)
    spread = None
    if len(secs) > 1:
        q = statistics.quantiles(secs, n=5, method="inclusive")
        spread = (_sig(q[0]), _sig(q[3]))
    compute = s0.kind in COMPUTE_KINDS
    scaled = compute and s0.sms_used is not None and s0.sms_used < num_sms
    rate = _sig(s0.work / med * (num_sms / s0.sms_used if scaled and s0.sms_used else 1.0))
    layers = sorted({s.layer for s in chosen})
    regions = sorted({s.region for s in chosen})
    note = f"{s0.kernel}; {', '.join(regions)} layers {','.join(map(str, layers))}"
    if dropped:
        note += f"; {dropped} contended sample(s) dropped"
    if s0.parts and len(s0.parts) > 1:
        parts = [statistics.median(s.parts[i] for s in chosen) for i in range(len(s0.parts))]
        note += "; median us per kernel (main, pre, post): " + ", ".join(f"{p:g}" for p in parts)
    if s0.includes_wait:
        note += "; kernel time includes waiting for peers (upper bound)"
    return Entry(kind=s0.kind, dtype=s0.dtype, name=s0.name, gemm_pass=s0.gemm_pass,  # type: ignore[arg-type]
                 shape=dict(s0.shape), seconds=_sig(med), spread_s=spread, samples=len(chosen),
                 flops=s0.work if compute else None, bytes=None if compute else s0.work,
                 achieved_flops_per_s=rate if compute else None, achieved_bytes_per_s=None if compute else rate,
                 sms_used=s0.sms_used, sm_scaled=scaled, contended=contended, includes_wait=s0.includes_wait,
                 note=note)


def region_summary(trace: ProfilerTrace, lay: Layout) -> list[RegionRow]:
    rows = []
    for ann in trace.annotations:
        ks = [k for k in trace.kernels if k.region is ann]
        if not ks:
            continue

        def busy(streams: tuple[int, ...], ks: list = ks) -> float:  # type: ignore[type-arg]
            return union_us((k.ts, k.end) for k in ks if k.stream in streams)

        rows.append(RegionRow(ann.name, ann.occurrence + 1, len(ks), min(k.ts for k in ks) - trace.start_us,
                              max(k.end for k in ks) - trace.start_us, busy((lay.compute_stream,)),
                              busy(lay.other_compute), busy(lay.comm_streams)))
    order = {r: i for i, r in enumerate(REGION_ORDER)}
    rows.sort(key=lambda r: (r.layer, order.get(r.region, 99)))
    return rows


def trace_totals(trace: ProfilerTrace, lay: Layout, regions: Sequence[RegionRow]) -> dict[str, float]:
    ks = trace.kernels
    main = [k for k in ks if k.stream == lay.compute_stream]
    out = {"trace_start_us": trace.start_us, "span_us": max(k.end for k in ks) - trace.start_us,
           "compute_busy_us": union_us((k.ts, k.end) for k in main),
           "compute_span_us": max(k.end for k in main) - min(k.ts for k in main),
           "compute2_busy_us": union_us((k.ts, k.end) for k in ks if k.stream in lay.other_compute),
           "comm_busy_us": union_us((k.ts, k.end) for k in ks if k.stream in lay.comm_streams)}
    for phase in ("F", "B", "W"):
        out[f"compute_{phase}_us"] = sum(r.compute_busy_us for r in regions if r.region.endswith(f"({phase})"))
    out["compute2_W_us"] = sum(r.compute2_busy_us for r in regions if r.region.endswith("(W)"))
    return out


def _notes(trace: ProfilerTrace, lay: Layout, regions: Sequence[RegionRow], t: dict[str, float]) -> str:
    ms = 1e-3
    idle = t["compute_span_us"] - t["compute_busy_us"]
    lines = [
        f"Imported from {trace.name}: one DualPipe pair of forward and backward chunks, "
        f"{max(r.layer for r in regions)} MoE layers, rank 0 of {lay.world_size} (EP{lay.world_size}), "
        f"{lay.tokens} tokens per micro-batch; {lay.comm_sms} of {lay.num_sms} SMs run communication, "
        f"GEMMs run on {lay.compute_sms}.",
        f"Rates are normalized to {lay.num_sms} SMs: sm_scaled entries keep the raw seconds and scale the rate by "
        f"{lay.num_sms}/{lay.compute_sms}. Shape inferences: sim/calibrate/deepseek_trace.py.",
        f"Whole pair: GPU span {t['span_us'] * ms:.1f} ms; compute stream {lay.compute_stream} busy "
        f"{t['compute_busy_us'] * ms:.1f} ms, idle {idle * ms:.1f} ms of its {t['compute_span_us'] * ms:.1f} ms "
        f"({t['compute_busy_us'] / t['compute_span_us']:.1%} busy); second compute stream busy "
        f"{t['compute2_busy_us'] * ms:.1f} ms; communication stream busy {t['comm_busy_us'] * ms:.1f} ms "
        "(kernel time, includes waiting).",
        f"Compute stream per chunk: F {t['compute_F_us'] * ms:.1f} ms, B {t['compute_B_us'] * ms:.1f} ms, "
        f"W {t['compute_W_us'] * ms:.1f} ms (+{t['compute2_W_us'] * ms:.1f} ms on the second stream).",
        "Per region, mean over layers (us): compute / second compute / communication busy:",
    ]
    for name in REGION_ORDER:
        rs = [r for r in regions if r.region == name]
        if rs:
            c, c2, cm = (statistics.fmean(getattr(r, f) for r in rs)
                         for f in ("compute_busy_us", "compute2_busy_us", "comm_busy_us"))
            lines.append(f"  {name:<12} {c:8.0f} {c2:8.0f} {cm:8.0f}")
    lines.append("Per region and layer: the _regions.csv beside this file; per kernel: the _kernels.csv.")
    return "\n".join(lines)


def _sig(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


def _g(x: object) -> object:
    if isinstance(x, float):
        return str(int(x)) if x.is_integer() else f"{x:.6g}"
    return x
