"""What a simulated step leaves behind: typed events on named streams, and link usage.

The engine (:mod:`sim.engine`) appends to a :class:`Trace`; metrics, the Perfetto export and the Gantt chart
read it by field name. Times are seconds from the start of the step.

- :class:`TaskEvent`: one task (a kernel or a group of kernels) on one stream of one rank;
- :class:`ActionEvent`: one schedule action (a chunk, an overlapped pair) or a piece of the step's tail
  (waiting for gradient synchronization, the optimizer, an exposed parameter gather), with the compute-busy
  seconds of its forward, backward-for-input and backward-for-weight tasks;
- :class:`TransferEvent`: activations or gradients crossing a pipeline stage boundary;
- :class:`LinkUsage`: per rank and link side, the seconds of data it carried and (when recorded) the intervals
  in which any transfer was on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple


class Stream(IntEnum):
    """The streams a GPU runs work on."""

    COMPUTE = 0  # GEMMs, attention, memory-bound kernels
    COMM = 1     # expert all-to-all and tensor-parallel collectives (they hold communication SMs)
    DP = 2       # data-parallel collectives: gradient reduction, parameter gathers (FSDP included)


class LinkSide(IntEnum):
    """One direction of a GPU's scale-out NIC or of its NVLink port."""

    NIC_TX = 0
    NIC_RX = 1
    NVLINK_TX = 2
    NVLINK_RX = 3


class Category:
    """Action categories (the keys of the step breakdown, see :mod:`sim.metrics`)."""

    FORWARD = "forward"
    BACKWARD = "backward"
    BACKWARD_INPUT = "backward_input"
    BACKWARD_WEIGHT = "backward_weight"
    OVERLAPPED = "overlapped"
    EXPOSED_COMM = "exposed_comm"
    OPTIMIZER = "optimizer"


class TaskEvent(NamedTuple):
    rank: int
    stream: Stream
    name: str
    start: float
    end: float
    action: str  # the label of the action (or tail piece) the task belongs to


class ActionEvent(NamedTuple):
    rank: int
    start: float
    end: float
    label: str
    category: str
    busy_forward: float = 0.0
    busy_input: float = 0.0
    busy_weight: float = 0.0

    @property
    def busy(self) -> float:
        return self.busy_forward + self.busy_input + self.busy_weight


class TransferEvent(NamedTuple):
    src: int
    dst: int
    start: float
    end: float
    label: str


@dataclass
class LinkUsage:
    """Per (rank, link side): ``busy_s``, the seconds its transfers take at its full rate (the data it carried);
    ``intervals``, when the trace records tasks, the disjoint intervals in which any transfer was on it (shared
    transfers overlap in time; the interval covers them all)."""

    busy_s: dict[tuple[int, LinkSide], float] = field(default_factory=dict)
    intervals: dict[tuple[int, LinkSide], list[tuple[float, float]]] = field(default_factory=dict)

    def utilisation(self, rank: int, side: LinkSide, step_s: float) -> float:
        """Fraction of the step the link side carried data."""
        return self.busy_s.get((rank, side), 0.0) / step_s if step_s > 0 else 0.0


@dataclass
class Trace:
    """Everything the engine recorded. ``tasks`` and ``transfers`` stay empty unless ``record_tasks``."""

    record_tasks: bool = True
    tasks: list[TaskEvent] = field(default_factory=list)
    actions: list[ActionEvent] = field(default_factory=list)
    transfers: list[TransferEvent] = field(default_factory=list)
    links: LinkUsage = field(default_factory=LinkUsage)
    num_tasks: int = 0  # tasks run, recorded or not
