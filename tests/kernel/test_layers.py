"""The import graph: layers only point down, no cycle, no function-local import dodging one.

Layers, bottom to top:

    messages/                                   plain values; imports nothing from actors/
    kernel: actors/*.py, runtime/, pg/, sinks/  trio, psycopg, msgspec, loguru, ddsketch, httpx
    actors/faults/, actors/tools/, actors/http/ tooling and the HTTP edge, over the kernel
    examples/                                   the reference service, over all of it

Every import is read from the source with `ast`, function-local ones included; imports
under `if TYPE_CHECKING:` are annotations, not dependencies, and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("actors", "messages", "examples")
UPPER = ("actors.http", "actors.faults", "actors.tools", "examples")

# Function-local imports of a Triage module that are allowed, and why. Each loads an optional
# layer on demand, so the layer below works without that layer's extra installed.
LOCAL_IMPORTS_ALLOWED = {
    # `triage --help` works without the `http` extra: serve imports the edge when it runs.
    ("actors.cli", "actors.http.app"),
    # ... nor the ops listener, started only when `ops_port` is set.
    ("actors.cli", "actors.http.ops"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, module: str) -> list[str]:
    """The Triage modules an import statement loads (`from a import b` is `a.b` when b is one)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".")[: -node.level] if module in MODULES else []
            base = ".".join([*package, base] if base else package)
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    return [n for n in names if n.split(".")[0] in PACKAGES]


def _imports(module: str) -> list[tuple[str, bool]]:
    """(imported Triage module, is it function-local) for every import in `module`."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    out: list[tuple[str, bool]] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                out.extend((t, local) for t in _targets(child, module))
            inner = local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            visit(child, inner)

    visit(tree, False)
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _is_kernel(module: str) -> bool:
    return module.startswith("actors") and not _under(module, UPPER) and module != "actors.cli"


def test_layers_graph_sees_the_known_modules():
    """The checks below are only as good as the graph: it must hold the modules and edges."""
    assert {"actors", "actors.system", "actors.pg.database", "messages.errors",
            "actors.http.app", "examples.vet_tracker.service"} <= set(GRAPH)
    assert ("actors.runtime.mailbox", False) in GRAPH["actors.system"]


def test_layers_kernel_imports_no_http_faults_tools_or_examples():
    bad = [(m, t) for m in GRAPH if _is_kernel(m) for t, _ in GRAPH[m] if _under(t, UPPER)]
    assert bad == []


def test_layers_messages_import_nothing_from_actors():
    bad = [(m, t) for m in GRAPH if m.startswith("messages") for t, _ in GRAPH[m]
           if _under(t, ("actors",))]
    assert bad == []


def test_layers_pg_imports_neither_http_nor_tools():
    bad = [(m, t) for m in GRAPH if _under(m, ("actors.pg",)) for t, _ in GRAPH[m]
           if _under(t, ("actors.http", "actors.tools", "actors.faults"))]
    assert bad == []


def test_layers_no_function_local_import_of_a_triage_module():
    bad = [(m, t) for m in GRAPH for t, local in GRAPH[m]
           if local and (m, t) not in LOCAL_IMPORTS_ALLOWED]
    assert bad == []


def _cycle() -> list[str] | None:
    """One import cycle between modules (package `__init__` to its own children excluded:
    a package re-exporting its submodules is not a cycle), or None."""
    edges = {m: sorted({t for t, _ in GRAPH[m] if t in GRAPH and not m == t
                        and not t.startswith(m + ".")}) for m in GRAPH}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in edges[m]:
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_layers_no_import_cycle():
    assert _cycle() is None


@pytest.mark.parametrize("source, expected", [
    ("from actors.http import app\n", ["actors.http.app"]),
    ("def f():\n    from actors.faults import proxy\n", ["actors.faults.proxy"]),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import actors.http.app\n", []),
])
def test_layers_parser_reads_imports_the_way_python_does(tmp_path, monkeypatch, source, expected):
    """The checks can fail: a kernel module that imported the edge would be seen."""
    path = tmp_path / "probe.py"
    path.write_text(source)
    monkeypatch.setitem(MODULES, "actors.probe", path)
    assert [t for t, _ in _imports("actors.probe")] == expected
