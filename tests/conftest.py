"""Shared fixtures: real OpenTelemetry SDK providers with in-memory exporters, and instrumentation."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(1)

from in_memory_telemetry import Telemetry  # noqa: E402

import corevital_otel  # noqa: E402


@pytest.fixture
def telemetry():
    return Telemetry()


@pytest.fixture
def instrumented(telemetry):
    """Instrument with the built-in plugins and in-memory providers; always uninstrument afterwards."""
    instrumentors = []

    def _instrument(**options):
        # Most tests read full detail; the default mode (on_risk) has tests of its own that name it.
        options.setdefault("capture_mode", "full")
        instrumentors.append(
            corevital_otel.instrument(
                tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider, **options
            )
        )
        return telemetry

    yield _instrument
    corevital_otel.uninstrument()
