"""The analytic tier (placeholder while it is built)."""

from __future__ import annotations


def clear_caches() -> None:
    """Empty the analytic tier's caches."""
