"""Random valid and invalid values on the Scenario page's widgets (a seeded, bounded walk): no exception
escapes, an invalid scenario shows a message naming its field, and a valid one shows the headline metrics.

Routing skew is left out of the walk: a skewed scenario takes seconds per step (every micro-batch differs).
"""

from __future__ import annotations

import pytest

pytest.importorskip("streamlit", reason="the dashboard extra is not installed (pip install -e '.[dashboard]')")

import random

from streamlit.testing.v1 import AppTest

from tests.dashboard.conftest import DASHBOARD

STEPS = 14
# widget key -> (kind, candidate values: valid and invalid for the default 2,048-GPU DeepSeek-V3 job)
CANDIDATES = {
    "sc_pp": ("number", [1, 3, 7, 8, 16, 32, 61]),
    "sc_tp": ("number", [1, 2, 3, 8, 16]),
    "sc_ep": ("number", [1, 5, 8, 32, 64, 512]),
    "sc_gpus": ("number", [8, 1000, 1024, 2048, 2050, 4096]),
    "sc_vpp": ("number", [1, 2, 3]),
    "sc_mbs": ("number", [1, 2, 3]),
    "sc_nmb": ("number", [1, 7, 30, 120, 121]),
    "sc_comm_sms": ("number", [0, 20, 131, 132, 500]),
    "sc_schedule": ("select", ["gpipe", "1f1b", "interleaved-1f1b", "zb1p", "dualpipe", "dualpipev"]),
    "sc_precision": ("select", ["fp8", "bf16"]),
    "sc_gpu": ("select", ["a100_80gb_sxm", "h100_sxm", "h800_sxm", "b200"]),
    "sc_recompute": ("select", ["none", "selective", "full", "norm_and_up_proj"]),
    "sc_policy": ("select", ["none", "bias", "aux", "eplb"]),
}
KNOWN_INVALID = [("sc_pp", 7), ("sc_comm_sms", 132), ("sc_gpus", 2050), ("sc_ep", 5), ("sc_gpu", "a100_80gb_sxm")]


def _widget(at: AppTest, key: str):
    kind = CANDIDATES[key][0]
    return at.number_input(key=key) if kind == "number" else at.selectbox(key=key)


def _check(at: AppTest, what: str) -> bool:
    """No exception; exactly one of: an error naming a field, or the headline metrics. True when valid."""
    assert not at.exception, (what, [e.value for e in at.exception])
    if at.error:
        assert all(e.value.startswith("**") for e in at.error), (what, [e.value for e in at.error])
        assert not at.metric, what
        return False
    assert any(m.label == "Step time" for m in at.metric), what
    return True


def test_random_widget_values_never_escape_as_exceptions():
    rng = random.Random(20250101)
    at = AppTest.from_file(str(DASHBOARD / "views" / "scenario.py"), default_timeout=120).run()
    defaults = {k: _widget(at, k).value for k in CANDIDATES}
    for key, value in KNOWN_INVALID:
        _widget(at, key).set_value(value)
        at.run()
        assert not _check(at, f"{key}={value}"), f"{key}={value} should be refused"
        _widget(at, key).set_value(defaults[key])
        at.run()
    seen = set()
    for _ in range(STEPS):
        key = rng.choice(sorted(CANDIDATES))
        value = rng.choice(CANDIDATES[key][1])
        _widget(at, key).set_value(value)
        at.run()
        seen.add(_check(at, f"{key}={value}"))
        if rng.random() < 0.5:
            _widget(at, key).set_value(defaults[key])
            at.run()
            _check(at, f"{key} back to {defaults[key]}")
    assert seen == {True, False}, "the walk should meet both valid and invalid scenarios"


def test_an_invalid_upload_names_the_upload_and_a_valid_one_simulates():
    at = AppTest.from_file(str(DASHBOARD / "views" / "scenario.py"), default_timeout=120).run()
    at.radio(key="sc_source").set_value("Upload a job YAML")
    at.run()
    at.file_uploader(key="sc_upload").upload("job.yaml", b"model: [unclosed", "application/x-yaml")
    at.run()
    assert not at.exception
    assert at.error and at.error[0].value.startswith("**uploaded job**")
    job = (DASHBOARD.parent / "workloads" / "tiny_moe_job.yaml").read_bytes()
    at.file_uploader(key="sc_upload").upload("tiny.yaml", job, "application/x-yaml")
    at.run()
    assert not at.exception and not at.error
    assert any(m.label == "Step time" for m in at.metric)
