"""Jaeger: the part we own is the OTLP payload a CoreVital span travels in. It is checked here against an
in-process OTLP/HTTP receiver; a live tier sends it through the built Collector (OTLP gRPC and OTLP HTTP)
to the built Jaeger and reads it back from Jaeger's /api/v3/traces."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter

import corevital_otel
from tests.support.tiny_models import build_model, prompt_batch

from . import live_stack, otlp, span_facts
from .http_recorder import recording
from .live_stack import RunningCollector, RunningJaeger
from .repo import COLLECTOR_BASE

SERVICE = "corevital-jaeger-test"


def _traced_generations(
    exporter: SpanExporter, instrument_with: Callable[..., object], service: str = SERVICE
) -> None:
    """One successful generation inside a caller's span, and one that fails inside generate()."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrument_with(provider)
    model = build_model("gpt2")
    ids, mask = prompt_batch(batch=2)
    with provider.get_tracer("caller").start_as_current_span("handle request"):
        model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    with pytest.raises(ValueError):
        model.generate(ids, attention_mask=mask, max_new_tokens=2, not_a_generate_argument=1)
    provider.shutdown()


@pytest.fixture
def exported(instrument_with: Callable[..., object]) -> list[otlp.ExportedSpan]:
    with recording(lambda request: otlp.OK_RESPONSE) as receiver:
        _traced_generations(OTLPSpanExporter(endpoint=f"{receiver.url}/v1/traces"), instrument_with)
    assert {request.path for request in receiver.requests} == {"/v1/traces"}
    assert all(r.headers["content-type"] == "application/x-protobuf" for r in receiver.requests)
    return otlp.spans(receiver.requests)


def _generations(spans: list[otlp.ExportedSpan]) -> list[otlp.ExportedSpan]:
    return [span for span in spans if span.span.name.startswith("text_completion")]


def test_generation_span_in_the_otlp_payload(exported: list[otlp.ExportedSpan]) -> None:
    assert len(_generations(exported)) == 2
    ok = _generations(exported)[0]
    caller = next(span for span in exported if span.span.name == "handle request")
    assert ok.span.name == "text_completion gpt2"
    assert ok.span.kind == Span.SPAN_KIND_INTERNAL
    assert ok.span.parent_span_id == caller.span.span_id and ok.span.trace_id == caller.span.trace_id
    assert ok.resource["service.name"] == SERVICE  # Jaeger's service
    assert (ok.scope_name, ok.scope_version) == ("corevital_otel", corevital_otel.__version__)
    attributes = ok.attributes
    assert attributes["gen_ai.operation.name"] == "text_completion"
    assert attributes["gen_ai.provider.name"] == "huggingface"
    assert attributes["gen_ai.request.model"] == "gpt2"
    assert attributes["gen_ai.usage.output_tokens"] == 10
    assert attributes["gen_ai.response.finish_reasons"] == ["length", "length"]
    # typed values survive (Jaeger shows arrays as JSON strings, numbers as numbers)
    kinds = otlp.value_kinds(list(ok.span.attributes))
    assert kinds["gen_ai.usage.input_tokens"] == "int_value"
    assert kinds["corevital.time_to_first_token"] == "double_value"
    assert kinds["gen_ai.response.finish_reasons"] == "array_value"
    assert kinds["corevital.logits.entropy.mean"] == "array_value"
    assert len(attributes["corevital.logits.entropy.mean"]) == 2  # one per row


def test_step_events_in_the_otlp_payload(exported: list[otlp.ExportedSpan]) -> None:
    ok = _generations(exported)[0]
    steps = ok.events("corevital.step")
    assert len(steps) == ok.attributes["corevital.step.events_emitted"] == 5
    assert sorted(step["corevital.step.index"] for step in steps) == [0, 1, 2, 3, 4]
    assert all(len(step["corevital.logits.entropy"]) == 2 for step in steps)  # one value per row


def test_failed_generation_in_the_otlp_payload(exported: list[otlp.ExportedSpan]) -> None:
    failed = _generations(exported)[1]
    assert failed.span.status.code == Status.STATUS_CODE_ERROR  # Jaeger: error=true
    assert failed.attributes["error.type"] == "builtins.ValueError"
    (exception,) = failed.events("exception")
    assert exception["exception.type"] == "ValueError"


# -- live tier: SDK -> Collector -> Jaeger ---------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningCollector, RunningJaeger]]:
    otelcol, jaeger_binary = live_stack.require_collector(), live_stack.require_jaeger()
    workdir = tmp_path_factory.mktemp("stack")
    with live_stack.jaeger(jaeger_binary, workdir) as jaeger:
        environment = {"JAEGER_OTLP_GRPC_ENDPOINT": jaeger.otlp_grpc}
        with live_stack.collector(otelcol, [COLLECTOR_BASE], workdir, environment) as collector:
            yield collector, jaeger


def _exporter(protocol: str, collector: RunningCollector) -> SpanExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=collector.otlp_grpc, insecure=True)
    return OTLPSpanExporter(endpoint=f"{collector.otlp_http}/v1/traces")


def _wait_for_spans(
    jaeger: RunningJaeger, service: str, count: int, timeout: float
) -> list[otlp.ExportedSpan]:
    deadline = time.monotonic() + timeout
    spans: list[otlp.ExportedSpan] = []
    while time.monotonic() < deadline:
        spans = jaeger.traces(service) if service in jaeger.services() else []
        if len(spans) >= count:
            break
        time.sleep(0.5)
    return spans


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_jaeger_shows_the_generation_sent_through_the_collector(
    stack: tuple[RunningCollector, RunningJaeger], instrument_with: Callable[..., object], protocol: str
) -> None:
    collector, jaeger = stack
    service = f"{SERVICE}-{protocol}"
    _traced_generations(_exporter(protocol, collector), instrument_with, service)
    spans = _wait_for_spans(jaeger, service, 3, timeout=30)
    names = sorted(span.span.name for span in spans)
    expected = ["handle request", "text_completion gpt2", "text_completion gpt2"]
    assert names == expected, collector.log.read_text()[-3000:]
    ok, failed = sorted(_generations(spans), key=lambda span: span.span.status.code)
    assert ok.resource["service.name"] == service
    assert (ok.scope_name, ok.scope_version) == ("corevital_otel", corevital_otel.__version__)
    attributes = ok.attributes
    assert attributes["gen_ai.operation.name"] == "text_completion"
    assert attributes["gen_ai.request.model"] == "gpt2"
    assert attributes["gen_ai.usage.output_tokens"] == 10
    assert attributes["gen_ai.usage.input_tokens"] > 0
    assert attributes["gen_ai.response.finish_reasons"] == ["length", "length"]
    assert 0.0 <= span_facts.risk(attributes) <= 1.0
    assert span_facts.health_attributes(attributes), "no corevital.health.* attribute"
    steps = ok.events("corevital.step")
    assert sorted(step["corevital.step.index"] for step in steps) == [0, 1, 2, 3, 4]
    assert all(len(step["corevital.logits.entropy"]) == 2 for step in steps)
    assert failed.span.status.code == Status.STATUS_CODE_ERROR
    assert failed.attributes["error.type"] == "builtins.ValueError"
