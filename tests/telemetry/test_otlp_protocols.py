"""Both OTLP transports work: the real OTLP/gRPC and OTLP/HTTP exporters deliver the same span (attributes,
bounded step events, per-step arrays with null entries) and metrics (units, bucket boundaries), decoded
from protobuf by in-process receivers. Also through ``opentelemetry-instrument`` with the protocol chosen
by the standard variable."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import corevital_otel
from corevital_otel.telemetry import DURATION_BUCKETS, TOKEN_BUCKETS
from tests.core.helpers import eos_and_pad, run_python, scripted
from tests.support.otlp_receiver import attributes, exporting_providers
from tests.support.tiny_models import build_model, prompt_batch

SERVICE = "corevital-otlp-protocols"
MAX_NEW = 4
EOS_STEP = 1
OTEL_INSTRUMENT = Path(sys.executable).parent / "opentelemetry-instrument"


def _grpc_providers(receiver: Any) -> Iterator[tuple[TracerProvider, MeterProvider]]:
    """SDK providers exporting through the real OTLP/gRPC exporters (plaintext, loopback)."""
    resource = Resource.create({"service.name": SERVICE})
    tracer_provider = TracerProvider(resource=resource)
    endpoint = f"127.0.0.1:{receiver.port}"
    tracer_provider.add_span_processor(
        SimpleSpanProcessor(GrpcSpanExporter(endpoint=endpoint, insecure=True))
    )
    reader = PeriodicExportingMetricReader(
        GrpcMetricExporter(endpoint=endpoint, insecure=True), export_interval_millis=3_600_000
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    try:
        yield tracer_provider, meter_provider
    finally:
        meter_provider.shutdown()
        tracer_provider.shutdown()


@pytest.fixture(params=["http/protobuf", "grpc"])
def exported(request: pytest.FixtureRequest) -> Iterator[tuple[Any, TracerProvider, MeterProvider]]:
    """(receiver, tracer provider, meter provider) for one transport."""
    receiver = request.getfixturevalue(
        "otlp_receiver" if request.param == "http/protobuf" else "grpc_receiver"
    )
    providers = (
        exporting_providers(receiver, SERVICE)
        if request.param == "http/protobuf"
        else _grpc_providers(receiver)
    )
    for tracer_provider, meter_provider in providers:
        yield receiver, tracer_provider, meter_provider


def test_span_and_metrics_arrive_decoded(exported):
    receiver, tracer_provider, meter_provider = exported
    corevital_otel.instrument(  # every plugin, every series
        tracer_provider=tracer_provider, meter_provider=meter_provider, capture_mode="full"
    )
    model = build_model("llama")
    ids, mask = prompt_batch(batch=2, length=5)
    eos, _ = eos_and_pad(model)
    # Row 0 ends on EOS at step 1: its later step values travel as OTLP's empty value.
    model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=MAX_NEW,
        do_sample=False,
        logits_processor=scripted(ids.shape[1], {(0, EOS_STEP): eos}, banned=(eos,)),
    )
    meter_provider.force_flush()
    assert receiver.wait_for(lambda: receiver.generation_spans() and "/v1/metrics" in receiver.bodies)

    (span,) = receiver.generation_spans()
    values = attributes(span.attributes)
    assert values["gen_ai.request.model"] == "llama" and values["gen_ai.response.finish_reasons"] == (
        "stop",
        "length",
    )
    assert values["gen_ai.usage.output_tokens"] == (EOS_STEP + 1) + MAX_NEW
    assert {"corevital.risk.score", "corevital.health.nan_detected", "corevital.time_to_first_token"} <= set(
        values
    )
    entropy = values["corevital.steps.logits.entropy"]  # rows x steps, row-major
    assert entropy[EOS_STEP + 1 : MAX_NEW] == (None,) * (MAX_NEW - EOS_STEP - 1)
    events = [attributes(event.attributes) for event in span.events if event.name == "corevital.step"]
    assert [event["corevital.step.index"] for event in events] == list(range(MAX_NEW))
    assert values["corevital.step.events_dropped"] == 0

    metrics = receiver.metrics()
    usage = metrics["gen_ai.client.token.usage"]
    assert usage.unit == "{token}"
    assert all(
        tuple(p.explicit_bounds) == tuple(map(float, TOKEN_BUCKETS)) for p in usage.histogram.data_points
    )
    (duration,) = metrics["gen_ai.client.operation.duration"].histogram.data_points
    assert tuple(duration.explicit_bounds) == tuple(map(float, DURATION_BUCKETS))
    assert duration.exemplars and duration.exemplars[0].trace_id == span.trace_id  # exemplars travel too
    assert {"corevital.token.entropy", "corevital.risk.score", "corevital.health.flags"} <= set(metrics)


APP = """
import torch
from tests.support.tiny_models import build_model, prompt_batch

torch.set_num_threads(1)
ids, mask = prompt_batch(batch=1)
build_model("gpt2").generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
"""


def test_opentelemetry_instrument_exports_over_grpc(tmp_path, grpc_receiver):
    """Zero code: OTEL_EXPORTER_OTLP_PROTOCOL=grpc picks the gRPC exporters for traces and metrics."""
    if not OTEL_INSTRUMENT.exists():
        pytest.skip("opentelemetry-instrument is not installed next to this interpreter")
    run_python(
        tmp_path,
        APP,
        (
            str(OTEL_INSTRUMENT),
            "--traces_exporter",
            "otlp",
            "--metrics_exporter",
            "otlp",
            "--logs_exporter",
            "none",
        ),
        OTEL_EXPORTER_OTLP_ENDPOINT=grpc_receiver.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_EXPORTER_OTLP_INSECURE="true",
        OTEL_SERVICE_NAME=SERVICE,
    )
    assert grpc_receiver.wait_for(
        lambda: grpc_receiver.generation_spans() and "/v1/metrics" in grpc_receiver.bodies
    )
    (span,) = grpc_receiver.generation_spans()
    assert attributes(span.attributes)["gen_ai.usage.output_tokens"] == 3
    assert "gen_ai.client.operation.duration" in grpc_receiver.metrics()
