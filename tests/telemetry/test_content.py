"""Message content follows OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT: nothing user-written leaves the
process by default; prompt and completion become gen_ai.input.messages / gen_ai.output.messages on the
span and/or in a details event; token text goes into step events only in the event modes."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
import transformers
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import corevital_otel
from corevital_otel.plugins import logits as logits_plugin
from tests.core.helpers import offline_tokenizer
from tests.support.tiny_models import build_model

from .helpers import step_events

DETAILS = "gen_ai.client.inference.operation.details"
PROMPTS = ["w17 w42 w9 w58", "w61 w70"]  # no w3x: the unknown token w3 would split it
MAX_NEW = 4


@pytest.fixture
def tokenizer() -> transformers.PreTrainedTokenizerFast:
    tokenizer = offline_tokenizer()
    tokenizer.padding_side = "left"
    return tokenizer


def _generate(model: torch.nn.Module, encoder: Any, **kwargs: Any) -> torch.Tensor:
    batch = encoder(PROMPTS, return_tensors="pt", padding=True)
    return model.generate(**batch, max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW, do_sample=False, **kwargs)


def _expected_messages(tokenizer: Any, output: torch.Tensor, width: int) -> tuple[list, list]:
    inputs = [{"role": "user", "parts": [{"type": "text", "content": prompt}]} for prompt in PROMPTS]
    outputs = [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": tokenizer.decode(row[width:], skip_special_tokens=True)}],
            "finish_reason": "length",
        }
        for row in output
    ]
    return inputs, outputs


@pytest.mark.parametrize(
    ("mode", "on_span", "in_events"),
    [
        ("SPAN_ONLY", True, False),
        ("EVENT_ONLY", False, True),
        ("SPAN_AND_EVENT", True, True),
        ("true", True, True),  # the legacy boolean values
    ],
)
def test_each_mode_puts_content_where_it_says(instrumented, tokenizer, mode, on_span, in_events):
    telemetry = instrumented(plugins=[logits_plugin], builtin_plugins=False, capture_content=mode)
    output = _generate(build_model("gpt2"), tokenizer, tokenizer=tokenizer)
    (span,) = telemetry.generation_spans()
    inputs, outputs = _expected_messages(tokenizer, output, width=len(PROMPTS[0].split()))
    details = [event for event in span.events if event.name == DETAILS]
    if on_span:
        assert json.loads(span.attributes["gen_ai.input.messages"]) == inputs
        assert json.loads(span.attributes["gen_ai.output.messages"]) == outputs
    else:
        assert (
            "gen_ai.input.messages" not in span.attributes and "gen_ai.output.messages" not in span.attributes
        )
    if in_events:
        (event,) = details
        assert json.loads(event.attributes["gen_ai.input.messages"]) == inputs
        assert json.loads(event.attributes["gen_ai.output.messages"]) == outputs
        width = len(PROMPTS[0].split())
        for step in step_events(span):
            index = step.attributes["corevital.step.index"]
            expected = tuple(tokenizer.decode([int(row[width + index])]) for row in output)
            assert tuple(step.attributes["corevital.step.token_text"]) == expected
    else:
        assert details == []
        assert all("corevital.step.token_text" not in step.attributes for step in step_events(span))


@pytest.mark.parametrize("mode", [None, "NO_CONTENT", "false"])
def test_nothing_user_written_leaves_the_process_by_default(otlp_receiver, tokenizer, monkeypatch, mode):
    """What the OTLP exporter sends, byte for byte, holds no prompt or completion text, even with the
    tokenizer in plain sight (passed to generate and registered)."""
    if mode is not None:
        monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", mode)
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{otlp_receiver.endpoint}/v1/traces"))
    )
    corevital_otel.instrument(tracer_provider=provider)  # every built-in plugin
    model = build_model("gpt2")
    corevital_otel.register_tokenizer(model, tokenizer)
    output = _generate(model, tokenizer, tokenizer=tokenizer)
    provider.shutdown()
    # The receiver files a body just after answering it: wait for it (bounded).
    assert otlp_receiver.wait_for(lambda: len(otlp_receiver.generation_spans()) == 1)
    (span,) = otlp_receiver.generation_spans()
    assert {event.name for event in span.events} <= {"corevital.step"}
    body = b"".join(otlp_receiver.bodies["/v1/traces"])
    width = len(PROMPTS[0].split())
    texts = [*PROMPTS, *(tokenizer.decode(row[width:], skip_special_tokens=True) for row in output)]
    for text in texts:
        assert text.encode() not in body, text
    # Not even single tokens: no string the span carries is a word of the vocabulary.
    words = {f"w{index}" for index in range(3, 96)}
    assert not [value for value in _strings_of(span) if set(value.split()) & words]


def _strings_of(span: Any) -> list[str]:
    from tests.support.otlp_receiver import attributes

    values: list[Any] = list(attributes(span.attributes).values())
    for event in span.events:
        values += list(attributes(event.attributes).values())
    flat: list[str] = []
    for value in values:
        flat += [item for item in (value if isinstance(value, tuple) else (value,)) if isinstance(item, str)]
    return flat


def _via_keyword(model: Any, tokenizer: Any) -> torch.Tensor:
    return _generate(model, tokenizer, tokenizer=tokenizer)


def _via_streamer(model: Any, tokenizer: Any) -> torch.Tensor:
    # A streamer streams one sequence; its tokenizer is the one content capture uses.
    batch = tokenizer(PROMPTS[:1], return_tensors="pt")
    return model.generate(
        **batch, max_new_tokens=MAX_NEW, do_sample=False, streamer=transformers.TextStreamer(tokenizer)
    )


def _via_registration(model: Any, tokenizer: Any) -> torch.Tensor:
    corevital_otel.register_tokenizer(model, tokenizer)
    return _generate(model, tokenizer)


def _via_pipeline(model: Any, tokenizer: Any) -> None:
    pipe = transformers.pipeline("text-generation", model=model, tokenizer=tokenizer)
    pipe(PROMPTS[0], max_new_tokens=MAX_NEW, do_sample=False)


@pytest.mark.parametrize("find", [_via_keyword, _via_streamer, _via_registration, _via_pipeline])
def test_the_tokenizer_is_found_every_documented_way(instrumented, tokenizer, capsys, find):
    telemetry = instrumented(plugins=[logits_plugin], builtin_plugins=False, capture_content="SPAN_ONLY")
    find(build_model("gpt2"), tokenizer)
    (span,) = telemetry.generation_spans()
    (message,) = json.loads(span.attributes["gen_ai.input.messages"])[:1]
    assert message["parts"][0]["content"] == PROMPTS[0]
    assert "gen_ai.output.messages" in span.attributes
    assert "corevital.capture.lost" not in span.attributes


def test_without_a_tokenizer_content_is_reported_lost(instrumented, tokenizer):
    telemetry = instrumented(plugins=[logits_plugin], builtin_plugins=False, capture_content="SPAN_AND_EVENT")
    _generate(build_model("gpt2"), tokenizer)
    (span,) = telemetry.generation_spans()
    assert "gen_ai.input.messages" not in span.attributes
    assert all("corevital.step.token_text" not in step.attributes for step in step_events(span))
    assert any(
        reason.startswith("content: no tokenizer") for reason in span.attributes["corevital.capture.lost"]
    )
