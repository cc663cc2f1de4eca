"""Executors and streaming: the Dask executor returns the same DataFrame as local processes; an interrupted
and resumed sweep equals an uninterrupted one."""

from __future__ import annotations

import pandas as pd
import pytest

from sim.sweep import run_sweep
from sim.sweep.executors import DaskExecutor, LocalExecutor


def test_dask_equals_local(small_spec):
    distributed = pytest.importorskip("dask.distributed")
    local = run_sweep(small_spec, executor=LocalExecutor(1), top_k=2)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       silence_logs=40)
    try:
        ex = DaskExecutor(scheduler=cluster.scheduler_address)
        try:
            remote = run_sweep(small_spec, executor=ex, top_k=2, batch_size=3)
        finally:
            ex.close()
    finally:
        cluster.close()
    pd.testing.assert_frame_equal(local.frame, remote.frame)
    assert local.ranking == remote.ranking


def test_local_processes_equal_in_process(small_spec):
    one = run_sweep(small_spec, executor=LocalExecutor(1), top_k=2)
    ex = LocalExecutor(2)
    try:
        two = run_sweep(small_spec, executor=ex, top_k=2, batch_size=2)
    finally:
        ex.close()
    pd.testing.assert_frame_equal(one.frame, two.frame)


class Interrupting(LocalExecutor):
    """Evaluates in process and raises KeyboardInterrupt after ``after`` batches of ``tier`` (any tier when
    None)."""

    def __init__(self, after: int, tier: str | None = None) -> None:
        super().__init__(1)
        self.after, self.tier = after, tier

    def map(self, space, batches, tier):
        for n, results in enumerate(super().map(space, batches, tier)):
            if n == self.after and self.tier in (None, tier):
                raise KeyboardInterrupt
            yield results


def test_interrupted_and_resumed_equals_uninterrupted(small_spec, tmp_path):
    whole = run_sweep(small_spec, executor=LocalExecutor(1), top_k=3)
    out = tmp_path / "r.parquet"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(small_spec, executor=Interrupting(after=4), out=out, top_k=3, batch_size=2)
    parts = tmp_path / "r.parquet.parts"
    assert not out.exists() and len(list(parts.glob("rank-*.parquet"))) >= 1
    kept = pd.read_parquet(parts)  # an unfinished sweep's results read as they are
    assert len(kept) >= 8 and set(kept["status"]) <= {"ok", "oom", "pruned", "failed"}
    resumed = run_sweep(small_spec, executor=LocalExecutor(1), out=out, resume=True, top_k=3)
    assert resumed.counts["rank_simulations"] < whole.counts["rank_simulations"]  # only what was missing
    pd.testing.assert_frame_equal(whole.frame, resumed.frame)
    assert out.exists() and not parts.exists()
    pd.testing.assert_frame_equal(pd.read_parquet(out), whole.frame, check_dtype=False)


def test_interrupted_in_the_detail_tier_resumes_there(small_spec, tmp_path):
    whole = run_sweep(small_spec, executor=LocalExecutor(1), top_k=4)
    out = tmp_path / "r.parquet"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(small_spec, executor=Interrupting(after=1, tier="detailed"), out=out, top_k=4, batch_size=1)
    resumed = run_sweep(small_spec, executor=LocalExecutor(1), out=out, resume=True, top_k=4)
    assert resumed.counts["rank_simulations"] == 0 and 0 < resumed.counts["detail_simulations"] < 4
    pd.testing.assert_frame_equal(whole.frame, resumed.frame)


def test_existing_parts_need_resume(small_spec, tmp_path):
    from sim.errors import SimInputError

    out = tmp_path / "r.parquet"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(small_spec, executor=Interrupting(after=1), out=out, top_k=0, batch_size=2)
    with pytest.raises(SimInputError, match="--resume"):
        run_sweep(small_spec, executor=LocalExecutor(1), out=out, top_k=0)
    other = small_spec.model_copy(update={"tokens": 2e9})
    with pytest.raises(SimInputError, match="another sweep"):
        run_sweep(other, executor=LocalExecutor(1), out=out, resume=True, top_k=0)
