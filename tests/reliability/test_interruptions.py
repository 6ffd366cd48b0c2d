"""Generations that end abnormally: a real SIGINT in the forward pass or in our plugin phases, a
KeyboardInterrupt injected on every line of our own code, a streamer whose consumer stops early or
fails, a user's StoppingCriteria. Spans end, hooks are removed, the next call is clean.

(An exception raised by a LogitsProcessor, including a KeyboardInterrupt object, and generate()'s own
argument errors are covered by tests/core/test_span_lifecycle.py.)
"""

from __future__ import annotations

import ast
import inspect
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.trace import StatusCode
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from corevital_otel import generation, hookimpl
from corevital_otel.capture.active import ACTIVE_CAPTURE
from corevital_otel.capture.layers import locate_layout
from corevital_otel.plugins import health as health_plugin
from corevital_otel.plugins import logits as logits_plugin
from tests.core.helpers import assert_no_hooks, generation_span, offline_tokenizer
from tests.support.tiny_models import build_model, prompt_batch

from .support import full_scale, greedy

MAX_NEW = 6
SIGNAL_STEP = 2
SWEEP_STRIDE = 6  # every 6th line of our code in CI; all of them with COREVITAL_RELIABILITY_FULL=1
WAIT_S = 30.0


@pytest.fixture
def default_sigint() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in the main thread, as in a plain Python program."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupt() -> None:
    os.kill(os.getpid(), signal.SIGINT)  # the handler raises at the interpreter's next check


class SignalOncePlugin:
    """Sends SIGINT once, from inside one of our plugin phases (at SIGNAL_STEP for the step phase)."""

    COREVITAL_PLUGIN_NAME = "signal"

    def __init__(self, phase: str) -> None:
        self.phase = phase
        self.fired = False

    def _fire(self, phase: str) -> None:
        if phase == self.phase and not self.fired:
            self.fired = True
            _interrupt()

    @hookimpl
    def corevital_step(self, step) -> None:
        if step.index == SIGNAL_STEP:
            self._fire("corevital_step")

    @hookimpl
    def corevital_summarize(self) -> None:
        self._fire("corevital_summarize")


def _hook_model(model: torch.nn.Module, site: str) -> list[torch.utils.hooks.RemovableHandle]:
    """Registers (before ours) a hook that sends SIGINT during step SIGNAL_STEP at ``site``."""
    layout = locate_layout(model)
    attention = next(m for m in layout.layers[0].modules() if id(m) in layout.self_attention)
    counted = {"forwards": 0}

    def count(module, args, kwargs):
        counted["forwards"] += 1

    def fire(*_: Any) -> None:
        if counted["forwards"] == SIGNAL_STEP + 1:
            _interrupt()

    handles = [model.register_forward_pre_hook(count, with_kwargs=True)]
    target = {
        "model-pre-hook": lambda: model.register_forward_pre_hook(fire),
        "layer-output": lambda: layout.layers[-1].register_forward_hook(fire),
        "attention-input": lambda: attention.register_forward_pre_hook(fire),
        "logits-output": lambda: model.register_forward_hook(fire),
    }
    handles.append(target[site]())
    return handles


MODEL_SITES = ["model-pre-hook", "layer-output", "attention-input", "logits-output"]
PLUGIN_SITES = ["corevital_step", "corevital_summarize"]


@pytest.mark.parametrize("site", MODEL_SITES + PLUGIN_SITES)
def test_sigint_anywhere_leaves_nothing_behind(site, instrumented, default_sigint):
    model = build_model("llama")
    ids, mask = prompt_batch(batch=2)
    reference = greedy(model, ids, mask, MAX_NEW)
    handles = [] if site in PLUGIN_SITES else _hook_model(model, site)
    plugins = [SignalOncePlugin(site), logits_plugin, health_plugin]  # health offers the nan policy
    telemetry = instrumented(plugins=plugins, builtin_plugins=False, intervene={"nan"})

    with pytest.raises(KeyboardInterrupt):
        greedy(model, ids, mask, MAX_NEW)

    for handle in handles:
        handle.remove()
    span = generation_span(telemetry)
    assert span.end_time is not None  # exported, so ended
    if site in MODEL_SITES or site == "corevital_step":
        # Interrupted inside generate(): the span records it (after generate returned, only the end
        # is guaranteed: the interrupt may land anywhere in our bookkeeping).
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["error.type"] == "builtins.KeyboardInterrupt"
    assert_no_hooks(model)
    assert ACTIVE_CAPTURE.get() is None
    _assert_next_call_clean(model, ids, mask, reference, telemetry)


def _assert_next_call_clean(model, ids, mask, reference, telemetry) -> None:
    telemetry.spans.clear()
    assert torch.equal(greedy(model, ids, mask, MAX_NEW), reference)
    span = generation_span(telemetry)
    assert span.status.status_code is StatusCode.UNSET
    assert "corevital.capture.lost" not in span.attributes
    assert span.attributes["gen_ai.usage.output_tokens"] == ids.shape[0] * MAX_NEW
    assert span.attributes["corevital.steps.count"] == MAX_NEW
    assert_no_hooks(model)


class _ClosedConsumer(TextIteratorStreamer):
    """A streamer whose consumer went away after ``chunks`` chunks (e.g. a closed HTTP response)."""

    def __init__(self, tokenizer: Any, chunks: int) -> None:
        super().__init__(tokenizer, skip_prompt=True)
        self.chunks = chunks

    def put(self, value: torch.Tensor) -> None:
        if self.chunks == 0:
            raise BrokenPipeError("client disconnected")
        self.chunks -= 1
        super().put(value)


class _LockstepStreamer(TextIteratorStreamer):
    """A text streamer that counts the chunks it queued and those the consumer finished with, so a
    stopping criterion can wait for the consumer to catch up: on 2 busy cores a tiny model otherwise
    generates every token before the consumer's thread runs (CI saw it once)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queued = self.handled = 0
        self.changed = threading.Condition()

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        with self.changed:
            self.queued += 1
        super().on_finalized_text(text, stream_end)

    def chunks(self) -> Iterator[str]:
        """The chunks, each counted handled once the consumer asks for the next."""
        for chunk in self:
            yield chunk
            with self.changed:
                self.handled += 1
                self.changed.notify_all()

    def wait_for_consumer(self) -> None:
        with self.changed:
            self.changed.wait_for(lambda: self.handled >= self.queued, timeout=WAIT_S)


class _Cancelled(StoppingCriteria):
    """The usual cancel button: a flag another thread sets, checked once per step (after the consumer
    has handled every chunk streamed so far)."""

    def __init__(self, cancel: threading.Event, streamer: _LockstepStreamer) -> None:
        self.cancel = cancel
        self.streamer = streamer

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.Tensor:
        self.streamer.wait_for_consumer()
        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool)


def _stream(model, inputs, streamer, consume: Callable[[Iterator[str]], None], **extra) -> dict[str, Any]:
    """generate() in a worker thread feeding ``streamer``; ``consume`` reads it in this thread."""
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            outcome["output"] = greedy(model, ids, mask, MAX_NEW, streamer=streamer, **extra)
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome["error"] = error
            streamer.end()  # let the consumer's loop finish

    worker = threading.Thread(target=work)
    worker.start()
    try:
        consume(iter(streamer))
    finally:
        worker.join(WAIT_S)
    assert not worker.is_alive()
    return outcome


def test_streamer_consumer_that_stops_reading(instrumented):
    tokenizer, model = offline_tokenizer(), build_model("qwen2")
    inputs = tokenizer("w5 w6 w7 w8", return_tensors="pt")
    reference = greedy(model, inputs["input_ids"], inputs["attention_mask"], MAX_NEW)
    telemetry = instrumented(plugins=[logits_plugin], builtin_plugins=False)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=WAIT_S)

    outcome = _stream(model, inputs, streamer, lambda chunks: next(chunks))

    assert torch.equal(outcome["output"], reference)
    span = generation_span(telemetry)
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes["gen_ai.usage.output_tokens"] == MAX_NEW
    _assert_next_call_clean(model, inputs["input_ids"], inputs["attention_mask"], reference, telemetry)


def test_streamer_whose_consumer_disconnected(instrumented):
    tokenizer, model = offline_tokenizer(), build_model("qwen2")
    inputs = tokenizer("w5 w6 w7 w8", return_tensors="pt")
    reference = greedy(model, inputs["input_ids"], inputs["attention_mask"], MAX_NEW)
    telemetry = instrumented(plugins=[logits_plugin], builtin_plugins=False)
    streamer = _ClosedConsumer(tokenizer, chunks=3)  # the prompt, then two tokens

    outcome = _stream(model, inputs, streamer, lambda chunks: list(chunks))

    assert isinstance(outcome["error"], BrokenPipeError)
    span = generation_span(telemetry)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "builtins.BrokenPipeError"
    assert 0 < span.attributes["corevital.steps.count"] < MAX_NEW
    _assert_next_call_clean(model, inputs["input_ids"], inputs["attention_mask"], reference, telemetry)


def test_stopped_by_the_users_stopping_criteria(instrumented):
    """The consumer presses 'cancel' after two chunks; generate() returns early through the caller's
    own StoppingCriteria, and the span counts exactly the tokens returned."""
    tokenizer, model = offline_tokenizer(), build_model("qwen2")
    inputs = tokenizer("w5 w6 w7 w8", return_tensors="pt")
    reference = greedy(model, inputs["input_ids"], inputs["attention_mask"], MAX_NEW)
    telemetry = instrumented()  # every built-in plugin: none of them may trip over a short generation
    streamer = _LockstepStreamer(tokenizer, skip_prompt=True, timeout=WAIT_S)
    cancel = threading.Event()
    received: list[str] = []

    def consume(chunks: Iterator[str]) -> None:
        for chunk in chunks:
            received.append(chunk)
            if len(received) == 2:
                cancel.set()

    criteria = StoppingCriteriaList([_Cancelled(cancel, streamer)])
    outcome = _stream(
        model, inputs, streamer, lambda chunks: consume(streamer.chunks()), stopping_criteria=criteria
    )

    generated = outcome["output"][0, inputs["input_ids"].shape[1] :]
    assert 2 <= len(generated) < MAX_NEW
    assert torch.equal(generated, reference[0, inputs["input_ids"].shape[1] :][: len(generated)])
    span = generation_span(telemetry)
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes["gen_ai.usage.output_tokens"] == len(generated)
    assert span.attributes["corevital.steps.count"] == len(generated)
    assert span.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert "corevital.capture.lost" not in span.attributes
    _assert_next_call_clean(model, inputs["input_ids"], inputs["attention_mask"], reference, telemetry)


def _cleanup_lines() -> set[tuple[str, int]]:
    """The cleanup statements themselves (``finally`` bodies of generation.py and the entry of
    ``GenerationCall.finish``): no Python code can stop an interrupt from landing *in* its cleanup."""
    path = inspect.getsourcefile(generation)
    tree = ast.parse(Path(path).read_text())
    lines: set[tuple[str, int]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            for statement in node.finalbody:
                lines.update((path, line) for line in range(statement.lineno, statement.end_lineno + 1))
        if isinstance(node, ast.FunctionDef) and node.name == "finish":
            lines.add((path, node.body[0].lineno))
    return lines


class _Interrupter:
    """A tracer raising KeyboardInterrupt on the first execution of one line of our code (None: never),
    after recording the lines it saw; frames outside our package are not traced."""

    ROOTS = (str(Path(generation.__file__).parent), str(Path(logits_plugin.__file__).parent))

    def __init__(self, target: tuple[str, int] | None) -> None:
        self.target = target
        self.seen: list[tuple[str, int]] = []

    def __enter__(self) -> _Interrupter:
        self._previous = sys.gettrace()
        sys.settrace(self._call)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        sys.settrace(self._previous)

    def _call(self, frame: Any, event: str, arg: Any) -> Any:
        return self._line if frame.f_code.co_filename.startswith(self.ROOTS) else None

    def _line(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "line":
            here = (frame.f_code.co_filename, frame.f_lineno)
            self.seen.append(here)
            if here == self.target:
                self.target = None
                raise KeyboardInterrupt
        return self._line


def _lines_of(*functions: Any) -> set[tuple[str, int]]:
    found = set()
    for function in functions:
        source, first = inspect.getsourcelines(function)
        found.update((inspect.getsourcefile(function), first + offset) for offset in range(len(source)))
    return found


_SETUP = _lines_of(generation.run_instrumented, generation.GenerationCall.start)


class _OpenSpans(SpanProcessor):
    """Spans started and not (yet) ended."""

    def __init__(self) -> None:
        self.open: set[int] = set()

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.open.add(span.context.span_id)

    def on_end(self, span: Any) -> None:
        self.open.discard(span.context.span_id)


def test_an_interrupt_on_any_line_of_our_code_leaves_nothing_behind(instrumented):
    """Every line our code runs during a generate() (sampled unless COREVITAL_RELIABILITY_FULL=1):
    a KeyboardInterrupt raised there reaches the caller, and the span, hooks and context are cleaned up."""
    model = build_model("gpt2")
    ids, mask = prompt_batch(batch=2)
    reference = greedy(model, ids, mask, MAX_NEW)
    # Sampled: logits and health (which offers the nan policy) only.
    options = {} if full_scale() else {"plugins": [logits_plugin, health_plugin], "builtin_plugins": False}
    telemetry = instrumented(intervene={"nan"}, **options)
    spans = _OpenSpans()
    telemetry.tracer_provider.add_span_processor(spans)
    greedy(model, ids, mask, MAX_NEW)  # first-call-only paths (logged-once warnings) out of the way
    with _Interrupter(None) as calibration:
        greedy(model, ids, mask, MAX_NEW)
    cleanup = _cleanup_lines()
    targets = [line for line in dict.fromkeys(calibration.seen) if line not in cleanup]
    if not full_scale():  # a sample, plus every line of the code that sets up and tears down a call
        targets = [line for index, line in enumerate(targets) if index % SWEEP_STRIDE == 0 or line in _SETUP]
    unreached = 0
    for target in targets:
        try:
            with _Interrupter(target) as interrupter:
                greedy(model, ids, mask, MAX_NEW)
        except KeyboardInterrupt:
            pass
        else:  # never swallowed: only a line this call did not run (plugin state differs) raises nothing
            assert interrupter.target == target, f"KeyboardInterrupt swallowed at {target}"
            unreached += 1
            continue
        assert_no_hooks(model)
        assert ACTIVE_CAPTURE.get() is None, target
        assert spans.open == set(), target
        _assert_next_call_clean(model, ids, mask, reference, telemetry)
    print(
        f"\ninterrupted on {len(targets) - unreached} distinct lines of our code ({unreached} not run again)"
    )
    assert len(targets) >= 20 and unreached <= len(targets) // 20
