"""Live tier: the built Collector with the Langfuse overlay (collector-config/langfuse.yaml) sends our
traces the way Langfuse ingests them, to a recording HTTP receiver standing in for Langfuse: path
/api/public/otel/v1/traces, Basic auth from the two keys, x-langfuse-ingestion-version 4, an OTLP
protobuf body that decodes to our spans; and no metrics."""

from __future__ import annotations

import base64
import time
from pathlib import Path

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import corevital_otel
from tests.support.tiny_models import build_model, prompt_batch

from . import live_stack, otlp, span_facts
from .http_recorder import recording
from .repo import COLLECTOR_BASE, COLLECTOR_LANGFUSE

SERVICE = "corevital-langfuse-live"
KEYS = ("pk-lf-live-test", "sk-lf-live-test")
TRACES_PATH = "/api/public/otel/v1/traces"


def _generate(collector: live_stack.RunningCollector) -> None:
    """Two generations, their spans and metrics sent to the Collector over OTLP/HTTP."""
    resource = Resource.create({"service.name": SERVICE})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{collector.otlp_http}/v1/traces"))
    )
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"{collector.otlp_http}/v1/metrics"))
    meter_provider = MeterProvider(metric_readers=[reader], resource=resource)
    corevital_otel.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        model = build_model("gpt2")
        ids, mask = prompt_batch(batch=1)
        for new_tokens in (3, 4):
            model.generate(
                ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0
            )
    finally:
        corevital_otel.uninstrument()
        tracer_provider.shutdown()
        meter_provider.shutdown()  # pushes the metrics: the Collector has them before the spans leave it


def test_the_langfuse_overlay_sends_our_traces_as_langfuse_expects(tmp_path: Path) -> None:
    otelcol = live_stack.require_collector()
    with recording(lambda request: otlp.OK_RESPONSE) as langfuse:
        environment = {
            "LANGFUSE_HOST": langfuse.url,
            "LANGFUSE_PUBLIC_KEY": KEYS[0],
            "LANGFUSE_SECRET_KEY": KEYS[1],
        }
        with live_stack.collector(
            otelcol, [COLLECTOR_BASE, COLLECTOR_LANGFUSE], tmp_path, environment
        ) as collector:
            _generate(collector)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(otlp.spans(langfuse.requests)) < 2:
                time.sleep(0.25)
            time.sleep(3)  # longer than the exporter's flush timeout: anything else would have come
    assert langfuse.requests, collector.log.read_text()[-3000:]
    assert {request.path for request in langfuse.requests} == {TRACES_PATH}  # never metrics
    expected_auth = "Basic " + base64.b64encode(":".join(KEYS).encode()).decode()
    for request in langfuse.requests:
        assert request.method == "POST"
        assert request.headers["authorization"] == expected_auth
        assert request.headers["x-langfuse-ingestion-version"] == "4"
        assert request.headers["content-type"] == "application/x-protobuf"
    generations = [span for span in otlp.spans(langfuse.requests) if span_facts.is_generation(span.span.name)]
    assert len(generations) == 2
    for span in generations:
        assert span.resource["service.name"] == SERVICE
        assert span.attributes["gen_ai.request.model"] == "gpt2"
        assert span.attributes["gen_ai.operation.name"] == "text_completion"
    assert sorted(span.attributes["gen_ai.usage.output_tokens"] for span in generations) == [3, 4]
