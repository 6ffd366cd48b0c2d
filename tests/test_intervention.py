"""Opt-in interventions stop rows early through transformers' stopping criteria."""

from __future__ import annotations

import pytest
import torch

import corevital_otel
from corevital_otel.config import ConfigError
from tests.support.tiny_models import build_model, prompt_batch


class SignalAt:
    """A plugin raising the ``health.repetition`` signal for row 0 from step ``at`` on, and offering the
    ``repetition`` policy on it (the built-in health plugin is off in these tests)."""

    COREVITAL_PLUGIN_NAME = "signal_at"

    def __init__(self, at: int) -> None:
        self.at = at

    @corevital_otel.hookimpl
    def corevital_declare_interventions(self):
        return [corevital_otel.InterventionSignal("repetition", "health.repetition")]

    @corevital_otel.hookimpl
    def corevital_step(self, step):
        value = torch.zeros(step.rows, device=step.logits.device)
        if step.index >= self.at:
            value[0] = 1.0
        return {"health.repetition": value}


def _generate(model, **kwargs):
    ids, mask = prompt_batch(batch=2)
    return model.generate(
        ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False, **kwargs
    )


def test_repetition_policy_stops_only_the_signalled_row(instrumented):
    model = build_model("llama")
    baseline = _generate(model)
    telemetry = instrumented(plugins=[SignalAt(at=3)], builtin_plugins=False, intervene=["repetition"])
    stopped = _generate(model)
    prompt = baseline.shape[1] - 8
    # Row 0 keeps the tokens of steps 0..3 (the step that fired keeps its token), then padding.
    assert torch.equal(stopped[0, : prompt + 4], baseline[0, : prompt + 4])
    assert (stopped[0, prompt + 4 :] == model.generation_config.pad_token_id).all()
    assert torch.equal(stopped[1], baseline[1])
    (span,) = telemetry.generation_spans()
    assert span.attributes["gen_ai.response.finish_reasons"] == ("intervention", "length")
    assert span.attributes["corevital.intervention.reasons"] == ("repetition", "")
    assert span.attributes["corevital.intervention.steps"] == (3, -1)
    assert span.attributes["gen_ai.usage.output_tokens"] == 4 + 8
    (point,) = telemetry.metrics()["corevital.interventions"]
    assert point.value == 1 and point.attributes["corevital.intervention.reason"] == "repetition"


def test_without_policies_the_signal_changes_nothing(instrumented):
    model = build_model("llama")
    baseline = _generate(model)
    telemetry = instrumented(plugins=[SignalAt(at=0)], builtin_plugins=False)
    assert torch.equal(_generate(model), baseline)
    (span,) = telemetry.generation_spans()
    assert "corevital.intervention.stopped" not in span.attributes


def test_callers_stopping_criteria_still_apply(instrumented):
    from transformers.generation.stopping_criteria import MaxLengthCriteria, StoppingCriteriaList

    model = build_model("gpt2")
    instrumented(plugins=[SignalAt(at=100)], builtin_plugins=False, intervene=["repetition"])
    ids, mask = prompt_batch(batch=1)
    criteria = StoppingCriteriaList([MaxLengthCriteria(max_length=ids.shape[1] + 3)])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=8, stopping_criteria=criteria)
    assert out.shape[1] == ids.shape[1] + 3
    assert len(criteria) == 1  # the caller's list is not modified


@pytest.mark.parametrize("value", ["nan,bogus", "risk;nan"])
def test_unknown_policy_names_are_rejected(monkeypatch, value):
    monkeypatch.setenv("COREVITAL_INTERVENE", value)
    with pytest.raises(ConfigError, match="COREVITAL_INTERVENE"):
        corevital_otel.instrument()
    assert not corevital_otel.is_instrumented()


def test_a_policy_no_loaded_plugin_offers_is_refused_at_instrument_time():
    refused = r"no loaded plugin offers polic\(ies\) risk \(offered: repetition\)"
    with pytest.raises(ConfigError, match=refused):
        corevital_otel.instrument(plugins=[SignalAt(at=0)], builtin_plugins=False, intervene=["risk"])
    assert not corevital_otel.is_instrumented()


def test_the_built_in_plugins_offer_nan_repetition_and_risk():
    from corevital_otel.plugin_host import PluginHost

    offered = PluginHost.load().declared_interventions([])
    assert {name: (s.series, s.threshold) for name, s in offered.items()} == {
        "nan": ("health.nonfinite", 0.5),
        "repetition": ("health.repetition", 0.5),
        "risk": ("risk.running", None),
    }

