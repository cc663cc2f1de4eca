"""Scenario page: pick or upload a job, edit it, see the step's headline metrics and breakdown, download it.

Widgets hold their values under ``sc_*`` keys; only values that differ from the loaded job become edits, so the
downloaded YAML is the job plus what was changed here.
"""

from __future__ import annotations

from typing import Any

import streamlit as st
from dashkit import bridge, results, state
from dashkit.bridge import Edits, UserError

TITLE = "Scenario"
ORDER = 10
ICON = ":material/tune:"

SOURCE_KEYS = ("sc_source", "sc_workload", "sc_upload")
PRECISIONS = ("fp8", "bf16")


def _reset(*keep: str) -> None:
    """Forget the editing widgets (a new job or cluster brings new defaults)."""
    for k in [k for k in st.session_state if isinstance(k, str) and k.startswith("sc_")]:
        if k not in SOURCE_KEYS and k not in keep:
            del st.session_state[k]


def _reset_hardware() -> None:
    """A new cluster brings its own GPU type and count."""
    for k in ("sc_gpu", "sc_gpus"):
        st.session_state.pop(k, None)


def _source() -> Edits | None:
    st.session_state.setdefault("sc_source", "Built-in workload")
    st.session_state.setdefault("sc_workload", results.DEFAULT_WORKLOAD)
    c1, c2 = st.columns([1, 2])
    source = c1.radio("Job", ["Built-in workload", "Upload a job YAML"], key="sc_source", on_change=_reset)
    if source == "Built-in workload":
        c2.selectbox("Workload", bridge.workloads(), key="sc_workload", on_change=_reset,
                     help="Training jobs under workloads/ (DeepSeek-V3 on 2,048 H800s is the default).")
        return Edits(workload=st.session_state["sc_workload"])
    up = c2.file_uploader("Job YAML (model, cluster, parallel, training, ...)", type=["yaml", "yml"],
                          key="sc_upload", on_change=_reset,
                          help="Names and relative paths resolve as if the file sat in workloads/.")
    if up is None:
        st.info("Upload a job file, or pick a built-in workload.")
        return None
    try:
        text = up.getvalue().decode("utf-8")
    except UnicodeDecodeError:
        state.show_error(UserError("not UTF-8 text", "uploaded job"))
        return None
    return Edits(upload=text)


AS_IN_JOB = "(as in the job)"


def _hardware(base: Edits, hw: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The cluster picked (None: the job's own) and its GPU type and count."""
    st.session_state.setdefault("sc_cluster", hw["cluster"] or AS_IN_JOB)
    picked = st.session_state["sc_cluster"]
    cluster = None if picked == AS_IN_JOB else picked
    if cluster == hw["cluster"]:
        return cluster, hw
    return cluster, state.attempt(bridge.hardware_defaults, Edits(base.workload, base.upload, cluster)) or hw


def _values(d: dict[str, Any], hw: dict[str, Any]) -> dict[str, Any]:
    """The widgets' values: what the user set, else the loaded job's (set once, so widgets start there)."""
    defaults = {"gpu": hw["gpu"] or AS_IN_JOB, "gpus": hw["num_gpus"], "tp": d["tp"], "pp": d["pp"],
                "ep": d["ep"], "schedule": d["schedule"], "vpp": d["vpp"], "mbs": d["micro_batch_size"],
                "nmb": d["num_microbatches"], "precision": d["precision"], "comm_sms": d["comm_sms"],
                "recompute": d["recompute"], "policy": d["policy"], "skew": d["skew"]}
    for k, v in defaults.items():
        st.session_state.setdefault(f"sc_{k}", v)
    return {k: st.session_state[f"sc_{k}"] for k in defaults}


def _edits(base: Edits, d: dict[str, Any], hw: dict[str, Any], cluster: str | None, v: dict[str, Any]) -> Edits:
    """``base`` plus every value that differs from the loaded job."""
    sets: dict[str, Any] = {}
    for name, key in (("tp", "tp"), ("pp", "pp"), ("ep", "ep"), ("schedule", "schedule"), ("vpp", "vpp"),
                      ("micro_batch_size", "mbs"), ("comm_sms", "comm_sms"), ("recompute", "recompute")):
        if v[key] != d[name]:
            sets[f"parallel.{name}"] = v[key]
    if v["precision"] != d["precision"]:
        for f in ("fprop", "dgrad", "wgrad", "dispatch"):
            sets[f"precision.{f}"] = v["precision"]
        if v["precision"] == "bf16":
            sets["precision.attention"] = sets["precision.combine"] = "bf16"
    if d["is_moe"] and v["skew"] != d["skew"]:
        sets["experts.skew"] = v["skew"]
    if d["is_moe"] and v["policy"] != d["policy"]:
        sets["experts.policy"] = v["policy"]
        if v["policy"] == "eplb":
            sets["experts.num_redundant_experts"] = v["ep"]
    gpus, tp, pp, nmb, mbs = (int(v[k]) for k in ("gpus", "tp", "pp", "nmb", "mbs"))
    if gpus % (tp * pp) == 0 and nmb * (gpus // (tp * pp)) * mbs != d["global_batch_size"]:
        sets["training.global_batch_size"] = nmb * (gpus // (tp * pp)) * mbs
    return Edits(base.workload, base.upload, cluster, v["gpu"] if v["gpu"] not in (hw["gpu"], AS_IN_JOB) else None,
                 gpus if gpus != hw["num_gpus"] else None, tuple(sets.items()))


def _editors(d: dict[str, Any], hw: dict[str, Any], v: dict[str, Any]) -> None:
    """The widgets (their values are already in the session, under ``sc_*``)."""
    st.subheader("Edit the scenario")
    c = st.columns(4)
    c[0].selectbox("Cluster profile", [AS_IN_JOB, *bridge.clusters()], key="sc_cluster", on_change=_reset_hardware)
    c[1].selectbox("GPU type", [AS_IN_JOB, *bridge.gpus()], key="sc_gpu",
                   help="The node (NVLink, NICs) stays the cluster's.")
    c[2].number_input("GPU count", min_value=1, step=hw["gpus_per_node"], key="sc_gpus")
    c[3].number_input("Tensor parallel (TP)", min_value=1, step=1, key="sc_tp")
    c = st.columns(4)
    c[0].number_input("Pipeline parallel (PP)", min_value=1, step=1, key="sc_pp")
    c[1].number_input("Expert parallel (EP)", min_value=1, step=1, key="sc_ep")
    c[2].selectbox("Pipeline schedule", bridge.SCHEDULE_NAMES, key="sc_schedule")
    c[3].number_input("Virtual stages per rank (interleaved)", min_value=1, step=1, key="sc_vpp")
    c = st.columns(4)
    c[0].number_input("Micro-batch size (sequences)", min_value=1, step=1, key="sc_mbs")
    c[1].number_input("Micro-batches per pipeline", min_value=1, step=1, key="sc_nmb")
    c[2].selectbox("GEMM and dispatch precision", PRECISIONS, key="sc_precision")
    c[3].number_input("SMs for communication", min_value=0, step=1, key="sc_comm_sms")
    c = st.columns(4)
    c[0].selectbox("Activation recompute", bridge.RECOMPUTE, key="sc_recompute")
    c[1].selectbox("Expert balancing", bridge.POLICIES, key="sc_policy", disabled=not d["is_moe"])
    c[2].selectbox("Routing skew", bridge.SKEWS, key="sc_skew", disabled=not d["is_moe"],
                   help="balanced: every expert equally loaded (DeepSeek's profile); skew makes balancing matter "
                        "(and each step slower to simulate).")
    gpus, tp, pp, nmb, mbs = (int(v[k]) for k in ("gpus", "tp", "pp", "nmb", "mbs"))
    if gpus % (tp * pp) == 0:
        dp = gpus // (tp * pp)
        c[3].caption(f"dp = {dp:,}; global batch = {nmb} × {dp:,} × {mbs} = {nmb * dp * mbs:,} sequences "
                     f"of {d['seq_len']:,} tokens")


def _headline(s: Any, view: Any) -> None:
    pub = results.published_v3(s) if results.is_published_default(s) else None
    mfu = view.mfu.get("bf16_causal")
    c = st.columns(5)

    def delta(v: float, key: str) -> str | None:
        return f"{v / pub[key] - 1:+.1%} vs published" if pub else None

    c[0].metric("Step time", state.fmt_s(view.step_time_s), delta(view.step_time_s, "step_time_s"), **state.INFO)
    c[1].metric("MFU (BF16 peak, causal)", f"{mfu:.1%}" if mfu is not None else "n/a",
                help="; ".join(f"{k}: {v:.1%}" for k, v in view.mfu.items() if v is not None))
    c[2].metric("Tokens/s per GPU", f"{view.tokens_per_s_per_gpu:,.0f}",
                delta(view.tokens_per_s_per_gpu, "tokens_per_s_per_gpu"), **state.INFO)
    c[3].metric("GPU-hours per trillion tokens", f"{view.gpu_hours_per_trillion_tokens / 1e3:,.1f}K",
                delta(view.gpu_hours_per_trillion_tokens, "gpu_hours_per_trillion_tokens"), **state.INFO)
    c[4].metric("Memory per GPU (peak)", state.fmt_bytes(view.peak_memory_bytes),
                f"of {state.fmt_bytes(view.memory_capacity_bytes)}", **state.INFO)
    if view.oom:
        st.warning(f"Out of memory: the busiest GPU needs {state.fmt_bytes(view.peak_memory_bytes)} of "
                   f"{state.fmt_bytes(view.memory_capacity_bytes)}.", icon=":material/warning:")
    if pub:
        st.caption(f"Published ({results.PUBLISHED_V3['source']}): {pub['gpu_hours_per_trillion_tokens'] / 1e3:.0f}K "
                   f"GPU-hours per trillion tokens, i.e. {pub['tokens_per_s_per_gpu']:,.0f} tokens/s per GPU and "
                   f"{pub['step_time_s']:.1f} s per step; DeepSeek published no MFU.")


def main() -> None:
    st.title("Scenario")
    base = _source()
    if base is None:
        return
    loaded = state.attempt(state.build, base)
    hw0 = state.attempt(bridge.hardware_defaults, base)
    if loaded is None or hw0 is None:
        return
    d = results.describe(loaded)
    cluster, hw = _hardware(base, hw0)
    values = _values(d, hw)
    edits = _edits(base, d, hw, cluster, values)
    st.session_state[state.EDITS] = edits
    s = state.attempt(state.build, edits)
    state.sidebar(s)
    if s is not None:
        _results(s, edits)
    st.divider()
    _editors(d, hw, values)


def _results(s: Any, edits: Edits) -> None:
    detailed = st.session_state.get("sc_detailed_key") == bridge.key(s)
    view = state.simulate(s, "detailed" if detailed else state.tier())
    if view is None:
        return
    _headline(s, view)
    from dashkit import charts  # Altair and pandas load after the headline is on its way to the browser

    st.altair_chart(charts.breakdown(view.breakdown_s), width="stretch")
    c = st.columns([1, 1, 2])
    if c[0].button("Simulate in detail", help="The discrete-event simulation of every task (slower)",
                   disabled=detailed):
        st.session_state["sc_detailed_key"] = bridge.key(s)
        st.rerun()
    c[1].download_button("Download job YAML", state.attempt(bridge.job_yaml, edits) or "", file_name="job.yaml",
                         mime="application/x-yaml")
    c[2].caption(f"{view.tier} tier; simulated in {view.wall_time_s:.2f} s (cached afterwards)")
    for w in view.warnings:
        st.warning(w, icon=":material/warning:")
    if view.notes:
        with st.expander(f"Notes ({len(view.notes)}): where the cost model fell back to the GPU profile"):
            st.text("\n".join(view.notes))


main()
