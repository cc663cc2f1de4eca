"""Network page: link utilisation (NVLink, IB) over the step, exposed vs hidden communication, and what the
SMs given to communication buy. What-ifs here (bandwidth, comm SMs) apply to this page only."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st
from dashkit import bridge, charts, frames, state

TITLE = "Network"
ORDER = 40
ICON = ":material/lan:"
SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
SM_SWEEP = (4, 8, 12, 16, 20, 24, 32, 40)


def _what_if(s: Any) -> Any:
    c = st.columns(3)
    ib = c[0].select_slider("IB bandwidth ×", SCALES, value=1.0, key="nw_ib",
                            help=f"{s.cluster.node.nic_achievable_gb_per_s:g} GB/s achievable per NIC in the job")
    nv = c[1].select_slider("NVLink bandwidth ×", SCALES, value=1.0, key="nw_nvlink",
                            help=f"{s.cluster.node.nvlink_achievable_gb_per_s:g} GB/s achievable in the job")
    sms = int(c[2].number_input("SMs for communication", 0, 1000, s.parallel.comm_sms, key="nw_sms"))
    return state.attempt(bridge.network_what_if, s, ib, nv, sms)


def main() -> None:
    st.title("Network")
    base = state.scenario()
    state.sidebar(base)
    if base is None:
        return
    s = _what_if(base)
    if s is None:
        return
    tier = state.tier()
    view, ref = state.simulate(s, tier), state.simulate(base, tier, what="the job as loaded")
    if view is None or ref is None:
        return
    b = view.breakdown_s
    c = st.columns(3)
    c[0].metric("Step time", state.fmt_s(view.step_time_s),
                f"{view.step_time_s - ref.step_time_s:+.3f} s vs the job" if s != base else None, delta_color="inverse")
    c[1].metric("Exposed communication", state.fmt_s(b["exposed_comm"]), f"{b['exposed_comm'] / view.step_time_s:.1%}"
                " of the step", **state.INFO)
    detail = state.simulate(s, "detailed", trace=True, what="every transfer")
    if detail is None or detail.links is None:
        return
    comm = frames.comm_summary(detail)
    c[2].metric("Communication hidden under compute", f"{comm['hidden_frac']:.1%}",
                f"{state.fmt_s(comm['comm_s'])} of communication per rank", **state.INFO)
    st.subheader("Link utilisation over the step")
    st.altair_chart(charts.lines(detail.links, "time_s", "utilisation", "link", "seconds into the step",
                                 "busy fraction (mean over the pipeline's ranks)"), width="stretch")
    st.caption("From the detailed tier (every transfer on its link); fast tiers keep no link timeline.")
    st.subheader("Exposed vs hidden communication per rank")
    st.altair_chart(charts.stacked(comm["per_rank"], "rank", "seconds", "part", "pipeline rank",
                                   "communication seconds per step"), width="stretch")
    _sweep(s, tier)


def _sweep(s: Any, tier: str) -> None:
    st.subheader("What the SMs given to communication buy")
    k = bridge.key(s)
    if st.session_state.get("nw_sweep_key") != (k, tier):
        st.caption(f"Simulates the step at {', '.join(map(str, SM_SWEEP))} communication SMs ({tier} tier).")
        if not st.button("Sweep communication SMs"):
            return
        st.session_state["nw_sweep_key"] = (k, tier)
    bar = st.progress(0.0, text="Sweeping…")
    rows = []
    for i, n in enumerate(SM_SWEEP):
        bar.progress(i / len(SM_SWEEP), text=f"{n} SMs for communication…")
        v = state.attempt(bridge.comm_sms_step, k, n, tier)
        if v is not None:
            rows.append({"comm SMs": n, "step time (s)": v[0], "exposed communication (s)": v[1]})
    bar.empty()
    df = pd.DataFrame(rows).melt("comm SMs", var_name="what", value_name="seconds")
    st.altair_chart(charts.lines(df, "comm SMs", "seconds", "what", "SMs held by communication kernels",
                                 "seconds per step"), width="stretch")


main()
