"""Where points are evaluated: local processes (default, one per core) or a Dask distributed cluster.

Both run the same task, ``sim.sweep.evaluate.evaluate_batch(space, batch, tier)``, on batches of points and
yield each batch's results as it finishes (in completion order: the coordinator orders the results by point,
so the DataFrame does not depend on the executor). The space travels once per worker: as the initializer's
argument of a ``ProcessPoolExecutor``, as a broadcast ``scatter`` on Dask. With ``--scheduler ADDRESS`` the
tasks go to an existing Dask scheduler (its workers need this package installed); without one a
``LocalCluster`` of ``workers`` single-threaded processes is started and closed with the executor, so a sweep
moves from one machine to many with no change of code.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Protocol

from sim.errors import SimInputError
from sim.sweep.evaluate import evaluate_batch
from sim.sweep.space import Space

Batch = list[tuple[int, tuple[Any, ...]]]
Results = list[tuple[int, dict[str, Any]]]


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class Executor(Protocol):
    workers: int

    def map(self, space: Space, batches: Iterable[Batch], tier: str) -> Iterator[Results]: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


_SPACE: Space | None = None


def _init(space: Space) -> None:
    global _SPACE
    _SPACE = space


def _run(batch: Batch, tier: str) -> Results:
    assert _SPACE is not None
    return evaluate_batch(_SPACE, batch, tier)


class LocalExecutor:
    """Local processes; ``workers=1`` evaluates in this process (no pool)."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or default_workers()
        self._pool: ProcessPoolExecutor | None = None
        self._space: Space | None = None

    def _get_pool(self, space: Space) -> ProcessPoolExecutor:
        if self._pool is None or self._space is not space:
            self.close()
            self._pool = ProcessPoolExecutor(self.workers, initializer=_init, initargs=(space,))
            self._space = space
        return self._pool

    def map(self, space: Space, batches: Iterable[Batch], tier: str) -> Iterator[Results]:
        if self.workers == 1:
            for batch in batches:
                yield evaluate_batch(space, batch, tier)
            return
        pool = self._get_pool(space)
        pending: set[Future[Results]] = set()
        source = iter(batches)
        window = 4 * self.workers  # tasks in flight: enough to keep workers busy, few lost on interrupt
        try:
            while True:
                while len(pending) < window:
                    b = next(source, None)
                    if b is None:
                        break
                    pending.add(pool.submit(_run, b, tier))
                if not pending:
                    return
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        finally:
            for f in pending:
                f.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def abort(self) -> None:
        """Stop now (an interrupt): running batches are lost, streamed ones are kept."""
        if self._pool is not None:
            for proc in list(getattr(self._pool, "_processes", {}).values()):
                proc.terminate()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class DaskExecutor:
    """Batches as Dask tasks on ``scheduler`` (an address), or on a LocalCluster started here."""

    def __init__(self, scheduler: str | None = None, workers: int | None = None) -> None:
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError:
            raise SimInputError("needs dask[distributed]: pip install -e '.[sweep]'", field="--executor") from None
        self._cluster = None
        if scheduler:
            try:
                self.client = Client(scheduler, timeout="10s")
            except (OSError, TimeoutError) as e:
                raise SimInputError(f"cannot reach the Dask scheduler at {scheduler}: {e}",
                                    field="--scheduler") from None
            self.workers = max(1, sum(w.get("nthreads", 1) for w in
                                      self.client.scheduler_info().get("workers", {}).values()))
        else:
            self.workers = workers or default_workers()
            self._cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                         dashboard_address=None, silence_logs=40)
            self.client = Client(self._cluster)
        self._scattered: tuple[Space, Any] | None = None

    def map(self, space: Space, batches: Iterable[Batch], tier: str) -> Iterator[Results]:
        from dask.distributed import as_completed

        if self._scattered is None or self._scattered[0] is not space:
            self._scattered = (space, self.client.scatter(space, broadcast=True))
        remote = self._scattered[1]
        futures = [self.client.submit(evaluate_batch, remote, b, tier, pure=False) for b in batches]
        try:
            for f in as_completed(futures):
                yield f.result()
        finally:
            for f in futures:
                f.cancel()

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def abort(self) -> None:
        self.close()


def make_executor(kind: str, scheduler: str | None = None, workers: int | None = None) -> Executor:
    if kind == "local":
        if scheduler:
            raise SimInputError("--scheduler needs --executor dask", field="--scheduler")
        return LocalExecutor(workers)
    if kind == "dask":
        return DaskExecutor(scheduler, workers)
    raise SimInputError(f"{kind!r}; allowed: local, dask", field="--executor")
