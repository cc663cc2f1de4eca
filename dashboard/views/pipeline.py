"""Pipeline page: the Gantt of one step (zoom, hover for the phase) with bubbles and exposed communication,
and the same step under every schedule side by side (bubble fraction, exposed communication, memory)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st
from dashkit import bridge, charts, frames, state

TITLE = "Pipeline"
ORDER = 20
ICON = ":material/view_timeline:"


def _gantt(s: Any, view: Any) -> None:
    parts = [view.actions, view.bubbles]
    if view.exposed is not None and len(view.exposed):
        parts.append(view.exposed)
    df = pd.concat([p[["rank", "start", "end", "label", "category"]] for p in parts], ignore_index=True)
    st.altair_chart(charts.gantt(df, f"{s.parallel.schedule}, PP{s.parallel.pp}, {s.num_microbatches} micro-batches"
                                 f" ({view.tier} tier)"), width="stretch")
    if view.exposed is None:
        st.caption("Bars are schedule actions (hover for the phase; scroll to zoom, drag to pan); grey is bubble. "
                   "Simulate in detail to mark the exposed communication inside each action in red.")
    else:
        st.caption("Red: stretches inside an action where the rank's compute waits for communication.")


def _rank_tasks(view: Any) -> None:
    ranks = sorted(view.tasks["rank"].unique())
    rank = st.selectbox("Rank to show task by task", ranks, key="pl_rank")
    t = view.tasks[view.tasks["rank"] == rank]
    chart = charts.task_lanes(t)
    st.altair_chart(chart, width="stretch")


def _compare(s: Any) -> None:
    st.subheader("The same step under each schedule")
    rows = []
    bar = st.progress(0.0, text="Simulating the step under each schedule…")
    for i, name in enumerate(bridge.SCHEDULE_NAMES):
        rows.append(bridge.schedule_row(bridge.key(s), name, bridge.TRACE_TIER))
        bar.progress((i + 1) / len(bridge.SCHEDULE_NAMES), text=f"Simulated {name}")
    bar.empty()
    table = pd.DataFrame(rows)
    ok = table[table["problem"].isna()] if "problem" in table else table
    shown = ok.drop(columns=["actions", "problem"], errors="ignore").rename(columns={
        "step_time_s": "step time (s)", "bubble_frac": "bubble", "exposed_comm_frac": "exposed comm",
        "peak_memory_gib": "peak memory (GiB)", "oom": "out of memory"})
    st.dataframe(shown, hide_index=True, width="stretch", column_config={
        "bubble": st.column_config.NumberColumn(format="percent"),
        "exposed comm": st.column_config.NumberColumn(format="percent"),
        "step time (s)": st.column_config.NumberColumn(format="%.2f"),
        "peak memory (GiB)": st.column_config.NumberColumn(format="%.1f")})
    for row in table[table["problem"].notna()].itertuples() if "problem" in table else ():
        st.caption(f"{row.schedule} cannot run this job: {row.problem}")
    c = st.columns(len(ok) or 1)
    for col, row in zip(c, ok.itertuples(), strict=False):
        col.metric(f"{row.schedule} bubble", f"{row.bubble_frac:.1%}", f"{row.peak_memory_gib:.0f} GiB",
                   **state.INFO)
    st.altair_chart(charts.bars(ok[["schedule", "bubble_frac", "exposed_comm_frac", "peak_memory_gib"]],
                                "schedule", "bubble_frac", "schedule", "bubble fraction of the step"),
                    width="stretch")
    names = ok["schedule"].tolist()
    default = [n for n in dict.fromkeys([s.parallel.schedule, "1f1b"]) if n in names]
    pick = st.multiselect("Gantts side by side", names, default=default, key="pl_side")
    cols = st.columns(2)
    for i, name in enumerate(pick):
        row = ok[ok["schedule"] == name].iloc[0]
        acts = row["actions"]
        bub = frames.bubbles(acts, row["step_time_s"])
        df = pd.concat([acts[["rank", "start", "end", "label", "category"]], bub], ignore_index=True)
        cols[i % 2].altair_chart(charts.gantt(df, f"{name}: {row['step_time_s']:.2f} s, bubble "
                                              f"{row['bubble_frac']:.1%}, {row['peak_memory_gib']:.0f} GiB",
                                              height=80 + 12 * df['rank'].nunique()), width="stretch")


def main() -> None:
    st.title("Pipeline")
    s = state.scenario()
    state.sidebar(s)
    if s is None:
        return
    schedule = st.selectbox("Schedule", bridge.SCHEDULE_NAMES, index=bridge.SCHEDULE_NAMES.index(s.parallel.schedule),
                            key="pl_schedule", help="Try another schedule here; the Scenario page keeps the job's.")
    if schedule != s.parallel.schedule:
        vpp = max(2, s.parallel.vpp) if schedule == "interleaved-1f1b" else 1
        s = state.attempt(bridge.changed, s, {"parallel.schedule": schedule, "parallel.vpp": vpp})
        if s is None:
            return
    detailed = st.session_state.get("pl_detailed_key") == bridge.key(s)
    view = state.simulate(s, "detailed" if detailed else bridge.TRACE_TIER, trace=True, what="the step's timeline")
    if view is None or view.actions is None:
        return
    b = view.breakdown_s
    c = st.columns(4)
    c[0].metric("Step time", state.fmt_s(view.step_time_s))
    c[1].metric("Bubble", f"{b['bubble'] / view.step_time_s:.1%}", state.fmt_s(b["bubble"]), **state.INFO)
    c[2].metric("Exposed communication", f"{b['exposed_comm'] / view.step_time_s:.1%}", state.fmt_s(b["exposed_comm"]),
                **state.INFO)
    c[3].metric("Peak memory per GPU", state.fmt_bytes(view.peak_memory_bytes))
    _gantt(s, view)
    if not detailed and st.button("Simulate in detail", help="Every task (the DES): exposed communication in red and "
                                  "a task-by-task view of one rank"):
        st.session_state["pl_detailed_key"] = bridge.key(s)
        st.rerun()
    if view.tasks is not None:
        _rank_tasks(view)
    _compare(s)


main()
