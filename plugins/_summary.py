"""Masked per-sequence aggregates of step series, shared by the built-in plugins.

Series are ``(steps, rows, ...)`` host arrays; ``mask`` ``(steps, rows)`` marks real steps. Steps after a
row finished never enter its aggregates, and non-finite values are skipped (health flags report them).
"""

from __future__ import annotations

import numpy as np

from corevital_otel import GenerationInfo, GenerationResults, StepSeries

_REDUCERS = ("mean", "max", "min", "sum")


def masked(series: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``series`` ``(steps, rows, ...)`` with steps outside ``mask`` ``(steps, rows)`` set to NaN."""
    shape = mask.shape + (1,) * (series.ndim - mask.ndim)
    return np.where(mask.reshape(shape), series, np.nan)


def finite_reduce(values: np.ndarray, reduce: str) -> np.ndarray:
    """Reduce over axis 0, skipping non-finite entries; NaN where an entry has no finite value."""
    if reduce not in _REDUCERS:
        raise ValueError(f"unknown reduction {reduce!r}")
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    count = finite.sum(axis=0)
    if reduce in ("mean", "sum"):
        total = np.where(finite, values, 0.0).sum(axis=0)
        result = total / np.maximum(count, 1) if reduce == "mean" else total
    else:
        fill = -np.inf if reduce == "max" else np.inf
        picked = np.where(finite, values, fill)
        result = picked.max(axis=0) if reduce == "max" else picked.min(axis=0)
    return np.where(count > 0, result, np.nan)


def over_steps(series: np.ndarray, mask: np.ndarray, reduce: str) -> np.ndarray:
    """Reduce ``(steps, rows, ...)`` over real, finite steps to ``(rows, ...)``; NaN where none are."""
    return finite_reduce(masked(series, mask), reduce)


def any_step(series: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(rows, ...)`` True where a 0/1 series is 1 on some real step."""
    return (masked(series, mask) > 0.5).any(axis=0)


def first_step(series: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(rows,)`` first real step where a ``(steps, rows, ...)`` 0/1 series is 1 anywhere; -1 if never."""
    hits = masked(series, mask) > 0.5
    hits = hits.reshape(hits.shape[0], hits.shape[1], -1).any(axis=2)
    return np.where(hits.any(axis=0), hits.argmax(axis=0), -1)


def real_values(series: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """All finite values of real steps, flattened (for histogram recordings)."""
    values = masked(series, mask).reshape(-1)
    return values[np.isfinite(values)]


def publish(
    series: StepSeries,
    results: GenerationResults,
    table: tuple[tuple[str, str, str], ...],
    compact: frozenset[str] = frozenset(),
) -> None:
    """Set ``attribute`` to ``series[name]`` reduced per row for each ``(name, attribute, reduce)`` whose
    series exists; ``reduce`` is one of mean/max/min/sum, or ``any`` for 0/1 series. One value per row is
    a per-row value; ``(rows, layers)`` values are arrays, detail by their name unless listed in
    ``compact`` (kept in every capture mode)."""
    for name, attribute, reduce in table:
        values = series.get(name)
        if values is None:
            continue
        if reduce == "any":
            reduced = any_step(values, series.mask)
        else:
            reduced = over_steps(values, series.mask, reduce)
        if reduced.ndim == 1:
            results.set_rows(attribute, reduced)
        else:
            results.set(attribute, reduced, detail=False if attribute in compact else None)


def wants_detail(info: GenerationInfo) -> bool:
    """Per-layer and per-position detail is computed only when the capture mode may export it."""
    return info.capture_mode != "summary"
