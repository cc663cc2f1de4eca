"""Redundant experts: a numpy port of DeepSeek's Expert Parallelism Load Balancer (deepseek-ai/EPLB, ``eplb.py``,
commit d52c72d), written from a description of its README and ``eplb.py``, vectorised over layers.

``rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus) -> (phy2log, log2phy, logcnt)``:

- Hierarchical (when ``num_groups % num_nodes == 0``): (1) pack expert groups onto nodes by summed load with
  ``balanced_packing`` (heaviest first, into the lightest pack that still has room; equal item counts);
  (2) within each node, ``replicate_experts``: add replicas one at a time to the expert with the highest load per
  replica until the node has ``num_replicas / num_nodes`` slots; (3) pack the node's replicas (load = expert load
  / replica count) onto its GPUs with ``balanced_packing``, an equal count per GPU.
- Global (otherwise): the same with one group and one node: replicate over the whole EP group, pack onto GPUs.

``phy2log[layer, slot]`` lists slots GPU by GPU (``num_replicas / num_gpus`` each); ``log2phy`` is -1 padded.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


def balanced_packing(weight: FloatArray, num_packs: int) -> tuple[IntArray, IntArray]:
    """Pack n items [layers, n] into ``num_packs`` packs of n / num_packs items: heaviest item first, each into
    the lightest pack that is not full. Returns (pack index, rank within the pack), both [layers, n]."""
    layers, n = weight.shape
    if n % num_packs:
        raise ValueError(f"{n} items do not split evenly into {num_packs} packs")
    per_pack = n // num_packs
    if per_pack == 1:
        order = np.argsort(-weight, axis=-1, kind="stable")
        pack = np.empty((layers, n), dtype=np.int64)
        np.put_along_axis(pack, order, np.arange(n)[None, :].repeat(layers, 0), axis=-1)
        return pack, np.zeros((layers, n), dtype=np.int64)
    order = np.argsort(-weight, axis=-1, kind="stable")
    rows = np.arange(layers)
    load = np.zeros((layers, num_packs))
    count = np.zeros((layers, num_packs), dtype=np.int64)
    pack = np.empty((layers, n), dtype=np.int64)
    rank = np.empty((layers, n), dtype=np.int64)
    for j in range(n):
        item = order[:, j]
        chosen = np.argmin(np.where(count < per_pack, load, np.inf), axis=-1)
        pack[rows, item] = chosen
        rank[rows, item] = count[rows, chosen]
        load[rows, chosen] += weight[rows, item]
        count[rows, chosen] += 1
    return pack, rank


def replicate_experts(weight: FloatArray, num_phy: int) -> tuple[IntArray, IntArray, IntArray]:
    """Grow n logical experts [layers, n] to ``num_phy`` physical ones, each new replica going to the expert with
    the highest load per replica. Returns phy2log [layers, num_phy], replica rank [layers, num_phy] and the
    replica count per logical expert [layers, n]."""
    layers, n = weight.shape
    if num_phy < n:
        raise ValueError(f"{num_phy} physical slots cannot hold {n} experts")
    rows = np.arange(layers)
    phy2log = np.empty((layers, num_phy), dtype=np.int64)
    rank = np.zeros((layers, num_phy), dtype=np.int64)
    phy2log[:, :n] = np.arange(n)
    logcnt = np.ones((layers, n), dtype=np.int64)
    for i in range(n, num_phy):
        expert = np.argmax(weight / logcnt, axis=-1)
        phy2log[:, i] = expert
        rank[:, i] = logcnt[rows, expert]
        logcnt[rows, expert] += 1
    return phy2log, rank, logcnt


def _inverse(perm: IntArray) -> IntArray:
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.arange(perm.shape[-1])[None, :].repeat(perm.shape[0], 0), axis=-1)
    return inv


def _hierarchical(weight: FloatArray, num_phy: int, num_groups: int, num_nodes: int,
                  num_gpus: int) -> tuple[IntArray, IntArray, IntArray]:
    layers, e = weight.shape
    group_size = e // num_groups
    groups_per_node = num_groups // num_nodes
    gpus_per_node = num_gpus // num_nodes
    phy_per_gpu = num_phy // num_gpus
    # 1. groups -> nodes
    group_pack, group_rank = balanced_packing(weight.reshape(layers, num_groups, group_size).sum(-1), num_nodes)
    log2mlog = ((group_pack * groups_per_node + group_rank) * group_size)[:, :, None] + np.arange(group_size)
    log2mlog = log2mlog.reshape(layers, e)
    mlog2log = _inverse(log2mlog)
    # 2. replicas within each node
    per_mlog = np.take_along_axis(weight, mlog2log, axis=-1).reshape(layers * num_nodes, e // num_nodes)
    phy2mlog, phyrank, mlogcnt = replicate_experts(per_mlog, num_phy // num_nodes)
    # 3. replicas -> GPUs within each node
    per_phy = np.take_along_axis(per_mlog / mlogcnt, phy2mlog, axis=-1)
    pack, rank = balanced_packing(per_phy, gpus_per_node)
    pphy2phy = _inverse(pack * phy_per_gpu + rank)
    pphy2mlog = np.take_along_axis(phy2mlog, pphy2phy, axis=-1)
    offsets = np.arange(0, e, e // num_nodes)[None, :, None]
    pphy2mlog = (pphy2mlog.reshape(layers, num_nodes, -1) + offsets).reshape(layers, -1)
    pphy2log = np.take_along_axis(mlog2log, pphy2mlog, axis=-1)
    pphyrank = np.take_along_axis(phyrank, pphy2phy, axis=-1).reshape(layers, -1)
    logcnt = np.take_along_axis(mlogcnt.reshape(layers, -1), log2mlog, axis=-1)
    return pphy2log, pphyrank, logcnt


def rebalance_experts(weight: FloatArray, num_replicas: int, num_groups: int, num_nodes: int,
                      num_gpus: int) -> tuple[IntArray, IntArray, IntArray]:
    """DeepSeek's EPLB entry point. ``weight``: load statistics [layers, num_logical_experts].

    Returns (phy2log [layers, num_replicas], log2phy [layers, num_logical, max_replicas] (-1 padded),
    logcnt [layers, num_logical]).
    """
    weight = np.asarray(weight, dtype=np.float64)
    layers, e = weight.shape
    if num_replicas % num_gpus:
        raise ValueError(f"num_replicas {num_replicas} must be a multiple of num_gpus {num_gpus}")
    if num_groups % num_nodes == 0 and e % num_groups == 0 and num_gpus % num_nodes == 0:
        phy2log, phyrank, logcnt = _hierarchical(weight, num_replicas, num_groups, num_nodes, num_gpus)
    else:
        phy2log, phyrank, logcnt = _hierarchical(weight, num_replicas, 1, 1, num_gpus)
    max_rep = int(logcnt.max())
    log2phy = np.full((layers, e, max_rep), -1, dtype=np.int64)
    rows = np.arange(layers)[:, None].repeat(num_replicas, 1)
    log2phy[rows, phy2log, phyrank] = np.arange(num_replicas)[None, :].repeat(layers, 0)
    return phy2log, log2phy, logcnt
