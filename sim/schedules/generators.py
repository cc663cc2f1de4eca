"""Pure generators of pipeline schedules: ``build_schedule(name, pp, num_microbatches, vpp=1) -> Schedule``.

``pp`` always counts pipeline ranks (devices). Every generator is deterministic and returns a frozen
:class:`~sim.schedules.actions.Schedule`; bad input raises :class:`~sim.errors.SimInputError` naming the
violated precondition (the rules live in :mod:`sim.pipeline`).

Schedules and sources:

- ``gpipe``: all forwards, then all backwards (Huang et al. 2019, GPipe).
- ``1f1b``: ``pp - r - 1`` warm-up forwards on rank r, then one forward / one backward, then the
  cool-down backwards (PipeDream-Flush; Narayanan et al. 2021, Megatron-LM ``schedules.py``).
- ``interleaved-1f1b``: ``vpp`` model chunks per rank, stage s on rank s % pp; warm-up
  ``2(pp - r - 1) + (vpp - 1) pp`` forwards (all of them when there are only ``pp`` micro-batches); chunk
  order in groups of ``pp`` micro-batches (Narayanan et al. 2021, "Efficient large-scale language model
  training on GPU clusters using Megatron-LM", and Megatron-LM's ``forward_backward_pipelining_with_interleaving``).
- ``zb1p``: ZB-H1 of "Zero Bubble Pipeline Parallelism" (Qi et al., arXiv 2401.10241): 1F1B with each
  backward split into I (input gradient) and W (weight gradient); rank r postpones its W passes by r
  micro-batches so they fill the cool-down bubble, keeping 1F1B's peak of ``pp`` micro-batches in flight.
  The lag of r follows the authors' Megatron-LM patch (the 1F1B loop pops a deferred W once the step index
  reaches the pipeline rank); it reproduces the paper's bubble ``(p-1)(T_F+T_B-T_W)`` and peak memory.
- ``dualpipe``, ``dualpipev``: see :mod:`sim.schedules.dualpipe`.

``combined=True`` turns 1F1B and interleaved 1F1B into Megatron-Core's "combined 1F1B" (the schedule of
``--overlap-moe-expert-parallel-comm``, ``core.pipeline_parallel.combined_1f1b``): each steady-state backward
runs as one overlapped pair with the forward that follows it, layer by layer, so the expert all-to-all of one
hides behind the other's compute. The first steady forward runs alone (one more warm-up forward, one more
micro-batch in flight), then every backward of micro-batch N - 1 co-runs with the forward of micro-batch N.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from functools import lru_cache

from sim.errors import SimInputError
from sim.pipeline import check_schedule, num_stages
from sim.schedules.actions import Action, Phase, Schedule
from sim.schedules.dualpipe import dualpipe, dualpipev

F, B, W = Phase.F, Phase.B, Phase.W


def gpipe(pp: int, num_microbatches: int) -> Schedule:
    """GPipe: every rank runs all its forwards, then all its backwards in micro-batch order."""
    n = num_microbatches
    ranks = tuple(tuple([Action(F, r, m) for m in range(n)] + [Action(B, r, m) for m in range(n)])
                  for r in range(pp))
    return Schedule("gpipe", pp, pp, n, 1, ranks)


def one_f_one_b(pp: int, num_microbatches: int) -> Schedule:
    """1F1B (PipeDream-Flush): warm-up forwards, steady one-forward-one-backward, cool-down backwards."""
    n = num_microbatches
    ranks = []
    for r in range(pp):
        warm = min(pp - r - 1, n)
        acts = [Action(F, r, m) for m in range(warm)]
        for i in range(n - warm):
            acts += [Action(F, r, warm + i), Action(B, r, i)]
        acts += [Action(B, r, m) for m in range(n - warm, n)]
        ranks.append(tuple(acts))
    return Schedule("1f1b", pp, pp, n, 1, tuple(ranks))


def _zb1p_rank(pp: int, n: int, r: int) -> tuple[Action, ...]:
    warm = min(pp - r - 1, n)
    acts = [Action(F, r, m) for m in range(warm)]
    steps: list[tuple[int | None, int]] = [(warm + i, i) for i in range(n - warm)]  # (forward, backward)
    steps += [(None, m) for m in range(n - warm, n)]
    pending: deque[int] = deque()
    for fwd, m in steps:
        if fwd is not None:
            acts.append(Action(F, r, fwd))
        acts.append(Action(Phase.I, r, m))
        pending.append(m)
        if m >= r:  # the "adjusted starting point" of the W passes on stage r
            acts.append(Action(W, r, pending.popleft()))
    acts += [Action(W, r, m) for m in pending]
    return tuple(acts)


def zb1p(pp: int, num_microbatches: int) -> Schedule:
    """ZB-H1: 1F1B with split backwards; rank r runs W of micro-batch i after I of micro-batch i + r."""
    ranks = tuple(_zb1p_rank(pp, num_microbatches, r) for r in range(pp))
    return Schedule("zb1p", pp, pp, num_microbatches, 1, ranks)


def interleaved_1f1b(pp: int, num_microbatches: int, vpp: int) -> Schedule:
    """Megatron-LM's interleaved 1F1B with ``vpp`` virtual stages (model chunks) per rank."""
    n, group = num_microbatches, pp * vpp
    total = n * vpp

    def action(phase: Phase, r: int, k: int) -> Action:
        chunk = (k % group) // pp
        if phase is B:
            chunk = vpp - 1 - chunk
        return Action(phase, chunk * pp + r, (k // group) * pp + k % pp)

    ranks = []
    for r in range(pp):
        warm = total if n == pp else min(total, 2 * (pp - r - 1) + (vpp - 1) * pp)
        acts = [action(F, r, k) for k in range(warm)]
        for k in range(total - warm):
            acts += [action(F, r, warm + k), action(B, r, k)]
        acts += [action(B, r, k) for k in range(total - warm, total)]
        ranks.append(tuple(acts))
    return Schedule("interleaved-1f1b", pp, pp * vpp, n, 1, tuple(ranks))


_PLAIN: dict[str, Callable[[int, int], Schedule]] = {
    "gpipe": gpipe, "1f1b": one_f_one_b, "zb1p": zb1p, "dualpipe": dualpipe, "dualpipev": dualpipev,
}


def combined(schedule: Schedule) -> Schedule:
    """Each backward paired with the forward right after it on its rank (see the module docstring)."""
    ranks = []
    for actions in schedule.ranks:
        out: list[Action] = []
        i = 0
        while i < len(actions):
            a = actions[i]
            nxt = actions[i + 1] if i + 1 < len(actions) else None
            if a.phase is B and nxt is not None and nxt.phase is F:
                out.append(Action.pair(nxt, a))
                i += 2
            else:
                out.append(a)
                i += 1
        ranks.append(tuple(out))
    return Schedule(schedule.name, schedule.num_ranks, schedule.num_stages, schedule.num_microbatches,
                    schedule.num_directions, tuple(ranks), schedule.folding)


@lru_cache(maxsize=256)
def build_schedule(name: str, pp: int, num_microbatches: int, vpp: int = 1, combined_1f1b: bool = False
                   ) -> Schedule:
    """The schedule ``name`` for ``pp`` ranks and ``num_microbatches`` micro-batches (``vpp`` for interleaved);
    ``combined_1f1b``: Megatron-Core's combined 1F1B (1f1b and interleaved-1f1b only).

    Raises :class:`SimInputError` naming the precondition when the combination is invalid.
    """
    problem = check_schedule(name, pp, num_microbatches, vpp)
    if problem is not None:
        raise SimInputError(problem)
    if name == "interleaved-1f1b":
        sched = interleaved_1f1b(pp, num_microbatches, vpp)
    else:
        sched = _PLAIN[name](pp, num_microbatches)
    assert sched.num_stages == num_stages(name, pp, vpp)
    if combined_1f1b:
        if name not in ("1f1b", "interleaved-1f1b"):
            raise SimInputError(f"combined 1F1B applies to 1f1b and interleaved-1f1b (got {name})")
        sched = combined(sched)
    return sched
