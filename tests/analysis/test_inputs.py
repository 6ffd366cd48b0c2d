"""The input adapter: published health flags win, step series are the fallback, shapes are per row."""

from __future__ import annotations

import numpy as np

from corevital_otel.plugins import _inputs

from .helpers import make_info, make_series, results_with

NAN = np.nan


def test_published_flags_win_over_series_evidence():
    series = make_series(logits__entropy=np.array([[1.0, NAN], [1.0, 1.0]]))  # row 1 has a NaN step
    results = results_with(
        corevital__health__per_row__nan_detected=np.array([True, False]),
        corevital__health__per_row__repetition_loop_detected=np.array([False, True]),
        corevital__health__per_row__high_entropy_steps=np.array([0, 3]),
    )
    first, second = _inputs.flags(make_info(rows=2), series, results)
    assert first.fired == ("nan",) and first.serious
    assert second.fired == ("repetition_loop", "high_entropy_steps") and second.high_entropy_steps == 3


def test_without_the_health_plugin_nan_and_loops_come_from_the_series():
    series = make_series(
        logits__entropy=np.array([[1.0, 1.0], [NAN, 1.0], [1.0, 1.0]]),
        health__repetition=np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 1.0]]),
    )
    first, second = _inputs.flags(make_info(rows=2), series, results_with())
    assert first.fired == ("nan",) and _inputs.nonfinite_step(series, 0) == 1
    assert second.fired == ("repetition_loop",) and _inputs.repetition_step(series, 1) == 2


def test_nonfinite_step_reads_every_published_indicator():
    series = make_series(
        logits__entropy=np.full((4, 1), NAN),  # ignored: the indicators below are published
        health__nonfinite=np.array([0.0, 0.0, 1.0, 1.0]),
    )
    assert _inputs.nonfinite_step(series, 0) == 2


def test_row_series_stop_at_the_rows_end():
    series = make_series(lengths=[3, 1], logits__entropy=np.arange(8.0).reshape(4, 2))
    assert _inputs.row_series(series, _inputs.ENTROPY, 0).tolist() == [0.0, 2.0, 4.0]
    assert _inputs.row_series(series, _inputs.ENTROPY, 1).tolist() == [1.0]
    assert _inputs.row_series(series, "missing", 0) is None


def test_layer_nonfinite_is_the_union_of_indicators_and_unknown_stays_nan():
    steps, rows, layers = 3, 1, 2
    nan = np.zeros((steps, rows, layers))
    nan[1, 0, 0] = 1.0
    inf = np.zeros((steps, rows, layers))
    inf[2, 0, 1] = 1.0
    for array in (nan, inf):
        array[0] = NAN  # nothing captured at step 0
    series = make_series(health__layers__nan=nan, health__layers__inf=inf)
    merged = _inputs.layer_inputs(series, 0).nonfinite
    assert np.isnan(merged[0]).all()
    assert merged[1:].tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_prompt_values_map_to_rows_of_their_prompt():
    results = results_with(corevital__prompt__basin_score__mean=np.array([0.2, np.nan]))
    assert [_inputs.prompt_basin(results, 4, row) for row in range(4)] == [0.2, 0.2, None, None]
    assert _inputs.prompt_basin(results_with(), 4, 0) is None
