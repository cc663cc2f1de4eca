"""Pipeline schedules as data: actions, per-rank action lists, and a compact text form.

An :class:`Action` is one chunk of work on one pipeline rank:

- ``Phase.F``  forward of one model chunk (stage) for one micro-batch;
- ``Phase.B``  full backward (input and weight gradients);
- ``Phase.I``  backward for the input only, its weight gradient deferred (zero bubble, arXiv 2401.10241);
- ``Phase.W``  the deferred backward for the weights of an earlier ``I``;
- ``Phase.FB`` an overlapped forward/backward pair (DualPipe's "F&B", deepseek-ai/DualPipe):
  ``fwd`` is the F action and ``bwd`` the B (or I) action it overlaps with; the pair's own
  ``stage``/``microbatch``/``direction`` are those of ``fwd``.

Indices:

- ``stage`` is the model-chunk index 0..S-1 in the order data flows *for that direction*. Both DualPipe
  directions use the same model partition: direction 0 runs stages 0..P-1 on ranks 0..P-1, direction 1
  runs stages 0..P-1 on ranks P-1..0.
- ``microbatch`` counts 0..n-1 per direction; DualPipe gives each direction ``num_microbatches // 2``.
- ``direction`` is 0, or 1 for DualPipe's reverse stream.

Folding of stages onto ranks (``Schedule.folding``; :mod:`sim.pipeline` is the single source of it):

- ``"loop"``:   stage s on rank s % P (GPipe, 1F1B, ZB1P, interleaved 1F1B of Megatron-LM);
- ``"v"``:      stage s on rank s for s < P, on rank 2P-1-s otherwise (DualPipeV);
- ``"mirror"``: direction 0 stage s on rank s, direction 1 stage s on rank P-1-s (DualPipe).

Data dependencies (:meth:`Schedule.dependencies`): F(d,s,m) needs F(d,s-1,m); B/I(d,s,m) needs
B-or-I(d,s+1,m), or F(d,S-1,m) at the last stage; W(d,s,m) needs I(d,s,m).

Text form: ``F3.1`` is phase F, stage 3, micro-batch 1 of direction 0; a lower-case phase letter marks
direction 1 (``f3.1``); a pair is ``F0.2&B1.5``. :func:`to_text` and :func:`parse` round-trip a schedule:
a header line ``# NAME ranks=P stages=S microbatches=N directions=D folding=L`` then one line per rank,
``r0: F0.0 F0.1 B0.0 ...``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import get_args

from sim.pipeline import Folding, rank_of_stage

FOLDINGS: tuple[str, ...] = get_args(Folding)


class Phase(StrEnum):
    """What an action computes."""

    F = "F"
    B = "B"
    I = "I"  # noqa: E741 - the zero-bubble paper's name for backward-for-input
    W = "W"
    FB = "FB"


BACKWARD_INPUT = (Phase.B, Phase.I)
_F, _FB = Phase.F, Phase.FB  # looked up once: Enum class attribute access is slow on 3.11 (actions are many)


@dataclass(frozen=True, slots=True, repr=False)
class Action:
    """One chunk of work on one rank; see the module docstring for the meaning of each field."""

    phase: Phase
    stage: int
    microbatch: int
    direction: int = 0
    fwd: Action | None = None
    bwd: Action | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.phase, Phase):
            object.__setattr__(self, "phase", Phase(self.phase))
        if self.phase is _FB:
            f, b = self.fwd, self.bwd
            if f is None or b is None or f.phase is not _F or b.phase not in BACKWARD_INPUT:
                raise ValueError("an FB action pairs an F action (fwd) with a B or I action (bwd)")
            if (self.stage, self.microbatch, self.direction) != (f.stage, f.microbatch, f.direction):
                raise ValueError("an FB action carries the stage, micro-batch and direction of its fwd part")
        elif self.fwd is not None or self.bwd is not None:
            raise ValueError(f"only FB actions have fwd/bwd parts (got phase {self.phase.value})")
        if self.stage < 0 or self.microbatch < 0 or self.direction < 0:
            raise ValueError("stage, micro-batch and direction must be >= 0")

    @staticmethod
    def pair(fwd: Action, bwd: Action) -> Action:
        """The overlapped F&B action of ``fwd`` (phase F) and ``bwd`` (phase B or I)."""
        return Action(Phase.FB, fwd.stage, fwd.microbatch, fwd.direction, fwd, bwd)

    def parts(self) -> tuple[Action, ...]:
        """The plain actions this action performs: itself, or the two halves of a pair."""
        if self.fwd is not None and self.bwd is not None:
            return (self.fwd, self.bwd)
        return (self,)

    def __str__(self) -> str:
        return action_text(self)

    def __repr__(self) -> str:
        return f"Action<{action_text(self)}>"


@dataclass(frozen=True, slots=True)
class Schedule:
    """A pipeline schedule: for each rank, the ordered tuple of actions it executes.

    Immutable; forms derived from it (the list scheduler's compiled keys) are cached on the instance.
    """

    name: str
    num_ranks: int
    num_stages: int
    num_microbatches: int
    num_directions: int
    ranks: tuple[tuple[Action, ...], ...]
    folding: Folding = "loop"
    _backward_kind: dict[tuple[int, int, int], Phase] = field(init=False, repr=False, compare=False)
    _cache: dict[str, object] = field(init=False, repr=False, compare=False)  # derived forms (listsched)

    def __post_init__(self) -> None:
        if self.folding not in FOLDINGS:
            raise ValueError(f"folding must be one of {', '.join(FOLDINGS)} (got {self.folding!r})")
        if self.num_directions not in (1, 2) or (self.num_directions == 2) != (self.folding == "mirror"):
            raise ValueError("two directions go with the mirror folding, one with the others")
        kinds: dict[tuple[int, int, int], Phase] = {}
        for actions in self.ranks:
            for a in actions:
                for p in a.parts():
                    if p.phase in BACKWARD_INPUT:
                        key = (p.direction, p.stage, p.microbatch)
                        kinds[key] = Phase.I if p.phase is Phase.I else kinds.get(key, Phase.B)
        object.__setattr__(self, "_backward_kind", kinds)
        object.__setattr__(self, "_cache", {})

    @property
    def microbatches_per_direction(self) -> int:
        return self.num_microbatches // self.num_directions

    @property
    def num_actions(self) -> int:
        return sum(len(r) for r in self.ranks)

    def rank_of(self, stage: int, direction: int = 0) -> int:
        """The rank that holds ``stage`` of ``direction``."""
        return rank_of_stage(self.folding, self.num_ranks, stage, direction)

    def backward_kind(self, stage: int, microbatch: int, direction: int = 0) -> Phase:
        """``Phase.I`` when (stage, micro-batch) splits its backward, else ``Phase.B``."""
        return self._backward_kind.get((direction, stage, microbatch), Phase.B)

    def dependencies(self, action: Action) -> tuple[Action, ...]:
        """Data dependencies of ``action``; for a pair, those of both halves that the pair itself does not meet."""
        if action.phase is Phase.FB:
            own = set(action.parts())
            deps = [d for p in action.parts() for d in self.dependencies(p) if d not in own]
            return tuple(dict.fromkeys(deps))
        d, s, m = action.direction, action.stage, action.microbatch
        if action.phase is Phase.F:
            return (Action(Phase.F, s - 1, m, d),) if s > 0 else ()
        if action.phase is Phase.W:
            return (Action(Phase.I, s, m, d),)
        if s == self.num_stages - 1:
            return (Action(Phase.F, s, m, d),)
        return (Action(self.backward_kind(s + 1, m, d), s + 1, m, d),)


_ACTION_RE = re.compile(r"([FBIWfbiw])(\d+)\.(\d+)")


def action_text(action: Action) -> str:
    """``F3.1``; lower case for direction 1; ``F0.2&B1.5`` for a pair."""
    if action.fwd is not None and action.bwd is not None:
        return f"{action_text(action.fwd)}&{action_text(action.bwd)}"
    letter = action.phase.value if action.direction == 0 else action.phase.value.lower()
    return f"{letter}{action.stage}.{action.microbatch}"


def parse_action(text: str) -> Action:
    """Inverse of :func:`action_text`."""
    if "&" in text:
        f, _, b = text.partition("&")
        return Action.pair(parse_action(f), parse_action(b))
    match = _ACTION_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an action: {text!r} (expected e.g. F3.1, b0.2 or F0.2&B1.5)")
    letter, stage, mb = match.groups()
    return Action(Phase(letter.upper()), int(stage), int(mb), 0 if letter.isupper() else 1)


def to_text(schedule: Schedule) -> str:
    """The schedule as text: a header line, then ``rK: action action ...`` per rank."""
    s = schedule
    lines = [f"# {s.name} ranks={s.num_ranks} stages={s.num_stages} microbatches={s.num_microbatches} "
             f"directions={s.num_directions} folding={s.folding}"]
    lines += [f"r{r}: " + " ".join(action_text(a) for a in actions) for r, actions in enumerate(s.ranks)]
    return "\n".join(lines) + "\n"


def parse(text: str) -> Schedule:
    """Inverse of :func:`to_text`."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("#"):
        raise ValueError("schedule text must start with '# NAME ranks=P stages=S microbatches=N ...'")
    name, *fields = lines[0][1:].split()
    meta = dict(f.split("=", 1) for f in fields)
    ranks: list[tuple[Action, ...]] = []
    for r, line in enumerate(lines[1:]):
        label, _, body = line.partition(":")
        if label != f"r{r}":
            raise ValueError(f"line {r + 2}: expected 'r{r}: ...' (got {line[:20]!r})")
        ranks.append(tuple(parse_action(tok) for tok in body.split()))
    return Schedule(name, int(meta["ranks"]), int(meta["stages"]), int(meta["microbatches"]),
                    int(meta["directions"]), tuple(ranks), meta.get("folding", meta.get("layout", "loop")))  # type: ignore[arg-type]
