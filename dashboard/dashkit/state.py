"""Session state shared by the pages: the edited scenario, the tier, errors shown as messages.

The Scenario page writes ``st.session_state["edits"]`` (a :class:`~dashkit.bridge.Edits`); every other page
reads the scenario from there (the default DeepSeek-V3 job when the Scenario page was never opened).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import streamlit as st

from dashkit import bridge
from dashkit.bridge import Edits, UserError

T = TypeVar("T")
EDITS = "edits"
TIER = "tier"
SLOW_S = 0.5  # anything slower gets a spinner or a progress bar
INFO: dict[str, Any] = {"delta_color": "off", "delta_arrow": "off"}  # a metric's delta that is context, not change


def show_error(e: UserError) -> None:
    """The message, naming the field; never a traceback."""
    head = f"**{e.field}**: " if e.field else ""
    st.error(head + e.message.replace("\n", "  \n"), icon=":material/error:")


def attempt(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``fn(*args)``, or None after showing the user's mistake."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        show_error(e)
        return None


@st.cache_data(show_spinner=False, max_entries=256)
def _build(edits: Edits) -> tuple[Any, UserError | None]:
    try:
        return bridge.build(edits), None
    except UserError as e:
        return None, e


def build(edits: Edits) -> Any:
    """The validated scenario of ``edits``; raises :class:`UserError`."""
    scenario, err = _build(edits)
    if err is not None:
        raise err
    return scenario


def edits() -> Edits:
    value = st.session_state.get(EDITS)
    return value if isinstance(value, Edits) else Edits()


def scenario() -> Any:
    """The current scenario, or None after showing why it is invalid (with a pointer to the Scenario page)."""
    try:
        return build(edits())
    except UserError as e:
        show_error(e)
        st.info("Fix the scenario on the Scenario page.")
        return None


def tier() -> str:
    value = st.session_state.get(TIER)
    return value if value in bridge.tiers() else bridge.interactive_tier()


def sidebar(current: Any | None) -> None:
    """The tier picker and a line naming the scenario."""
    with st.sidebar:
        options = list(bridge.tiers())
        st.session_state.setdefault(TIER, bridge.interactive_tier())
        st.selectbox("Tier for interactive results", options, key=TIER,
                     help="The fastest tier serves widgets; the detailed tier (every task, the DES) runs on request.")
        if current is not None:
            st.caption(f"Scenario: **{current.name}**, {current.num_gpus:,} × {current.cluster.gpu.name}, "
                       f"{current.parallel.schedule}, PP{current.parallel.pp} EP{current.parallel.ep}")


def simulate(s: Any, tier_name: str, trace: bool = False, what: str = "one training step") -> Any:
    """A cached step with a spinner; None after showing a user error."""
    with st.spinner(f"Simulating {what} ({tier_name} tier)…"):
        return attempt(bridge.step, bridge.key(s), tier_name, trace)


def fmt_bytes(b: float) -> str:
    return f"{b / 2**30:,.1f} GiB"


def fmt_s(s: float) -> str:
    return f"{s:,.2f} s" if s >= 1 else f"{s * 1e3:,.1f} ms"
