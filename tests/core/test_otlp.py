"""What the real OTLP/HTTP exporters put on the wire, decoded from protobuf by an in-process receiver."""

from __future__ import annotations

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

import corevital_otel
from corevital_otel.plugins import logits as logits_plugin
from corevital_otel.telemetry import TOKEN_BUCKETS
from tests.support.otlp_receiver import attributes, exporting_providers
from tests.support.tiny_models import build_model, prompt_batch

from .helpers import eos_and_pad, scripted

MAX_NEW = 4
EOS_STEP = 1


@pytest.fixture
def otlp_providers(otlp_receiver):
    """SDK providers exporting through the real OTLP/HTTP exporters to the in-process receiver."""
    yield from exporting_providers(otlp_receiver, "corevital-otlp-test")


def test_span_and_metrics_arrive_as_otlp_protobuf(otlp_receiver, otlp_providers):
    tracer_provider, meter_provider = otlp_providers
    corevital_otel.instrument(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        capture_mode="full",
        plugins=[logits_plugin],
        builtin_plugins=False,
    )
    model = build_model("mistral")
    ids, mask = prompt_batch(batch=2, length=5)
    eos, _ = eos_and_pad(model)
    # Row 0 ends on EOS at step 1: its later step values must travel as OTLP's empty value.
    forced = {(0, EOS_STEP): eos}
    model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=MAX_NEW,
        do_sample=False,
        logits_processor=scripted(ids.shape[1], forced, banned=(eos,)),
    )
    meter_provider.force_flush()
    assert otlp_receiver.wait_for(lambda: "/v1/metrics" in otlp_receiver.bodies)

    (span,) = otlp_receiver.generation_spans()
    assert span.name == "text_completion mistral"
    assert span.kind == Span.SpanKind.SPAN_KIND_INTERNAL
    values = attributes(span.attributes)
    assert values["gen_ai.operation.name"] == "text_completion"
    assert values["gen_ai.provider.name"] == "huggingface"
    assert values["gen_ai.request.max_tokens"] == MAX_NEW
    assert values["gen_ai.usage.input_tokens"] == 2 * 5 - 2
    assert values["gen_ai.usage.output_tokens"] == (EOS_STEP + 1) + MAX_NEW
    assert values["gen_ai.response.finish_reasons"] == ("stop", "length")
    entropy = values["corevital.steps.logits.entropy"]  # rows x steps, row-major
    assert len(entropy) == 2 * MAX_NEW
    assert entropy[EOS_STEP + 1 : MAX_NEW] == (None,) * (MAX_NEW - EOS_STEP - 1)
    assert all(isinstance(value, float) for value in entropy[: EOS_STEP + 1] + entropy[MAX_NEW:])
    events = [event for event in span.events if event.name == "corevital.step"]
    assert [attributes(event.attributes)["corevital.step.index"] for event in events] == list(range(MAX_NEW))
    last = attributes(events[-1].attributes)["corevital.logits.entropy"]
    assert last[0] is None and isinstance(last[1], float)

    metrics = otlp_receiver.metrics()
    usage = metrics["gen_ai.client.token.usage"]
    assert usage.unit == "{token}"
    by_type = {
        attributes(point.attributes)["gen_ai.token.type"]: point for point in usage.histogram.data_points
    }
    assert by_type["input"].sum == 8 and by_type["output"].sum == (EOS_STEP + 1) + MAX_NEW
    assert tuple(by_type["input"].explicit_bounds) == tuple(float(b) for b in TOKEN_BUCKETS)
    assert attributes(by_type["input"].attributes)["gen_ai.request.model"] == "mistral"
    assert metrics["gen_ai.client.operation.duration"].unit == "s"
    entropy_points = metrics["corevital.token.entropy"].histogram.data_points
    assert sum(point.count for point in entropy_points) == (EOS_STEP + 1) + MAX_NEW  # real tokens only
