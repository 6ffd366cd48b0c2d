"""Layer blame on real (tiny, random) GPT-2 models of 4, 8 and 12 layers with one layer's output scaled
x50 on every step: the blamed layer is the scaled one, wherever it sits, and the narrative names it.

A random GPT-2's residual-stream norms are flat over depth (about 0.16 per layer here), so a layer-0
anomaly lifts every layer alike and leaves no step between layers to find: blame then names no layer
rather than a wrong one (docs/risk.md, layer blame)."""

from __future__ import annotations

import pytest
import torch
import transformers

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


@pytest.mark.parametrize(("layers", "position"), CASES, ids=[f"{n}layers-at{k}" for n, k in CASES])
def test_blame_names_the_scaled_layer(instrumented, layers, position):
    telemetry = instrumented(capture_mode="summary")
    model = gpt2(layers)
    handle = scale_output(model.transformer.h[position], SCALE)
    try:
        ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
        model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False, pad_token_id=0
        )
    finally:
        handle.remove()
    (span,) = telemetry.generation_spans()
    attributes = span.attributes
    (top,) = attributes.get("corevital.blame.top_layer", (-1,))
    narrative = attributes["corevital.narrative"][0]
    if position == 0:
        assert top == -1, (attributes.get("corevital.blame.layers"), narrative)
        assert "most suspect" not in narrative
        return
    assert top == position, (attributes.get("corevital.blame.layers"), narrative)
    assert attributes["corevital.blame.top_reasons"][0].startswith("l2_outlier")
    assert f"Layer {position} is the most suspect" in narrative


def test_a_healthy_model_blames_nothing(instrumented):
    telemetry = instrumented(capture_mode="summary")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    gpt2(8).generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False, pad_token_id=0
    )
    (span,) = telemetry.generation_spans()
    assert tuple(span.attributes["corevital.blame.layers"]) == ()
