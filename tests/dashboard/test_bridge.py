"""The bridge: the downloaded job loads to the simulated scenario; user errors name their field; tiers."""

from __future__ import annotations

import pytest

pytest.importorskip("streamlit", reason="the dashboard extra is not installed (pip install -e '.[dashboard]')")


from dashkit import bridge, results
from dashkit.bridge import Edits, UserError

from sim.loading import load_scenario


def test_downloaded_job_loads_to_the_same_scenario(tmp_path):
    edits = Edits(gpu="h100_sxm", num_gpus=1024, sets=(("parallel.schedule", "1f1b"), ("parallel.comm_sms", 24),
                                                         ("cluster.node.nic_achievable_gb_per_s", 45)))
    path = tmp_path / "job.yaml"
    path.write_text(bridge.job_yaml(edits))
    s = load_scenario(str(path))
    assert s == bridge.build(edits)
    assert (s.num_gpus, s.parallel.schedule, s.parallel.comm_sms) == (1024, "1f1b", 24)
    assert s.cluster.gpu.name.startswith("H100") and s.cluster.node.nic_achievable_gb_per_s == 45


@pytest.mark.parametrize("edits, field", [
    (Edits(sets=(("parallel.pp", 7),)), "parallel"),
    (Edits(sets=(("parallel.comm_sms", 132),)), "parallel.comm_sms"),
    (Edits(sets=(("parallel.bogus", 1),)), "parallel.bogus"),
    (Edits(num_gpus=2050), "GPU count"),
    (Edits(upload="model: ["), "uploaded job"),
    (Edits(upload="name: x\n"), "model"),
])
def test_user_errors_name_the_field(edits, field):
    with pytest.raises(UserError) as e:
        bridge.build(edits)
    assert e.value.field == field and e.value.message


def test_interactive_tier_is_the_fastest_the_library_has():
    assert bridge.interactive_tier() != "detailed"
    assert bridge.tiers()[-1] == "detailed" or "detailed" not in bridge.tiers()
    assert bridge.interactive_tier() in bridge.tiers()


def test_default_is_compared_with_deepseek_v3_published_figures():
    s = bridge.build(Edits())
    assert results.is_published_default(s)
    assert results.published_v3(s)["step_time_s"] == pytest.approx(19.9, rel=0.01)


def test_an_estimate_that_cannot_lay_out_a_phase_names_the_phase_once():
    from dashkit import bridge_run

    phases = [{"name": "p", "tokens": 1e6, "global_batch_size": 3, "layout_search": False}]
    s = bridge.build(Edits(workload="tiny_moe_job", sets=(("run", {"phases": phases}),)))
    with pytest.raises(UserError) as e:
        bridge_run.run_view(bridge.key(s), "fast")
    assert e.value.field == "run.phases.0 (p)"
    assert e.value.message.startswith("the job's layout is illegal") and "layout_search is off" in e.value.message


def test_host_work_per_step_is_its_own_category_not_a_bubble():
    """software.step_overhead_s comes after the simulated step: the Gantt's bubbles end where the trace does, and
    the breakdown chart shows the host's share under its own label and colour."""
    from dashkit import charts

    s = load_scenario("workloads/tiny_moe_job.yaml", overrides=["software.step_overhead_s=0.5"])
    v = bridge.step(bridge.key(s), "fast", trace=True)
    assert v.breakdown_s["host"] == pytest.approx(0.5)
    assert v.bubbles["end"].max() == pytest.approx(v.step_time_s - 0.5)
    bars = charts.breakdown(v.breakdown_s).data
    host = bars[bars["category"] == "host"]
    assert list(host["what"]) == ["host work per step"] and host["order"].notna().all()
