"""Checked ``plugin_options`` of the outcome, kv_cache and drift plugins: a typo raises, never is ignored.

The same rule as ``_options.settings`` (the analysis plugins' registry of option names); kept apart only
because that registry lists its own plugins. The raise fails the plugin's start hook, which the core
reports in ``corevital.capture.lost`` and on ``corevital.plugin.errors``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any


def checked(options: Mapping[str, Any], plugin: str, allowed: Collection[str]) -> Mapping[str, Any]:
    """``options[plugin]`` (empty when not given) after checking it is a mapping of known names."""
    value = options.get(plugin) or {}
    if not isinstance(value, Mapping):
        raise TypeError(f"plugin_options[{plugin!r}] must be a mapping, not {type(value).__name__}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ValueError(f"plugin_options[{plugin!r}]: unknown option(s) {', '.join(unknown)}")
    return value
