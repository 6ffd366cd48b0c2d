"""Span events: the plugins' own (``results.add_event``) and a bounded choice of ``corevital.step`` events.

Spans keep 128 events by default and silently drop the oldest when full; the content-details and exception
events must never be pushed out, so room is kept for them, and step events also share the span's byte
budget. Flagged steps come first (their exact values are what a long series' buckets smooth away), then
the first and last steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from ..results import GenerationResults, StepSeries
from .budget import span_limits
from .values import clean_mapping, encoded_size

STEP_EVENT = "corevital.step"
STEP_EVENTS_DROPPED = "corevital.step.events_dropped"
STEP_EVENTS_EMITTED = "corevital.step.events_emitted"
_RESERVED_EVENTS = 2  # gen_ai.client.inference.operation.details and exception

TokenText = Callable[[Sequence[int]], tuple[str, ...]]


def choose_event_steps(
    total: int, flagged: Iterable[int], budget: int, ends_first: bool = False
) -> list[int]:
    """Which steps get an event: flagged steps first, then the first and last steps, within ``budget``;
    with ``ends_first`` the first and last steps are kept whatever the flags (a compact span)."""
    if budget <= 0 or total <= 0:
        return []
    ends = sorted({0, total - 1})[:budget] if ends_first else []
    chosen: list[int] = list(ends)
    for step in sorted({s for s in flagged if 0 <= s < total} - set(ends)):
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


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


class _StepColumns:
    """Every per-step scalar series at the chosen steps, padding steps as NaN, as Python values: one numpy
    pass per series for all events instead of one per series and event."""

    def __init__(self, series: StepSeries, steps: Sequence[int]) -> None:
        self.position = {step: index for index, step in enumerate(steps)}
        self.one_row = series.mask.shape[1] == 1
        chosen = np.asarray(steps, dtype=np.int64)
        mask = series.mask[chosen]
        self.columns = {
            name: np.where(mask, array[chosen], np.nan).tolist()
            for name, array in series.arrays.items()
            if array.ndim == 2
        }

    def values(self, step: int) -> Iterator[tuple[str, Any]]:
        """``(series name, value)`` at ``step``: one entry per row (a plain value when there is one row;
        a non-finite one is left out), None for a non-finite entry of several rows."""
        index = self.position[step]
        for name, column in self.columns.items():
            rows = column[index]
            if self.one_row:
                value = _finite_or_none(rows[0])
                if value is not None:
                    yield name, value
            else:
                yield name, tuple(_finite_or_none(value) for value in rows)


def step_event_attributes(
    series: StepSeries,
    step: int,
    reasons: list[str],
    token_text: TokenText | None = None,
    columns: _StepColumns | None = None,
) -> dict[str, Any]:
    """One event's attributes: the step index and each per-step scalar series, one entry per row (a plain
    value when there is one row)."""
    attributes: dict[str, Any] = {"corevital.step.index": step}
    if reasons:
        attributes["corevital.step.reasons"] = tuple(reasons)
    if token_text is not None:  # only when content capture is on
        attributes["corevital.step.token_text"] = token_text(series.tokens[step].tolist())
    columns = _StepColumns(series, [step]) if columns is None else columns
    for name, value in columns.values(step):
        attributes[f"corevital.{name}"] = value
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


def _event_size(attributes: dict[str, Any]) -> int:
    return 16 + sum(encoded_size(name, value) for name, value in attributes.items())


def emit_step_events(
    span: Any,
    series: StepSeries,
    results: GenerationResults,
    max_events: int,
    byte_budget: float,
    token_text: TokenText | None = None,
    compact: bool = False,
) -> dict[str, int]:
    """Add bounded ``corevital.step`` events within ``byte_budget``; return the bookkeeping attributes.
    A ``compact`` span keeps the first and last steps besides the earliest flagged ones."""
    room = event_room(span, max_events)
    steps = choose_event_steps(series.steps, results.flagged_steps, room, ends_first=compact)
    columns = _StepColumns(series, steps)
    emitted = 0
    for step in steps:
        reasons = results.flagged_steps.get(step, [])
        attributes = step_event_attributes(series, step, reasons, token_text, columns)
        byte_budget -= _event_size(attributes)
        if byte_budget < 0:
            break
        span.add_event(STEP_EVENT, attributes)
        emitted += 1
    return {STEP_EVENTS_EMITTED: emitted, STEP_EVENTS_DROPPED: series.steps - emitted}


def emit_plugin_events(span: Any, results: GenerationResults) -> int:
    """Add the events plugins asked for, within the span's event limit (leaving the reserved room);
    return how many did not fit."""
    room = event_room(span, len(results.events))
    for name, attributes in results.events[:room]:
        span.add_event(name, clean_mapping(attributes))
    return len(results.events) - room
