"""From a phase's training seconds to its wall clock, GPU-hours, dollars, energy and CO2.

Overheads (``run.overheads``, all zero by default), expected values to first order:

- checkpoints: a stall of ``c = checkpoint_write_s`` every ``tau = checkpoint_interval_s`` of training, so
  ``T / tau`` of them over ``T`` seconds of training: ``W0 = T (1 + c / tau)``;
- failures: each of ``n`` nodes fails at rate ``1 / MTBF``, so ``F = n W0 / MTBF`` failures over ``W0``; each
  costs the restart ``R`` plus the work since the last checkpoint, ``tau / 2`` on average:
  ``W = W0 + F (R + tau / 2)``. First order: failures during the lost work and restarts are not counted
  again (the relative error is about ``n (R + tau / 2) / MTBF``).

The cluster is held for the whole wall clock: GPU-hours = ``W x GPUs / 3600``, dollars = GPU-hours x price.
Energy counts training and lost work at the phase's utilisation, checkpoint stalls and restarts at idle
(``sim.estimate.energy``). A phase given as GPU-hours (not simulated) is taken as published: no overheads are
added to it, and it is assumed to run on the whole cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.config import ClusterSpec, EnergySpec, OverheadSpec
from sim.estimate.energy import energy_kwh
from sim.units import SECONDS_PER_DAY, SECONDS_PER_HOUR


@dataclass(frozen=True)
class Seconds:
    """A phase's training time, before overheads, on the cluster it was simulated for."""

    compute_s: float
    utilization: float


@dataclass(frozen=True)
class Cost:
    wall_s: float
    checkpoint_s: float
    failures: float
    failure_s: float
    gpu_hours: float
    days: float
    usd: float
    kwh: float
    co2_kg: float | None


def cost(t: Seconds, cluster: ClusterSpec, num_nodes: int, overheads: OverheadSpec, energy: EnergySpec,
         usd_per_gpu_hour: float, simulated: bool = True) -> Cost:
    """Wall clock and what it costs for ``t`` on ``num_nodes`` nodes of ``cluster`` (module docstring)."""
    gpus = num_nodes * cluster.node.gpus_per_node
    ckpt = failures = restart = lost = 0.0
    o = overheads
    if simulated and o.checkpoint_interval_s > 0:
        ckpt = t.compute_s / o.checkpoint_interval_s * o.checkpoint_write_s
    w0 = t.compute_s + ckpt
    if simulated and o.mtbf_node_hours is not None:
        failures = num_nodes * w0 / (o.mtbf_node_hours * SECONDS_PER_HOUR)
        restart = failures * o.restart_s
        lost = failures * o.checkpoint_interval_s / 2
    wall = w0 + restart + lost
    gpu_hours = wall * gpus / SECONDS_PER_HOUR
    kwh = energy_kwh(cluster, num_nodes, t.compute_s + lost, t.utilization, ckpt + restart)
    grid = energy.grid_kg_co2_per_kwh
    return Cost(wall_s=wall, checkpoint_s=ckpt, failures=failures, failure_s=restart + lost, gpu_hours=gpu_hours,
                days=wall / SECONDS_PER_DAY, usd=gpu_hours * usd_per_gpu_hour, kwh=kwh,
                co2_kg=None if grid is None else kwh * grid)
