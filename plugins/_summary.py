"""Masked per-sequence aggregates of step series, shared by the built-in plugins."""

from __future__ import annotations

import numpy as np


def masked(series: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``series`` ``(steps, rows, ...)`` with steps outside ``mask`` ``(steps, rows)`` set to NaN."""
    shape = mask.shape + (1,) * (series.ndim - mask.ndim)
    return np.where(mask.reshape(shape), series, np.nan)


def per_row(series: np.ndarray, mask: np.ndarray, reduce: str) -> list[float | None]:
    """One aggregate per row over its real steps (``mean``, ``max``, ``min``); None when it has none."""
    values = masked(series, mask)
    out: list[float | None] = []
    for row in range(values.shape[1]):
        column = values[:, row]
        finite = column[np.isfinite(column)]
        if finite.size == 0:
            out.append(None)
            continue
        out.append(float(getattr(np, reduce)(finite)))
    return out


def real_values(series: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """All finite values of real steps, flattened (for histogram recordings)."""
    values = masked(series, mask).reshape(-1)
    return values[np.isfinite(values)]
