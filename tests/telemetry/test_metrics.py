"""OTLP metrics: instruments are created once per instrumentation, the GenAI ones carry the conventions'
units and bucket boundaries, CoreVital distributions agree with the span, metric attributes stay
low-cardinality, and histogram points link to the generation's trace through exemplars."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import torch
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

import corevital_otel
from tests.support.tiny_models import VOCAB, build_model, prompt_batch

# The GenAI metric conventions: unit and ExplicitBucketBoundaries of each standard metric.
GENAI_METRICS = {
    "gen_ai.client.token.usage": (
        "{token}",
        (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864),
    ),
    "gen_ai.client.operation.duration": (
        "s",
        (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92),
    ),
    "gen_ai.server.time_to_first_token": (
        "s",
        (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0),
    ),
    "gen_ai.server.time_per_output_token": (
        "s",
        (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5),
    ),
}
MAX_NEW = 12


def _metrics_by_name(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    return {
        metric.name: metric
        for resource_metrics in data.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
    }


def _generate(model: torch.nn.Module, batch: int = 2, new: int = MAX_NEW, **kwargs: Any) -> torch.Tensor:
    ids, mask = prompt_batch(batch=batch, seed=batch)
    return model.generate(
        ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False, **kwargs
    )


class _CountingMeter:
    """Delegates to a real meter and notes every instrument created on it."""

    def __init__(self, meter: Any, created: list[str]) -> None:
        self._meter, self._created = meter, created

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._meter, name)
        if not name.startswith("create_"):
            return attribute

        def create(instrument_name: str, *args: Any, **kwargs: Any) -> Any:
            self._created.append(instrument_name)
            return attribute(instrument_name, *args, **kwargs)

        return create


class _CountingMeterProvider:
    def __init__(self, provider: MeterProvider) -> None:
        self.provider, self.created = provider, []

    def get_meter(self, *args: Any, **kwargs: Any) -> _CountingMeter:
        return _CountingMeter(self.provider.get_meter(*args, **kwargs), self.created)


def test_instruments_are_created_once_not_per_call(telemetry):
    counting = _CountingMeterProvider(telemetry.meter_provider)
    corevital_otel.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=counting)
    created = list(counting.created)
    assert len(created) == len(set(created)) and set(GENAI_METRICS) <= set(created)
    model = build_model("gpt2")
    for _ in range(3):
        _generate(model, batch=1, new=3)
    assert counting.created == created  # three calls later, not one instrument more
    assert len(telemetry.generation_spans()) == 3


def test_genai_metrics_follow_the_conventions(instrumented):
    telemetry = instrumented()
    model = build_model("llama")
    output = _generate(model)
    (span,) = telemetry.generation_spans()
    metrics = _metrics_by_name(telemetry.metric_reader)
    for name, (unit, buckets) in GENAI_METRICS.items():
        metric = metrics[name]
        assert metric.unit == unit, name
        for point in metric.data.data_points:
            assert tuple(point.explicit_bounds) == tuple(float(bound) for bound in buckets), name
    usage = {
        point.attributes["gen_ai.token.type"]: point.sum
        for point in metrics["gen_ai.client.token.usage"].data.data_points
    }
    assert usage == {
        "input": span.attributes["gen_ai.usage.input_tokens"],
        "output": span.attributes["gen_ai.usage.output_tokens"],
    }
    assert usage["output"] == output.shape[0] * MAX_NEW
    (duration,) = metrics["gen_ai.client.operation.duration"].data.data_points
    assert 0 < duration.sum <= (span.end_time - span.start_time) / 1e9


def test_corevital_distributions_agree_with_the_span(instrumented):
    """Every built-in plugin: entropy and surprisal per generated token, risk per row, generations by risk
    level and health flags by flag are the span's own values."""
    telemetry = instrumented()
    _generate(build_model("gpt2"), new=24)  # long enough for the random model to loop
    (span,) = telemetry.generation_spans()
    attributes = dict(span.attributes)
    metrics = _metrics_by_name(telemetry.metric_reader)
    for series, metric in (
        ("logits.entropy", "corevital.token.entropy"),
        ("logits.surprisal", "corevital.token.surprisal"),
    ):
        values = np.array([v for v in attributes[f"corevital.steps.{series}"] if v is not None])
        (point,) = metrics[metric].data.data_points
        assert metrics[metric].unit == "bit"
        assert point.count == len(values) and point.sum == pytest.approx(values.sum())
    risks = attributes["corevital.risk.score"]
    (risk,) = metrics["corevital.risk.score"].data.data_points
    assert risk.count == len(risks) and risk.sum == pytest.approx(sum(risks))
    levels = {
        point.attributes["corevital.risk.level"]: point.value
        for point in metrics["corevital.generations"].data.data_points
    }
    assert levels == {
        level: list(attributes["corevital.risk.level"]).count(level)
        for level in set(attributes["corevital.risk.level"])
    }
    fired = {
        name.removeprefix("corevital.health.per_row."): sum(bool(row) for row in rows)
        for name, rows in attributes.items()
        if name.startswith("corevital.health.per_row.")
    }
    counted = {
        point.attributes["corevital.health.flag"]: point.value
        for point in metrics["corevital.health.flags"].data.data_points
    }
    assert counted == {flag: rows for flag, rows in fired.items() if rows}
    assert counted  # the random model does raise flags: the comparison was not vacuous


def test_metric_attributes_stay_low_cardinality(instrumented):
    """Calls with distinct users, sessions, prompts and a failure: no metric attribute carries an id, a
    hash, a step index or any other per-call value; labels are short enumerations."""
    telemetry = instrumented()
    models = {"gpt2": build_model("gpt2"), "llama": build_model("llama")}
    for index, model in enumerate(models.values()):
        with corevital_otel.context(
            user_id=f"user-{index}", session_id=f"session-{index}", tags=[f"t{index}"]
        ):
            _generate(model, batch=1 + index, new=4 + index)
    with pytest.raises(IndexError):
        models["gpt2"].generate(input_ids=torch.full((1, 3), VOCAB + 1), max_new_tokens=2)
    spans = telemetry.generation_spans()
    per_call = {f"user-{i}" for i in range(2)} | {f"session-{i}" for i in range(2)}
    for span in spans:
        per_call |= {f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"}
        per_call |= set(span.attributes.get("corevital.prompt.hash", ()))
    labels: dict[str, set[Any]] = {}
    for metric in _metrics_by_name(telemetry.metric_reader).values():
        for point in metric.data.data_points:
            for key, value in point.attributes.items():
                labels.setdefault(key, set()).add(value)
    assert labels["gen_ai.request.model"] == set(models)
    for key, values in labels.items():
        for value in values:
            assert isinstance(value, str), f"{key}={value!r}: a number as a label is a per-call value"
            assert value not in per_call and not re.fullmatch(r"[0-9a-f]{16,}", value), f"{key}={value!r}"
    assert labels["error.type"] == {"builtins.IndexError"}


def test_histogram_points_carry_an_exemplar_of_the_sampled_generation(instrumented):
    """The SDK's default exemplar filter (trace_based) keeps a measurement made inside a sampled span:
    the core records inside the generation span, so the exemplar points at it."""
    telemetry = instrumented()
    _generate(build_model("gpt2"), batch=1, new=4)
    (span,) = telemetry.generation_spans()
    metrics = _metrics_by_name(telemetry.metric_reader)
    checked = [
        "gen_ai.client.operation.duration",
        "gen_ai.client.token.usage",
        "gen_ai.server.time_to_first_token",
        "gen_ai.server.time_per_output_token",
        "corevital.token.entropy",
        "corevital.risk.score",
    ]
    for name in checked:
        for point in metrics[name].data.data_points:
            assert point.exemplars, name
            for exemplar in point.exemplars:
                assert (exemplar.trace_id, exemplar.span_id) == (
                    span.context.trace_id,
                    span.context.span_id,
                ), name


def test_an_unsampled_generation_still_records_metrics_without_exemplars():
    """Head sampling drops the span, never the metrics (which must not crash on a span that records
    nothing), and the points link to no trace."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=ALWAYS_OFF)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    corevital_otel.instrument(
        tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[reader])
    )
    _generate(build_model("gpt2"), batch=1, new=3)
    assert spans.get_finished_spans() == ()
    metrics = _metrics_by_name(reader)
    assert metrics["gen_ai.client.operation.duration"].data.data_points  # still measured...
    for metric in metrics.values():
        assert all(not point.exemplars for point in metric.data.data_points), metric.name  # ...unlinked
