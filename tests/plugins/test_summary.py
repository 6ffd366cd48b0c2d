"""Per-row aggregates over step series: masked steps and non-finite values never enter them."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from corevital_otel.plugins._summary import any_step, over_steps


@st.composite
def series_with_mask(draw):
    steps, rows, layers = draw(st.integers(1, 6)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    values = rng.normal(0, 5, (steps, rows, layers))
    values[rng.random(values.shape) < 0.2] = np.nan
    values[rng.random(values.shape) < 0.1] = np.inf
    lengths = rng.integers(0, steps + 1, rows)
    mask = np.arange(steps)[:, None] < lengths[None, :]
    return values, mask


@settings(max_examples=60, deadline=None)
@given(series_with_mask(), st.sampled_from(["mean", "max", "min", "sum"]))
def test_reductions_use_only_real_finite_steps(case, reduce):
    values, mask = case
    got = over_steps(values, mask, reduce)
    steps, rows, layers = values.shape
    for row in range(rows):
        for layer in range(layers):
            kept = [
                values[s, row, layer]
                for s in range(steps)
                if mask[s, row] and math.isfinite(values[s, row, layer])
            ]
            if not kept:
                assert math.isnan(got[row, layer])
                continue
            expected = {"mean": sum(kept) / len(kept), "max": max(kept), "min": min(kept), "sum": sum(kept)}[
                reduce
            ]
            assert math.isclose(got[row, layer], expected, rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=30, deadline=None)
@given(series_with_mask())
def test_any_step_ignores_steps_after_a_rows_end(case):
    values, mask = case
    flags = (np.nan_to_num(values) > 4).astype(float)
    got = any_step(flags, mask)
    for row in range(values.shape[1]):
        for layer in range(values.shape[2]):
            expected = any(flags[s, row, layer] > 0.5 for s in range(values.shape[0]) if mask[s, row])
            assert got[row, layer] == expected
