"""Terminal reports of instrumented generations, read back from their exported spans (used by the demo)."""

from __future__ import annotations

from .generations import ModelLoadError, Observation, Telemetry, load_local_model, observe
from .layout import render_report
from .otlp import ExportSetupError
from .terminal import Progress, Style, sparkline

__all__ = [
    "ExportSetupError",
    "ModelLoadError",
    "Observation",
    "Progress",
    "Style",
    "Telemetry",
    "load_local_model",
    "observe",
    "render_report",
    "sparkline",
]
