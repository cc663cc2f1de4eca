"""How long each dashboard page takes to render, server side (Streamlit's AppTest runs the page script as the
server does for a browser), on the default DeepSeek-V3 scenario.

Per page: the first render in a fresh process (imports, the scenario's first evaluation, empty caches) and a
second render of the same page (Streamlit's caches warm, as when a user comes back to it). Pages whose heavy
parts sit behind a button (detailed simulation, validation, plan) are timed as they open: the button's work is
what ``sim run``, ``sim validate`` and ``sim plan`` print times for. What a browser adds on top (websocket,
drawing the charts) is measured by ``tests/dashboard/test_browser.py``, which prints when the headline
metrics appear.

Run: python benchmarks/bench_dashboard.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[1] / "dashboard"
PAGES = ("scenario", "pipeline", "experts", "network", "cost", "calibration", "validation", "plan")

CASE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from streamlit.testing.v1 import AppTest
path = f"{sys.argv[1]}/views/{sys.argv[2]}.py"
times = []
for _ in range(2):
    at = AppTest.from_file(path, default_timeout=300)
    t0 = time.perf_counter()
    at.run()
    times.append(time.perf_counter() - t0)
    if at.exception:
        print(json.dumps({"error": at.exception[0].value}))
        sys.exit(0)
print(json.dumps({"first": times[0], "again": times[1]}))
"""


def main() -> None:
    print(f"python {sys.version.split()[0]}; each page in a fresh process (server side, AppTest)")
    print(f"{'page':<12} {'first render':>13} {'again':>9}")
    for name in PAGES:
        out = subprocess.run([sys.executable, "-c", CASE, str(DASHBOARD), name], capture_output=True, text=True,
                             check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        if "error" in r:
            print(f"{name:<12} error: {r['error']}")
            continue
        print(f"{name:<12} {r['first']:>11.2f} s {r['again']:>7.2f} s")


if __name__ == "__main__":
    main()
