"""The project's import graph, read from the source (nothing is imported): no cycle, and
the roles (control/, node/, edge/) never import one another (DESIGN.md "Layout").

Imports under `if TYPE_CHECKING:` count too: a cycle a type checker needs is still one
a reader has to untangle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("control", "node", "edge", "packs")
ROLES = ("control", "node", "edge")


def module_files() -> dict[str, Path]:
    files = {"foundry": ROOT / "foundry.py"}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    return files


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports (relative imports resolved)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import mod` imports the module pkg.mod when there is one.
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read() -> None:
    edges = graph()
    assert "control.store" in edges["control.converge"]
    assert "edge.routes" in edges["edge.routesync"]
    assert {"control.api", "node.agent", "edge.main"} <= edges["foundry"] | {
        m for deps in edges.values() for m in deps
    }


def test_the_checks_catch_what_they_name() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_roles_never_import_one_another() -> None:
    crossing = [
        (m, d)
        for m, deps in graph().items()
        for d in deps
        if m.split(".")[0] in ROLES
        and d.split(".")[0] in ROLES
        and m.split(".")[0] != d.split(".")[0]
    ]
    assert crossing == []


def test_the_control_plane_never_imports_its_command_line() -> None:
    # control/cli/ is a client of the API like any other: the server must run without it
    server = [
        (m, d)
        for m, deps in graph().items()
        for d in deps
        if m.startswith("control.")
        and not m.startswith("control.cli")
        and d.startswith("control.cli")
    ]
    assert server == []
    assert "control.cli.client" in graph()["control.cli.apps"]  # the check sees the package
