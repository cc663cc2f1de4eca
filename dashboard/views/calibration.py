"""Calibration page: measured vs modelled efficiency curves of a calibration table (bundled or uploaded).

Measured: each entry's achieved rate as a fraction of the GPU's peak (tensor FLOP/s for compute kinds, HBM
bandwidth for memory kinds). Modelled: the GPU profile's roofline with shape effects and no table, which is
what ``sim`` uses where a table does not reach.
"""

from __future__ import annotations

import streamlit as st
from dashkit import bridge, charts, state

TITLE = "Calibration"
ORDER = 70
ICON = ":material/straighten:"


def _table() -> object | None:
    c = st.columns([1, 2])
    source = c[0].radio("Table", ["Bundled", "Upload"], key="cal_source", horizontal=True)
    if source == "Bundled":
        names = bridge.calibration_tables()
        if not names:
            st.info("No calibration tables are bundled.")
            return None
        name = c[1].selectbox("Calibration table", names, key="cal_name")
        return state.attempt(bridge.read_table, name=name)
    up = c[1].file_uploader("Calibration table (YAML from sim calibrate)", type=["yaml", "yml"], key="cal_upload")
    if up is None:
        st.info("Upload a table made by `sim calibrate`, or pick a bundled one.")
        return None
    return state.attempt(bridge.read_table, text=up.getvalue().decode("utf-8", errors="replace"))


def main() -> None:
    st.title("Calibration")
    state.sidebar(None)
    table = _table()
    if table is None:
        return
    info = bridge.table_summary(table)
    gpu = bridge.gpu_for(table)
    st.caption(f"{info['device']} ({info['kind']}), {info['entries']} entries, {info['created']}: {info['source']}. "
               + (f"Modelled with the {gpu.name} profile." if gpu else "No GPU profile matches: measured rates only."))
    with st.spinner("Reading the table…"):
        measured, curves = bridge.calibration_frames(table, gpu)
    kinds = sorted(measured["kind"].unique())
    kind = st.selectbox("Kind of kernel", kinds, index=kinds.index("gemm") if "gemm" in kinds else 0, key="cal_kind")
    m = measured[measured["kind"] == kind]
    cv = curves[curves["kind"] == kind] if not curves.empty else curves
    have_eff = m["efficiency"].notna().any()
    c = st.columns(3)
    c[0].metric("Entries", f"{len(m)}", help=f"{m['family'].nunique()} families (op, dtype and fixed shape)")
    if have_eff:
        c[1].metric("Median measured efficiency", f"{m['efficiency'].median():.1%}")
        ratio = (m["modelled_seconds"] / m["seconds"]).dropna()
        if len(ratio):
            c[2].metric("Median modelled / measured time", f"{ratio.median():.2f}",
                        help="Below 1: the profile alone would be optimistic for these kernels.")
        st.altair_chart(charts.calibration(m, cv, "efficiency", "fraction of peak"), width="stretch")
        st.caption("Points: measured. Dashed: the GPU profile's roofline (no table), per family.")
    else:
        st.altair_chart(charts.calibration(m.assign(gb_per_s=m["rate"] / 1e9), cv.iloc[0:0], "gb_per_s", "GB/s"),
                        width="stretch")
    unit, scale = ("TFLOP/s", 1e12) if have_eff and kind not in ("memory", "optimizer") else ("GB/s", 1e9)
    st.dataframe(m.drop(columns=["kind", "rate"]).assign(**{unit: m["rate"] / scale}), hide_index=True,
                 width="stretch")
    if info["notes"]:
        with st.expander("Notes in the table"):
            st.text(info["notes"])


main()
