"""Timing a callable right: warm-up, median and spread of repeats; CUDA events, synchronization and an L2 flush
on GPUs; ``perf_counter`` with one thread on CPUs.

Method (PyTorch's ``torch.cuda.Event`` docs; triton-lang/triton ``python/triton/testing.py``; the CPU figure is our
own measurement with torch 2.13.0+cpu on a 2-core machine): CUDA runs asynchronously, so each timed call sits
between two ``torch.cuda.Event(enable_timing=True)`` records and the events are read after one synchronize;
before every timed call a buffer larger than L2 is zeroed (outside the events) so each call starts with a
cold L2, as triton's ``do_bench`` does; the median and (p20, p80) of the repeats are reported, never the
minimum. On a CPU, ``time.perf_counter_ns`` brackets each call with torch set to one thread (a shared machine
oversubscribed by MKL threads inflates times by 100x). The number of repeats adapts to a time budget per
measurement: ``budget_s / first-call estimate``, clamped to ``[min_repeats, max_repeats]``.

``torch.cuda`` is touched only by :class:`CudaTimer`, which is built only when CUDA is present.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True, slots=True)
class Timing:
    median_s: float
    p20_s: float
    p80_s: float
    samples: int


@dataclass(frozen=True, slots=True)
class TimingPolicy:
    warmup: int = 3
    min_repeats: int = 5
    max_repeats: int = 50
    budget_s: float = 0.2  # target wall time of the timed repeats of one measurement

    def repeats_for(self, estimate_s: float) -> int:
        n = int(self.budget_s / max(estimate_s, 1e-7))
        return max(self.min_repeats, min(self.max_repeats, n))


def summarize(samples: list[float]) -> Timing:
    xs = sorted(samples)
    if len(xs) == 1:
        return Timing(xs[0], xs[0], xs[0], 1)
    q = statistics.quantiles(xs, n=5, method="inclusive")
    return Timing(statistics.median(xs), q[0], q[3], len(xs))


class Timer(Protocol):
    policy: TimingPolicy

    def time(self, fn: Callable[[], object]) -> Timing: ...


class CpuTimer:
    """Wall-clock timing of synchronous CPU work, one thread."""

    def __init__(self, policy: TimingPolicy, threads: int = 1) -> None:
        self.policy, self.threads = policy, threads

    def time(self, fn: Callable[[], object]) -> Timing:
        with torch_threads(self.threads):
            for _ in range(max(self.policy.warmup - 1, 0)):
                fn()
            t0 = time.perf_counter_ns()
            fn()
            estimate = (time.perf_counter_ns() - t0) * 1e-9
            samples = []
            for _ in range(self.policy.repeats_for(estimate)):
                t0 = time.perf_counter_ns()
                fn()
                samples.append((time.perf_counter_ns() - t0) * 1e-9)
        return summarize(samples)


class CudaTimer:
    """CUDA-event timing of one call at a time on the current stream, L2 flushed before each call."""

    def __init__(self, policy: TimingPolicy, flush_bytes: int = 256 << 20) -> None:
        self.policy = policy
        self.flush = torch.empty(flush_bytes, dtype=torch.uint8, device="cuda") if flush_bytes else None

    def time(self, fn: Callable[[], object]) -> Timing:
        for _ in range(max(self.policy.warmup, 1)):
            fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        n = self.policy.repeats_for(start.elapsed_time(end) * 1e-3)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        for s, e in zip(starts, ends, strict=True):
            if self.flush is not None:
                self.flush.zero_()
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize()
        return summarize([s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends, strict=True)])


def make_timer(device: str, policy: TimingPolicy) -> Timer:
    if device == "cuda":
        return CudaTimer(policy)
    return CpuTimer(policy)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
