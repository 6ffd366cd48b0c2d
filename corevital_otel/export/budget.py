"""The span budget: what of a generation's results reaches its span, in each capture mode, within bounds.

- Detail: per-layer and per-position arrays (and the step series) only with full detail; a plugin may keep
  a compact one in every mode (``results.set(..., detail=False)``).
- Per-row values (``results.set_rows``) are plain values when the generation has one row.
- Step series keep their exact per-step values up to ``EXACT_STEPS`` steps; longer series are exported at a
  bounded resolution (mean, min and max per bucket of steps), so a span does not grow with the length.
- The span's attribute count limit and a byte budget per row: when something must go, the least important
  goes first (step series, then detail, then plugin arrays; the core's GenAI attributes last), and
  ``corevital.attributes.dropped`` says how many.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from opentelemetry.sdk.trace import SpanLimits

from ..results import GenerationResults, StepSeries
from .values import OMIT, clean_attribute, clean_mapping, encoded_size, first_entry

ATTRIBUTES_DROPPED = "corevital.attributes.dropped"
STEPS_RESOLUTION = "corevital.steps.resolution"
# Room for what is set after fitting: the dropped count, the capture-lost list and the two step-event counts.
_RESERVED_ATTRIBUTES = 4

# Names in these families are detail unless their plugin says otherwise.
DETAIL_FAMILIES = ("corevital.layers.", "corevital.prompt.positions.")

# Step series: exact up to this many steps; beyond, this many buckets of (mean, min, max).
EXACT_STEPS = 96
SERIES_BUCKETS = 32


# Importance, most important first: what goes last when the span is over its budget (the bucket extremes
# of long step series first: with the SDK's default limit of 128 attributes not all of them fit).
CORE, IMPORTANT, PLUGIN_VALUE, PLUGIN_ARRAY, DETAIL, SERIES, SERIES_EXTREMES = range(7)


@dataclass(frozen=True)
class Ranked:
    """One attribute ready for the span: cleaned value, importance and (estimated) encoded size."""

    value: Any
    rank: int
    size: int


def is_detail(name: str, results: GenerationResults) -> bool:
    declared = results.detail.get(name)
    return name.startswith(DETAIL_FAMILIES) if declared is None else declared


def plugin_attributes(results: GenerationResults, rows: int, full_detail: bool) -> dict[str, Ranked]:
    """The plugins' attributes this span exports, ranked: detail only with ``full_detail``, per-row
    values as plain values at one row."""
    ranked = {}
    for name, value in results.attributes.items():
        detail = is_detail(name, results)
        if detail and not full_detail:
            continue
        if rows == 1 and name in results.per_row:
            if name in results.rows_only:
                continue
            value = first_entry(value)
        value = clean_attribute(value)
        if value is OMIT:
            continue
        array = isinstance(value, tuple) and len(value) > 1
        if detail:
            rank = DETAIL
        elif name in results.important:
            rank = IMPORTANT
        else:
            rank = PLUGIN_ARRAY if array else PLUGIN_VALUE
        ranked[name] = Ranked(value, rank, encoded_size(name, value))
    return ranked


def rank_all(attributes: Mapping[str, Any], rank: int) -> dict[str, Ranked]:
    """Clean ``attributes`` and give them all one rank (the core's own, the step series)."""
    cleaned = clean_mapping(attributes)
    return {name: Ranked(value, rank, encoded_size(name, value)) for name, value in cleaned.items()}


def _buckets(values: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, min, max) of each of ``buckets`` runs of consecutive steps of ``values`` ``(steps, rows)``,
    skipping NaN; NaN where a bucket holds none."""
    steps, rows = values.shape
    size = math.ceil(steps / buckets)
    padded = np.full((size * buckets, rows), np.nan)
    padded[:steps] = values
    grouped = padded.reshape(buckets, size, rows)
    finite = np.isfinite(grouped)
    count = finite.sum(axis=1)
    total = np.where(finite, grouped, 0.0).sum(axis=1)
    mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    low = np.where(count > 0, np.where(finite, grouped, np.inf).min(axis=1), np.nan)
    high = np.where(count > 0, np.where(finite, grouped, -np.inf).max(axis=1), np.nan)
    return mean, low, high


def series_resolution(steps: int) -> int:
    """Steps per exported value of a step series: 1 (exact) up to ``EXACT_STEPS`` steps."""
    return 1 if steps <= EXACT_STEPS else math.ceil(steps / SERIES_BUCKETS)


def series_attributes(series: StepSeries) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every per-step scalar series as array attributes, rows concatenated (row-major): exact values, or
    per bucket of ``corevital.steps.resolution`` steps the mean (``corevital.steps.<name>``); and, when
    bucketed, the buckets' extremes (``.min`` and ``.max``)."""
    resolution = series_resolution(series.steps)
    values: dict[str, Any] = {STEPS_RESOLUTION: resolution}
    extremes: dict[str, Any] = {}
    for name, array in series.arrays.items():
        if array.ndim != 2:
            continue
        steps = np.where(series.mask, array, np.nan).astype(np.float64)
        if resolution == 1:
            values[f"corevital.steps.{name}"] = steps.T  # (rows, steps)
            continue
        mean, low, high = _buckets(steps, math.ceil(series.steps / resolution))
        values[f"corevital.steps.{name}"] = mean.T
        extremes[f"corevital.steps.{name}.min"] = low.T
        extremes[f"corevital.steps.{name}.max"] = high.T
    return values, extremes


def span_limits(span: Any) -> tuple[int | None, int | None]:
    """(max attributes, max events) the span will keep; SDK defaults when the span does not say."""
    limits = getattr(span, "_limits", None)
    if limits is None:
        limits = SpanLimits()
    return limits.max_span_attributes, limits.max_events


def fit(span: Any, ranked: Mapping[str, Ranked], byte_budget: float) -> tuple[dict[str, Any], float]:
    """The attributes to set: the most important first, within the span's count limit and ``byte_budget``;
    and the bytes left for events. Adds ``corevital.attributes.dropped`` when some did not fit."""
    max_attributes, _ = span_limits(span)
    already = len(getattr(span, "attributes", None) or {})
    room = math.inf if max_attributes is None else max(max_attributes - already - _RESERVED_ATTRIBUTES, 0)
    # Stable sort: by rank, then in the order plugins wrote them; among detail and series, small first.
    def importance(name: str) -> tuple[int, int]:
        item = ranked[name]
        return item.rank, item.size if item.rank >= DETAIL else 0

    order = sorted(ranked, key=importance)
    kept: dict[str, Any] = {}
    used = 0
    for name in order:
        item = ranked[name]
        if len(kept) < room and (item.rank == CORE or used + item.size <= byte_budget):
            kept[name] = item.value
            used += item.size
    if len(kept) < len(ranked):
        kept[ATTRIBUTES_DROPPED] = len(ranked) - len(kept)
    return kept, max(byte_budget - used, 0)
