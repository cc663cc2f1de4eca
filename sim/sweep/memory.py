"""Peak memory per GPU of a point, before simulating: the library's memory model, reorganised to be cheap
across many points.

The same arithmetic as ``sim.memory.memory_per_rank`` (what a simulation reports as ``peak_memory_per_gpu``):
model states per rank from ``sim.memory.rank_model_states`` over the stages the schedule places on the rank
(``sim.pipeline.all_stages_of``), plus the peak of activations held at once, from the schedule's order of
forwards and backwards (``sim.memory.peak_activation_bytes``) with each stage's bytes from
``sim.model.activations.stage_activation_bytes``, and the largest backward working set of the rank's stages
(``stage_workspace_bytes``). What changes is the caching:

- the stage partition and its parameters, per stage count and split;
- model states, per layout (not per micro-batch size or recompute policy);
- activation bytes per stage, per recompute policy, precision and micro-batch shape;
- a schedule's peaks as count vectors: on each rank, the micro-batches of each stage held at each forward
  (the maximal ones); the peak for given stage bytes is the largest dot product. Those vectors stop changing
  once a pipeline has more than a few micro-batches (1F1B and ZB1P from ``pp``, interleaved 1F1B, DualPipe and
  DualPipeV from ``2 pp``; ``tests/sweep`` checks this), so schedules of ``m > 2 pp`` are read at ``2 pp``
  (GPipe, which holds every micro-batch, is read in full).

A space that sweeps other job keys (``set`` keys under ``parallel``, ``software``, ``precision``, ``experts``
or ``model``, which the cached pieces do not read) is measured point by point with the library itself.

``tests/sweep/test_prune.py`` checks the result equals ``sim.memory.memory_per_rank`` on real scenarios.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from pydantic import ValidationError

from sim.config import ModelSpec, ParallelSpec, PrecisionSpec, Scenario
from sim.context import peak_memory_bytes, stage_partition
from sim.errors import SimInputError
from sim.memory import in_flight_counts, rank_model_states
from sim.model.activations import stage_activation_bytes, stage_rerun_bytes, stage_workspace_bytes
from sim.model.counts import stage_expert_params, stage_params
from sim.model.stages import StagePartition
from sim.pipeline import all_stages_of, num_stages
from sim.schedules.generators import build_schedule
from sim.sweep.rules import Layout
from sim.sweep.space import PARALLEL_AXES, Space

#: Parallel fields that change activations but not model states.
_NOT_STATES = ("micro_batch_size", "num_microbatches", "recompute")
#: Parallel fields, besides TP, the micro-batch and recompute, that may change activation bytes per token.
_OTHER_BYTES = ("cp", "sequence_parallel")
#: Swept ``set`` keys under these sections change what memory reads beyond the named axes.
_EXACT_KEYS = ("parallel.", "software.", "precision.", "experts.", "model.")


@dataclass(frozen=True)
class _View:
    """The parts of a scenario the memory functions read (a full Scenario costs more to build): the point's
    model, layout, precision, DP and micro-batch tokens; everything else from the base scenario, and
    :class:`~sim.config.Scenario`'s derived properties computed on these values (so the two never differ)."""

    model: ModelSpec
    parallel: ParallelSpec
    precision: PrecisionSpec
    dp: int
    tokens_per_microbatch: int
    base: Scenario

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        derived = getattr(Scenario, name, None)
        if isinstance(derived, property) and derived.fget is not None:
            return derived.fget(self)
        return getattr(self.base, name)


@dataclass(frozen=True)
class _Peaks:
    """A schedule's activation peaks: rows of held-micro-batch counts per stage, grouped by rank."""

    counts: np.ndarray  # (rows, 2 x stages): micro-batches kept per stage, then those between their I and W
    starts: np.ndarray  # first row of each rank


def schedule_peaks(schedule: str, pp: int, num_microbatches: int, vpp: int, combined: bool = False) -> _Peaks:
    """Count vectors of the schedule (see the module docstring; :func:`sim.memory.in_flight_counts`, the same
    frontier a simulation's memory reads; ``combined``: the combined-1F1B form ``parallel.ep_overlap`` runs,
    which keeps one more micro-batch in flight); ``m`` read at ``2 pp`` when larger."""
    m = num_microbatches if schedule == "gpipe" or num_microbatches <= 2 * pp else 2 * pp
    stages = num_stages(schedule, pp, vpp)
    blocks: list[np.ndarray] = []
    starts, row = [], 0
    for touched, frontier in in_flight_counts(build_schedule(schedule, pp, m, vpp, combined)):
        block = np.zeros((max(1, len(frontier)), 2 * stages))  # kept bytes' counts, then re-created bytes'
        if frontier:
            cols = list(touched) + [stages + t for t in touched]
            block[:, cols] = np.array(frontier, dtype=float)
        blocks.append(block)
        starts.append(row)
        row += len(block)
    return _Peaks(np.concatenate(blocks), np.array(starts))


class MemoryModel:
    """Peak bytes per GPU of the points of one space (cached pieces, see the module docstring)."""

    def __init__(self, space: Space) -> None:
        self.space = space
        self.base = space.base_scenario
        self.model = self.base.model
        self.base_par = space.base["parallel"]
        self._parts: dict[tuple[Any, ...], tuple[StagePartition, np.ndarray, np.ndarray]] = {}
        self._state_cache: dict[tuple[Any, ...], np.ndarray] = {}
        self._act_cache: dict[tuple[Any, ...], np.ndarray] = {}
        self._bytes_cache: dict[tuple[Any, ...], np.ndarray] = {}
        self._peaks: dict[tuple[str, int, int, int, bool], _Peaks] = {}
        self._par: dict[tuple[Any, ...], ParallelSpec] = {}
        self._prec: dict[Any, PrecisionSpec] = {}
        self.axes = [a.name for a in space.axes if a.name in PARALLEL_AXES]
        self.idx = [space.index[a] for a in self.axes]
        # swept job keys the cached pieces do not read (a software stack, a parallel or precision key outside
        # the named axes): every point is then built and measured by the library itself
        self.exact = any(a.name.startswith(_EXACT_KEYS) for a in space.axes)
        self._bases: dict[Any, Scenario] = {}

    def _parallel(self, point: tuple[Any, ...], lay: Layout) -> ParallelSpec:
        key = (*tuple(point[i] for i in self.idx), lay.dp)
        hit = self._par.get(key)
        if hit is None:
            data = {**self.base_par, **dict(zip(self.axes, key[:-1], strict=True)), "dp": lay.dp,
                    "num_microbatches": None}
            if data.get("stage_layers") is not None and len(data["stage_layers"]) != num_stages(
                    lay.schedule, lay.pp, lay.vpp):
                data["stage_layers"] = None
            hit = self._par[key] = ParallelSpec.model_validate(data)
        return hit

    def _precision(self, label: Any) -> PrecisionSpec:
        hit = self._prec.get(label)
        if hit is None:
            i = self.space.index.get("precision")
            axis = self.space.axes[i] if i is not None else None
            change = axis.changes[label] if axis is not None and axis.changes else {}
            hit = self._prec[label] = PrecisionSpec.model_validate({**self.space.base["precision"], **change})
        return hit

    def _partition(self, par: ParallelSpec, seq_len: int) -> tuple[Any, ...]:
        stages = num_stages(par.schedule, par.pp, par.vpp)
        groups = all_stages_of(par.schedule, par.pp, par.vpp)  # sim run balances the split over each rank's
        key = (stages, groups, par.stage_layers, par.stage_split, seq_len)
        if key not in self._parts:
            lay = stage_partition(self.model, stages, par.stage_layers, par.stage_split, seq_len, groups)
            self._parts[key] = (lay, np.array(stage_params(lay, self.model), dtype=float),
                                np.array(stage_expert_params(lay), dtype=float))
        return key

    def _states(self, point: tuple[Any, ...], lay: Layout, par: ParallelSpec, view: _View,
                pkey: tuple[Any, ...], balancing: Any = None) -> np.ndarray:
        pv = [point[i] for i in self.idx]
        key = (pkey, lay.precision, lay.dp, balancing,
               *(v for a, v in zip(self.axes, pv, strict=True) if a not in _NOT_STATES))
        hit = self._state_cache.get(key)
        if hit is None:
            _, sp, se = self._parts[pkey]
            rows = []
            parts = self._parts[pkey][0]
            for stages in all_stages_of(par.schedule, par.pp, par.vpp):
                rows.append(sum(rank_model_states(parts, view, stages, sp, se)))  # type: ignore[arg-type]
            hit = self._state_cache[key] = np.array(rows)
        return hit

    def _activations(self, point: tuple[Any, ...], lay: Layout, par: ParallelSpec, view: _View,
                     pkey: tuple[Any, ...]) -> np.ndarray:
        """Peak activation bytes per rank."""
        pv = tuple(point[i] for i in self.idx if self.space.axes[i].name not in ("zero_stage", "num_microbatches"))
        key = (pkey, lay.precision, lay.dp, lay.num_microbatches, pv)
        hit = self._act_cache.get(key)
        if hit is None:
            stage_bytes = np.concatenate([self._stage_bytes(point, lay, par, view, pkey),
                                          self._stage_bytes(point, lay, par, view, pkey, stage_rerun_bytes)])
            pk = (par.schedule, par.pp, lay.num_microbatches, par.vpp, par.ep_overlap)
            peaks = self._peaks.get(pk)
            if peaks is None:
                peaks = self._peaks[pk] = schedule_peaks(*pk)
            work = self._stage_bytes(point, lay, par, view, pkey, stage_workspace_bytes)
            ranks = all_stages_of(par.schedule, par.pp, par.vpp)
            hit = self._act_cache[key] = (np.maximum.reduceat(peaks.counts @ stage_bytes, peaks.starts)
                                          + np.array([work[list(st)].max() for st in ranks]))
        return hit

    def _stage_bytes(self, point: tuple[Any, ...], lay: Layout, par: ParallelSpec, view: _View,
                     pkey: tuple[Any, ...], fn: Any = stage_activation_bytes) -> np.ndarray:
        """Bytes per stage of one micro-batch by the library's ``fn`` (activations kept, what a split backward's I
        re-creates, or the backward's working set): its bytes per local token (computed once per partition,
        layout, recompute policy and precision, at the point's own TP and CP) scaled by the local tokens, as the
        library scales them. The scaling is checked against the library on the first point of each entry; where
        it does not hold (a mechanism that scales otherwise), every shape is computed by the library."""
        parts = self._parts[pkey][0]
        key = (fn.__name__, pkey, lay.precision, par.recompute, par.tp, par.cp, par.sequence_parallel,
               *(point[i] for i in self.idx if self.space.axes[i].name in _OTHER_BYTES))
        unit = self._bytes_cache.get(key)
        local = view.tokens_per_microbatch / par.cp
        if unit is None:
            one = dataclasses.replace(view, tokens_per_microbatch=par.cp)  # one local token
            unit = np.array(fn(parts, one), dtype=float)
            exact = np.array(fn(parts, view), dtype=float)
            if not np.allclose(unit * local, exact, rtol=1e-12, atol=0.0):
                unit = np.full_like(unit, np.nan)  # not linear: exact calls from now on
            self._bytes_cache[key] = unit
        if np.isnan(unit).any():
            return np.array(fn(parts, view), dtype=float)
        return unit * local

    def peaks(self, point: tuple[Any, ...], lay: Layout) -> np.ndarray:
        """Peak bytes per GPU of a legal point for every zero stage, recompute policy and expert balancing of the
        space (the three inner axes memory reads, in that order), the point's own values of them set aside."""
        prec = self._precision(lay.precision)
        z_i, r_i, b_i = (self.space.index.get(n) for n in ("zero_stage", "recompute", "balancing"))
        zs = self.space.axes[z_i].values if z_i is not None else (None,)
        rs = self.space.axes[r_i].values if r_i is not None else (None,)
        bs = self.space.axes[b_i].values if b_i is not None else (None,)
        if self.exact:
            return np.array([[[self._exact(point, ((z_i, z), (r_i, r), (b_i, b))) for b in bs] for r in rs]
                             for z in zs])
        states, acts = [], []
        for z in zs:
            p = point if z is None else (*point[:z_i], z, *point[cast(int, z_i) + 1:])
            par = self._parallel(p, lay)
            pkey = self._partition(par, lay.seq_len)
            states.append([self._states(p, lay, par, _View(self.model, par, prec, lay.dp, 0, self._base(b)), pkey,
                                        b) for b in bs])
        for r in rs:
            p = point if r is None else (*point[:r_i], r, *point[cast(int, r_i) + 1:])
            par = self._parallel(p, lay)
            pkey = self._partition(par, lay.seq_len)
            view = _View(self.model, par, prec, lay.dp, lay.micro_batch_size * lay.seq_len, self.base)
            acts.append(self._activations(p, lay, par, view, pkey))
        return (np.array(states)[:, None, :, :] + np.array(acts)[None, :, None, :]).max(axis=3)

    def _base(self, balancing: Any) -> Scenario:
        """The base scenario under expert balancing ``balancing`` (EPLB's redundant slots are model states; the
        other policies change no memory), as the space builds a point (one slot per EP rank by default)."""
        if balancing is None or balancing == self.base.experts.policy:
            return self.base
        hit = self._bases.get(balancing)
        if hit is None:
            e = self.base.experts
            update: dict[str, Any] = {"policy": balancing}
            if balancing == "eplb" and not e.num_redundant_experts:
                update["num_redundant_experts"] = None  # the scenario's default: one per GPU of the EP group
            hit = self._bases[balancing] = self.base.model_copy(update={"experts": e.model_copy(update=update)})
        return hit

    def _exact(self, point: tuple[Any, ...], inner: tuple[tuple[int | None, Any], ...]) -> float:
        """The library's peak for the point with the inner axes' values ``inner`` (index, value) (NaN when the
        validators refuse that scenario: the simulation then reports why)."""
        p = list(point)
        for i, v in inner:
            if i is not None:
                p[i] = v
        try:
            return peak_memory_bytes(self.space.scenario(tuple(p)))
        except (ValidationError, SimInputError):
            return float("nan")

    def peak_bytes(self, point: tuple[Any, ...], lay: Layout) -> float:
        """Peak bytes per GPU over the pipeline ranks of one legal point."""
        table = self.peaks(point, lay)
        at = [self.space.axes[i].values.index(point[i]) if i is not None else 0
              for i in (self.space.index.get(n) for n in ("zero_stage", "recompute", "balancing"))]
        return float(table[at[0], at[1], at[2]])
