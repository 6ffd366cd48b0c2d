"""Series arithmetic shared by the detectors: NaN-robust, defined on empty and single-step input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from corevital_otel.plugins import _trends

NAN = float("nan")


def test_slope_of_a_line_ignores_nan_points_but_keeps_their_step_index():
    values = np.array([0.0, NAN, 2.0, 3.0, np.inf, 5.0])
    assert _trends.slope(values) == pytest.approx(1.0)


@pytest.mark.parametrize("values", [[], [1.0], [NAN, NAN], [NAN, 4.0]])
def test_slope_needs_two_finite_points(values):
    assert math.isnan(_trends.slope(np.array(values)))


def test_thirds_reports_means_and_the_first_step_of_the_late_third():
    values = np.array([1.0, 1.0, 2.0, 2.0, NAN, 3.0, 3.0])
    (early, middle, late), onset = _trends.thirds(values)
    assert (early, middle, late) == (1.0, 2.0, 3.0)
    assert onset == 5  # the NaN at step 4 is skipped, indices stay those of the steps


def test_thirds_with_too_few_points():
    means, onset = _trends.thirds(np.array([1.0, NAN, 2.0]))
    assert all(math.isnan(m) for m in means) and onset == -1


def test_rolling_std_matches_a_direct_computation_on_a_long_series():
    rng = np.random.default_rng(0)
    values = rng.normal(1000.0, 3.0, size=20_000)  # a large mean: the centred sums keep precision
    spread, ends = _trends.rolling_std(values, 5)
    assert spread.shape == (20_000 - 4,) and ends[0] == 4 and ends[-1] == 19_999
    direct = np.array([values[i - 4 : i + 1].std() for i in (4, 5000, 19_999)])
    assert spread[[0, 4996, 19_995]] == pytest.approx(direct, rel=1e-6)


def test_rolling_std_short_or_empty():
    assert _trends.rolling_std(np.array([1.0, 2.0]), 5)[0].size == 0
    assert _trends.rolling_std(np.array([]), 5)[0].size == 0


def test_correlation_only_over_steps_where_both_are_finite():
    first = np.array([1.0, 2.0, 3.0, NAN, 5.0])
    second = np.array([2.0, 4.0, 6.0, 8.0, NAN])
    assert _trends.correlation(first, second) == pytest.approx(1.0)
    assert math.isnan(_trends.correlation(np.ones(5), np.arange(5.0)))  # constant: undefined


def test_first_run_finds_consecutive_hits():
    assert _trends.first_run(np.array([1, 0, 1, 1, 1, 0], dtype=bool), 3) == 2
    assert _trends.first_run(np.array([1, 1, 0, 1, 1], dtype=bool), 3) == -1
    assert _trends.first_run(np.array([], dtype=bool), 1) == -1


def test_tail_mean_and_mean_skip_nonfinite():
    values = np.array([100.0, 1.0, NAN, 3.0])
    assert _trends.tail_mean(values, 2) == 2.0
    assert _trends.mean(values) == pytest.approx(104.0 / 3)
    assert math.isnan(_trends.mean(np.array([NAN])))
