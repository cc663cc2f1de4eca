"""Validation page: the simulator against published training runs (``sim validate``, the cases of
``workloads/published/``): predicted vs measured on log-log axes with the ±10 % band, one colour per family;
the per-case table (signed error, layout, and the simulator's reason when a case cannot be expressed yet); the
mean and max absolute error per family and overall, and the worst case.

Cases run behind a button (a full run takes about a minute), over the families picked, with a progress bar; each
result is cached on the case and the tier, so picking families already run shows them at once.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st
from dashkit import bridge_run, charts, state

TITLE = "Validation"
ORDER = 80
ICON = ":material/fact_check:"
FAMILIES, RUN, DONE = "va_families", "va_run", "va_done"
BAND = 0.10


def _pick(catalog: pd.DataFrame) -> list[str]:
    families = list(dict.fromkeys(catalog["family"]))
    st.session_state.setdefault(FAMILIES, families)
    counts = catalog["family"].value_counts()
    picked = st.multiselect("Families", families, key=FAMILIES, format_func=lambda f: f"{f} ({counts[f]})",
                            help="Each family is a published series (a paper's table, a repository's benchmark).")
    return [c for c, f in zip(catalog["case"], catalog["family"], strict=True) if f in picked]


def _run(names: list[str], tier: str) -> list[dict[str, Any]] | None:
    """The cases' results: run behind the button unless every one ran already (then from the cache)."""
    done: set[tuple[str, str]] = st.session_state.setdefault(DONE, set())
    missing = [n for n in names if (n, tier) not in done]
    if missing:
        note = f" ({len(missing)} not run yet)" if len(missing) < len(names) else ""
        slot = st.empty()
        with slot.container():
            pressed = st.button(f"Run {len(names)} cases{note}", key=RUN, type="primary",
                                help="Simulates one step per case; a full run takes about a minute in the fast tier.")
            st.caption(f"{len(names)} cases selected, {tier} tier: press the button to simulate them.")
        if not pressed:
            return None
        slot.empty()
    bar = st.progress(0.0, text="Validating…")
    out = []
    for i, name in enumerate(names):
        bar.progress(i / len(names), text=f"Simulating {name} ({i + 1}/{len(names)}, {tier} tier)…")
        r = state.attempt(bridge_run.case_result, name, tier)
        if r is None:
            bar.empty()
            return None
        out.append(r)
        done.add((name, tier))
    bar.empty()
    return out


def _pct(x: Any) -> str:
    return "–" if x is None or x != x else f"{x:.1%}"


def _summary(v: Any) -> None:
    o = v.overall
    c = st.columns(4)
    c[0].metric("Cases", f"{o['count']}", f"{o['expressible']} expressible, {o['not_expressible']} not yet"
                + (f", {o['failed']} failed" if o["failed"] else ""), **state.INFO)
    c[1].metric("Mean |error|", _pct(o["mean_abs_error"]), help="Over the expressible cases; error = predicted / "
                "measured − 1 in each source's own metric and accounting")
    c[2].metric("Max |error|", _pct(o["max_abs_error"]))
    w = o["worst"]
    c[3].metric("Worst case", f"{w['error']:+.1%}" if w else "–", w["name"] if w else None, **state.INFO)


def main() -> None:
    st.title("Validation")
    state.sidebar(None)
    catalog = state.attempt(bridge_run.catalog)
    if catalog is None:
        return
    if catalog.empty:
        st.info(f"No case files in {bridge_run.published_dir()}.")
        return
    names = _pick(catalog)
    if not names:
        st.info("Pick at least one family.")
        return
    tier = state.tier()
    results = _run(names, tier)
    if results is None:
        return
    v = bridge_run.validation_view(results)
    _summary(v)
    ok = v.cases[v.cases["status"] == "ok"]
    st.subheader("Predicted vs measured")
    if ok.empty:
        st.info("None of the selected cases can be expressed by the simulator yet (reasons in the table below).")
    else:
        st.altair_chart(charts.predicted_vs_measured(ok, list(dict.fromkeys(catalog["family"])), BAND),
                        width="stretch")
        st.caption(f"Log-log; the grey band is ±{BAND:.0%} around predicted = measured (dashed). Each case is in its "
                   "source's metric (step time, tokens/s, TFLOP/s, MFU, GPU-hours per trillion tokens).")
        st.altair_chart(charts.signed_errors(ok, list(dict.fromkeys(catalog["family"])), BAND), width="stretch")
        st.caption(f"The same cases by signed error; the grey band is ±{BAND:.0%}.")
    st.subheader("Per family")
    num = st.column_config.NumberColumn
    st.dataframe(v.families.assign(**{k: v.families[k] * 100 for k in ("mean |error|", "max |error|", "worst error")}),
                 hide_index=True, width="stretch", column_config={
                     "mean |error|": num(format="%.1f%%"), "max |error|": num(format="%.1f%%"),
                     "worst error": num(format="%+.1f%%")})
    st.subheader("Per case")
    cases = v.cases.drop(columns=["title"]).assign(error=v.cases["error"] * 100)
    st.dataframe(cases, hide_index=True, width="stretch", height=min(38 + 35 * len(cases), 720), column_config={
        "predicted": num(format="%.4g"), "measured": num(format="%.4g"),
        "error": num("error", format="%+.1f%%", help="predicted / measured − 1"),
        "reason": st.column_config.TextColumn("why it cannot be expressed", width="large")})
    st.caption("error = predicted / measured − 1 (positive: the simulator's number is larger). Cases that cannot be "
               "expressed are counted and excluded from the statistics; [planned: …] names the keys the "
               "simulator will gain.")
    _reasons(v.cases)


def _reasons(cases: pd.DataFrame) -> None:
    """The cases the simulator cannot express (or that failed), grouped by the first clause of their reason."""
    out = cases[cases["status"] != "ok"]
    if out.empty:
        return
    groups: dict[str, list[str]] = {}
    for case, reason in zip(out["case"], out["reason"], strict=True):
        groups.setdefault(reason.split("; allowed")[0].split(";")[0], []).append(case)
    with st.expander(f"Why {len(out)} cases cannot be expressed yet ({len(groups)} reasons)"):
        st.markdown("\n".join(f"- `{why}`: {len(names)} cases ({', '.join(names)})"
                               for why, names in sorted(groups.items(), key=lambda kv: -len(kv[1]))))


main()
