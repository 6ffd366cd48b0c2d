"""What instrument() sets up once and every generate() call shares."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .config import Options
from .plugin_host import PluginFailure, PluginHost
from .telemetry import Telemetry
from .telemetry_types import InterventionSignal


@dataclass
class Runtime:
    """What instrument() set up: options, plugins and telemetry, shared by every call."""

    options: Options
    plugins: PluginHost
    telemetry: Telemetry
    # Failures at instrument() time (a plugin that could not declare its metrics): every call lost them.
    setup_failures: list[PluginFailure] = field(default_factory=list)
    # Intervention policies the plugins offer, by name (options.intervene picks some of them).
    interventions: Mapping[str, InterventionSignal] = field(default_factory=dict)
    # Capture kinds whose failure was logged: once per instrumentation, not once per call.
    logged_capture_failures: set[str] = field(default_factory=set)
