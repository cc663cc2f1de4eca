"""Reading a PyTorch profiler Chrome trace: GPU kernels, their streams, and the annotation that launched them.

Format (Google's Trace Event Format, as documented in Perfetto's ``docs/getting-started/other-formats.md``;
PyTorch ``torch.profiler`` with CUPTI, as in DeepSeek's published trace): ``traceEvents`` holds ``X`` events;
``cat: kernel`` (also ``gpu_memcpy``, ``gpu_memset``) are GPU activities with ``args.stream``, ``args.grid`` and
``args.correlation``; ``cat: cuda_runtime``/``cuda_driver`` are the host launches carrying the same
``correlation``; ``cat: user_annotation`` are ``record_function`` ranges on the host thread. A kernel belongs to
the innermost user annotation that encloses its *launch* (the host call), as Vidur's ``RecordFunctionTracer``
does (microsoft/vidur ``vidur/profiling/utils/record_function_tracer.py``); the profiler-step annotation
(``ProfilerStep#N``) is ignored. Times are microseconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.errors import SimInputError

GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")


@dataclass(frozen=True, slots=True)
class Annotation:
    name: str
    ts: float
    dur: float
    occurrence: int  # 0-based index among annotations of the same name, in time order

    @property
    def end(self) -> float:
        return self.ts + self.dur


@dataclass(frozen=True, slots=True)
class Kernel:
    name: str
    cat: str
    stream: int
    ts: float
    dur: float
    grid: tuple[int, ...] | None
    region: Annotation | None

    @property
    def end(self) -> float:
        return self.ts + self.dur

    @property
    def ctas(self) -> int:
        n = 1
        for g in self.grid or ():
            n *= g
        return n


@dataclass(frozen=True, slots=True)
class ProfilerTrace:
    name: str
    kernels: tuple[Kernel, ...]  # GPU activities, by start time
    annotations: tuple[Annotation, ...]
    device_properties: tuple[dict[str, Any], ...]
    distributed: dict[str, Any]
    start_us: float  # the first GPU activity's start

    def on_streams(self, streams: Iterable[int]) -> list[Kernel]:
        wanted = set(streams)
        return [k for k in self.kernels if k.stream in wanted]


def read_trace(path: str | Path) -> ProfilerTrace:
    p = Path(path)
    try:
        with p.open() as f:
            data = json.load(f)
    except OSError as e:
        raise SimInputError(f"cannot read trace {p}: {e.strerror or e}", field="--from-trace") from None
    except json.JSONDecodeError as e:
        raise SimInputError(f"{p} is not JSON (a PyTorch profiler Chrome trace is): {e}",
                            field="--from-trace") from None
    return parse_trace(data, str(p))


def parse_trace(data: Any, label: str = "trace") -> ProfilerTrace:
    events = data.get("traceEvents") if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise SimInputError(f"{label}: no traceEvents list (not a Chrome trace)", field="--from-trace")
    events = [e for e in events if isinstance(e, dict)]
    annotations = _annotations(events)
    launches = {e["args"]["correlation"]: float(e["ts"]) for e in events
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    kernels = []
    for e in events:
        if e.get("cat") not in GPU_CATS or e.get("ph") != "X":
            continue
        args = e.get("args", {})
        launch = launches.get(args.get("correlation"))
        grid = tuple(int(g) for g in args["grid"]) if isinstance(args.get("grid"), list) else None
        kernels.append(Kernel(str(e.get("name", "")), str(e["cat"]), int(args.get("stream", e.get("tid", -1))),
                              float(e["ts"]), float(e.get("dur", 0.0)), grid,
                              _innermost(annotations, launch) if launch is not None else None))
    if not any(k.cat == "kernel" for k in kernels):
        raise SimInputError(f"{label}: no GPU kernels in the trace (a CPU-only profile cannot calibrate a GPU)",
                            field="--from-trace")
    kernels.sort(key=lambda k: (k.ts, k.stream))
    props = data.get("deviceProperties", []) if isinstance(data, dict) else []
    dist = data.get("distributedInfo", {}) if isinstance(data, dict) else {}
    return ProfilerTrace(str(data.get("traceName", label)) if isinstance(data, dict) else label,
                         tuple(kernels), tuple(annotations), tuple(props), dict(dist), kernels[0].ts)


def _annotations(events: list[dict[str, Any]]) -> list[Annotation]:
    raw = sorted((e for e in events if e.get("cat") == "user_annotation" and e.get("ph") == "X"
                  and not str(e.get("name", "")).startswith("ProfilerStep")), key=lambda e: float(e["ts"]))
    seen: dict[str, int] = {}
    out = []
    for e in raw:
        name = str(e["name"])
        out.append(Annotation(name, float(e["ts"]), float(e.get("dur", 0.0)), seen.get(name, 0)))
        seen[name] = seen.get(name, 0) + 1
    return out


def _innermost(annotations: Sequence[Annotation], ts: float) -> Annotation | None:
    best = None
    for a in annotations:
        if a.ts <= ts <= a.end and (best is None or a.dur < best.dur):
            best = a
    return best


# ----------------------------------------------------------------------------------------- intervals


def union_us(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals."""
    total, cur_start, cur_end = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_end is None or s > cur_end:
            if cur_end is not None and cur_start is not None:
                total += cur_end - cur_start
            cur_start, cur_end = s, e
        else:
            cur_end = max(cur_end, e)
    if cur_end is not None and cur_start is not None:
        total += cur_end - cur_start
    return total


def overlap_us(start: float, end: float, others: Iterable[Kernel]) -> float:
    """Time within ``[start, end]`` covered by at least one of ``others``."""
    return union_us((max(start, k.ts), min(end, k.end)) for k in others if k.ts < end and k.end > start)
