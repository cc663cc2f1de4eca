"""The Gantt chart: a matplotlib Figure (no pyplot), bars per action and visible idle spans."""

from __future__ import annotations

import subprocess
import sys

from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from sim.schedules.generators import build_schedule
from sim.schedules.listsched import Durations, simulate
from sim.schedules.plot import IDLE, gantt


def _bars(fig: Figure) -> list[PolyCollection]:
    return [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]


def test_gantt_draws_every_action_and_the_bubbles(tmp_path):
    s = build_schedule("dualpipe", 4, 8)
    res = simulate(s, Durations(1, 2, 1, 3))
    fig = gantt(s, res)
    assert isinstance(fig, Figure)
    bars = _bars(fig)
    idle = [c for c in bars if tuple(c.get_facecolor()[0][:3]) == tuple(int(IDLE[i:i + 2], 16) / 255
                                                                         for i in (1, 3, 5))]
    assert sum(len(c.get_paths()) for c in bars) - sum(len(c.get_paths()) for c in idle) == s.num_actions
    assert sum(len(c.get_paths()) for c in idle) >= s.num_ranks  # every rank waits somewhere
    out = tmp_path / "g.png"
    fig.savefig(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gantt_without_bubbles_has_no_idle_bars():
    s = build_schedule("1f1b", 1, 3)
    fig = gantt(s, simulate(s))
    assert sum(len(c.get_paths()) for c in _bars(fig)) == s.num_actions


def test_plot_module_does_not_use_pyplot():
    code = ("import sys; import sim.schedules.plot as p; from sim.schedules.generators import build_schedule;"
            "from sim.schedules.listsched import simulate; s = build_schedule('zb1p', 2, 4);"
            "p.gantt(s, simulate(s)); assert 'matplotlib.pyplot' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
