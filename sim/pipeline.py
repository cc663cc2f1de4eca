"""Pipeline stages: schedule names, which rank holds which stages, and what each schedule requires.

A *stage* is a contiguous run of the model's units (a "model chunk"); ``pp`` always counts pipeline ranks
(devices). Placements, by schedule:

- ``gpipe``, ``1f1b``, ``zb1p``: stage s on rank s (one stage per rank).
- ``interleaved-1f1b``: ``pp x vpp`` stages, stage s on rank ``s % pp`` (Megatron-LM's virtual pipeline).
- ``dualpipe``: ``pp`` stages; every rank holds two: stage r for direction 0 and stage ``pp-1-r`` for direction
  1 (deepseek-ai/DualPipe: rank r holds ``m0`` = stage r and ``m1`` = stage P-1-r), so rank 0 holds both the
  embedding and the output head.
- ``dualpipev``: ``2 pp`` stages folded into a V: rank r holds stages r and ``2pp-1-r``.

Preconditions come from the schedules' own sources: DualPipe asserts ``num_ranks % 2 == 0``,
``num_chunks % 2 == 0`` and ``num_chunks >= 2 num_ranks``; DualPipeV asserts ``num_chunks >= 2 num_ranks``
(deepseek-ai/DualPipe, dualpipe.py and dualpipev.py); Megatron-LM's interleaved 1F1B needs at least two
virtual stages per rank and a number of micro-batches divisible by the number of pipeline ranks.

This module imports nothing from the rest of ``sim``: configuration validation, the schedule generators and
memory accounting all read placement from here.
"""

from __future__ import annotations

from typing import Literal, get_args

ScheduleName = Literal["gpipe", "1f1b", "interleaved-1f1b", "zb1p", "dualpipe", "dualpipev"]
SCHEDULE_NAMES: tuple[str, ...] = get_args(ScheduleName)
#: Schedules whose pairs of chunks are overlapped (F&B): one rank holds two stages fed from both ends.
BIDIRECTIONAL = ("dualpipe", "dualpipev")
#: How stages fold onto ranks: ``loop`` (stage s on rank s % P), ``v`` (DualPipeV), ``mirror`` (DualPipe:
#: direction 0 stage s on rank s, direction 1 stage s on rank P-1-s).
Folding = Literal["loop", "v", "mirror"]


def folding(schedule: str) -> Folding:
    return "mirror" if schedule == "dualpipe" else "v" if schedule == "dualpipev" else "loop"


def rank_of_stage(fold: Folding, pp: int, stage: int, direction: int = 0) -> int:
    """The rank that holds ``stage`` of ``direction`` under folding ``fold``."""
    if fold == "mirror":
        return stage if direction == 0 else pp - 1 - stage
    if fold == "v":
        return stage if stage < pp else 2 * pp - 1 - stage
    return stage % pp


def num_stages(schedule: str, pp: int, vpp: int = 1) -> int:
    """Pipeline stages (model chunks) for ``pp`` ranks."""
    if schedule == "interleaved-1f1b":
        return pp * vpp
    if schedule == "dualpipev":
        return 2 * pp
    return pp


def stages_of(schedule: str, pp: int, rank: int, vpp: int = 1) -> tuple[int, ...]:
    """The stages ``rank`` holds, in the order its parameters are counted (phase 0 first for DualPipe)."""
    if schedule == "dualpipe":
        return (rank, pp - 1 - rank)
    if schedule == "dualpipev":
        return (rank, 2 * pp - 1 - rank)
    return tuple(range(rank, num_stages(schedule, pp, vpp), pp))


def all_stages_of(schedule: str, pp: int, vpp: int = 1) -> tuple[tuple[int, ...], ...]:
    """``stages_of`` for every rank."""
    return tuple(stages_of(schedule, pp, r, vpp) for r in range(pp))


def stages_per_rank(schedule: str, vpp: int = 1) -> int:
    """Model chunks each rank holds: DualPipe and DualPipeV hold two, interleaved 1F1B ``vpp``."""
    if schedule == "interleaved-1f1b":
        return vpp
    if schedule in BIDIRECTIONAL:
        return 2
    return 1


def parameter_copies(schedule: str) -> int:
    """Copies of each stage's parameters across the pipeline: DualPipe keeps two (its Table 2: 2x)."""
    return 2 if schedule == "dualpipe" else 1


def check_schedule(schedule: str, pp: int, num_microbatches: int, vpp: int = 1) -> str | None:
    """A message naming the violated precondition, or ``None`` when the layout is valid."""
    if schedule not in SCHEDULE_NAMES:
        return f"schedule {schedule!r} is unknown; allowed: {', '.join(SCHEDULE_NAMES)}"
    if pp < 1:
        return f"pp must be >= 1 (got {pp})"
    if num_microbatches < 1:
        return f"num_microbatches must be >= 1 (got {num_microbatches})"
    if schedule == "interleaved-1f1b":
        if vpp < 2:
            return f"interleaved-1f1b needs vpp >= 2 virtual stages per rank (got vpp={vpp})"
        if num_microbatches % pp != 0:
            return (f"interleaved-1f1b needs num_microbatches divisible by pp "
                    f"(got {num_microbatches} micro-batches, pp={pp})")
    elif vpp != 1:
        return f"vpp (virtual stages) applies only to interleaved-1f1b; {schedule} needs vpp=1 (got {vpp})"
    if schedule == "dualpipe":
        if pp % 2 != 0:
            return f"dualpipe needs an even number of pipeline ranks (got pp={pp})"
        if num_microbatches % 2 != 0:
            return f"dualpipe needs an even number of micro-batches (got {num_microbatches})"
        if num_microbatches < 2 * pp:
            return f"dualpipe needs num_microbatches >= 2 * pp = {2 * pp} (got {num_microbatches})"
    if schedule == "dualpipev" and num_microbatches < 2 * pp:
        return f"dualpipev needs num_microbatches >= 2 * pp = {2 * pp} (got {num_microbatches})"
    return None


def check_layer_split(schedule: str, pp: int, num_layers: int, vpp: int = 1) -> str | None:
    """A message when ``num_layers`` cannot be split over the schedule's stages, else ``None``.

    Megatron-LM's interleaved schedule needs the layers divisible by ``pp * vpp`` (equal virtual stages);
    every schedule needs at least one layer per stage.
    """
    stages = num_stages(schedule, pp, vpp)
    if num_layers < 1:
        return f"layers must be >= 1 (got {num_layers})"
    if schedule == "interleaved-1f1b" and num_layers % stages != 0:
        return (f"interleaved-1f1b needs the layers divisible by pp x vpp = {pp} x {vpp} = {stages} virtual "
                f"stages (got {num_layers} layers)")
    if num_layers < stages:
        return f"{schedule} has {stages} stages, more than the {num_layers} layers"
    return None
