"""The generation span: its name, the request attributes it starts with, and everything written at its end."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Status, StatusCode

from .. import speculative
from . import names
from .budget import (
    CORE,
    SERIES,
    SERIES_EXTREMES,
    fit,
    plugin_attributes,
    rank_all,
    series_attributes,
)
from .events import TokenText, emit_plugin_events, emit_step_events

if TYPE_CHECKING:
    from ..request import Completion, GenerationRequest
    from ..results import GenerationResults, StepSeries

# Step events in a span without full detail (capture mode ``on_risk`` before escalation): the first and the
# last step, and the earliest flagged ones.
COMPACT_STEP_EVENTS = 4


def span_name(request: GenerationRequest) -> str:
    return f"{names.OPERATION} {request.model_name}"


def request_attributes(request: GenerationRequest) -> dict[str, Any]:
    """What the span starts with: the operation and the request's parameters (GenAI conventions)."""
    attributes: dict[str, Any] = {
        names.OPERATION_NAME: names.OPERATION,
        names.PROVIDER_NAME: names.PROVIDER,
        names.REQUEST_MODEL: request.model_name,
        names.REQUEST_CHOICE_COUNT: request.num_return_sequences,
        "corevital.request.num_beams": request.num_beams,
        "corevital.request.do_sample": request.do_sample,
    }
    if request.max_new_tokens is not None:
        attributes[names.REQUEST_MAX_TOKENS] = request.max_new_tokens
    if request.speculative_decoding is not None:  # a step verifies several tokens: see steps.count
        attributes[speculative.ATTRIBUTE] = request.speculative_decoding
    if request.do_sample:  # sampling parameters only mean something when the call samples
        for name, value in (
            (names.REQUEST_TEMPERATURE, request.temperature),
            (names.REQUEST_TOP_P, request.top_p),
            (names.REQUEST_TOP_K, request.top_k),
        ):
            if value is not None:
                attributes[name] = value
    return attributes


def error_type(error: BaseException) -> str:
    return f"{type(error).__module__}.{type(error).__qualname__}"


def decode_timing(series: StepSeries) -> tuple[float | None, float | None]:
    """Seconds to the first token's logits, and mean seconds per token after it (None when unknown)."""
    if not series.steps:
        return None, None
    first = float(series.step_seconds[0])
    if series.steps < 2:
        return first, None
    return first, float(series.step_seconds[-1] - series.step_seconds[0]) / (series.steps - 1)


@dataclass
class FinishedGeneration:
    """What the span's end is written from."""

    request: GenerationRequest
    completion: Completion
    series: StepSeries
    results: GenerationResults
    rows: int
    error: BaseException | None
    capture_mode: str
    max_step_events: int
    # Attributes plus events per generated row (option max_span_kib, default 60 KiB): with the span's own
    # protobuf framing a batch-1 span stays under 64 KiB whatever its length. None: no byte budget.
    bytes_per_row: int | None
    content: dict[str, Any] = field(default_factory=dict)  # gen_ai.*.messages when content capture asks
    token_text: TokenText | None = None  # step tokens' text, only when content goes to events
    lost: list[str] = field(default_factory=list)

    @cached_property
    def timing(self) -> tuple[float | None, float | None]:
        """(time to first token, time per output token): computed once for the span and the metrics."""
        return decode_timing(self.series)

    @property
    def full_detail(self) -> bool:
        escalated = self.capture_mode == "on_risk" and bool(self.results.escalations)
        return self.capture_mode == "full" or escalated


def outcome_attributes(done: FinishedGeneration) -> dict[str, Any]:
    """Usage, finish reasons, timing, error type and how the span was shaped."""
    completion = done.completion
    attributes: dict[str, Any] = {
        names.USAGE_INPUT_TOKENS: completion.input_tokens,
        "corevital.steps.count": done.series.steps,
        "corevital.sequences.count": done.rows,
    }
    # No gen_ai.response.model: for a local model it only repeats the request's, and Phoenix turns it into
    # an output of {"model": ...} that reads like the generation's output when content capture is off.
    if done.error is None:
        attributes[names.USAGE_OUTPUT_TOKENS] = completion.total_output_tokens
        attributes[names.RESPONSE_FINISH_REASONS] = tuple(completion.finish_reasons)
    else:
        attributes[names.ERROR] = error_type(done.error)
    first_token, per_token = done.timing
    if first_token is not None:
        attributes["corevital.time_to_first_token"] = first_token
    if per_token is not None:
        attributes["corevital.time_per_output_token"] = per_token
    if done.capture_mode == "on_risk":
        attributes["corevital.capture.escalated"] = bool(done.results.escalations)
    return attributes | severity_attributes(done)


def severity_attributes(done: FinishedGeneration) -> dict[str, Any]:
    """The level backends that have one show (Langfuse's observation level and status message)."""
    if done.error is not None:
        return {
            names.LANGFUSE_LEVEL: "ERROR",
            names.LANGFUSE_STATUS_MESSAGE: f"{type(done.error).__name__}: {done.error}"[:500],
        }
    severity = done.results.severity
    if severity is None:
        return {}
    return {names.LANGFUSE_LEVEL: severity.level, names.LANGFUSE_STATUS_MESSAGE: severity.message[:500]}


def write_span(span: Any, done: FinishedGeneration) -> None:
    """Write the span's end: attributes within the budget, plugin and step events, lost capture, status."""
    results = done.results
    ranked = rank_all(outcome_attributes(done) | done.content, CORE)
    ranked |= plugin_attributes(results, done.rows, done.full_detail)
    if done.full_detail:
        values, extremes = series_attributes(done.series)
        ranked |= rank_all(values, SERIES) | rank_all(extremes, SERIES_EXTREMES)
    dropped_events = emit_plugin_events(span, results)
    if dropped_events:
        results.note_lost(f"{dropped_events} plugin span event(s): span event limit")
    budget = math.inf if done.bytes_per_row is None else done.bytes_per_row * max(done.rows, 1)
    attributes, room = fit(span, ranked, budget)
    compact = done.capture_mode == "on_risk" and not done.full_detail
    step_events = min(done.max_step_events, COMPACT_STEP_EVENTS) if compact else done.max_step_events
    if done.capture_mode != "summary":
        attributes |= emit_step_events(
            span, done.series, results, step_events, room, done.token_text, compact=compact
        )
    lost = done.lost + results.lost
    if lost:
        attributes["corevital.capture.lost"] = tuple(dict.fromkeys(lost))
    span.set_attributes(attributes)
    if done.error is not None:
        span.set_status(Status(StatusCode.ERROR, f"{type(done.error).__name__}: {done.error}"[:500]))
        span.record_exception(done.error)
