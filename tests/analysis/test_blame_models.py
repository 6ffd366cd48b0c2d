"""Layer blame on real (tiny, random) GPT-2 models of 4, 8 and 12 layers with one layer's output scaled
x50 on every step: the blamed layer is the scaled one, wherever it sits, and the narrative names it.

A random GPT-2's residual-stream norms are flat over depth (about 0.16 per layer here), so without a
reference a layer-0 anomaly lifts every layer alike and leaves no step between layers to find: blame
then names no layer rather than a wrong one. With a calibrated baseline holding the model's median norm
per layer (``corevital-otel calibrate`` writes it), layer 0 is found too (docs/risk.md, layer blame)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import corevital_otel
from corevital_otel.commands.calibrate import _Collector
from corevital_otel.plugins._baseline_file import build

SCALE = 50.0
CASES = [(layers, position) for layers in (4, 8, 12) for position in range(layers)]


def gpt2(layers: int) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=96, n_embd=32, n_layer=layers, n_head=4, n_positions=256, bos_token_id=1, eos_token_id=2
    )
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def scale_output(module: torch.nn.Module, factor: float):
    def hook(_module, _inputs, output):
        if isinstance(output, tuple):
            return (output[0] * factor, *output[1:])
        return output * factor

    return module.register_forward_hook(hook)


IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


def first_row(value):
    """Row 0 of a per-row attribute (a plain value when the generation has one row)."""
    return value[0] if isinstance(value, tuple) else value


def generate(model: torch.nn.Module) -> None:
    model.generate(
        IDS, attention_mask=torch.ones_like(IDS), max_new_tokens=5, do_sample=False, pad_token_id=0
    )


def scaled_run(model: torch.nn.Module, position: int) -> None:
    handle = scale_output(model.transformer.h[position], SCALE)
    try:
        generate(model)
    finally:
        handle.remove()


def healthy_baseline(instrumented, model: torch.nn.Module, path) -> str:
    """A baseline file of ``model``'s healthy run, built by calibrate's own collector."""
    collector = _Collector()
    instrumented(capture_mode="summary", plugins=[collector])
    generate(model)
    corevital_otel.uninstrument()
    document = build(
        collector.observed(),
        collector.model_name or "",
        collector.model_type,
        collector.family,
        {},
        "now",
        layer_medians=collector.layer_medians(),
    )
    path.write_text(json.dumps(document))
    return str(path)


@pytest.mark.parametrize(("layers", "position"), CASES, ids=[f"{n}layers-at{k}" for n, k in CASES])
def test_blame_names_the_scaled_layer(instrumented, layers, position):
    telemetry = instrumented(capture_mode="summary")
    scaled_run(gpt2(layers), position)
    (span,) = telemetry.generation_spans()
    attributes = span.attributes
    top = first_row(attributes.get("corevital.blame.top_layer", -1))
    narrative = first_row(attributes["corevital.narrative"])
    if position == 0:
        assert top == -1, (attributes.get("corevital.blame.layers"), narrative)
        assert "most suspect" not in narrative
        return
    assert top == position, (attributes.get("corevital.blame.layers"), narrative)
    assert first_row(attributes["corevital.blame.top_reasons"]).startswith("l2_outlier")
    assert f"Layer {position} is the most suspect" in narrative


@pytest.mark.parametrize(("layers", "position"), CASES, ids=[f"{n}layers-at{k}" for n, k in CASES])
def test_with_a_baseline_blame_names_the_scaled_layer_layer_0_included(
    instrumented, tmp_path, layers, position
):
    model = gpt2(layers)
    path = healthy_baseline(instrumented, model, tmp_path / "baseline.json")
    telemetry = instrumented(capture_mode="summary", plugin_options={"baseline": {"path": path}})
    scaled_run(model, position)
    attributes = telemetry.generation_spans()[-1].attributes
    assert attributes["corevital.baseline.source"] == "baseline.json"
    blamed = attributes.get("corevital.blame.layers")
    assert first_row(attributes["corevital.blame.top_layer"]) == position, blamed
    assert f"Layer {position} is the most suspect" in first_row(attributes["corevital.narrative"])


@pytest.mark.parametrize("baseline", [False, True])
def test_a_healthy_model_blames_nothing(instrumented, tmp_path, baseline):
    model = gpt2(8)
    options = (
        {"baseline": {"path": healthy_baseline(instrumented, model, tmp_path / "b.json")}} if baseline else {}
    )
    telemetry = instrumented(capture_mode="summary", plugin_options=options)
    generate(model)
    assert tuple(telemetry.generation_spans()[-1].attributes["corevital.blame.layers"]) == ()
