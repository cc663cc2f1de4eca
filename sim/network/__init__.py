"""Transfers and collectives on the cluster: ``collectives`` (alpha-beta costs of rings, point-to-point and the
expert all-to-all over a layout's groups)."""

from sim.network.collectives import Collective, Group, Network

__all__ = ["Collective", "Group", "Network"]
