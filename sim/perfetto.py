"""Chrome / Perfetto trace export of a simulated step (Trace Event Format, JSON object form).

``pid`` is the pipeline rank, ``tid`` a lane: 0 actions (one slice per schedule action, plus ``idle`` slices
where the rank waits, i.e. the bubbles), 1 the compute stream, 2 the communication stream (expert all-to-all,
tensor-parallel collectives), 3 data-parallel collectives, 4 stage-boundary sends leaving the rank. Timestamps
and durations are microseconds from the start of the step. Slices on one lane never overlap, as Perfetto
requires.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sim.timeline import Stream, Trace
from sim.units import US

LANES = {0: "actions", 1: "compute", 2: "comm (EP/TP)", 3: "data-parallel", 4: "pipeline sends"}
STREAM_LANE = {Stream.COMPUTE: 1, Stream.COMM: 2, Stream.DP: 3}
US_PER_S = 1 / US


def _slice(name: str, pid: int, tid: int, start: float, end: float, cat: str, args: dict | None = None) -> dict:
    ev: dict[str, Any] = {"name": name, "cat": cat, "ph": "X", "pid": pid, "tid": tid,
                          "ts": start * US_PER_S, "dur": max(0.0, end - start) * US_PER_S}
    if args:
        ev["args"] = args
    return ev


def chrome_trace(trace: Trace, num_ranks: int, title: str = "sim", metadata: dict | None = None) -> dict:
    """The trace as a Chrome Trace Event JSON object."""
    events: list[dict] = []
    for r in range(num_ranks):
        events.append({"ph": "M", "name": "process_name", "pid": r, "args": {"name": f"rank {r}"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": r, "args": {"sort_index": r}})
        for tid, name in LANES.items():
            events.append({"ph": "M", "name": "thread_name", "pid": r, "tid": tid, "args": {"name": name}})
            events.append({"ph": "M", "name": "thread_sort_index", "pid": r, "tid": tid, "args": {"sort_index": tid}})
    last_end = [0.0] * num_ranks
    for a in sorted(trace.actions, key=lambda a: (a.rank, a.start)):
        if a.start > last_end[a.rank] + 1e-12:
            events.append(_slice("idle", a.rank, 0, last_end[a.rank], a.start, "bubble"))
        busy = [round(b * US_PER_S, 3) for b in (a.busy_forward, a.busy_input, a.busy_weight)]
        events.append(_slice(a.label, a.rank, 0, a.start, a.end, a.category, {"compute_busy_us": busy}))
        last_end[a.rank] = max(last_end[a.rank], a.end)
    for t in trace.tasks:
        cat = "compute" if t.stream == Stream.COMPUTE else "comm"
        events.append(_slice(t.name, t.rank, STREAM_LANE[t.stream], t.start, t.end, cat, {"action": t.action}))
    for x in trace.transfers:
        events.append(_slice(f"send {x.label} -> rank {x.dst}", x.src, 4, x.start, x.end, "p2p"))
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"title": title, **(metadata or {})}}


def write_chrome_trace(path: str | Path, trace: Trace, num_ranks: int, title: str = "sim",
                       metadata: dict | None = None) -> None:
    Path(path).write_text(json.dumps(chrome_trace(trace, num_ranks, title, metadata)))
