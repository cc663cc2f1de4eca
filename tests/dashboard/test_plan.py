"""The Plan page's logic without Streamlit: the request (user errors naming the widget, the caps), a small plan of
the tiny MoE job through the bridge (the recommendation is the cheapest point meeting the constraints, the
verdicts agree with ``sim plan``'s), and the verdicts of a hand-made frame."""

from __future__ import annotations

import pytest

pytest.importorskip("streamlit", reason="the dashboard extra is not installed (pip install -e '.[dashboard]')")

import math

import pandas as pd
from dashkit import bridge_run, plans
from dashkit.bridge import Edits, UserError
from dashkit.results import JOB_CLUSTER

from sim.sweep.plan import recommend

TINY = Edits(workload="tiny_moe_job")
AXES = {"tp": [1, 2], "pp": [2, 4], "ep": [4], "schedule": ["dualpipe", "1f1b"], "micro_batch_size": [1],
        "recompute": ["norm_and_up_proj"]}


def _request(**changes):
    args = {"tokens": "1e9", "gpus": [8, 16], "hardware": [JOB_CLUSTER, "h200_ib_1024"], "axes": AXES} | changes
    return bridge_run.plan_request(TINY, **args)


@pytest.fixture(scope="module")
def run():
    stages = []
    r = bridge_run.run_plan(TINY, _request(), lambda stage, done, total: stages.append((stage, done, total)))
    r.stages = stages
    return r


def test_a_small_plan_simulates_in_process_and_reports_progress(run):
    f = run.frame
    assert len(f) == _request().points == 2 * 2 * 2 * 2 * 1 * 2  # gpus, hardware, tp, pp, ep, schedule (vpp 1)
    assert set(f["hardware"]) == {"h100-x16 (job)", "h200_ib_1024"}  # the job's cluster under its own name
    assert set(f["gpu"]) == {"H100-SXM-80GB", "H200-SXM-141GB"}
    assert run.tier == "analytic" and run.simulations == f["status"].isin(["ok", "oom"]).sum() > 0
    assert run.stages[-1][1] == run.stages[-1][2]  # the last progress report is a finished stage
    assert {s for s, _, _ in run.stages} >= {"pruning", "analytic"}


def test_recommendation_is_the_cheapest_point_meeting_deadline_and_budget(run):
    ok = run.frame[run.frame["status"] == "ok"]
    deadline = float(ok["days"].median())  # about half the simulated points are too slow
    budget = float(ok.loc[ok["days"] <= deadline, "usd"].max()) * 0.999  # the dearest of the rest is over
    v = bridge_run.plan_view(run, deadline, budget)
    meets = ok[(ok["days"] <= deadline) & (ok["usd"] <= budget)].sort_values(["usd", "days", "index"])
    assert v.recommended["index"] == meets["index"].iloc[0]
    assert v.recommended["usd"] == pytest.approx(meets["usd"].min())
    assert [r["index"] for r in v.runners_up] == list(meets["index"].iloc[1:3])
    p = v.points.set_index("index")
    assert (p.loc[ok.loc[ok["days"] > deadline, "index"], "verdict"] == "slower").all()
    over = ok[(ok["days"] <= deadline) & (ok["usd"] > budget)]
    assert len(over) and (p.loc[over["index"], "verdict"] == "over budget").all()
    assert (p["verdict"] == "recommended").sum() == 1
    assert (p.loc[p["verdict"] != "recommended", "why"].str.len() > 0).all()  # every loser says why
    # The same classes, and counts, as sim plan's "why the others lost".
    spec = run.spec.model_copy(update={"deadline_days": deadline, "budget_usd": budget})
    frame = run.frame.assign(meets_constraints=plans.meets(run.frame, deadline, budget))
    lost = recommend(frame, spec)["runners_up"]
    counts = p["verdict"].value_counts()
    for kind, verdict in (("illegal", "illegal"), ("oom", "oom"), ("slower", "slower"),
                          ("over_budget", "over budget"), ("dominated", "dominated")):
        assert counts[verdict] == lost.get(kind, {"count": 0})["count"], kind
    assert set(v.lost["verdict"]) == {k for k, n in counts.items() if n and k != "recommended"}
    assert v.lost["configurations"].sum() == len(p) - 1


def test_best_per_count_is_one_row_per_hardware_and_count_sorted_by_dollars(run):
    v = bridge_run.plan_view(run, None, None)
    assert v.recommended["usd"] == pytest.approx(run.frame["usd"].min())  # no constraints: the cheapest
    assert len(v.best) == 4 and not v.best.duplicated(["hardware", "gpus"]).any()
    usd = list(v.best["usd"])
    assert usd == sorted(usd)
    for _, row in v.best.iterrows():
        same = run.frame[(run.frame["hardware"] == row["hardware"]) & (run.frame["gpus"] == row["gpus"])]
        assert row["usd"] == pytest.approx(same["usd"].min())


def test_moving_the_deadline_below_every_point_leaves_no_recommendation_and_says_why(run):
    v = bridge_run.plan_view(run, 1e-6, None)
    assert v.recommended is None and "deadline" in v.binding
    assert set(v.points.loc[v.points["status"] == "ok", "verdict"]) == {"slower"}


@pytest.mark.parametrize("changes, field", [
    ({"tokens": "0"}, "Tokens to train"),
    ({"tokens": "lots"}, "Tokens to train"),
    ({"gpus": []}, "GPU counts"),
    ({"hardware": []}, "Hardware"),
    ({"axes": AXES | {"tp": []}}, "Tensor parallel (TP)"),
    ({"axes": AXES | {"tp": [1, 2, 4, 8], "pp": [1, 2, 4, 8, 16, 32, 64], "ep": [1, 2, 4, 8],
                      "schedule": ["gpipe", "1f1b", "zb1p", "dualpipe", "dualpipev", "interleaved-1f1b"],
                      "micro_batch_size": [1, 2, 4, 8]}}, "configurations"),
])
def test_request_errors_name_the_widget(changes, field):
    with pytest.raises(UserError) as e:
        _request(**changes)
    assert e.value.field == field and e.value.message


@pytest.mark.parametrize("deadline, budget, field", [(-3.0, None, "Deadline (days)"), (0.0, None, "Deadline (days)"),
                                                     (None, "-5", "Budget (USD)"), (None, "0", "Budget (USD)"),
                                                     (None, "six million", "Budget (USD)")])
def test_constraint_errors_name_the_field(deadline, budget, field):
    with pytest.raises(UserError) as e:
        bridge_run.plan_constraints(deadline, budget)
    assert e.value.field == field


def test_constraints_read_suffixes_and_empty_means_none():
    assert bridge_run.plan_constraints(None, "") == (None, None)
    assert bridge_run.plan_constraints(60, "6M") == (60.0, 6e6)


def test_a_plan_over_the_simulation_cap_is_refused_before_simulating(monkeypatch):
    monkeypatch.setattr(plans, "MAX_SIMULATIONS", 3)

    def progress(stage, done, total):
        assert stage == "pruning", "simulated past the cap"

    with pytest.raises(UserError) as e:
        bridge_run.run_plan(TINY, _request(), progress)
    assert e.value.field == "configurations" and "at most 3" in e.value.message


def _frame(rows):
    cols = ["index", "hardware", "gpus", "layout", "status", "rule", "reason", "days", "usd", "memory_per_gpu_gb",
            "memory_capacity_gb"]
    return pd.DataFrame([dict(zip(cols, r, strict=True)) for r in rows])


def test_verdicts_of_a_hand_made_frame():
    nan = math.nan
    f = _frame([
        (0, "a", 8, "TP1", "ok", "", "", 10.0, 100.0, 50.0, 80.0),      # meets both, cheapest: recommended
        (1, "a", 16, "TP1", "ok", "", "", 5.0, 150.0, 40.0, 80.0),      # meets both, +$50 (+50%)
        (2, "b", 8, "TP1", "ok", "", "", 20.0, 80.0, 50.0, 80.0),       # cheapest of all, but 20 > 15 days
        (3, "b", 16, "TP1", "ok", "", "", 8.0, 300.0, 60.0, 80.0),      # in time, $300 > $200
        (4, "b", 16, "TP2", "pruned", "memory", "", nan, nan, 93.1, 80.0),
        (5, "a", 32, "TP3", "pruned", "layout", "parallel.tp: 3 does not divide the heads", nan, nan, nan, 80.0),
    ])
    p = plans.classify(f, 15, 200, recommended=0)
    assert list(p["verdict"]) == ["recommended", "costlier", "slower", "over budget", "oom", "illegal"]
    assert list(p["why"]) == ["the cheapest that meets the 15-day deadline and the $200 budget",
                              "$50 (+50.0%) more than the recommendation", "20.0 days > the 15-day deadline",
                              "$300 > the $200 budget", "needs 93.1 GB per GPU of 80 GB",
                              "parallel.tp: 3 does not divide the heads"]
    assert list(p["meets_constraints"]) == [True, True, False, False, pd.NA, pd.NA]
    best = plans.best_per_count(p)  # a x 8, a x 16, b x 8, b x 16 (cheapest ok), a x 32 (illegal only)
    assert list(zip(best["hardware"], best["gpus"], best["index"], strict=True)) == [
        ("b", 8, 2), ("a", 8, 0), ("a", 16, 1), ("b", 16, 3), ("a", 32, 5)]
    lost = plans.lost_summary(p).set_index("verdict")
    assert dict(lost["configurations"]) == {"costlier": 1, "slower": 1, "over budget": 1, "oom": 1, "illegal": 1}
    assert lost.loc["illegal", "rules"] == "layout 1" and lost.loc["slower", "closest"] == "8 × b: TP1"


def test_vpp_pairs_with_the_schedules():
    assert plans.vpp_values(["dualpipe", "1f1b"], 1) == [1]
    assert plans.vpp_values(["interleaved-1f1b"], 1) == [2]
    assert plans.vpp_values(["1f1b", "interleaved-1f1b"], 4) == [1, 4]
