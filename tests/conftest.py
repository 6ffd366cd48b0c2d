"""Shared fixtures: real OpenTelemetry SDK providers with in-memory exporters, instrumentation, and an
in-process OTLP/HTTP receiver. Shared helpers live in the tests.support package."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import corevital_otel
from tests.support.in_memory_telemetry import Telemetry
from tests.support.otlp_receiver import OtlpReceiver, running_receiver

torch.set_num_threads(1)


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


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """A started in-process OTLP/HTTP receiver on a free loopback port."""
    yield from running_receiver()


# Modules whose tests start processes or servers, or generate thousands of tokens: marked ``slow`` so a
# quick local run can deselect them (``-m "not slow"``); the README's test command runs everything.
SLOW_MODULES = frozenset(
    {
        "tests/backends/test_collector_live.py",
        "tests/backends/test_demo_traffic.py",
        "tests/backends/test_grafana_live.py",
        "tests/backends/test_jaeger.py",
        "tests/backends/test_phoenix.py",
        "tests/backends/test_prometheus_direct.py",
        "tests/backends/test_prometheus_live.py",
        "tests/benchmarks/test_overhead_smoke.py",
        "tests/core/test_readme_zero_code.py",
        "tests/core/test_zero_code.py",
        "tests/demo/test_demo.py",
        "tests/reliability/test_load.py",
        "tests/telemetry/test_span_limits.py",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = config.rootpath
    for item in items:
        if item.path.relative_to(root).as_posix() in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
