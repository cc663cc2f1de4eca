"""Experts page: load per expert over training steps (heatmap), the imbalance curve under each balancing
policy, and the step time each policy costs."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from dashkit import bridge, charts, state

TITLE = "Experts"
ORDER = 30
ICON = ":material/hub:"


def main() -> None:
    st.title("Experts")
    s = state.scenario()
    state.sidebar(s)
    if s is None:
        return
    if not s.model.is_moe:
        st.info(f"{s.model.name} is a dense model: no routed experts to balance.")
        return
    c = st.columns(4)
    skew = s.experts.skew
    if skew == "balanced":
        skew = c[0].selectbox("Starting skew", ["zipf", "dirichlet"], key="ex_skew",
                              help="The job routes evenly (DeepSeek's profile); balancing acts on a skew.")
    steps = int(c[1].slider("Training steps", 10, 1000, 300, step=10, key="ex_steps"))
    policy = c[2].selectbox("Policy for the heatmap", bridge.POLICIES, index=bridge.POLICIES.index("bias"),
                            key="ex_policy")
    start = state.attempt(bridge.balancing_start, s, skew)
    if start is None:
        return
    k = bridge.key(start)
    bar = st.progress(0.0, text="Balancing under each policy…")
    runs: dict[str, bridge.Balancing] = {}
    for i, p in enumerate(bridge.POLICIES):
        run = state.attempt(bridge.balancing, k, p, steps)
        if run is None:
            return
        runs[p] = run
        bar.progress((i + 1) / len(bridge.POLICIES), text=f"Balanced under {p}")
    bar.empty()
    sel = runs[policy]
    c[3].metric(f"Imbalance after {steps} steps ({policy})", f"{sel.final_imbalance:.2f}",
                f"from {sel.imbalance['mean over layers'].iloc[0]:.2f}", **state.INFO,
                help="max / mean tokens per GPU, mean over MoE layers (1.00 is perfect balance)")
    st.subheader(f"Load per expert of layer {sel.heatmap_layer} under '{policy}'")
    st.altair_chart(charts.heatmap(sel.heatmap), width="stretch")
    st.subheader("Imbalance per policy")
    curves = pd.concat([r.imbalance.assign(policy=p) for p, r in runs.items()], ignore_index=True)
    st.altair_chart(charts.lines(curves, "step", "mean over layers", "policy", "training step",
                                 "max / mean tokens per GPU (mean over layers)"), width="stretch")
    cols = st.columns(len(runs))
    for col, (p, r) in zip(cols, runs.items(), strict=True):
        col.metric(f"{p}: final imbalance", f"{r.final_imbalance:.2f}")
    _step_times(start)


def _step_times(start: object) -> None:
    st.subheader("Step time under each policy")
    k, tier = bridge.key(start), state.tier()
    done = st.session_state.get("ex_times_key") == (k, tier)
    if not done:
        st.caption("Each policy needs a simulation of the step with its expert loads "
                   "(skewed routing makes every micro-batch different: tens of seconds in all).")
        if not st.button("Simulate the step under each policy"):
            return
        st.session_state["ex_times_key"] = (k, tier)
    bar = st.progress(0.0, text="Simulating…")
    times = {}
    for i, p in enumerate(bridge.POLICIES):
        bar.progress(i / len(bridge.POLICIES), text=f"Simulating the step under {p} ({tier} tier)…")
        times[p] = state.attempt(bridge.policy_step_time, k, p, tier)
    bar.empty()
    df = pd.DataFrame([{"policy": p, "step time (s)": t} for p, t in times.items() if t is not None])
    st.altair_chart(charts.bars(df, "policy", "step time (s)", "policy", "seconds per step", "policy"),
                    width="stretch")


main()
