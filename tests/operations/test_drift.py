"""The drift plugin against the baseline plugin's rolling EMAs, and plugin span events (results.add_event)."""

from __future__ import annotations

import pytest
import torch
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from corevital_otel import GenerationResults, hookimpl
from corevital_otel.plugins import baseline, drift
from tests.core.helpers import metric_points
from tests.support.tiny_models import build_model

WARMUP = 4
OPTIONS = {"drift": {"fraction": 0.5, "min_samples": WARMUP, "signals": ["entropy"]}}


def _generate(model) -> None:
    model.generate(input_ids=torch.tensor([[5, 6, 7, 8]]), max_new_tokens=4, do_sample=False)


@pytest.fixture
def llama():
    return build_model("llama")


def _drift_events(span) -> list:
    return [event for event in span.events if event.name == drift.EVENT]


def test_an_entropy_jump_raises_one_event(instrumented, llama):
    telemetry = instrumented(plugin_options=OPTIONS)
    with torch.no_grad():
        llama.lm_head.weight.mul_(40.0)  # sharp distributions: low entropy while the average warms up
    for _ in range(WARMUP + 1):
        _generate(llama)
    with torch.no_grad():
        llama.lm_head.weight.div_(40.0)  # back to near-uniform: the entropy jumps
    _generate(llama)
    spans = telemetry.generation_spans()
    assert [bool(_drift_events(span)) for span in spans] == [False] * (WARMUP + 1) + [True]
    # No warm average to compare with during the warm-up; then a comparison that found nothing.
    assert not any("corevital.drift.detected" in span.attributes for span in spans[:WARMUP])
    assert spans[WARMUP].attributes["corevital.drift.detected"] is False
    last = spans[-1].attributes
    assert last["corevital.drift.detected"] is True
    assert list(last["corevital.drift.signals"]) == ["entropy"]
    [event] = _drift_events(spans[-1])
    values = dict(event.attributes)
    # The average the jump is measured against is the one from before this generation.
    entropy = last["corevital.logits.entropy.mean"]  # one row: a plain value
    assert values["corevital.drift.value"] == pytest.approx(entropy)
    assert values["corevital.drift.baseline"] < entropy / 1.5
    assert values["corevital.drift.relative_change"] > 0.5
    assert values["corevital.drift.baseline_samples"] == WARMUP + 1
    assert (values["corevital.drift.signal"], list(values["corevital.drift.rows"])) == ("entropy", [0])
    [point] = metric_points(telemetry, "corevital.drift.events")
    assert (point.value, point.attributes["corevital.drift.signal"]) == (1, "entropy")


def test_no_drift_without_the_rolling_baseline(instrumented, llama):
    telemetry = instrumented(plugin_options=OPTIONS, disabled_plugins={"baseline"})
    for _ in range(WARMUP + 1):
        _generate(llama)
    assert not any("corevital.drift.detected" in span.attributes for span in telemetry.generation_spans())


def _ema(mean: float, count: int) -> baseline.Ema:
    return baseline.Ema(mean=mean, variance=0.0, count=count)


def test_relative_rule_and_floor():
    settings = drift.Settings.from_options({"drift": {"fraction": 0.5, "min_samples": 3}})
    assert drift.detect([3.01], _ema(2.0, 3), settings, "entropy").rows == (0,)
    assert drift.detect([2.99], _ema(2.0, 3), settings, "entropy") is None  # a 49.5 % rise
    assert drift.detect([3.01], _ema(2.0, 2), settings, "entropy") is None  # the average is not warm yet
    # A relative jump on a tiny average still needs the signal's absolute floor (risk: 0.1).
    assert drift.detect([0.05], _ema(0.01, 3), settings, "risk") is None
    found = drift.detect([0.05, None, 0.3, float("nan"), 0.2], _ema(0.01, 3), settings, "risk")
    assert (found.rows, found.value, found.baseline) == ((2, 4), 0.3, 0.01)


def test_invalid_settings_raise():
    with pytest.raises(ValueError, match="signals"):
        drift.Settings.from_options({"drift": {"signals": ["perplexity"]}})
    with pytest.raises(ValueError, match="unknown option"):
        drift.Settings.from_options({"drift": {"fraction_": 0.2}})


class _Events:
    COREVITAL_PLUGIN_NAME = "events"

    @hookimpl
    def corevital_summarize(self, results: GenerationResults) -> None:
        for index in range(5):
            results.add_event("test.event", {"index": index, "dropped": float("nan")})


def test_plugin_events_fit_the_span_limit(instrumented, telemetry, llama):
    telemetry.tracer_provider = TracerProvider(span_limits=SpanLimits(max_events=5))
    telemetry.tracer_provider.add_span_processor(SimpleSpanProcessor(telemetry.spans))
    instrumented(plugins=[_Events()], builtin_plugins=False)
    _generate(llama)
    [span] = telemetry.generation_spans()
    events = [event for event in span.events if event.name == "test.event"]
    # 5 events minus the 2 reserved for the content-details and exception events; NaN values left out
    assert [dict(event.attributes) for event in events] == [{"index": 0}, {"index": 1}, {"index": 2}]
    assert "2 plugin span event(s): span event limit" in span.attributes["corevital.capture.lost"]
