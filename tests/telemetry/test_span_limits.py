"""A 2,000-token generation in full detail under the SDK's default span limits (128 attributes, 128 events,
oldest dropped silently) loses nothing by accident: step events are bounded by design and counted, per-step
series are bucketed to a bounded resolution, and when a span cannot hold everything the least important
attributes go first, counted."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace import SpanLimits

import corevital_otel
from corevital_otel.plugins import health as health_plugin
from corevital_otel.plugins import logits as logits_plugin
from tests.support.in_memory_telemetry import Telemetry
from tests.support.tiny_models import build_model, prompt_batch

from .helpers import Filler, ResultsSpy, long_context_gpt2, step_events

LONG = 2000
DEFAULT_MAX_STEP_EVENTS = 32
HEALTH_FLAGS = (
    "nan_detected",
    "inf_detected",
    "attention_collapse_detected",
    "high_entropy_steps",
    "repetition_loop_detected",
    "mid_layer_anomaly_detected",
)
GEN_AI = (
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "gen_ai.request.model",
    "gen_ai.request.max_tokens",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.response.finish_reasons",
)
# Core bookkeeping that says what the span holds and what it left out.
CORE = (
    "corevital.steps.count",
    "corevital.sequences.count",
    "corevital.time_to_first_token",
    "corevital.time_per_output_token",
    "corevital.step.events_emitted",
    "corevital.step.events_dropped",
)
RISK = ("corevital.risk.score", "corevital.risk.level", "corevital.risk.factors", "corevital.risk.max")


def _generate_long(telemetry: Telemetry, tokens: int, **options: Any) -> tuple[Any, ResultsSpy]:
    """One greedy generation of exactly ``tokens`` tokens; returns its span and what the plugins wrote."""
    spy = ResultsSpy()
    plugins = [*options.pop("plugins", ()), spy]
    options.setdefault("capture_mode", "full")
    corevital_otel.instrument(
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        plugins=plugins,
        **options,
    )
    try:
        ids, mask = prompt_batch(batch=1)
        model = long_context_gpt2(ids.shape[1] + tokens)
        model.generate(
            ids, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False
        )
    finally:
        corevital_otel.uninstrument()
    (span,) = telemetry.generation_spans()
    return span, spy


@pytest.fixture(scope="module")
def long_generation() -> tuple[Any, ResultsSpy]:
    """2,000 tokens with every built-in plugin, default SDK limits, default options but full detail."""
    assert (SpanLimits().max_span_attributes, SpanLimits().max_events) == (128, 128), "OTEL_* limits set"
    return _generate_long(Telemetry(), LONG)


def test_the_sdk_drops_nothing_and_what_matters_is_there(long_generation):
    span, spy = long_generation
    assert span.dropped_attributes == 0 and span.dropped_events == 0  # nothing silently lost
    attributes = dict(span.attributes)
    assert len(attributes) <= 128
    missing = [name for name in GEN_AI + CORE + RISK if name not in attributes]
    missing += [
        f"corevital.health.{flag}" for flag in HEALTH_FLAGS if f"corevital.health.{flag}" not in attributes
    ]
    assert missing == []
    assert attributes["gen_ai.usage.output_tokens"] == LONG == attributes["corevital.steps.count"]
    # Every plugin attribute and every series' bucket means made it onto the span; at the 128-attribute
    # limit only bucket extremes (.min/.max) may have gone, and each one that went is counted.
    (results,) = spy.results
    assert set(results.attributes) - results.rows_only <= set(attributes)  # rows_only: not at one row
    extremes = [f"corevital.steps.{name}.{end}" for name in spy.series_names for end in ("min", "max")]
    means = [f"corevital.steps.{name}" for name in spy.series_names]
    assert all(name in attributes for name in means)
    missing = [name for name in extremes if name not in attributes]
    assert attributes.get("corevital.attributes.dropped", 0) == len(missing) < len(extremes)


def test_step_events_are_bounded_and_counted(long_generation):
    span, spy = long_generation
    events = step_events(span)
    indexes = [event.attributes["corevital.step.index"] for event in events]
    assert len(events) == DEFAULT_MAX_STEP_EVENTS == span.attributes["corevital.step.events_emitted"]
    assert span.attributes["corevital.step.events_dropped"] == LONG - DEFAULT_MAX_STEP_EVENTS
    assert indexes == sorted(set(indexes)) and {0, LONG - 1} <= set(indexes)
    # Every step a plugin flagged got its event, with the reasons.
    (results,) = spy.results
    flagged = results.flagged_steps
    assert 0 < len(flagged) <= DEFAULT_MAX_STEP_EVENTS
    by_index = {event.attributes["corevital.step.index"]: event for event in events}
    for step, reasons in flagged.items():
        assert tuple(by_index[step].attributes["corevital.step.reasons"]) == tuple(reasons)


def test_long_series_are_bucketed_and_step_events_keep_exact_values(long_generation):
    span, spy = long_generation
    attributes = dict(span.attributes)
    resolution = attributes["corevital.steps.resolution"]
    assert resolution == -(-LONG // 32)
    arrays = {f"corevital.steps.{name}": attributes[f"corevital.steps.{name}"] for name in spy.series_names}
    assert len(arrays) >= 10
    assert all(len(values) == -(-LONG // resolution) for values in arrays.values())
    # The step events carry the same series: nothing exported only in one place.
    event_series = {
        name.removeprefix("corevital.")
        for event in step_events(span)
        for name in event.attributes
        if not name.startswith("corevital.step.")
    }
    assert event_series <= {name.removeprefix("corevital.steps.") for name in arrays}
    assert "logits.entropy" in event_series
    # Step 0's exact value lies inside its bucket's range, and the bucket mean is the mean of its steps.
    first = step_events(span)[0].attributes["corevital.logits.entropy"]
    (results,) = spy.results
    low = attributes.get("corevital.steps.logits.entropy.min")
    high = attributes.get("corevital.steps.logits.entropy.max")
    if low is not None and high is not None:
        assert low[0] <= first <= high[0]
    exact = spy.series["logits.entropy"][:resolution, 0]
    assert arrays["corevital.steps.logits.entropy"][0] == pytest.approx(float(exact.mean()))


def test_an_overfull_span_drops_the_least_important_first():
    """More attributes than the default limit: step series go first, then per-layer arrays, then other
    plugin values; GenAI, health, risk and the core bookkeeping always stay, and the count is reported."""
    telemetry = Telemetry()
    span, _ = _generate_long(telemetry, 8, plugins=[Filler(100)])
    attributes = dict(span.attributes)
    assert span.dropped_attributes == 0 and len(attributes) <= 128
    dropped = attributes["corevital.attributes.dropped"]
    assert dropped > 0
    kept = [name for name in GEN_AI + CORE + RISK if name in attributes]
    assert kept == list(GEN_AI + CORE + RISK)
    assert all(f"corevital.health.{flag}" in attributes for flag in HEALTH_FLAGS)
    series = [
        name for name in attributes if name.startswith("corevital.steps.") and name != "corevital.steps.count"
    ]
    layers = [
        name for name in attributes if name.startswith(("corevital.layers.", "corevital.prompt.positions."))
    ]
    fillers = [name for name in attributes if name.startswith("corevital.filler.")]
    # Enough had to go to reach the ordinary plugin values: all step series and per-layer arrays went
    # before them, and what went is counted.
    assert series == [] and layers == []
    assert 0 < len(fillers) < 100 and dropped >= 100 - len(fillers)


def test_step_events_stop_below_the_span_event_limit():
    """Asking for more step events than the span can hold: they stop short of the limit (room left for the
    exception event), and the rest are counted, not silently dropped by the SDK."""
    telemetry = Telemetry()
    span, _ = _generate_long(
        telemetry, 300, plugins=[logits_plugin], builtin_plugins=False, max_step_events=500
    )
    events = step_events(span)
    assert len(events) == 126 and span.dropped_events == 0
    assert span.attributes["corevital.step.events_dropped"] == 300 - 126


def test_raised_limits_keep_every_step(monkeypatch):
    """With raised limits (read by the SDK from the standard variables), max_step_events to match and no
    byte budget, a 2,000-token generation keeps an event per step and every attribute."""
    monkeypatch.setenv("OTEL_SPAN_EVENT_COUNT_LIMIT", "4000")
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "1000")
    telemetry = Telemetry()
    span, _ = _generate_long(
        telemetry,
        LONG,
        plugins=[logits_plugin, health_plugin, Filler(200)],
        builtin_plugins=False,
        max_step_events=LONG,
        max_span_kib=0,
    )
    events = step_events(span)
    assert [event.attributes["corevital.step.index"] for event in events] == list(range(LONG))
    assert span.attributes["corevital.step.events_dropped"] == 0 and span.dropped_events == 0
    assert "corevital.attributes.dropped" not in span.attributes
    assert sum(name.startswith("corevital.filler.") for name in span.attributes) == 200


def test_bounded_by_default_even_for_a_short_generation(instrumented):
    """Fewer steps than the budget: one event per step, none dropped."""
    telemetry = instrumented(plugins=[logits_plugin], builtin_plugins=False)
    ids, mask = prompt_batch(batch=2)
    build_model("llama").generate(
        ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5, do_sample=False
    )
    (span,) = telemetry.generation_spans()
    assert [event.attributes["corevital.step.index"] for event in step_events(span)] == list(range(5))
    assert span.attributes["corevital.step.events_dropped"] == 0
