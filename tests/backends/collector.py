"""The Collector configuration as the Collector resolves it: files merged in order (maps merge, lists are
replaced), `${env:NAME}` / `${env:NAME:-default}` references left as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .repo import COLLECTOR_AGENT, COLLECTOR_BASE, COLLECTOR_LANGFUSE, COLLECTOR_SAMPLER

ENV_REFERENCE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
SECTIONS = ("receivers", "processors", "exporters", "connectors", "extensions")
# The overlays a user can add to config.yaml; each combination must be a complete, valid config.
COMBINATIONS = {
    "base": (COLLECTOR_BASE,),
    "base+langfuse": (COLLECTOR_BASE, COLLECTOR_LANGFUSE),
    "base+gateway-agent": (COLLECTOR_BASE, COLLECTOR_AGENT),
    "base+gateway-sampler": (COLLECTOR_BASE, COLLECTOR_SAMPLER),
}
# Every shipped config file, overlays included.
CONFIG_FILES = tuple(dict.fromkeys(path for files in COMBINATIONS.values() for path in files))


def merge(base: Any, overlay: Any) -> Any:
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for key, value in overlay.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    return overlay


def load(*paths: Path) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for path in paths:
        config = merge(config, yaml.safe_load(path.read_text(encoding="utf-8")))
    return config


def component_type(component_id: str) -> str:
    """`otlp/jaeger` -> `otlp`."""
    return component_id.split("/", 1)[0]


def env_references(*paths: Path) -> dict[str, str | None]:
    """Variable name -> its default (None when it has none), over the given files."""
    references: dict[str, str | None] = {}
    for path in paths:
        for name, default in ENV_REFERENCE.findall(path.read_text(encoding="utf-8")):
            references[name] = default or None
    return references
