"""Terminal reports of instrumented generations, read back from their exported spans (used by the demo).

Names are imported on first use: ``corevital-otel --help`` imports ``report.terminal`` (stdlib only)
and must not pay for the OpenTelemetry SDK that ``generations`` needs.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "ModelLoadError": "generations",
    "Observation": "generations",
    "Telemetry": "generations",
    "load_local_model": "generations",
    "observe": "generations",
    "render_report": "layout",
    "ExportSetupError": "otlp",
    "Progress": "terminal",
    "Style": "terminal",
    "sparkline": "terminal",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
