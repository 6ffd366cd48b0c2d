"""Options from COREVITAL_* variables and keywords: invalid ones fail at instrument(), valid ones act."""

from __future__ import annotations

import pytest
from transformers.generation.utils import GenerationMixin

import corevital_otel
from corevital_otel import ConfigError
from corevital_otel.plugins import logits as logits_plugin
from tests.support.tiny_models import build_model, prompt_batch

from .helpers import generation_span, instrument_with

MAX_NEW = 5


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("COREVITAL_CAPTURE_MODE", "verbose"),
        ("COREVITAL_CAPTURE_LOGITS", "maybe"),
        ("COREVITAL_CAPTURE_ATTENTION", "2"),
        ("COREVITAL_MAX_STEP_EVENTS", "-1"),
        ("COREVITAL_PROMPT_MAX_TOKENS", "1.5"),
        ("COREVITAL_LOAD_PLUGINS", "perhaps"),
        ("COREVITAL_DISABLED_PLUGINS", "logits,,attention"),
        ("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "sometimes"),
    ],
)
def test_invalid_environment_value_fails_at_instrument_naming_the_variable(variable, value, monkeypatch):
    original = GenerationMixin.__dict__["generate"]
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable) as raised:
        corevital_otel.instrument()
    assert repr(value) in str(raised.value)
    assert not corevital_otel.is_instrumented()
    assert GenerationMixin.__dict__["generate"] is original  # nothing patched


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("capture_mode", "verbose"),
        ("capture_mode", 3),
        ("capture_logits", "maybe"),
        ("capture_hidden_states", 1),
        ("max_step_events", -1),
        ("max_step_events", True),
        ("prompt_max_tokens", 2.5),
        ("disabled_plugins", [1, 2]),
        ("plugin_options", ["not", "a", "mapping"]),
        ("on_step", "not callable"),
        ("captur_mode", "full"),  # a typo is an unknown option, not silently ignored
    ],
)
def test_invalid_keyword_fails_at_instrument_naming_it(keyword, value):
    with pytest.raises(ConfigError, match=keyword):
        corevital_otel.instrument(**{keyword: value})
    assert not corevital_otel.is_instrumented()


def _run(telemetry, model_family: str = "llama"):
    ids, mask = prompt_batch(batch=2)
    model = build_model(model_family)
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False)
    return generation_span(telemetry)


def _step_events(span) -> list:
    return [event for event in span.events if event.name == "corevital.step"]


def test_defaults_give_the_compact_span_unless_escalated(telemetry):
    instrument_with(telemetry, plugin_options={"risk": {"escalate_threshold": 1.0}})
    span = _run(telemetry)
    assert span.attributes["corevital.capture.escalated"] is False
    assert 2 <= len(_step_events(span)) == span.attributes["corevital.step.events_emitted"] <= 4
    assert "corevital.steps.logits.entropy" not in span.attributes


def test_full_mode_gives_full_detail(telemetry):
    instrument_with(telemetry, capture_mode="full")
    span = _run(telemetry)
    assert len(_step_events(span)) == MAX_NEW
    assert span.attributes["corevital.step.events_emitted"] == MAX_NEW
    assert len(span.attributes["corevital.steps.logits.entropy"]) == 2 * MAX_NEW


def test_summary_mode_from_the_environment_removes_step_detail(telemetry, monkeypatch):
    monkeypatch.setenv("COREVITAL_CAPTURE_MODE", " Summary ")
    instrument_with(telemetry)
    span = _run(telemetry)
    assert _step_events(span) == []
    series = [name for name in span.attributes if name.startswith("corevital.steps.")]
    assert series == ["corevital.steps.count"]
    assert "corevital.step.events_emitted" not in span.attributes
    assert len(span.attributes["corevital.logits.entropy.mean"]) == 2  # aggregates stay


def test_keyword_beats_the_environment(telemetry, monkeypatch):
    monkeypatch.setenv("COREVITAL_CAPTURE_MODE", "summary")
    instrument_with(telemetry, capture_mode="full")
    assert len(_step_events(_run(telemetry))) == MAX_NEW


def test_step_events_bounded_by_the_environment(telemetry, monkeypatch):
    monkeypatch.setenv("COREVITAL_MAX_STEP_EVENTS", "2")
    # Only the logits plugin: it flags no step, so the budget goes to the first and the last.
    instrument_with(telemetry, plugins=[logits_plugin], builtin_plugins=False)
    span = _run(telemetry)
    assert [event.attributes["corevital.step.index"] for event in _step_events(span)] == [0, MAX_NEW - 1]
    assert span.attributes["corevital.step.events_emitted"] == 2
    assert span.attributes["corevital.step.events_dropped"] == MAX_NEW - 2


@pytest.mark.parametrize(
    "setting",
    [
        {"COREVITAL_DISABLED_PLUGINS": "logits"},
        {"COREVITAL_BUILTIN_PLUGINS": "off"},
        {"COREVITAL_CAPTURE_LOGITS": "FALSE"},
    ],
    ids=lambda setting: next(iter(setting)),
)
def test_environment_switches_remove_the_logit_metrics(setting, telemetry, monkeypatch):
    for variable, value in setting.items():
        monkeypatch.setenv(variable, value)
    instrument_with(telemetry)
    span = _run(telemetry)
    assert not any(name.startswith("corevital.logits.") for name in span.attributes)
    assert "corevital.token.entropy" not in telemetry.metrics()
    assert span.attributes["gen_ai.usage.output_tokens"] == 2 * MAX_NEW  # the core is unaffected


def test_on_step_receives_each_steps_values(telemetry):
    seen: list[tuple[int, int, tuple[str, ...]]] = []

    def on_step(info, index, outputs):
        seen.append((index, info.rows, tuple(sorted(outputs))))

    instrument_with(telemetry, on_step=on_step, disabled_plugins={"attention", "hidden_states"})
    _run(telemetry)
    assert [index for index, _, _ in seen] == list(range(MAX_NEW))
    assert all(rows == 2 and "logits.entropy" in names for _, rows, names in seen)
