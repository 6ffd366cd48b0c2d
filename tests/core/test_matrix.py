"""Every covered model family through instrument(): the span follows the contract, outputs are unchanged."""

from __future__ import annotations

import pytest
import torch
from opentelemetry.trace import SpanKind, StatusCode

from tests.support import contract
from tests.support.tiny_models import FAMILIES, build_model, prompt_batch

from .helpers import decoder_prompt_width, eos_and_pad, generation_span, metric_points, scripted

MAX_NEW = 5
EOS_STEP = 2  # row 0 emits EOS as its third generated token


def _token_usage(telemetry, token_type: str) -> float:
    points = [
        point
        for point in metric_points(telemetry, "gen_ai.client.token.usage")
        if point.attributes["gen_ai.token.type"] == token_type
    ]
    return sum(point.sum for point in points)


@pytest.mark.parametrize("family", FAMILIES)
def test_span_follows_contract_with_padding_and_scripted_eos(family, instrumented):
    model = build_model(family)
    eos, pad = eos_and_pad(model)
    ids, mask = prompt_batch(batch=2, length=6, pad_first=2)  # row 1 is left-padded by 2
    width = decoder_prompt_width(model, ids)
    # Row 0 stops on EOS mid-generation; row 1 runs to the limit and its last token is the pad id,
    # a real token that must be counted (only padding after a finished row is excluded).
    forced = {(0, EOS_STEP): eos, (1, MAX_NEW - 1): pad}
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False)
    reference = model.generate(**kwargs, logits_processor=scripted(width, forced, banned=(eos,)))

    telemetry = instrumented()
    output = model.generate(**kwargs, logits_processor=scripted(width, forced, banned=(eos,)))

    assert torch.equal(output, reference)
    generated = output[:, width:]
    assert generated[0, EOS_STEP] == eos and generated[1, -1] == pad

    span = generation_span(telemetry)
    assert span.name == f"text_completion {family}"
    assert span.kind is SpanKind.INTERNAL
    assert span.status.status_code is StatusCode.UNSET
    attributes = span.attributes
    expected = {
        "gen_ai.operation.name": "text_completion",
        "gen_ai.provider.name": "huggingface",
        "gen_ai.request.model": family,
        "gen_ai.request.max_tokens": MAX_NEW,
        "gen_ai.request.choice.count": 1,
        "corevital.request.num_beams": 1,
        "corevital.request.do_sample": False,
        "gen_ai.usage.input_tokens": 12 - 2,
        "gen_ai.usage.output_tokens": (EOS_STEP + 1) + MAX_NEW,
        "gen_ai.response.finish_reasons": ("stop", "length"),
        "corevital.steps.count": MAX_NEW,
        "corevital.sequences.count": 2,
    }
    assert {name: attributes.get(name) for name in expected} == expected
    assert "gen_ai.request.temperature" not in attributes  # greedy: sampling parameters mean nothing
    assert "error.type" not in attributes

    # Every documented attribute has its documented type (test_contract checks that all are documented).
    documented = contract.load()
    assert contract.type_mismatches(dict(attributes), documented.span_attributes, documented) == []
    assert _token_usage(telemetry, "input") == 10
    assert _token_usage(telemetry, "output") == (EOS_STEP + 1) + MAX_NEW


@pytest.mark.parametrize("family", FAMILIES)
def test_outputs_identical_with_and_without_instrumentation(family, instrumented):
    model = build_model(family)
    ids, mask = prompt_batch(batch=2, length=5)
    base = dict(input_ids=ids, attention_mask=mask, max_new_tokens=4)
    calls = {
        "greedy": dict(do_sample=False),
        "sampled": dict(do_sample=True, temperature=0.8, top_k=20),
        "dict": dict(do_sample=False, return_dict_in_generate=True, output_logits=True),
    }

    def run_all():
        outputs = {}
        for name, extra in calls.items():
            torch.manual_seed(1234)
            outputs[name] = model.generate(**base, **extra)
        return outputs

    reference = run_all()
    telemetry = instrumented()
    observed = run_all()

    assert len(telemetry.generation_spans()) == len(calls)
    assert torch.equal(observed["greedy"], reference["greedy"])
    assert torch.equal(observed["sampled"], reference["sampled"])
    assert type(observed["dict"]) is type(reference["dict"])
    assert torch.equal(observed["dict"].sequences, reference["dict"].sequences)
    for step_logits, reference_logits in zip(observed["dict"].logits, reference["dict"].logits, strict=True):
        assert torch.equal(step_logits, reference_logits)
