"""The chunk builder (sim.program.builder): chains, gates and the communication windows beside inline
weight-gradient work, by hand."""

from __future__ import annotations

from sim.program.builder import ChunkBuilder
from sim.program.tasks import NVLINK, Task
from sim.timeline import Stream


def test_chain_add_gate_and_windows_by_hand():
    b = ChunkBuilder("I")
    a = b.chain("attn_b", "I", Stream.COMPUTE, 2.0, 3)
    assert b.tasks[a] == Task("attn_b", "I", Stream.COMPUTE, 2.0, (), 3, 0, False)  # no links, no SMs held
    c = b.chain("tp_attn_b", "I", Stream.COMM, 1.0, 3, NVLINK, True)
    assert b.tasks[c] == Task("tp_attn_b", "I", Stream.COMM, 1.0, (a,), 3, NVLINK, True) and b.last == c
    # A gate (an FSDP gather) holds the next compute task only; side tasks do not move the chain's end.
    g = b.add("fsdp_gather", "I", Stream.DP, 0.5, (None,), 3, 0, True)
    b.gate = g
    w = b.add("attn_w", "W", Stream.COMPUTE, 4.0, (b.last, None), 3)
    assert b.tasks[w].deps == (c, g) and b.gate is None and b.last == c and b.last_compute_s == 4.0
    # A window opened on an inline W task collects the communication chained after it until compute resumes.
    b.windows[w], b.open_window = 0.0, w
    b.chain("dispatch_b", "I", Stream.COMM, 0.25, 3)
    b.chain("combine_b", "I", Stream.COMM, 0.5, 3, also=(w,))
    assert b.windows[w] == 0.75 and b.tasks[-1].deps == (len(b.tasks) - 2, w)
    b.chain("mlp_b", "I", Stream.COMPUTE, 1.0, 3)
    b.chain("tp_mlp_b", "I", Stream.COMM, 9.0, 3)
    assert b.windows[w] == 0.75 and b.open_window is None
    chunk = b.build((1.5,))
    assert chunk.kind == "I" and chunk.tasks == tuple(b.tasks) and chunk.grads_ready_s == (1.5,)
    assert chunk.work.orders[Stream.COMPUTE] == tuple(i for i, t in enumerate(b.tasks) if t.stream == Stream.COMPUTE)
