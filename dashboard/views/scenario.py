"""Scenario page: pick or upload a job, edit it, see the step's headline metrics and breakdown, download it.

Widgets hold their values under ``sc_*`` keys; only values that differ from the loaded job become edits, so the
downloaded YAML is the job plus what was changed here.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from dashkit import bridge, charts, state
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
    st.session_state.setdefault("sc_workload", bridge.DEFAULT_WORKLOAD)
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


def _widget(kind: str, label: str, key: str, default: Any, col: Any, **kw: Any) -> Any:
    k = f"sc_{key}"
    if k not in st.session_state:
        st.session_state[k] = default
    fn = {"num": col.number_input, "select": col.selectbox}[kind]
    return fn(label, key=k, **kw)


def _editors(base: Edits, d: dict[str, Any], hw: dict[str, Any]) -> Edits:
    """Draw the editors; return ``base`` plus every value that differs from the loaded job."""
    st.subheader("Hardware and layout")
    c = st.columns(4)
    cl_options = ["(as in the job)", *bridge.clusters()]
    cluster = _widget("select", "Cluster profile", "cluster", hw["cluster"] or cl_options[0], c[0],
                      options=cl_options, on_change=_reset_hardware)
    cluster = None if cluster == cl_options[0] else cluster
    hw_now = hw if cluster == hw["cluster"] else state.attempt(bridge.hardware_defaults,
                                                               Edits(base.workload, base.upload, cluster)) or hw
    gpu = _widget("select", "GPU type", "gpu", hw_now["gpu"] or bridge.gpus()[0], c[1], options=bridge.gpus(),
                  help="The node (NVLink, NICs) stays the cluster's.")
    num_gpus = int(_widget("num", "GPU count", "gpus", hw_now["num_gpus"], c[2], min_value=1, step=hw_now["gpus_per_node"]))
    sets: dict[str, Any] = {}
    tp = int(_widget("num", "Tensor parallel (TP)", "tp", d["tp"], c[3], min_value=1, step=1))
    c = st.columns(4)
    pp = int(_widget("num", "Pipeline parallel (PP)", "pp", d["pp"], c[0], min_value=1, step=1))
    ep = int(_widget("num", "Expert parallel (EP)", "ep", d["ep"], c[1], min_value=1, step=1))
    schedule = _widget("select", "Pipeline schedule", "schedule", d["schedule"], c[2], options=bridge.SCHEDULE_NAMES)
    vpp = int(_widget("num", "Virtual stages per rank (interleaved)", "vpp", d["vpp"], c[3], min_value=1, step=1))
    st.subheader("Batch, precision, communication, experts")
    c = st.columns(4)
    mbs = int(_widget("num", "Micro-batch size (sequences)", "mbs", d["micro_batch_size"], c[0], min_value=1, step=1))
    nmb = int(_widget("num", "Micro-batches per pipeline", "nmb", d["num_microbatches"], c[1], min_value=1, step=1))
    precision = _widget("select", "GEMM and dispatch precision", "precision", d["precision"], c[2], options=PRECISIONS)
    comm_sms = int(_widget("num", "SMs for communication", "comm_sms", d["comm_sms"], c[3], min_value=0, step=1))
    c = st.columns(4)
    recompute = _widget("select", "Activation recompute", "recompute", d["recompute"], c[0], options=bridge.RECOMPUTE)
    policy = _widget("select", "Expert balancing", "policy", d["policy"], c[1], options=bridge.POLICIES,
                     disabled=not d["is_moe"])
    skew = _widget("select", "Routing skew", "skew", d["skew"], c[2], options=bridge.SKEWS, disabled=not d["is_moe"],
                   help="balanced: every expert equally loaded (DeepSeek's profile); skew makes balancing matter.")
    for name, value in (("tp", tp), ("pp", pp), ("ep", ep), ("schedule", schedule), ("vpp", vpp),
                        ("micro_batch_size", mbs), ("comm_sms", comm_sms), ("recompute", recompute)):
        if value != d[name]:
            sets[f"parallel.{name}"] = value
    if precision != d["precision"]:
        for f in ("fprop", "dgrad", "wgrad", "dispatch"):
            sets[f"precision.{f}"] = precision
        if precision == "bf16":
            sets["precision.attention"] = sets["precision.combine"] = "bf16"
    if d["is_moe"] and skew != d["skew"]:
        sets["experts.skew"] = skew
    if d["is_moe"] and policy != d["policy"]:
        sets["experts.policy"] = policy
        if policy == "eplb":
            sets["experts.num_redundant_experts"] = ep
    if num_gpus % (tp * pp) == 0:
        dp = num_gpus // (tp * pp)
        if nmb * dp * mbs != d["global_batch_size"]:
            sets["training.global_batch_size"] = nmb * dp * mbs
        c[3].caption(f"dp = {dp:,}; global batch = {nmb} × {dp:,} × {mbs} = {nmb * dp * mbs:,} sequences "
                     f"of {d['seq_len']:,} tokens")
    return Edits(base.workload, base.upload, cluster, gpu if gpu != hw_now["gpu"] else None,
                 num_gpus if num_gpus != hw_now["num_gpus"] else None,
                 tuple(sets.items()))


def _headline(s: Any, view: Any) -> None:
    pub = bridge.published_v3(s) if bridge.is_published_default(s) else None
    mfu = view.mfu.get("bf16_causal")
    c = st.columns(5)

    def delta(v: float, key: str) -> str | None:
        return f"{v / pub[key] - 1:+.1%} vs published" if pub else None

    c[0].metric("Step time", state.fmt_s(view.step_time_s), delta(view.step_time_s, "step_time_s"), delta_color="off")
    c[1].metric("MFU (BF16 peak, causal)", f"{mfu:.1%}" if mfu is not None else "n/a",
                help="; ".join(f"{k}: {v:.1%}" for k, v in view.mfu.items() if v is not None))
    c[2].metric("Tokens/s per GPU", f"{view.tokens_per_s_per_gpu:,.0f}",
                delta(view.tokens_per_s_per_gpu, "tokens_per_s_per_gpu"), delta_color="off")
    c[3].metric("GPU-hours per trillion tokens", f"{view.gpu_hours_per_trillion_tokens / 1e3:,.1f}K",
                delta(view.gpu_hours_per_trillion_tokens, "gpu_hours_per_trillion_tokens"), delta_color="off")
    c[4].metric("Memory per GPU (peak)", state.fmt_bytes(view.peak_memory_bytes),
                f"of {state.fmt_bytes(view.memory_capacity_bytes)}", delta_color="off")
    if view.oom:
        st.warning(f"Out of memory: the busiest GPU needs {state.fmt_bytes(view.peak_memory_bytes)} of "
                   f"{state.fmt_bytes(view.memory_capacity_bytes)}.", icon=":material/warning:")
    if pub:
        st.caption(f"Published ({bridge.PUBLISHED_V3['source']}): {pub['gpu_hours_per_trillion_tokens'] / 1e3:.0f}K "
                   f"GPU-hours per trillion tokens, i.e. {pub['tokens_per_s_per_gpu']:,.0f} tokens/s per GPU and "
                   f"{pub['step_time_s']:.1f} s per step; DeepSeek published no MFU.")


def main() -> None:
    st.title("Scenario")
    base = _source()
    if base is None:
        return
    loaded = state.attempt(state.build, base)
    hw = state.attempt(bridge.hardware_defaults, base)
    if loaded is None or hw is None:
        return
    edits = _editors(base, bridge.describe(loaded), hw)
    st.session_state[state.EDITS] = edits
    s = state.attempt(state.build, edits)
    state.sidebar(s)
    if s is None:
        return
    st.divider()
    detailed = st.session_state.get("sc_detailed_key") == bridge.key(s)
    tier = "detailed" if detailed else state.tier()
    view = state.simulate(s, tier)
    if view is None:
        return
    _headline(s, view)
    st.altair_chart(charts.breakdown(view.breakdown_s), width="stretch")
    c = st.columns([1, 1, 2])
    if c[0].button("Simulate in detail", help="The discrete-event simulation of every task (slower)",
                   disabled=detailed):
        st.session_state["sc_detailed_key"] = bridge.key(s)
        st.rerun()
    c[1].download_button("Download job YAML", state.attempt(bridge.job_yaml, edits) or "", file_name="job.yaml",
                         mime="application/x-yaml")
    c[2].caption(f"{view.tier} tier; simulated in {view.wall_time_s:.2f} s (cached afterwards)")
    if view.warnings or view.notes:
        with st.expander(f"Warnings ({len(view.warnings)}) and notes ({len(view.notes)})"):
            for w in view.warnings:
                st.warning(w)
            st.text("\n".join(view.notes))


main()
