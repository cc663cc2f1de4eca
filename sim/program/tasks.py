"""The units of work the engine runs: tasks on streams, grouped into a :class:`Work` per action.

A :class:`Task` is one piece of a chunk (the attention block's kernels of one layer, an expert dispatch, a
tensor-parallel collective) with its duration, the stream it runs on, the tasks it waits for (indices in its
work), the links it occupies and whether it holds the communication SMs. A :class:`Work` is what a rank runs for
one action: its tasks and, per stream, the order the stream runs them in. Costs are computed before the
engine sees a task; the engine only schedules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sim.timeline import Stream

#: Link masks of a task: the GPU's scale-out NIC and its NVLink port (both directions each).
NIC, NVLINK = 1, 2
#: Which part of a chunk a task belongs to: forward, backward-for-input (with recompute), backward-for-weights;
#: ``tail`` marks end-of-step work (gradient synchronization, optimizer, parameter gathers).
Part = Literal["F", "I", "W", "tail"]


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    part: Part
    stream: Stream
    seconds: float
    deps: tuple[int, ...] = ()
    # which model layer it belongs to: a label only, left out of equality and hashing so that identical layers
    # on different stages make equal works (their isolated timings are shared: sim.assemble.TimingCache)
    layer: int = field(default=-1, compare=False)
    links: int = 0
    holds_sms: bool = False


def stream_orders(tasks: tuple[Task, ...]) -> tuple[tuple[int, ...], ...]:
    """Per stream (indexed by :class:`Stream`), the task indices in list order."""
    return tuple(tuple(i for i, t in enumerate(tasks) if t.stream == s) for s in Stream)


@dataclass(frozen=True, slots=True)
class Work:
    """The tasks of one action and each stream's order (``orders[stream]``)."""

    tasks: tuple[Task, ...]
    orders: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, tasks: tuple[Task, ...]) -> Work:
        """Tasks run on each stream in list order."""
        return cls(tasks, stream_orders(tasks))

    def seconds_on(self, stream: Stream) -> float:
        return sum(self.tasks[i].seconds for i in self.orders[stream])
