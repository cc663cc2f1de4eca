"""Plan page (``sim plan`` on the edited job): the cheapest way to train a token budget within a deadline and a
budget, over GPU counts, hardware and a few layout axes.

Nothing runs until **Plan** is pressed: the plan prunes every configuration (layout rules, the memory model),
then simulates each surviving layout once with the analytic tier, in this process, within the caps of
:mod:`dashkit.plans`. The results stay for these inputs; the deadline and the budget only classify them, so
moving either re-ranks at once. Shows the recommendation (days, dollars, GPU-hours, GPUs, layout), days and
dollars against the GPU count per hardware with the deadline and the budget drawn, dollars against days with
the Pareto front, the best configuration per hardware and GPU count, why the rest lost, and every point as CSV.
"""

from __future__ import annotations

from typing import Any

import streamlit as st
from dashkit import bridge, bridge_run, charts, plans, state
from dashkit.results import JOB_CLUSTER

TITLE = "Plan"
ORDER = 60
ICON = ":material/event:"

RUNS = "plan_runs"  # (scenario key, request) -> PlanRun, the last few
FOR = "plan_for"  # the defaults the widgets were set from
KEEP_RUNS = 4
STAGES = {"pruning": "Checking layout rules and memory", "analytic (wave 1)": "Simulating the most promising first",
          "analytic": "Simulating (analytic tier)"}


def _start(d: dict[str, Any]) -> None:
    """Set the widgets from the job's defaults (again when the job, hence its defaults, changed)."""
    ident = repr(d)
    if st.session_state.get(FOR) != ident:
        for k in [k for k in st.session_state if isinstance(k, str) and k.startswith("pn_")]:
            del st.session_state[k]
        st.session_state[FOR] = ident
    st.session_state.setdefault("pn_tokens", plans.tokens_text(d["tokens"]))
    st.session_state.setdefault("pn_deadline", None)
    st.session_state.setdefault("pn_budget", "")
    st.session_state.setdefault("pn_gpus", d["gpus"])
    st.session_state.setdefault("pn_hardware", [JOB_CLUSTER])
    for name, values in d["picked"].items():
        st.session_state.setdefault(f"pn_{name}", values)


def _inputs(edits: Any, d: dict[str, Any]) -> tuple[Any, Any]:
    """The widgets; the request and the constraints they describe (None after showing what is wrong)."""
    catalog = bridge_run.hardware_choices()

    def hw_label(name: str) -> str:
        if name == JOB_CLUSTER:
            return f"the job's cluster: {d['cluster']} ({d['gpu']}, ${d['usd_per_gpu_hour']:.2f}/GPU-hour)"
        c = catalog[name]
        return f"{name} ({c['gpu']}, {c['gpus_per_node']} per node, ${c['usd_per_gpu_hour']:.2f}/GPU-hour)"

    c = st.columns(3)
    c[0].text_input(bridge_run.TOKENS, key="pn_tokens", help="The token budget: 14.8T, 469B, 1e9, ...")
    c[1].number_input(bridge_run.DEADLINE, key="pn_deadline", value=None, step=1.0, placeholder="no deadline",
                      help="Wall-clock days to train the tokens; empty for none.")
    c[2].text_input(bridge_run.BUDGET, key="pn_budget", placeholder="no budget",
                    help="Dollars for the tokens (GPU-hours × each cluster's price): 6M, 5.5e6, ...; empty for none.")
    c = st.columns([2, 3])
    c[0].multiselect(bridge_run.GPUS, d["gpu_options"], key="pn_gpus", format_func=lambda n: f"{n:,}",
                     help="Whole nodes of each cluster (other counts are pruned, with the reason).")
    c[1].multiselect(bridge_run.HARDWARE, [JOB_CLUSTER, *catalog], key="pn_hardware", format_func=hw_label,
                     help="The job's own cluster (as edited on the Scenario page) and cluster profiles "
                          "(`sim plan --hardware`): each brings its GPU, node, network and price.")
    with st.expander("Layouts to try: `sim plan`'s grid around the job's layout (TP, PP, EP, schedules); "
                     "micro-batch size and recompute at the job's", expanded=False):
        cols = st.columns(3)
        names = [n for n in bridge_run.PLAN_AXES if n in d["options"]]
        for i, name in enumerate(names):
            cols[i % 3].multiselect(bridge_run.PLAN_AXES[name], d["options"][name], key=f"pn_{name}")
        st.caption("Interleaved 1F1B runs with 2 virtual stages per rank (the job's, if more); the others with 1.")
    get = st.session_state.get
    req = state.attempt(bridge_run.plan_request, edits, get("pn_tokens") or "", get("pn_gpus") or [],
                        get("pn_hardware") or [], {n: get(f"pn_{n}") or [] for n in names})
    cons = state.attempt(bridge_run.plan_constraints, get("pn_deadline"), get("pn_budget"))
    return req, cons


def _run(edits: Any, req: Any, key: tuple[str, Any]) -> None:
    bar = st.progress(0.0, text=STAGES["pruning"] + "…")

    def progress(stage: str, done: int, total: int) -> None:
        text = STAGES.get(stage, f"Simulating ({stage})")
        bar.progress(min(1.0, done / max(total, 1)), text=f"{text}: {done:,} of {total:,}")

    run = state.attempt(bridge_run.run_plan, edits, req, progress)
    bar.empty()
    if run is not None:
        runs = st.session_state.setdefault(RUNS, {})
        runs.pop(key, None)
        runs[key] = run
        while len(runs) > KEEP_RUNS:
            runs.pop(next(iter(runs)))


def _headline(v: Any) -> None:
    r = v.recommended
    if r is None:
        st.warning(f"No configuration meets the constraints: {v.binding}.", icon=":material/warning:")
        return
    c = st.columns(5)
    c[0].metric("Days", plans.days(r["days"]), f"deadline {v.deadline_days:g}" if v.deadline_days else None,
                **state.INFO, help="Wall-clock days to train the tokens")
    c[1].metric("Dollars", plans.money(r["usd"]), f"budget {plans.money(v.budget_usd)}" if v.budget_usd else None,
                **state.INFO, help="GPU-hours × the cluster's price per GPU-hour")
    c[2].metric("GPU-hours", plans.sig(r["gpu_hours"]), f"{r['mwh']:,.4g} MWh", **state.INFO)
    c[3].metric("GPUs", f"{r['gpus']:,}", r["gpu"], **state.INFO)
    c[4].metric("MFU (BF16 peak, causal)", f"{r['mfu']:.1%}" if r["mfu"] == r["mfu"] else "n/a",
                f"{state.fmt_s(r['step_time_s'])} per step", **state.INFO)
    st.markdown(f"**Recommended:** {r['gpus']:,} × {r['hardware']}, `{r['layout']}`: {r['why']}; "
                f"{r['memory_per_gpu_gb']:.3g} GB per GPU.")
    if v.runners_up:
        st.caption("Next: " + "; ".join(f"{x['gpus']:,} × {x['hardware']}, {x['layout']}: {plans.days(x['days'])} "
                                        f"days, {plans.money(x['usd'])}" for x in v.runners_up) + ".")


NUM = st.column_config.NumberColumn
COLUMNS = {"gpus": NUM("GPUs", format="localized"), "step_time_s": NUM("step (s)", format="%.4g"),
           "mfu": NUM("MFU", format="percent"), "memory_per_gpu_gb": NUM("GB per GPU", format="%.1f"),
           "days": NUM("days", format="%.4g"), "usd": NUM("USD", format="dollar"),
           "gpu_hours": NUM("GPU-hours", format="localized"), "mwh": NUM("MWh", format="%.4g"),
           "why": st.column_config.TextColumn("why", width="large"),
           "layout": st.column_config.TextColumn("layout", width="medium")}


def _results(v: Any, name: str) -> None:
    _headline(v)
    ok = v.points[v.points["status"] == "ok"]
    if not len(ok):
        return
    hardware = list(dict.fromkeys(v.points["hardware"]))
    rec = ok[ok["verdict"] == "recommended"]
    st.subheader("Days and dollars against GPU count")
    best = v.best[v.best["status"] == "ok"]
    c = st.columns(2)
    c[0].altair_chart(charts.plan_against_gpus(ok, best, rec, hardware, "days", v.deadline_days), width="stretch")
    c[1].altair_chart(charts.plan_against_gpus(ok, best, rec, hardware, "usd", v.budget_usd), width="stretch")
    st.caption("Lines join the best layout at each GPU count (at one count and price, the cheapest is also the "
               "fastest); faint dots are the other layouts simulated. Dashed: the deadline and the budget. Ringed: "
               "the recommendation, the cheapest configuration that meets both.")
    st.subheader("Dollars against days")
    st.altair_chart(charts.plan_front(ok, rec, hardware, v.deadline_days, v.budget_usd), width="stretch")
    st.caption("Every layout simulated; the grey steps are the Pareto front (nothing is both faster and cheaper). "
               "A configuration meets the constraints left of the deadline and below the budget.")
    st.subheader("Best configuration per hardware and GPU count")
    st.dataframe(plans.table(v.best), hide_index=True, width="stretch", column_config=COLUMNS)
    with st.expander(f"The {min(50, len(ok))} cheapest layouts simulated"):
        st.dataframe(plans.table(plans.cheapest(v.points)), hide_index=True, width="stretch", column_config=COLUMNS)
    st.subheader("Why the rest lost")
    lost = {"configurations": NUM(format="localized"), "why": st.column_config.TextColumn(width="large"),
            "closest": st.column_config.TextColumn("closest example", width="large")}
    st.dataframe(v.lost[["verdict", "configurations", "why", "closest", "rules"]], hide_index=True, width="stretch",
                 column_config=lost)
    points = v.points
    st.download_button("Download every configuration (CSV)", lambda: plans.csv(points), file_name=f"plan-{name}.csv",
                       mime="text/csv", on_click="ignore", help="One row per configuration: layout, figures, verdict "
                       "and why (written when pressed).")
    st.caption(f"{len(v.points):,} configurations; {v.simulations:,} simulated ({v.tier} tier, one process) in "
               f"{v.wall_time_s:.1f} s. `sim plan` also re-simulates its ten best in detail (`--top-k`).")
    for n in v.notes:
        st.caption(f"Note: {n}")
    for w in v.warnings:
        st.warning(w, icon=":material/warning:")


def main() -> None:
    st.title("Plan")
    s = state.scenario()
    state.sidebar(s)
    if s is None:
        return
    edits = state.edits()
    d = state.attempt(bridge_run.plan_defaults, edits)
    if d is None:
        return
    _start(d)
    st.caption(f"Plans **{s.name}** ({s.model.name}) as edited on the Scenario page: which GPUs, how many and which "
               "layout train the tokens cheapest within the deadline and the budget (`sim plan`).")
    req, cons = _inputs(edits, d)
    if req is not None:
        st.caption(f"{req.points:,} points of the axes' product, the pairs of a schedule with a vpp it does not take "
                   f"left out when planned (the page plans at most {plans.MAX_POINTS:,} points and simulates at most "
                   f"{plans.MAX_SIMULATIONS:,} layouts that pass the rules and the memory model; the analytic tier "
                   "whatever the sidebar says).")
    key = (bridge.key(s), req)
    if st.button("Plan", type="primary", disabled=req is None or cons is None, key="plan_go"):
        _run(edits, req, key)
    run = st.session_state.get(RUNS, {}).get(key) if req is not None else None
    if run is None:
        if req is not None:
            st.info("Press **Plan** to run it; nothing is simulated before.", icon=":material/event:")
        return
    if cons is None:
        return
    _results(bridge_run.plan_view(run, *cons), s.name)


main()
