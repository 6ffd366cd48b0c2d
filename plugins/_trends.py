"""Trend arithmetic over one row's step series, shared by the risk, early-warning and compound plugins.

Every function takes a 1-D host array indexed by step that may hold NaN/Inf (a broken step, or a step a
plugin skipped). Non-finite points are left out, never propagated, and step indices are kept, so an
onset is reported at the step where it really happened. Functions that need more points than they get
return NaN (or an empty result) instead of raising.
"""

from __future__ import annotations

import numpy as np


def finite_points(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of the finite entries of ``values``."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    keep = np.isfinite(values)
    return np.flatnonzero(keep), values[keep]


def mean(values: np.ndarray) -> float:
    _, points = finite_points(values)
    return float(points.mean()) if points.size else float("nan")


def slope(values: np.ndarray) -> float:
    """Least-squares slope per step over the finite points; NaN with fewer than two."""
    steps, points = finite_points(values)
    if points.size < 2:
        return float("nan")
    centred = steps - steps.mean()
    return float((centred * (points - points.mean())).sum() / (centred * centred).sum())


def thirds(values: np.ndarray) -> tuple[tuple[float, float, float], int]:
    """Means of the early, middle and late thirds of the finite points, and the first step of the last
    third; NaNs and -1 with fewer than three points."""
    steps, points = finite_points(values)
    if points.size < 3:
        return (float("nan"),) * 3, -1
    parts = np.array_split(np.arange(points.size), 3)
    means = tuple(float(points[part].mean()) for part in parts)
    return (means[0], means[1], means[2]), int(steps[parts[2][0]])


def tail_mean(values: np.ndarray, count: int) -> float:
    """Mean of the last ``count`` finite points (all of them when there are fewer)."""
    _, points = finite_points(values)
    return float(points[-count:].mean()) if points.size else float("nan")


def rolling_std(values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Population std of each run of ``window`` consecutive finite points, and the step each run ends at.

    Computed from cumulative sums, so it is linear in the series length.
    """
    steps, points = finite_points(values)
    if window < 2 or points.size < window:
        return np.empty(0), np.empty(0, dtype=np.int64)
    # Centre first: cumulative sums of raw squares lose precision when the mean is large.
    centred = points - points.mean()
    sums = np.concatenate([[0.0], np.cumsum(centred)])
    squares = np.concatenate([[0.0], np.cumsum(centred * centred)])
    total = sums[window:] - sums[:-window]
    total_sq = squares[window:] - squares[:-window]
    variance = np.maximum(total_sq / window - (total / window) ** 2, 0.0)
    return np.sqrt(variance), steps[window - 1 :]


def correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Pearson correlation over the steps where both are finite; NaN when either is constant there."""
    first = np.asarray(first, dtype=np.float64).reshape(-1)
    second = np.asarray(second, dtype=np.float64).reshape(-1)
    length = min(first.size, second.size)
    first, second = first[:length], second[:length]
    keep = np.isfinite(first) & np.isfinite(second)
    if keep.sum() < 3:
        return float("nan")
    a, b = first[keep] - first[keep].mean(), second[keep] - second[keep].mean()
    scale = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / scale) if scale > 0 else float("nan")


def first_run(condition: np.ndarray, length: int) -> int:
    """First index where ``condition`` starts a run of at least ``length`` consecutive True; -1 if none."""
    condition = np.asarray(condition, dtype=bool).reshape(-1)
    if length < 1 or condition.size < length:
        return -1
    counts = np.convolve(condition.astype(np.int64), np.ones(length, dtype=np.int64), mode="valid")
    hits = np.flatnonzero(counts == length)
    return int(hits[0]) if hits.size else -1
