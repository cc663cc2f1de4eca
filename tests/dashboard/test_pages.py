"""Every page loads without an exception, and one interaction per page moves a displayed metric the right way.

Pages run alone (``AppTest.from_file`` on ``dashboard/views/*.py``) on the default DeepSeek-V3 scenario unless
a test puts other edits in the session.
"""

from __future__ import annotations

import pytest

pytest.importorskip("streamlit", reason="the dashboard extra is not installed (pip install -e '.[dashboard]')")

import math
import re

from dashkit.results import Edits
from streamlit.testing.v1 import AppTest

from tests.dashboard.conftest import DASHBOARD

TIMEOUT = 120


def page(name: str) -> AppTest:
    return AppTest.from_file(str(DASHBOARD / "views" / f"{name}.py"), default_timeout=TIMEOUT)


def metric(at: AppTest, label: str) -> str:
    found = [m.value for m in at.metric if m.label == label]
    assert found, f"no metric {label!r}; have {[m.label for m in at.metric]}"
    return found[0]


def number(text: str) -> float:
    """The number in a metric's text: '18.37 s' -> 18.37, '8.0%' -> 8.0, '1,672' -> 1672, '350 ms' -> 0.35."""
    value = float(re.search(r"-?[\d,]*\.?\d+", text).group().replace(",", ""))
    return value / 1e3 if text.endswith(" ms") else value


def loaded(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_app_navigation_opens_on_the_scenario_headline():
    at = loaded(AppTest.from_file(str(DASHBOARD / "app.py"), default_timeout=TIMEOUT))
    assert number(metric(at, "Step time")) > 0
    assert "vs published" in at.metric[0].delta  # the default is DeepSeek-V3: published figures beside it


def test_scenario_edits_carry_to_other_pages_and_back():
    at = loaded(AppTest.from_file(str(DASHBOARD / "app.py"), default_timeout=TIMEOUT))
    at.selectbox(key="sc_schedule").set_value("1f1b")
    loaded(at)
    at.switch_page("views/pipeline.py")
    loaded(at)
    assert at.selectbox(key="pl_schedule").value == "1f1b"
    at.switch_page("views/scenario.py")
    loaded(at)
    assert at.selectbox(key="sc_schedule").value == "1f1b"


def test_scenario_dualpipe_beats_1f1b_and_an_impossible_layout_names_its_field():
    at = loaded(page("scenario"))
    dualpipe = number(metric(at, "Step time"))
    at.selectbox(key="sc_schedule").set_value("1f1b")
    loaded(at)
    assert number(metric(at, "Step time")) > dualpipe
    at.number_input(key="sc_pp").set_value(7)
    loaded(at)
    assert at.error and at.error[0].value.startswith("**parallel**")
    assert not at.metric


def test_pipeline_1f1b_shows_a_larger_bubble_than_dualpipe():
    at = loaded(page("pipeline"))
    dualpipe = number(metric(at, "Bubble"))
    assert number(metric(at, "1f1b bubble")) > number(metric(at, "dualpipe bubble"))
    at.selectbox(key="pl_schedule").set_value("1f1b")
    loaded(at)
    assert number(metric(at, "Bubble")) > dualpipe


def test_experts_bias_balancing_lowers_imbalance_below_no_balancing():
    at = loaded(page("experts"))
    at.slider(key="ex_steps").set_value(100)
    at.selectbox(key="ex_policy").set_value("none")
    loaded(at)
    none = number(metric(at, "Imbalance after 100 steps (none)"))
    at.selectbox(key="ex_policy").set_value("bias")
    loaded(at)
    assert number(metric(at, "Imbalance after 100 steps (bias)")) < none


def test_network_doubling_ib_bandwidth_lowers_or_keeps_step_time():
    at = loaded(page("network"))
    base = number(metric(at, "Step time"))
    at.select_slider(key="nw_ib").set_value(2.0)
    loaded(at)
    assert number(metric(at, "Step time")) <= base


def test_calibration_kind_filter_counts_that_kind():
    at = loaded(page("calibration"))
    gemm = number(metric(at, "Entries"))
    at.selectbox(key="cal_kind").set_value("memory")
    loaded(at)
    memory = number(metric(at, "Entries"))
    assert 0 < memory != gemm
    assert len(at.dataframe[0].value) == memory


def test_calibration_rejects_an_invalid_upload_by_field():
    at = loaded(page("calibration"))
    at.radio(key="cal_source").set_value("Upload")
    loaded(at)
    at.file_uploader(key="cal_upload").upload("bad.yaml", b"schema_version: 1\ndevice: {}\n", "application/x-yaml")
    loaded(at)
    assert at.error and at.error[0].value.startswith("**calibration**")


def test_cost_doubling_the_price_doubles_the_dollars_and_keeps_the_gpu_hours():
    at = loaded(page("cost"))
    assert "vs published" in next(m for m in at.metric if m.label == "GPU-hours").delta  # DeepSeek-V3's Table 1
    price = at.slider(key="co_price").value
    hours, dollars = number(metric(at, "GPU-hours")), number(metric(at, "Dollars"))
    table = at.dataframe[1].value
    at.slider(key="co_price").set_value(2 * price)
    loaded(at)
    assert number(metric(at, "GPU-hours")) == hours
    assert number(metric(at, "Dollars")) == pytest.approx(2 * dollars, rel=2e-3)
    doubled = at.dataframe[1].value
    assert list(doubled["GPU-hours"]) == list(table["GPU-hours"])
    assert list(doubled["USD"]) == pytest.approx(list(2 * table["USD"]))


def test_validation_runs_only_the_selected_family_each_with_an_error_or_a_reason():
    at = loaded(page("validation"))
    assert not at.dataframe  # nothing runs before the button
    at.multiselect(key="va_families").set_value(["mcore_h100"])
    loaded(at)
    at.button(key="va_run").click()
    loaded(at)
    cases = at.dataframe[1].value
    assert len(cases) and set(cases["family"]) == {"mcore_h100"}
    assert number(metric(at, "Cases")) == len(cases)
    for row in cases.itertuples():
        assert math.isfinite(row.error) if row.status == "ok" else row.reason, row.case
    assert "ok" in set(cases["status"]) and set(cases["status"]) <= {"ok", "not expressible"}
    assert list(at.dataframe[0].value["family"]) == ["mcore_h100", "overall"]


def _tiny_plan() -> AppTest:
    """The Plan page on the tiny MoE job, two GPU counts and two GPU types (about 200 layouts: a second or two)."""
    at = page("plan")
    at.session_state["edits"] = Edits(workload="tiny_moe_job")
    loaded(at)
    at.multiselect(key="pn_gpus").set_value([8, 16])
    at.multiselect(key="pn_hardware").set_value(["job", "h200_ib_1024"])
    return loaded(at)


def _charts(at: AppTest) -> list:
    return at.get("vega_lite_chart")


def test_plan_runs_on_the_button_and_recommends_the_cheapest_that_meets_the_deadline():
    at = _tiny_plan()
    assert not at.metric and not _charts(at) and "Press **Plan**" in at.info[0].value  # nothing ran yet
    at.button(key="plan_go").click()
    loaded(at)
    assert "Recommended:" in next(m.value for m in at.markdown if "Recommended" in m.value)
    assert len(_charts(at)) == 3  # days and dollars against GPUs, dollars against days
    best = at.dataframe[0].value  # best per hardware and GPU count
    assert len(best) == 4 and list(best["usd"]) == sorted(best["usd"])  # sorted by the objective
    assert best["verdict"].iloc[0] == "recommended"  # no constraints: the cheapest
    assert all(best.loc[best["verdict"] != "recommended", "why"].str.len() > 0)
    rec = best.iloc[0]
    assert number(metric(at, "Dollars")) == pytest.approx(rec["usd"], rel=1e-3)
    assert number(metric(at, "GPUs")) == rec["gpus"]
    assert at.get("download_button")

    # A deadline just under the cheapest's days re-ranks at once (no new plan): a faster configuration wins.
    deadline = float(rec["days"]) * 0.95
    at.number_input(key="pn_deadline").set_value(deadline)
    loaded(at)
    best = at.dataframe[0].value
    assert number(metric(at, "Days")) <= deadline < rec["days"]
    assert list(best["usd"]) == sorted(best["usd"])
    won = best[best["verdict"] == "recommended"]
    assert len(won) == 1 and won["days"].iloc[0] <= deadline
    assert (best.loc[best["days"] > deadline, "verdict"] == "slower").all()
    assert all(best.loc[best["verdict"] != "recommended", "why"].str.len() > 0)
    assert '"rule"' in _charts(at)[0].proto.spec  # the deadline drawn on days against GPUs
    lost = at.dataframe[-1].value  # why the rest lost: verdicts with counts
    assert "slower" in set(lost["verdict"]) and (lost["configurations"] > 0).all()


@pytest.mark.parametrize("key, value, field", [
    ("pn_tokens", "0", "Tokens to train"),
    ("pn_deadline", -5.0, "Deadline (days)"),
    ("pn_budget", "lots", "Budget (USD)"),
    ("pn_gpus", [], "GPU counts"),
    ("pn_hardware", [], "Hardware"),
    ("pn_tp", [], "Tensor parallel (TP)"),
    ("pn_pp", [1, 2, 4, 8, 16, 32, 64], "configurations"),  # 16,128 configurations: over the page's cap
])
def test_plan_bad_input_names_its_field_and_runs_nothing(key, value, field):
    at = _tiny_plan()
    if key == "pn_deadline":
        at.number_input(key=key).set_value(value)
    elif key in ("pn_tokens", "pn_budget"):
        at.text_input(key=key).set_value(value)
    else:
        if key == "pn_pp":
            for k in ("pn_tp", "pn_ep", "pn_schedule", "pn_micro_batch_size"):
                at.multiselect(key=k).set_value(at.multiselect(key=k).options)
        at.multiselect(key=key).set_value(value)
    loaded(at)
    assert at.error and at.error[0].value.startswith(f"**{field}**"), [e.value for e in at.error]
    assert at.button(key="plan_go").disabled and not at.metric
