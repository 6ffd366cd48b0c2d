"""Assisted and prompt-lookup decoding: the span says why its step count is below its generated tokens."""

from __future__ import annotations

import torch

from tests.support.tiny_models import build_model

from .helpers import eos_and_pad

ATTRIBUTE = "corevital.request.speculative_decoding"


def _target_span(telemetry):
    """The target model's span (the assistant's own generate() calls are traced too, without it)."""
    spans = [s for s in telemetry.generation_spans() if s.attributes.get(ATTRIBUTE)]
    assert len(spans) == 1, [
        (s.name, dict(s.attributes).get(ATTRIBUTE)) for s in telemetry.generation_spans()
    ]
    return spans[0]


def test_an_assistant_model_is_named_and_steps_are_forward_passes(quiet) -> None:
    target, assistant = build_model("gpt2", seed=0), build_model("gpt2", seed=0)  # same weights: all accepted
    telemetry = quiet()
    _, pad = eos_and_pad(target)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        out = target.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=12,
            assistant_model=assistant,
            pad_token_id=pad,
        )
    generated = out.shape[1] - ids.shape[1]
    span = _target_span(telemetry)
    values = dict(span.attributes)
    assert values[ATTRIBUTE] == "assistant_model"
    assert values["gen_ai.usage.output_tokens"] == generated == 12
    assert values["corevital.steps.count"] < generated  # several tokens verified per forward pass


def test_prompt_lookup_is_named(quiet) -> None:
    model = build_model("gpt2")
    telemetry = quiet()
    _, pad = eos_and_pad(model)
    ids = torch.tensor([[5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]])
    with torch.no_grad():
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=8,
            prompt_lookup_num_tokens=3,
            pad_token_id=pad,
        )
    [span] = telemetry.generation_spans()
    values = dict(span.attributes)
    assert values[ATTRIBUTE] == "prompt_lookup"
    assert values["corevital.steps.count"] <= values["gen_ai.usage.output_tokens"]


def test_token_by_token_decoding_has_no_such_attribute(quiet) -> None:
    model = build_model("gpt2")
    telemetry = quiet()
    _, pad = eos_and_pad(model)
    ids = torch.tensor([[5, 6, 7]])
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, pad_token_id=pad)
    [span] = telemetry.generation_spans()
    assert ATTRIBUTE not in span.attributes
    assert span.attributes["corevital.steps.count"] == span.attributes["gen_ai.usage.output_tokens"] == 4
