"""Dashboard tests: make ``dashkit`` importable as ``streamlit run dashboard/app.py`` does (the app's folder
on ``sys.path``). Each test module skips, with the reason, when the dashboard extra is not installed."""

from __future__ import annotations

import sys
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboard"
if str(DASHBOARD) not in sys.path:
    sys.path.insert(0, str(DASHBOARD))
