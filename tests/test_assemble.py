"""Schedule hooks (sim.assemble): the integer arrival keys every action waits for and sends."""

from __future__ import annotations

from collections import Counter

import pytest

from sim.assemble import arrival_key, arrival_text, hook_dims, schedule_hooks
from sim.schedules.generators import build_schedule


def test_arrival_keys_are_dense_and_distinct():
    """Two kinds (forward, backward output) x directions x stages x micro-batches: every key once, 0 .. N-1, so
    the analytic tier can index an array by them."""
    dims = (2, 3, 4)
    keys = [arrival_key(b, d, s, m, dims) for b in (False, True) for d in range(2) for s in range(3) for m in range(4)]
    assert sorted(keys) == list(range(2 * 2 * 3 * 4))
    assert arrival_text(arrival_key(True, 1, 2, 3, dims), dims) == "B2.3"
    assert arrival_text(arrival_key(False, 0, 0, 1, dims), dims) == "F0.1"


def test_every_input_is_sent_once_by_its_dependency():
    """In a valid schedule each action's inputs are outputs of exactly one other action (the neighbouring
    stage's forward or backward of the same micro-batch), sent to the rank that waits for them; the first
    stage's forwards and the last stage's backwards wait for nothing."""
    for name, pp, m, vpp in (("1f1b", 4, 8, 1), ("dualpipe", 4, 8, 1), ("interleaved-1f1b", 4, 8, 2),
                             ("zb1p", 4, 8, 1)):
        sched = build_schedule(name, pp, m, vpp)
        hooks = schedule_hooks(sched)
        sent = Counter()
        sent_to = {}
        for actions in hooks.ranks:
            for h in actions:
                for key, dst in h.outputs:
                    sent[key] += 1
                    sent_to[key] = dst
        assert all(n == 1 for n in sent.values()), name
        waited = [(r, key) for r, actions in enumerate(hooks.ranks) for h in actions for key in h.inputs]
        assert sorted(k for _r, k in waited) == sorted(sent), name
        assert all(sent_to[key] == r for r, key in waited), name
        # the forward outputs: every stage but the last, for every micro-batch of each direction
        d, s, per_dir = hook_dims(sched)
        fwd = [k for k in sent if arrival_text(k, (d, s, per_dir)).startswith("F")]
        assert len(fwd) == d * (s - 1) * per_dir, name


def test_stage_boundary_sends_carry_their_link_share():
    """Assembled plans: a send between nodes weighs NCCL's P2P channels against a collective's (2/16), one
    inside a node 1 (the engine's link sharing reads it)."""
    from sim.loading import load_scenario
    from sim.network.nccl import send_weight
    from sim.program.tasks import NIC
    from sim.step import _prepared

    for overrides in ([], ["cluster.num_nodes=1", "parallel.ep=2", "training.global_batch_size=16"]):
        _ctx, plans = _prepared(load_scenario("workloads/tiny_moe_job.yaml", overrides=overrides), False, False,
                                True)
        sends = [s for plan in plans for a in plan.actions for s in a.outputs]
        assert sends
        for s in sends:
            assert s.weight == (send_weight(True) if s.links & NIC else 1.0)
        assert {s.weight for s in sends} == ({0.125, 1.0} if not overrides else {1.0})  # 2 nodes: both kinds


def test_an_action_with_data_parallel_tasks_is_timed_with_the_reductions_it_starts():
    """Fast mode's timing of an action (Assembler.timed): a 1 s gather on the data-parallel stream then 1 s of
    compute, starting a 2 s reduce-scatter 0.5 s in. They share the stream (one queue): the action takes 2 s, and
    the reduce-scatter, which ended at 3 s beside it, is started 3 - 2 = 1 s in, when it could have run. An
    action without data-parallel tasks keeps its isolated time and its reductions start as asked."""
    from sim.assemble import Assembler, TimingCache
    from sim.loading import load_scenario
    from sim.program.tasks import NIC, Task, Work
    from sim.step import build_context
    from sim.timeline import Stream

    job = load_scenario("workloads/tiny_moe_job.yaml", overrides=["parallel.comm_sms=0"])  # compute at full rate
    asm = Assembler(build_context(job).inputs, timings=TimingCache())
    gather = Work.of((Task("g", "I", Stream.DP, 1.0, links=NIC), Task("c", "I", Stream.COMPUTE, 1.0, deps=(0,))))
    reduce = Work.of((Task("rs", "I", Stream.DP, 2.0, links=NIC),))
    (secs, _busy), late = asm.timed(gather, ("gather",), ((0.5, reduce),))
    assert secs == pytest.approx(2.0)
    assert late == ((pytest.approx(1.0), reduce),)
    compute = Work.of((Task("c", "I", Stream.COMPUTE, 1.0),))
    (secs, _busy), late = asm.timed(compute, ("compute",), ((0.5, reduce),))
    assert (secs, late) == (pytest.approx(1.0), ((0.5, reduce),))
