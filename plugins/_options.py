"""Settings of the analysis plugins from ``plugin_options``: a typo raises instead of keeping a default.

A plugin that raises here fails its hook; the core reports it in ``corevital.capture.lost`` and on
``corevital.plugin.errors``, so a misspelt option is seen rather than silently ignored.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

ALLOWED: Mapping[str, Collection[str]] = {
    "risk": ("scales", "escalate_threshold", "running", "calibration"),
    "baseline": ("path", "rolling", "alpha"),
    "fingerprint": ("salt",),
}


def settings(
    options: Mapping[str, Any], plugin: str, allowed: Collection[str] | None = None
) -> Mapping[str, Any]:
    """``options[plugin]`` checked against the names that plugin reads (``allowed``, else its entry in
    ``ALLOWED``); empty when not given."""
    allowed = ALLOWED[plugin] if allowed is None else allowed
    value = options.get(plugin) or {}
    if not isinstance(value, Mapping):
        raise TypeError(f"plugin_options[{plugin!r}] must be a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        known = ", ".join(allowed)
        raise ValueError(
            f"plugin_options[{plugin!r}]: unknown option(s) {', '.join(unknown)}; known: {known}"
        )
    return value
