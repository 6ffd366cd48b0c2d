"""The core knows no metric and no application: its modules import neither a plugin module nor the
application layer (CLI, commands, reports, canary, integrations, the demo model), at module level or inside
a function. The application layer sits above the core and may import both."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.core.test_import_graph import _modules

APPLICATION = (
    "corevital_otel.cli",
    "corevital_otel.commands",
    "corevital_otel.report",
    "corevital_otel.canary",
    "corevital_otel.integrations",
    "corevital_otel.demo_model",
)
PLUGINS = "corevital_otel.plugins"
# Where the core reaches up, and why (each one a deliberate seam, not a habit):
ALLOWED = {
    # the list of built-in plugins (plugins.BUILTIN_PLUGINS), registered in code like pytest's defaults
    ("corevital_otel.plugin_host", "corevital_otel.plugins"),
    # the langfuse_scores option (and COREVITAL_LANGFUSE_SCORES, for zero-code use) adds the integration's
    # ordinary plugin, LangfuseScores, to the plugin list
    ("corevital_otel.instrumentor", "corevital_otel.integrations.langfuse"),
}


def _in(name: str, layer: tuple[str, ...] | str) -> bool:
    prefixes = (layer,) if isinstance(layer, str) else layer
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _all_imports(path: Path, package: str) -> set[str]:
    """Every module a file imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


def upward_imports() -> set[tuple[str, str]]:
    """(core module, plugin or application module) for every import that reaches up from the core."""
    modules = _modules()
    found = set()
    for name, (path, is_package) in modules.items():
        if _in(name, APPLICATION) or _in(name, PLUGINS):
            continue
        package = name if is_package else name.rpartition(".")[0]
        for target in _all_imports(path, package):
            if target in modules and (_in(target, APPLICATION) or _in(target, PLUGINS)):
                found.add((name, target))
    return found


def test_the_core_imports_no_plugin_and_no_application_module():
    assert upward_imports() - ALLOWED == set()


def test_every_allowed_seam_is_still_used():
    assert upward_imports() >= ALLOWED  # a seam that closed comes off the list
