"""Identical stages share their work: one chunk per stage contents (sim.program.chunks.Program.chunk_key), and
works that differ only in their tasks' layer labels are equal (their isolated timings are computed once)."""

from __future__ import annotations

from sim.context import build_context
from sim.loading import load_scenario
from sim.program.tasks import Stream, Task


def test_tasks_differing_only_in_layer_label_are_equal():
    a = Task("attn", "F", Stream.COMPUTE, 1e-3, (), layer=3)
    b = Task("attn", "F", Stream.COMPUTE, 1e-3, (), layer=7)
    assert a == b and hash(a) == hash(b)
    assert a != Task("attn", "F", Stream.COMPUTE, 2e-3, (), layer=3)  # content still counts


def test_middle_stages_with_the_same_layers_share_one_chunk_and_the_ends_do_not():
    """DeepSeek-V3 over 16 stages: the middle stages hold 4 MoE layers each (same ops), the first holds the
    embedding and the dense layers, the last the head and the MTP module."""
    prog = build_context(load_scenario()).program
    parts = prog.partition.stages
    same = [s for s in range(1, len(parts) - 1) if [u.ops for u in parts[s]] == [u.ops for u in parts[5]]]
    assert len(same) >= 8
    for kind in ("F", "B"):
        chunks = {id(prog.chunk(s, kind, 0)) for s in same}
        assert len(chunks) == 1, kind
        assert prog.chunk(0, kind, 0) is not prog.chunk(5, kind, 0)
        assert prog.chunk(len(parts) - 1, kind, 0) is not prog.chunk(5, kind, 0)
