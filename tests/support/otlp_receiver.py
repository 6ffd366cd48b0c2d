"""An in-process OTLP/HTTP receiver: what the real OTLP exporters send, decoded from protobuf."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor


def any_value(value: AnyValue) -> Any:
    """A protobuf AnyValue as the Python value the SDK was given (arrays as tuples)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(any_value(item) for item in value.array_value.values)
    return getattr(value, kind)


def attributes(key_values: Any) -> dict[str, Any]:
    return {item.key: any_value(item.value) for item in key_values}


class OtlpReceiver:
    """Collects POSTed OTLP/HTTP protobuf bodies by path, on 127.0.0.1 and an ephemeral port (or
    ``port``). ``refuse`` maps a path to the HTTP status it answers there instead of 200 (a backend that
    takes traces but not metrics, say); refused bodies are not kept."""

    def __init__(self, port: int = 0, refuse: dict[str, int] | None = None) -> None:
        self.bodies: dict[str, list[bytes]] = {}
        self.refused: dict[str, int] = {}
        refusals = dict(refuse or {})
        self._arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                status = refusals.get(self.path, 200)
                # Stored before answering: once the exporter sees the 200, a test may look for it.
                with receiver._arrived:
                    if status == 200:
                        receiver.bodies.setdefault(self.path, []).append(body)
                    else:
                        receiver.refused[self.path] = receiver.refused.get(self.path, 0) + 1
                    receiver._arrived.notify_all()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def wait_for(self, condition: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Block until ``condition()`` holds after some request arrived (or the timeout passes)."""
        with self._arrived:
            return self._arrived.wait_for(condition, timeout)

    def spans(self) -> list[Any]:
        """Every span received on /v1/traces, decoded."""
        found = []
        for body in self.bodies.get("/v1/traces", []):
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    found.extend(scope_spans.spans)
        return found

    def metrics(self) -> dict[str, Any]:
        """Metric name -> the last received protobuf Metric of that name on /v1/metrics."""
        found: dict[str, Any] = {}
        for body in self.bodies.get("/v1/metrics", []):
            request = ExportMetricsServiceRequest.FromString(body)
            for resource_metrics in request.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        found[metric.name] = metric
        return found

    def generation_spans(self) -> list[Any]:
        return [span for span in self.spans() if span.name.startswith("text_completion")]


def running_receiver(port: int = 0, refuse: dict[str, int] | None = None) -> Iterator[OtlpReceiver]:
    """Generator for a fixture: a started receiver, stopped afterwards."""
    receiver = OtlpReceiver(port, refuse).start()
    try:
        yield receiver
    finally:
        receiver.stop()


def exporting_providers(
    receiver: OtlpReceiver, service_name: str
) -> Iterator[tuple[TracerProvider, MeterProvider]]:
    """Generator for a fixture: SDK providers exporting through the real OTLP/HTTP exporters to
    ``receiver`` (spans as each ends, metrics on ``force_flush``), shut down afterwards."""
    resource = Resource.create({"service.name": service_name})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces"))
    )
    # Exports on force_flush only: the interval is far longer than a test.
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"{receiver.endpoint}/v1/metrics"), export_interval_millis=3_600_000
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    try:
        yield tracer_provider, meter_provider
    finally:
        meter_provider.shutdown()
        tracer_provider.shutdown()
