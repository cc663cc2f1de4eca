"""Power and energy of a cluster while it trains.

GPU power is linear in utilisation between idle and TDP, ``P = P_idle + (P_tdp - P_idle) u``: the
utilisation-linear server power model of Fan, Weber and Barroso ("Power provisioning for a warehouse-sized
computer", ISCA 2007), with the GPU's board limit (TDP, ``hardware_profiles/gpus``, from the vendor datasheet
each profile cites) as the fully busy end: a GPU running dense tensor-core kernels back to back draws about its
power limit. ``u`` is the fraction of the step the GPU's compute stream is busy (``busy_per_rank_s /
step_time_s`` of the step simulation, averaged over pipeline ranks and weighted by time over a phase). A GPU
profile without ``idle_w`` is taken at TDP throughout (an upper bound), and the estimate says so.

Each node adds ``node_overhead_w`` (CPUs, NICs, fans, taken constant: the profiles give system maximum minus
GPU TDPs), the scale-out network ``network_w_per_gpu`` (switches and optics, per GPU), and the facility
multiplies IT power by its PUE. CO2 is energy times the grid's carbon intensity (``run.energy``).
"""

from __future__ import annotations

from sim.config import ClusterSpec
from sim.units import SECONDS_PER_HOUR

J_PER_KWH = 1e3 * SECONDS_PER_HOUR


def gpu_power_w(cluster: ClusterSpec, utilization: float) -> float:
    gpu = cluster.gpu
    if gpu.idle_w is None:
        return gpu.tdp_w
    u = min(1.0, max(0.0, utilization))
    return gpu.idle_w + (gpu.tdp_w - gpu.idle_w) * u


def facility_power_w(cluster: ClusterSpec, num_nodes: int, utilization: float) -> float:
    """Power the facility draws for ``num_nodes`` nodes whose GPUs are busy ``utilization`` of the time."""
    gpus = num_nodes * cluster.node.gpus_per_node
    per_gpu = gpu_power_w(cluster, utilization) + cluster.network_w_per_gpu
    it = gpus * per_gpu + num_nodes * cluster.node.node_overhead_w
    return it * cluster.pue


def energy_kwh(cluster: ClusterSpec, num_nodes: int, busy_wall_s: float, utilization: float,
               idle_wall_s: float = 0.0) -> float:
    """kWh for ``busy_wall_s`` of training at ``utilization`` plus ``idle_wall_s`` with the GPUs idle
    (checkpoint stalls, restarts)."""
    joules = (facility_power_w(cluster, num_nodes, utilization) * busy_wall_s
              + facility_power_w(cluster, num_nodes, 0.0) * idle_wall_s)
    return joules / J_PER_KWH
