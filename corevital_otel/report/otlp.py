"""OTLP export for the commands, configured by the standard ``OTEL_EXPORTER_OTLP_*`` variables.

Traces go out when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set,
metrics when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` is (so the
Langfuse recipe, which names only a traces endpoint, sends no metrics to a default port). Both exporters
count what the endpoint accepted and refused: a flush can "succeed" while every request was refused,
and a command must not claim that data arrived when it did not.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

OTLP_PROTOCOLS = ("http/protobuf", "grpc")
_HTTP_PATHS = {"TRACES": "v1/traces", "METRICS": "v1/metrics"}


class ExportSetupError(Exception):
    """OTLP export was asked for (by environment variables) but cannot be set up."""


def otlp_protocol(signal: str, environ: Mapping[str, str] | None = None) -> str:
    """The protocol for ``signal`` (``TRACES`` or ``METRICS``): its own variable, the general one, or
    ``http/protobuf``. Raises :class:`ExportSetupError` for one the Python exporters do not speak."""
    environ = os.environ if environ is None else environ
    protocol = (
        environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or ""
    ).strip() or "http/protobuf"
    if protocol not in OTLP_PROTOCOLS:
        raise ExportSetupError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: the Python OTLP exporters support "
            + " and ".join(OTLP_PROTOCOLS)
        )
    return protocol


def otlp_endpoint(signal: str, environ: Mapping[str, str] | None = None) -> str | None:
    """Where ``signal`` goes, as the exporter will resolve it; None when neither variable is set."""
    environ = os.environ if environ is None else environ
    specific = environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT", "").strip()
    if specific:
        return specific
    general = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not general:
        return None
    if otlp_protocol(signal, environ) == "grpc":
        return general
    return f"{general.rstrip('/')}/{_HTTP_PATHS[signal]}"


class CountingSpanExporter(SpanExporter):
    """Delegates to another span exporter and counts the spans it accepted and those it refused."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.exported = 0
        self.failed = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class CountingMetricExporter(MetricExporter):
    """Delegates to another metric exporter and counts the export requests it accepted and refused."""

    def __init__(self, inner: MetricExporter) -> None:
        super().__init__(inner._preferred_temporality, inner._preferred_aggregation)
        self.inner = inner
        self.exported = 0
        self.failed = 0

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        if result is MetricExportResult.SUCCESS:
            self.exported += 1
        else:
            self.failed += 1
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)


@dataclass
class SignalExport:
    """One signal's OTLP destination and what it accepted."""

    endpoint: str
    protocol: str
    exporter: CountingSpanExporter | CountingMetricExporter

    @property
    def where(self) -> str:
        return f"{self.endpoint} ({self.protocol})"


# (signal, protocol) -> the exporter class, by module and name (imported only when used)
_EXPORTERS = {
    ("TRACES", "grpc"): ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "OTLPSpanExporter"),
    ("TRACES", "http/protobuf"): (
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "OTLPSpanExporter",
    ),
    ("METRICS", "grpc"): ("opentelemetry.exporter.otlp.proto.grpc.metric_exporter", "OTLPMetricExporter"),
    ("METRICS", "http/protobuf"): (
        "opentelemetry.exporter.otlp.proto.http.metric_exporter",
        "OTLPMetricExporter",
    ),
}
_COUNTING = {"TRACES": CountingSpanExporter, "METRICS": CountingMetricExporter}


def signal_export(signal: str, timeout_s: float) -> SignalExport | None:
    """A counting OTLP exporter for ``signal`` (``TRACES`` or ``METRICS``) at its configured endpoint, or
    None when no endpoint is set for it (or ``OTEL_<signal>_EXPORTER=none``).

    Each request (retries included) is bounded by ``timeout_s`` unless ``OTEL_EXPORTER_OTLP_TIMEOUT``
    says otherwise, so an unreachable endpoint costs seconds, not the SDK default's retries.
    Raises :class:`ExportSetupError` for an unsupported protocol or a missing exporter package.
    """
    endpoint = otlp_endpoint(signal)
    if endpoint is None or _switched_off(signal):
        return None
    protocol = otlp_protocol(signal)
    module, name = _EXPORTERS[(signal, protocol)]
    try:
        exporter_class = getattr(importlib.import_module(module), name)
    except ImportError as error:
        raise ExportSetupError(
            f"an OTLP endpoint is set but the OTLP exporter is not installed ({error.name}); "
            'install it with: pip install "corevital-otel[otlp]"'
        ) from error
    timeout = None if os.environ.get("OTEL_EXPORTER_OTLP_TIMEOUT") else timeout_s
    return SignalExport(endpoint, protocol, _COUNTING[signal](exporter_class(timeout=timeout)))


def _switched_off(signal: str) -> bool:
    """``OTEL_TRACES_EXPORTER=none`` / ``OTEL_METRICS_EXPORTER=none``, as opentelemetry-instrument reads
    them."""
    return os.environ.get(f"OTEL_{signal}_EXPORTER", "").strip().lower() == "none"
