"""A chunk under construction: tasks with dependencies on a GPU's streams, built by :mod:`sim.program.chunks`.

``ChunkBuilder.chain`` adds a task that depends on the previous task of the chain; ``add`` one with explicit
dependencies (work beside the chain: weight gradients, pipelined collective chunks, FSDP gathers). A ``gate``
makes the next compute task wait for a task (an FSDP gather); ``windows`` record, for the weight-gradient work
a split backward keeps, how much communication runs beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sim.program.tasks import Part, Task, Work
from sim.timeline import Stream

ChunkKind = Literal["F", "B", "I", "W"]


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk's tasks, its per-layer groups of task indices (forward order for F, backward order for B/I/W),
    the work the engine runs when the chunk is an action on its own, and, for backward chunks, when (seconds
    into the chunk, compute alone) each unit's weight gradients are complete, in the chunk's unit order."""

    kind: ChunkKind
    tasks: tuple[Task, ...]
    groups: tuple[tuple[int, ...], ...]
    work: Work
    grads_ready_s: tuple[float, ...] = ()


@dataclass
class ChunkBuilder:
    """Accumulates tasks with dependencies; ``last`` is the task the next one on the chain depends on."""

    kind: ChunkKind
    tasks: list[Task] = field(default_factory=list)
    groups: list[tuple[int, ...]] = field(default_factory=list)
    last: int | None = None
    last_compute_s: float = 0.0   # the compute task just before (sets the in-situ wait of an all-to-all)
    gate: int | None = None       # a task the next compute task must wait for (an FSDP gather)
    unit_ends: list[int] = field(default_factory=list)  # last compute task of each unit built so far
    grads_done: list[int] = field(default_factory=list)  # per unit: the task completing its weight gradients
    windows: dict[int, float] = field(default_factory=dict)  # inline W task -> communication beside it
    window_keys: dict[int, tuple[str, str]] = field(default_factory=dict)
    open_window: int | None = None

    def add(self, name: str, part: Part, stream: Stream, seconds: float, deps: tuple[int | None, ...],
            layer: int, links: int = 0, holds_sms: bool = False) -> int:
        if stream == Stream.COMPUTE:
            if self.gate is not None:
                deps, self.gate = (*deps, self.gate), None
            self.last_compute_s = seconds
        self.tasks.append(Task(name, part, stream, seconds, tuple(d for d in deps if d is not None), layer, links,
                               holds_sms))
        return len(self.tasks) - 1

    def chain(self, name: str, part: Part, stream: Stream, seconds: float, layer: int, links: int = 0,
              holds_sms: bool = False, also: tuple[int | None, ...] = ()) -> int:
        """Add a task that depends on the previous task of the chain (and ``also``) and becomes its new end."""
        if stream == Stream.COMPUTE:
            self.open_window = None
        elif self.open_window is not None:
            self.windows[self.open_window] += seconds
        self.last = self.add(name, part, stream, seconds, (self.last, *also), layer, links, holds_sms)
        return self.last

    def build(self, grads_ready_s: tuple[float, ...] = ()) -> Chunk:
        tasks = tuple(self.tasks)
        return Chunk(self.kind, tasks, tuple(self.groups), Work.of(tasks), grads_ready_s)


