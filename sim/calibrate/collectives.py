"""Collective timings across message sizes: all-reduce, all-to-all and send/receive between processes.

NCCL between the GPUs of this machine when there are two or more; gloo between two CPU processes otherwise
(pipeline validation: loopback TCP, not a network). Semantics follow nccl-tests
(NVIDIA/nccl-tests ``doc/PERFORMANCE.md``): ``bytes`` is the message per rank, the rate is the algorithm
bandwidth ``bytes / time`` (bus bandwidth is ``x 2(n-1)/n`` for all-reduce and ``x (n-1)/n`` for all-to-all,
left to the network model). Send/receive is timed as a ping-pong between ranks 0 and 1, one way = half the
round trip. Every sample starts after a barrier; all ranks run the same fixed number of repeats, so none waits
on a decision another did not make. Processes are started with ``spawn`` and joined with a timeout.
"""

from __future__ import annotations

import os
import queue
import socket
import time
from datetime import timedelta
from typing import Any

from sim.calibrate.kernels import sig
from sim.calibrate.table import Entry
from sim.calibrate.timing import Timing, summarize

KINDS = ("allreduce", "alltoall", "p2p")


def run_collectives(backend: str, world: int, sizes: tuple[int, ...], repeats: int,
                    timeout_s: float = 120.0) -> tuple[list[Entry], list[str]]:
    """Entries for every (kind, size), and what was skipped (with the reason)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results: Any = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, backend, port, sizes, repeats, results), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    try:
        status, payload = results.get(timeout=timeout_s)
    except queue.Empty:
        status, payload = "error", f"no result within {timeout_s:.0f} s"
    for p in procs:
        p.join(timeout=max(1.0, deadline - time.monotonic()))
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)
    if status != "ok":
        return [], [f"collectives ({backend}, {world} ranks): {payload}"]
    entries = [_entry(backend, world, kind, size, Timing(*t)) for kind, size, t in payload]
    return entries, []


def _entry(backend: str, world: int, kind: str, size: int, t: Timing) -> Entry:
    return Entry(kind=kind, dtype="fp32", name=f"{backend} {kind}",  # type: ignore[arg-type]
                 shape={"bytes": float(size), "ranks": float(world if kind != "p2p" else 2)},
                 seconds=sig(t.median_s), spread_s=(sig(t.p20_s), sig(t.p80_s)), samples=t.samples,
                 bytes=float(size), achieved_bytes_per_s=sig(size / sig(t.median_s)),
                 note="algorithm bandwidth: bytes per rank / time" + ("; one way of a ping-pong" if kind == "p2p"
                                                                       else ""))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, backend: str, port: int, sizes: tuple[int, ...], repeats: int,
            results: Any) -> None:
    import torch
    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    try:
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=60))
        device = "cpu"
        if backend == "nccl":
            torch.cuda.set_device(rank)
            device = f"cuda:{rank}"
        out = []
        for size in sizes:
            n = max(world, size // 4 // world * world)
            x = torch.randn(n, device=device)
            y = torch.empty_like(x)
            for kind in KINDS:
                samples = _time(kind, rank, x, y, repeats, device, dist)
                if samples is not None:
                    t = summarize(samples)
                    out.append((kind, n * 4, (t.median_s, t.p20_s, t.p80_s, t.samples)))
        if rank == 0:
            results.put(("ok", out))
        dist.barrier()
        dist.destroy_process_group()
    except Exception as e:  # a child must report, not hang the parent
        if rank == 0:
            results.put(("error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))


def _time(kind: str, rank: int, x: Any, y: Any, repeats: int, device: str, dist: Any) -> list[float] | None:
    import torch

    def sync() -> None:
        if device != "cpu":
            torch.cuda.synchronize()

    def op() -> None:
        if kind == "allreduce":
            dist.all_reduce(x)
        elif kind == "alltoall":
            dist.all_to_all_single(y, x)
        elif rank == 0:
            dist.send(x, 1)
            dist.recv(y, 1)
        elif rank == 1:
            dist.recv(y, 0)
            dist.send(y, 0)

    samples = []
    for i in range(repeats + 1):  # the first is warm-up
        dist.barrier()
        sync()
        t0 = time.perf_counter()
        op()
        sync()
        if i:
            samples.append((time.perf_counter() - t0) / (2 if kind == "p2p" else 1))
    return samples if kind != "p2p" or rank == 0 else None
