"""An in-process OTLP/gRPC receiver: what the real OTLP/gRPC exporters send, decoded like the OTLP/HTTP
receiver of the core tests (same ``spans()`` / ``metrics()`` / ``wait_for()``), on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.support.otlp_receiver import OtlpReceiver


class GrpcOtlpReceiver:
    """Files each export request's protobuf bytes under the OTLP/HTTP path of its signal, so the HTTP
    receiver's decoding applies unchanged."""

    spans = OtlpReceiver.spans
    metrics = OtlpReceiver.metrics
    generation_spans = OtlpReceiver.generation_spans
    wait_for = OtlpReceiver.wait_for

    def __init__(self) -> None:
        self.bodies: dict[str, list[bytes]] = {}
        self.metadata: list[dict[str, str]] = []  # the gRPC metadata (headers) of each request
        self._arrived = threading.Condition()
        self._server = grpc.server(ThreadPoolExecutor(max_workers=2))
        receiver = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
                receiver._file("/v1/traces", request, context)
                return trace_service_pb2.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
                receiver._file("/v1/metrics", request, context)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    def _file(self, path: str, request: Any, context: grpc.ServicerContext) -> None:
        with self._arrived:
            self.bodies.setdefault(path, []).append(request.SerializeToString())
            self.metadata.append(dict(context.invocation_metadata()))
            self._arrived.notify_all()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GrpcOtlpReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None).wait(timeout=10)


def running_grpc_receiver() -> Iterator[GrpcOtlpReceiver]:
    """Generator for a fixture: a started receiver, stopped afterwards."""
    receiver = GrpcOtlpReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()
