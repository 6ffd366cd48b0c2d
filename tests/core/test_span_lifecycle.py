"""The span's place and time (child of the caller's span, covering generate()) and the error path."""

from __future__ import annotations

import time

import pytest
import torch
from opentelemetry.trace import StatusCode
from transformers import LogitsProcessor, LogitsProcessorList

from corevital_otel.capture.active import ACTIVE_CAPTURE
from tests.support.tiny_models import VOCAB, build_model, prompt_batch

from .helpers import assert_no_hooks, generation_span


def test_span_is_child_of_callers_span_and_covers_every_forward_pass(quiet):
    model = build_model("llama")
    ids, mask = prompt_batch(batch=2)
    forwards: list[tuple[int, int]] = []
    starts: list[int] = []
    # Our own hooks on the model time its first and last forward passes.
    model.register_forward_pre_hook(lambda *_: starts.append(time.time_ns()))
    model.register_forward_hook(lambda *_: forwards.append((starts[-1], time.time_ns())))
    telemetry = quiet()
    tracer = telemetry.tracer_provider.get_tracer("caller")
    with tracer.start_as_current_span("caller") as parent:
        before = time.time_ns()
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
        after = time.time_ns()

    span = generation_span(telemetry)
    assert span.parent is not None
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.context.trace_id == parent.get_span_context().trace_id
    assert len(forwards) == 4
    assert before <= span.start_time <= forwards[0][0]
    assert forwards[-1][1] <= span.end_time <= after


def test_span_without_caller_span_is_a_root(quiet):
    telemetry = quiet()
    ids, mask = prompt_batch(batch=1)
    build_model("gpt2").generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False)
    assert generation_span(telemetry).parent is None


class _RaiseAtStep(LogitsProcessor):
    """Raises ``error`` when choosing the token of step ``step``: an exception from inside generate()."""

    def __init__(self, prompt_width: int, step: int, error: BaseException) -> None:
        self.prompt_width, self.step, self.error = prompt_width, step, error

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] - self.prompt_width == self.step:
            raise self.error
        return scores


def _out_of_range_ids(ids, mask):
    return dict(input_ids=torch.full_like(ids, VOCAB + 7), attention_mask=mask)


def _beams_fewer_than_returned(ids, mask):
    return dict(input_ids=ids, attention_mask=mask, num_beams=2, num_return_sequences=3)


def _unknown_argument(ids, mask):
    return dict(input_ids=ids, attention_mask=mask, not_a_generate_argument=1)


_BAD_CALLS = [_out_of_range_ids, _beams_fewer_than_returned, _unknown_argument]


@pytest.mark.parametrize("make_kwargs", _BAD_CALLS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_error_is_recorded_reraised_unchanged_and_leaves_nothing_behind(family, make_kwargs, quiet):
    model = build_model(family)
    ids, mask = prompt_batch(batch=2)
    kwargs = dict(make_kwargs(ids, mask), max_new_tokens=3)
    with pytest.raises(Exception) as uninstrumented:
        model.generate(**kwargs)

    telemetry = quiet()
    with pytest.raises(uninstrumented.type) as instrumented:
        model.generate(**kwargs)

    assert str(instrumented.value) == str(uninstrumented.value)
    error_type = f"{uninstrumented.type.__module__}.{uninstrumented.type.__qualname__}"
    span = generation_span(telemetry)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == error_type
    assert "gen_ai.usage.output_tokens" not in span.attributes
    (event,) = [event for event in span.events if event.name == "exception"]
    assert event.attributes["exception.message"] == str(uninstrumented.value)
    _assert_clean_afterwards(model, ids, mask, telemetry)


@pytest.mark.parametrize("error", [RuntimeError("boom at step 2"), KeyboardInterrupt()], ids=repr)
def test_exception_mid_generation_is_the_callers_own_object(error, quiet, recorder):
    model = build_model("mistral")
    ids, mask = prompt_batch(batch=2)
    telemetry = quiet(recorder)
    processors = LogitsProcessorList([_RaiseAtStep(ids.shape[1], 2, error)])
    with pytest.raises(type(error)) as raised:
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, logits_processor=processors)

    assert raised.value is error  # the very object raised inside generate(), not a wrapper
    span = generation_span(telemetry)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == f"builtins.{type(error).__name__}"
    assert span.attributes["corevital.steps.count"] == 3  # steps 0-2 ran their forward pass
    _assert_clean_afterwards(model, ids, mask, telemetry)


def _assert_clean_afterwards(model, ids, mask, telemetry) -> None:
    """No hook, no active capture left; the next call gets a clean, separate span."""
    assert_no_hooks(model)
    assert ACTIVE_CAPTURE.get() is None
    telemetry.spans.clear()
    output = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    span = generation_span(telemetry)
    assert span.status.status_code is StatusCode.UNSET
    assert "error.type" not in span.attributes
    assert span.attributes["gen_ai.usage.output_tokens"] > 0
    assert output.shape[0] == ids.shape[0]
    assert_no_hooks(model)
