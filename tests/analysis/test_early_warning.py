"""Early-warning detectors on constructed series: each fires on its pattern and only on it."""

from __future__ import annotations

import numpy as np
import pytest

from corevital_otel.plugins import early_warning
from corevital_otel.plugins._inputs import Flags
from corevital_otel.plugins.early_warning import RowSeries

from .helpers import default_scales, make_info, make_series, results_with

SCALES = default_scales()  # entropy typical 2.0 / bad 5.0, margin 0.35 / 0.02, surprisal 2.0 / 7.0
STEPS = 15


def row(entropy=None, margin=None, surprisal=None, steps: int = STEPS) -> RowSeries:
    def filled(values, default):
        return np.full(steps, default) if values is None else np.asarray(values, dtype=np.float64)

    return RowSeries(filled(entropy, 2.0), filled(margin, 0.35), filled(surprisal, 2.0))


def fired(series: RowSeries) -> list[str]:
    return [warning.name for warning in early_warning.detect(series, SCALES)]


def test_steady_series_raise_nothing():
    assert fired(row()) == []
    assert early_warning.failure_risk([], Flags()) == 0.0


def test_entropy_accelerating_but_not_a_linear_rise():
    accelerating = 2.0 + 0.03 * np.arange(STEPS) ** 2  # flat, then climbing
    (warning,) = early_warning.detect(row(entropy=accelerating), SCALES)
    assert warning.name == "entropy_accelerating" and warning.onset == 10
    assert "entropy_accelerating" not in fired(row(entropy=np.linspace(2.0, 5.0, STEPS)))


def test_margin_collapsing_after_confidence():
    margin = np.array([0.5] * 5 + [0.2] * 3 + [0.01] * 7)
    names = fired(row(margin=margin))
    assert "margin_collapsing" in names
    (warning,) = [
        w for w in early_warning.detect(row(margin=margin), SCALES) if w.name == "margin_collapsing"
    ]
    assert warning.onset == 8 and warning.strength == 1.0
    # Never confident: a model that is always unsure is not "collapsing".
    assert "margin_collapsing" not in fired(row(margin=np.full(STEPS, 0.01)))
    # A dip of two steps is not a collapse.
    assert "margin_collapsing" not in fired(row(margin=np.array([0.5, 0.01, 0.01, 0.5] * 4)))


def test_margin_declining():
    (warning,) = early_warning.detect(row(margin=np.linspace(0.6, 0.2, STEPS)), SCALES)
    assert warning.name == "margin_declining" and 0 < warning.onset < STEPS
    assert fired(row(margin=np.linspace(0.4, 0.35, STEPS))) == []


def test_surprisal_volatile_but_not_one_spike():
    volatile = np.array([0.5, 8.0] * 8)
    (warning,) = early_warning.detect(row(surprisal=volatile, steps=16), SCALES)
    assert warning.name == "surprisal_volatile" and warning.onset == 4
    spike = np.full(STEPS, 1.0)
    spike[7] = 12.0
    assert fired(row(surprisal=spike)) == []


def test_entropy_margin_divergence_when_both_rise():
    both = row(entropy=np.linspace(2.0, 4.0, STEPS), margin=np.linspace(0.3, 0.5, STEPS))
    assert "entropy_margin_divergence" in fired(both)
    opposed = row(entropy=np.linspace(2.0, 4.0, STEPS), margin=np.linspace(0.5, 0.3, STEPS))
    assert "entropy_margin_divergence" not in fired(opposed)


@pytest.mark.parametrize("steps", [0, 1, 2])
def test_empty_and_short_series_raise_nothing(steps):
    assert fired(row(steps=steps)) == []


def test_nan_steps_are_skipped():
    margin = np.linspace(0.6, 0.2, STEPS)
    margin[[3, 9]] = np.nan
    entropy = np.full(STEPS, np.nan)
    assert fired(row(entropy=entropy, margin=margin)) == ["margin_declining"]


def test_very_long_series():
    steps = 50_000
    surprisal = np.tile([0.5, 8.0], steps // 2)
    assert fired(row(surprisal=surprisal, steps=steps)) == ["surprisal_volatile"]


def test_failure_risk_combines_detectors_and_flags():
    warnings = [
        early_warning.EarlyWarning("entropy_accelerating", 3, 1.0),
        early_warning.EarlyWarning("margin_declining", 5, 0.5),
    ]
    expected = 1 - (1 - 0.6) * (1 - 0.4 * 0.5)
    assert early_warning.failure_risk(warnings, Flags()) == pytest.approx(expected)
    assert early_warning.failure_risk([], Flags(repetition_loop=True)) == 0.9
    assert early_warning.failure_risk(warnings, Flags(nan=True)) == 1.0


def test_assess_publishes_per_row_and_flags_onset_steps():
    entropy = np.stack([np.full(STEPS, 2.0), 2.0 + 0.03 * np.arange(STEPS) ** 2], axis=1)
    series = make_series(logits__entropy=entropy)
    results = results_with()
    early_warning.corevital_assess(make_info(rows=2), series, results)
    assert results.get("corevital.warning.signals") == ["", "entropy_accelerating"]
    assert results.get("corevital.warning.onset_step") == [-1, 10]
    assert results.get("corevital.warning.failure_risk")[0] == 0.0
    assert results.flagged_steps == {10: ["warning:entropy_accelerating"]}
    assert [(m.name, m.attributes) for m in results.metrics] == [
        ("corevital.warnings", {"corevital.warning.signal": "entropy_accelerating"})
    ]
    summary = results_with()
    early_warning.corevital_assess(make_info(rows=2, capture_mode="summary"), series, summary)
    assert summary.flagged_steps == {}  # no step events to point at in summary mode
    quiet = results_with()
    early_warning.corevital_assess(make_info(rows=1), make_series(logits__entropy=np.full(STEPS, 2.0)), quiet)
    assert quiet.attributes == {"corevital.warning.failure_risk": [0.0]}
