"""Shared fixtures: real OpenTelemetry SDK providers with in-memory exporters, and instrumentation."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(1)

from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

import corevital_otel  # noqa: E402


class Telemetry:
    """In-memory spans and metrics of one test."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.metric_reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.metric_reader])

    def finished(self):
        return self.spans.get_finished_spans()

    def generation_spans(self):
        return [s for s in self.finished() if s.name.startswith("text_completion")]

    def metrics(self) -> dict:
        """Metric name -> list of data points."""
        data = self.metric_reader.get_metrics_data()
        points: dict = {}
        for resource_metrics in data.resource_metrics if data else ():
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    points.setdefault(metric.name, []).extend(metric.data.data_points)
        return points


@pytest.fixture
def telemetry():
    return Telemetry()


@pytest.fixture
def instrumented(telemetry):
    """Instrument with the built-in plugins and in-memory providers; always uninstrument afterwards."""
    instrumentors = []

    def _instrument(**options):
        instrumentors.append(
            corevital_otel.instrument(
                tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider, **options
            )
        )
        return telemetry

    yield _instrument
    corevital_otel.uninstrument()
