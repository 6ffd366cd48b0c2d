"""Turns one generation's results into span attributes, bounded step events and metric points.

Spans keep 128 attributes and 128 events by default and silently drop the *oldest* when full, which
would throw away the GenAI attributes set first. So the emitter fits what it writes to the span's
limits itself: it drops the least important attributes first and emits only a chosen set of step
events, and says how many of each it left out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from opentelemetry.sdk.trace import SpanLimits

from .results import GenerationResults, StepSeries

STEP_EVENT = "corevital.step"
ATTRIBUTES_DROPPED = "corevital.attributes.dropped"
STEP_EVENTS_DROPPED = "corevital.step.events_dropped"
STEP_EVENTS_EMITTED = "corevital.step.events_emitted"
_RESERVED_ATTRIBUTES = 2  # room for the two bookkeeping attributes above
_RESERVED_EVENTS = 2  # gen_ai.client.inference.operation.details and exception

# Lower rank = kept first when the span cannot hold everything. First match wins, so the core scalars
# named like a family (``corevital.steps.count`` among the step series) come before their family.
_PRIORITY_PREFIXES = (
    ("gen_ai.", 0),
    ("error.", 0),
    ("corevital.steps.count", 0),
    ("corevital.sequences.count", 0),
    ("corevital.step.events_", 0),  # how many step events were left out
    ("corevital.time_", 0),  # time to first token, time per output token
    ("corevital.health.", 1),
    ("corevital.risk.", 1),
    ("corevital.capture.", 1),
    ("corevital.plugin.", 1),
    ("corevital.layers.", 3),
    ("corevital.prompt.positions.", 3),
    ("corevital.steps.", 4),
)

_OMIT = object()

# Per-layer and per-position plugin attributes: exported only in full detail (capture mode ``full``, or
# ``on_risk`` once escalated), like the step series.
DETAIL_PREFIXES = ("corevital.layers.", "corevital.prompt.positions.")


def _rank(name: str) -> int:
    for prefix, rank in _PRIORITY_PREFIXES:
        if name.startswith(prefix):
            return rank
    return 2


def _plain(value: Any) -> Any:
    """numpy/torch scalars to Python; non-finite floats to None (JSON and OTLP consumers choke on NaN)."""
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        number = float(value)
        return number if math.isfinite(number) else None
    return value


def _clean_array(array: np.ndarray) -> tuple[Any, ...]:
    """A flat tuple of Python values; non-finite floats become None (converted in C where possible)."""
    flat = array.reshape(-1)
    items = flat.tolist()
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        return tuple(item if math.isfinite(item) else None for item in items)
    if flat.dtype.kind in "biuf":
        return tuple(items)
    return tuple(_plain(item) for item in items)


def clean_attribute(value: Any) -> Any:
    """An OpenTelemetry-valid attribute value, or ``_OMIT`` for a scalar that is not a finite number."""
    if isinstance(value, np.ndarray):
        return _clean_array(value)
    if isinstance(value, (str, bytes)):
        return value
    if isinstance(value, Sequence):
        items = [_plain(item) for item in value]
        # Arrays must be homogeneous: a None stands for a non-finite entry (OTLP's empty AnyValue).
        return tuple(items)
    plain = _plain(value)
    return _OMIT if plain is None else plain


def without_detail(attributes: dict[str, Any], keep: bool) -> dict[str, Any]:
    """``attributes`` as is when ``keep``, else without the detail ones (see ``DETAIL_PREFIXES``)."""
    if keep:
        return attributes
    return {name: value for name, value in attributes.items() if not name.startswith(DETAIL_PREFIXES)}


def span_limits(span: Any) -> tuple[int | None, int | None]:
    """(max attributes, max events) the span will keep; SDK defaults when the span does not say."""
    limits = getattr(span, "_limits", None)
    if limits is None:
        limits = SpanLimits()
    return limits.max_span_attributes, limits.max_events


def fit_attributes(span: Any, attributes: dict[str, Any]) -> dict[str, Any]:
    """Clean ``attributes`` and drop the least important ones that would not fit in the span."""
    cleaned = {}
    for name, value in attributes.items():
        value = clean_attribute(value)
        if value is not _OMIT:
            cleaned[name] = value
    max_attributes, _ = span_limits(span)
    if max_attributes is None:
        return cleaned
    already = len(getattr(span, "attributes", None) or {})
    room = max(max_attributes - already - _RESERVED_ATTRIBUTES, 0)
    if len(cleaned) <= room:
        return cleaned
    ordered = sorted(cleaned, key=_rank)  # stable: keeps plugin order within a rank
    kept = {name: cleaned[name] for name in ordered[:room]}
    kept[ATTRIBUTES_DROPPED] = len(cleaned) - room
    return kept


def choose_event_steps(total: int, flagged: Iterable[int], budget: int) -> list[int]:
    """Which steps get an event: flagged steps first, then the first and last steps, within ``budget``."""
    if budget <= 0 or total <= 0:
        return []
    chosen: list[int] = []
    for step in sorted({s for s in flagged if 0 <= s < total}):
        if len(chosen) == budget:
            break
        chosen.append(step)
    head, tail = 0, total - 1
    taken = set(chosen)
    while len(chosen) < budget and head <= tail:
        for step in (head, tail):
            if step not in taken and len(chosen) < budget:
                chosen.append(step)
                taken.add(step)
        head, tail = head + 1, tail - 1
    return sorted(chosen)


TokenText = Callable[[Sequence[int]], tuple[str, ...]]


def step_event_attributes(
    series: StepSeries, step: int, reasons: list[str], token_text: TokenText | None = None
) -> dict[str, Any]:
    """One event's attributes: the step index and each per-step scalar series, one entry per row."""
    attributes: dict[str, Any] = {"corevital.step.index": step}
    if reasons:
        attributes["corevital.step.reasons"] = tuple(reasons)
    if token_text is not None:  # only when content capture is on
        attributes["corevital.step.token_text"] = token_text(series.tokens[step].tolist())
    for name, array in series.arrays.items():
        if array.ndim == 2:
            values = np.where(series.mask[step], array[step], np.nan)
            attributes[f"corevital.{name}"] = clean_attribute(values)
    return attributes


def event_room(span: Any, wanted: int) -> int:
    """How many of ``wanted`` events ``span`` can still take, leaving room for the content-details and
    exception events (which must never push others out); 0 for a span that records nothing (unsampled:
    it has no event list, and building events for it would be wasted work)."""
    if not span.is_recording():
        return 0
    _, span_max_events = span_limits(span)
    if span_max_events is None:
        return wanted
    return min(wanted, max(span_max_events - _RESERVED_EVENTS - len(span.events), 0))


def emit_step_events(
    span: Any,
    series: StepSeries,
    results: GenerationResults,
    max_events: int,
    token_text: TokenText | None = None,
) -> dict[str, int]:
    """Add bounded ``corevital.step`` events; return the bookkeeping attributes to set on the span."""
    max_events = event_room(span, max_events)
    steps = choose_event_steps(series.steps, results.flagged_steps, max_events)
    for step in steps:
        reasons = results.flagged_steps.get(step, [])
        span.add_event(STEP_EVENT, step_event_attributes(series, step, reasons, token_text))
    return {STEP_EVENTS_EMITTED: len(steps), STEP_EVENTS_DROPPED: series.steps - len(steps)}


def emit_plugin_events(span: Any, results: GenerationResults) -> int:
    """Add the events plugins asked for (``results.add_event``), within the span's event limit (leaving the
    reserved room); return how many did not fit."""
    room = event_room(span, len(results.events))
    for name, attributes in results.events[:room]:
        cleaned = {key: clean_attribute(value) for key, value in attributes.items()}
        span.add_event(name, {key: value for key, value in cleaned.items() if value is not _OMIT})
    return len(results.events) - room


def series_attributes(series: StepSeries) -> dict[str, Any]:
    """Every per-step scalar series as one array attribute, rows concatenated (row-major)."""
    attributes: dict[str, Any] = {}
    for name, array in series.arrays.items():
        if array.ndim == 2:
            values = np.where(series.mask, array, np.nan).T  # (rows, steps)
            attributes[f"corevital.steps.{name}"] = values
    return attributes
