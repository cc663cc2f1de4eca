"""The import graph of ``sim/`` (docs/architecture.md "layers"): no circle between modules, and no import inside
a function except the CLI's per-command ones and optional heavy libraries, so that a circle cannot hide in one.

Read from the source with ``ast``: module-level imports only (``if TYPE_CHECKING:`` blocks do not run); an import
of ``sim.a.b`` is an edge to that module, not to the packages above it (Python runs their ``__init__`` first, but
a package that re-exports its modules is not a circle)."""

from __future__ import annotations

import ast
from pathlib import Path

SIM = Path(__file__).resolve().parent.parent / "sim"
#: Imported lazily on purpose: heavy, optional or only needed by one command (docs/architecture.md).
LAZY_OK = ("torch", "matplotlib", "pandas", "pyarrow", "dask", "distributed", "streamlit", "scipy", "numpy.linalg")


def _modules() -> dict[str, Path]:
    out = {}
    for path in SIM.rglob("*.py"):
        parts = path.relative_to(SIM.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append(node)
            elif isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for h in node.handlers:
                    visit(h.body)
    visit(tree.body)
    return found


def _targets(node: ast.Import | ast.ImportFrom, here: str, modules: dict[str, Path]) -> set[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            pkg = here.split(".")
            is_pkg = modules[here].name == "__init__.py"
            pkg = pkg[: len(pkg) - node.level + (1 if is_pkg else 0)]
            base = ".".join([*pkg, base] if base else pkg)
        subs = [f"{base}.{a.name}" for a in node.names]
        # ``from pkg import module`` needs the module; ``from pkg import name`` needs the package itself
        names = [s for s in subs if s in modules] + ([base] if any(s not in modules for s in subs) else [])
    return {n for n in names if n in modules and n != here}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        edges: set[str] = set()
        for node in _top_level_imports(tree):
            edges |= _targets(node, name, modules)
        graph[name] = edges
    return graph


def test_no_import_circle_in_sim():
    graph = _graph()
    assert len(graph) > 50  # the walk found the package
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = [*stack[stack.index(n):], n]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_function_local_imports_are_only_the_clis_and_heavy_optional_ones():
    offenders = []
    for name, path in _modules().items():
        if name.startswith("sim.cli"):
            continue  # each command imports its own module when it runs (sim --help stays fast)
        tree = ast.parse(path.read_text(), str(path))
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    mods = [node.module or "."]
                else:
                    continue
                mods = [m for m in mods if not m.startswith(LAZY_OK)]
                if mods:
                    offenders.append(f"{name}.{fn.name}: {', '.join(mods)}")
    assert not offenders, offenders
