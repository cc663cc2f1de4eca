"""Transfers and collectives on the cluster.

- :mod:`~sim.network.fabric`: where a group's traffic goes on the fabric, per-GPU effective bandwidth, hops;
- :mod:`~sim.network.nccl`: NCCL collectives and sends by NCCL's own cost model;
- :mod:`~sim.network.alltoall`: the expert all-to-all (DeepEP) as a mechanism of SMs, links and latency;
- :mod:`~sim.network.collectives`: ``Network``, a layout's groups and transfers (what the program calls).
"""

from sim.network.collectives import Collective, Group, Network

__all__ = ["Collective", "Group", "Network"]
