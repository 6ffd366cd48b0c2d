"""Model names on spans and metric labels: hub ids as they are, local directories by their last path
component, never an absolute path by default, and instrument(model_name=...) overrides."""

from __future__ import annotations

import pytest
import torch

from corevital_otel.config import ConfigError, resolve_options
from corevital_otel.model_names import default_model_name, model_name, short_model_name
from tests.support.tiny_models import build_model

from .helpers import eos_and_pad, generation_span, metric_points


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("gpt2", "gpt2"),
        ("Qwen/Qwen2-0.5B", "Qwen/Qwen2-0.5B"),
        ("/tmp/x/demo_model", "demo_model"),
        ("/tmp/x/demo_model/", "demo_model"),
        ("./models/tiny", "tiny"),
        ("~/models/tiny", "tiny"),
        ("C:\\models\\tiny", "tiny"),
        ("/root/.cache/huggingface/hub/models--Qwen--Qwen2-0.5B/snapshots/abc123", "Qwen/Qwen2-0.5B"),
        ("", ""),
    ],
)
def test_short_names(given: str, expected: str) -> None:
    assert short_model_name(given) == expected


def test_a_relative_directory_that_exists_is_named_by_its_last_component(tmp_path, monkeypatch) -> None:
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert short_model_name("org/name") == "name"  # transformers loads the directory, not the hub id
    monkeypatch.chdir(tmp_path / "org" / "name")
    assert short_model_name(".") == short_model_name("./") == "name"
    assert short_model_name("../name") == "name"


def _saved_model(tmp_path) -> torch.nn.Module:
    """A tiny model saved to and loaded back from a local directory: its name_or_path is that path."""
    import transformers

    directory = tmp_path / "checkouts" / "my-tiny-gpt2"
    build_model("gpt2").save_pretrained(directory)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    assert str(tmp_path) in model.config.name_or_path
    return model


def _generate(model: torch.nn.Module) -> None:
    eos, pad = eos_and_pad(model)
    ids = torch.tensor([[5, 6, 7]])
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, pad_token_id=pad)


def _model_labels(telemetry) -> set[str]:
    points = metric_points(telemetry, "gen_ai.client.operation.duration")
    return {point.attributes["gen_ai.request.model"] for point in points}


def test_a_local_directory_never_puts_its_path_on_the_span_or_metrics(tmp_path, instrumented) -> None:
    model = _saved_model(tmp_path)
    telemetry = instrumented()
    _generate(model)
    span = generation_span(telemetry)
    assert span.name == "text_completion my-tiny-gpt2"
    assert span.attributes["gen_ai.request.model"] == "my-tiny-gpt2"
    assert _model_labels(telemetry) == {"my-tiny-gpt2"}
    everything = repr(dict(span.attributes)) + repr([dict(e.attributes or {}) for e in span.events])
    assert str(tmp_path) not in everything


@pytest.mark.parametrize("option", ["prod-assistant", lambda model: "prod-assistant"])
def test_instrument_model_name_overrides_the_default(tmp_path, instrumented, option) -> None:
    model = _saved_model(tmp_path)
    telemetry = instrumented(model_name=option)
    _generate(model)
    span = generation_span(telemetry)
    assert span.name == "text_completion prod-assistant"
    assert span.attributes["gen_ai.request.model"] == "prod-assistant"
    assert _model_labels(telemetry) == {"prod-assistant"}


def test_a_function_names_each_model_and_none_keeps_the_default(tmp_path) -> None:
    model = _saved_model(tmp_path)
    names = {id(model): "chosen"}
    assert model_name(model, lambda m: names.get(id(m))) == "chosen"
    other = build_model("llama")
    assert model_name(other, lambda m: names.get(id(m))) == default_model_name(other)


def test_a_failing_name_function_falls_back_to_the_default(tmp_path, caplog) -> None:
    model = _saved_model(tmp_path)
    assert model_name(model, lambda m: 1 / 0) == "my-tiny-gpt2"
    assert "model_name function failed" in caplog.text


def test_the_model_name_option_and_variable_are_validated() -> None:
    assert resolve_options({}, {"COREVITAL_MODEL_NAME": " svc-model "}).model_name == "svc-model"
    assert resolve_options({"model_name": "x"}, {"COREVITAL_MODEL_NAME": "y"}).model_name == "x"
    with pytest.raises(ConfigError, match="model_name"):
        resolve_options({"model_name": 3}, {})
