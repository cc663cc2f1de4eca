"""Page discovery: every ``views/*.py`` is a page, so a new page is added by dropping in a module.

A page module declares, at its top level, ``TITLE = "..."``, ``ORDER = <int>`` (position in the menu) and
optionally ``ICON = ":material/...:"``; they are read without importing the module.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

VIEWS = Path(__file__).resolve().parent.parent / "views"


@dataclass(frozen=True)
class PageInfo:
    path: Path
    title: str
    order: int
    icon: str | None


def _constants(path: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return out


def discover(folder: Path = VIEWS) -> list[PageInfo]:
    """The pages in menu order (``ORDER``, then title)."""
    pages = []
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        c = _constants(path)
        title = str(c.get("TITLE", path.stem.replace("_", " ").title()))
        order = c.get("ORDER", 1000)
        icon = c.get("ICON")
        pages.append(PageInfo(path, title, order if isinstance(order, int) else 1000,
                              icon if isinstance(icon, str) else None))
    return sorted(pages, key=lambda p: (p.order, p.title))
