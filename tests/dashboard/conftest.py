"""Dashboard tests: skip without Streamlit; make ``dashkit`` importable as ``streamlit run`` does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("streamlit", reason="the dashboard extra is not installed (pip install -e '.[dashboard]')")

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboard"
if str(DASHBOARD) not in sys.path:
    sys.path.insert(0, str(DASHBOARD))
