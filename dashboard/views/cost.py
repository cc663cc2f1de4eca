"""Cost page: the whole run of the edited scenario (``sim estimate``), phase by phase: GPU-hours beside
DeepSeek-V3's Table 1 when the job has published figures, steps, tokens, step time, days, dollars, energy,
CO2 and the layout (with why it changed); totals; dollars against the price per GPU-hour (re-priced without
simulating again: dollars are GPU-hours x price) and what 10 % more GPUs or one more day would change.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import streamlit as st
from dashkit import bridge, bridge_run, charts, state
from dashkit.plans import days, money, sig, tokens_text

TITLE = "Cost"
ORDER = 50
ICON = ":material/payments:"
PRICE = "co_price"


def energy(kwh: float) -> str:
    return f"{kwh / 1e3:,.0f} MWh" if kwh >= 1e4 else f"{kwh:.3g} kWh"


def price_range(base: float) -> float:
    """The slider's top: $10 per GPU-hour, or three times the cluster's price."""
    return float(max(10, math.ceil(base * 3)))


def _price(base: float) -> float:
    top = price_range(base)
    if not 0.0 <= st.session_state.get(PRICE, base) <= top:
        st.session_state[PRICE] = base
    return float(st.slider("Price per GPU-hour (USD)", 0.0, top, base, step=0.05, key=PRICE, format="$%.2f",
                           help=f"The cluster's profile says ${base:.2f}. Dollars are GPU-hours × price: moving "
                                "this re-prices the run without simulating it again."))


def _headline(v: Any, price: float) -> None:
    t = v.total
    pub = v.published_total
    c = st.columns(5)
    c[0].metric("GPU-hours", sig(t["gpu_hours"]),
                f"{pub['error']:+.1%} vs published {sig(pub['measured_gpu_hours'])}" if pub else None, **state.INFO,
                help="Wall-clock GPU-hours: the whole cluster held for every phase, overheads included")
    c[1].metric("Days", days(t["days"]), f"on {v.num_gpus:,} GPUs", **state.INFO)
    c[2].metric("Dollars", money(v.usd(price)), f"at ${price:.2f} per GPU-hour", **state.INFO)
    c[3].metric("Energy", energy(t["kwh"]), help="Facility energy: GPUs at their utilisation, nodes, "
                "network, times PUE")
    c[4].metric("CO2", "n/a" if t["co2_kg"] is None else f"{t['co2_kg'] / 1e3:,.4g} t",
                help="Energy × the grid's carbon intensity (run.energy.grid_kg_co2_per_kwh)")


def _table1(v: Any, edited: bool) -> None:
    if v.published is None:
        st.subheader("GPU-hours by phase")
        st.altair_chart(charts.gpu_hours_by_stage(v.by_stage, v.gpu), width="stretch")
        st.caption("The job has no published figures (a `run.measured:` block) to compare with.")
        return
    st.subheader("GPU-hours by stage: the estimate beside the published figures")
    st.altair_chart(charts.gpu_hours_by_stage(v.by_stage, v.gpu), width="stretch")
    st.caption(f"Published: {v.source}. Labels: the estimate and its error (predicted / published − 1)."
               + (" The scenario is edited from the job: the published figures are the job's own run, so this is a "
                  "what-if, not a check." if edited else ""))
    df = v.published
    if v.published_total:
        tt = v.published_total
        total = {"stage": "total", "phases": "", "predicted GPU-hours": tt["gpu_hours"],
                 "published GPU-hours": tt["measured_gpu_hours"], "error": tt["error"]}
        df = pd.concat([df, pd.DataFrame([total])], ignore_index=True)
    hours = ["predicted GPU-hours", "published GPU-hours"]
    shown = df.assign(error=df["error"] * 100, **{h: df[h].round() for h in hours})
    st.dataframe(shown, hide_index=True, width="stretch", column_config={
        "predicted GPU-hours": st.column_config.NumberColumn(format="localized"),
        "published GPU-hours": st.column_config.NumberColumn(format="localized"),
        "error": st.column_config.NumberColumn("error", format="%+.1f%%")})
    if v.published_usd:
        u = v.published_usd
        st.caption(f"Dollars at the published ${u['usd_per_gpu_hour']:.2f} per GPU-hour: {money(u['usd'])} "
                   f"against {money(u['measured_usd'])} ({u['error']:+.1%}).")


def _phases(v: Any, price: float) -> None:
    st.subheader("Phases")
    df = v.priced(price).drop(columns=["simulated"])
    df["GPU-hours"] = df["GPU-hours"].round()  # dollars are priced from the unrounded hours
    if df["t CO2"].isna().all():
        df = df.drop(columns=["t CO2"])
    num = st.column_config.NumberColumn
    st.dataframe(df, hide_index=True, width="stretch", column_config={
        "steps": num(format="localized"), "tokens": num(format="%.3e"), "GPU-hours": num(format="localized"),
        "days": num(format="%.2f"), "USD": num(format="dollar"), "MWh": num(format="%.1f"),
        "t CO2": num(format="%.1f"), "GPU busy": num(format="percent"),
        "why the layout changed": st.column_config.TextColumn(width="large")})
    t = v.total
    st.caption(f"Total: {t['steps']:,} steps, {tokens_text(t['tokens'], 4)} tokens, {sig(t['gpu_hours'])} GPU-hours, "
               f"{days(t['days'])} days, {money(v.usd(price))}, {energy(t['kwh'])}"
               + ("" if t["co2_kg"] is None else f", {t['co2_kg'] / 1e3:,.4g} t CO2") + ".")
    changed = df[df["why the layout changed"] != ""]
    if len(changed):
        st.markdown("**Layouts changed where the job's does not work:**\n" + "\n".join(
            f"- **{phase}**: {why}" for phase, why in zip(changed["phase"], changed["why the layout changed"],
                                                          strict=True)))


def _sensitivities(v: Any, price: float, top: float) -> None:
    st.subheader("Sensitivities")
    left, right = st.columns([3, 2])
    with left:
        st.altair_chart(charts.price_line(v.total["gpu_hours"], price, top), width="stretch")
        st.caption(f"Each $1 per GPU-hour adds {money(v.total['gpu_hours'])}; +10 % on the price "
                   f"(${price * 1.1:.2f}) adds {money(v.usd(price) * 0.1)}.")
    w = v.what_ifs(price)
    with right:
        g = w.get("gpus_plus_10pct")
        if g:
            st.metric(f"10 % more GPUs ({g['gpus']:,})", f"{g['delta_days']:+.2f} days",
                      f"{'+' if g['delta_gpu_hours'] >= 0 else '-'}{sig(abs(g['delta_gpu_hours']))} GPU-hours, "
                      f"{money(g['delta_usd'], True)}", delta_color="off", delta_arrow="off")
        d = w.get("deadline_plus_1_day")
        if d:
            st.metric(f"One more day ({d['deadline_days']:.1f} days)", f"{d['gpus']:,} GPUs ({d['delta_gpus']:+,})",
                      f"{'+' if d['delta_gpu_hours'] >= 0 else '-'}{sig(abs(d['delta_gpu_hours']))} GPU-hours, "
                      f"{money(d['delta_usd'], True)}", delta_color="off", delta_arrow="off",
                      help="The fewest GPUs that finish within one more day than the estimate")
        if v.sensitivities.get("model"):
            st.caption(f"First order: {v.sensitivities['model']}.")


def main() -> None:
    st.title("Cost")
    s = state.scenario()
    state.sidebar(s)
    if s is None:
        return
    tier = state.tier()
    with st.spinner(f"Estimating the whole run: a few step simulations per phase ({tier} tier)…"):
        v = state.attempt(bridge_run.run_view, bridge.key(s), tier)
    if v is None:
        return
    price = _price(v.usd_per_gpu_hour)
    _headline(v, price)
    for w in v.warnings:
        st.warning(w, icon=":material/warning:")
    e = state.edits()
    _table1(v, bool(e.cluster or e.gpu or e.num_gpus is not None or e.sets))
    _phases(v, price)
    _sensitivities(v, price, price_range(v.usd_per_gpu_hour))
    st.caption(f"{v.name}: {v.num_gpus:,} × {v.gpu}; {v.simulations} step simulations ({v.tier} tier) in "
               f"{v.wall_time_s:.1f} s, cached afterwards.")
    for n in v.notes:
        st.caption(f"Note: {n}")


main()
