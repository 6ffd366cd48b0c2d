"""Constructed inputs for the analysis plugins: step series, generation info and scales."""

from __future__ import annotations

from typing import Any

import numpy as np

from corevital_otel import GenerationInfo, GenerationResults, StepSeries
from corevital_otel.plugins._scales import FAMILY_SCALES, Scales


def make_info(
    rows: int = 1, family: str = "default", capture_mode: str = "full", **options: Any
) -> GenerationInfo:
    return GenerationInfo(
        model_name="test-model",
        model_type=family,
        family=family,
        is_encoder_decoder=False,
        num_layers=4,
        num_heads=4,
        rows=rows,
        num_beams=1,
        max_new_tokens=None,
        capture_mode=capture_mode,
        options=options,
    )


def make_series(lengths: list[int] | None = None, **arrays: np.ndarray) -> StepSeries:
    """A StepSeries from ``name=array`` keywords (dots written as ``__``): arrays are ``(steps, rows, ...)``
    or ``(steps,)`` for one row; ``lengths`` are the rows' real steps (default: all)."""
    named = {}
    for key, array in arrays.items():
        array = np.asarray(array, dtype=np.float64)
        named[key.replace("__", ".")] = array.reshape(array.shape[0], 1) if array.ndim == 1 else array
    first = next(iter(named.values()), np.zeros((0, 1)))
    steps, rows = first.shape[:2]
    mask = np.ones((steps, rows), dtype=bool)
    for row, length in enumerate(lengths or []):
        mask[length:, row] = False
    tokens = np.full((steps, rows), -1, dtype=np.int64)
    return StepSeries(arrays=named, mask=mask, tokens=tokens, step_seconds=np.arange(steps, dtype=np.float64))


def default_scales(entropy_high: float = 4.0) -> Scales:
    return Scales(source="test", entropy_high=entropy_high, **FAMILY_SCALES["default"])


def results_with(**attributes: Any) -> GenerationResults:
    results = GenerationResults()
    for key, value in attributes.items():
        results.set(key.replace("__", "."), value)
    return results
