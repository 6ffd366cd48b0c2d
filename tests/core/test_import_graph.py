"""No import circle in the package: neither at run time nor through type-only imports.

The graph is read from the source (module-level imports, ``if TYPE_CHECKING:`` blocks included;
imports inside functions are deferred on purpose and left out), so a circle fails here before it
fails someone's import order.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Installed package name -> source folder (plugins/ installs as corevital_otel.plugins).
PACKAGES = {"corevital_otel": ROOT / "corevital_otel", "corevital_otel.plugins": ROOT / "plugins"}


def _modules() -> dict[str, tuple[Path, bool]]:
    modules: dict[str, tuple[Path, bool]] = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            name = ".".join([package] + (parts[:-1] if is_package else parts))
            modules[name] = (path, is_package)
    return modules


def _imported(statements: list[ast.stmt], package: str, modules: dict) -> set[str]:
    """Modules imported by ``statements`` at module level (conditional and TYPE_CHECKING blocks too)."""
    found: set[str] = set()
    for statement in statements:
        if isinstance(statement, (ast.If, ast.Try)):
            nested = statement.body + statement.orelse
            nested += [line for handler in getattr(statement, "handlers", []) for line in handler.body]
            found |= _imported(nested, package, modules)
        elif isinstance(statement, ast.Import):
            found |= {alias.name for alias in statement.names}
        elif isinstance(statement, ast.ImportFrom):
            base = statement.module or ""
            if statement.level:
                parts = package.split(".")
                parts = parts[: len(parts) - statement.level + 1]
                base = ".".join(parts + ([statement.module] if statement.module else []))
            for alias in statement.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        imported = _imported(ast.parse(path.read_text(encoding="utf-8")).body, package, modules)
        graph[name] = {target for target in imported if target in modules and target != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert "corevital_otel.capture.records" in graph and "corevital_otel.plugins.risk" in graph
    assert circles(graph) == []


def test_capture_maths_stands_apart_from_patching():
    graph = import_graph()
    # The data handed to plugins and the maths behind it import neither the patch nor the session.
    for module in ("corevital_otel.capture.records", "corevital_otel.capture.attention_math"):
        assert not graph[module] & {"corevital_otel.capture.attention", "corevital_otel.capture.session"}


def test_the_circle_finder_finds_circles():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
