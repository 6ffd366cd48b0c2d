"""What an OTLP/HTTP trace export carries, decoded with opentelemetry-proto: spans with their resource,
scope, attributes and events as plain Python values."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from .http_recorder import Recorded

OK_RESPONSE = (200, "application/x-protobuf", ExportTraceServiceResponse().SerializeToString())


def value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None  # OTLP's empty value: how a non-finite array entry is exported
    if kind == "array_value":
        return [value(item) for item in any_value.array_value.values]
    if kind == "kvlist_value":
        return attributes(any_value.kvlist_value.values)
    return getattr(any_value, kind)


def attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: value(pair.value) for pair in pairs}


def value_kinds(pairs: list[KeyValue]) -> dict[str, str]:
    """Attribute name -> the OTLP value field it travels in (string_value, int_value, array_value...)."""
    return {pair.key: pair.value.WhichOneof("value") for pair in pairs}


@dataclass
class ExportedSpan:
    resource: dict[str, Any]
    scope_name: str
    scope_version: str
    span: Span

    @property
    def attributes(self) -> dict[str, Any]:
        return attributes(self.span.attributes)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [attributes(event.attributes) for event in self.span.events if event.name == name]


def spans_of(resource_spans_list: Any) -> list[ExportedSpan]:
    """The spans of OTLP ResourceSpans messages (an export request's, or a TracesData's)."""
    found = []
    for resource_spans in resource_spans_list:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope
            found += [ExportedSpan(resource, scope.name, scope.version, span) for span in scope_spans.spans]
    return found


def body(request: Recorded) -> bytes:
    """The request's protobuf, gunzipped when it came compressed (the Collector's exporters gzip); a
    body a caller already gunzipped (its header still says gzip) is left as it is."""
    if request.headers.get("content-encoding") == "gzip" and request.body[:2] == b"\x1f\x8b":
        return gzip.decompress(request.body)
    return request.body


def spans(requests: list[Recorded]) -> list[ExportedSpan]:
    found = []
    for request in requests:
        found += spans_of(ExportTraceServiceRequest.FromString(body(request)).resource_spans)
    return found
