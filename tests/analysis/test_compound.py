"""Compound signals: each condition on constructed evidence, and robustness to missing/NaN inputs."""

from __future__ import annotations

import numpy as np
import pytest

from corevital_otel.plugins import compound
from corevital_otel.plugins._inputs import Flags
from corevital_otel.plugins.compound import RowEvidence

from .helpers import default_scales, make_info, make_series, results_with

SCALES = default_scales(entropy_high=4.0)  # entropy typical 2.0
STEPS = 12


def evidence(steps: int = STEPS, **overrides) -> RowEvidence:
    values = dict(
        entropy=np.full(steps, 2.0),
        margin=np.full(steps, 0.35),
        surprisal=np.full(steps, 2.0),
        topk_mass=np.full(steps, 0.9),
        attention_spread=None,
        collapsed=None,
        basin=None,
        flags=Flags(),
    )
    values.update(overrides)
    return RowEvidence(**values)


def test_a_healthy_row_shows_no_signal():
    assert compound.detect(evidence(), SCALES) == []


def test_context_loss_needs_high_entropy_and_a_loosening_context():
    high = np.full(STEPS, 4.5)
    thin = np.full(STEPS, 0.1)
    spreading = np.linspace(0.3, 0.7, STEPS)
    spread_out = evidence(entropy=high, margin=thin, attention_spread=spreading)
    assert compound.detect(spread_out, SCALES) == ["context_loss"]
    assert compound.detect(evidence(entropy=high, margin=thin, basin=0.2), SCALES) == ["context_loss"]
    assert compound.detect(evidence(entropy=high, margin=thin, basin=0.9), SCALES) == []
    assert compound.detect(evidence(attention_spread=spreading), SCALES) == []  # entropy is fine


def test_confident_confusion():
    row = evidence(entropy=np.full(STEPS, 4.5), margin=np.full(STEPS, 0.4))
    assert compound.detect(row, SCALES) == ["confident_confusion"]


def test_degenerating_generation_needs_all_three_trends():
    ramp = np.arange(STEPS, dtype=np.float64)
    row = evidence(entropy=1.0 + 0.1 * ramp, margin=0.5 - 0.02 * ramp, surprisal=1.0 + 0.1 * ramp)
    assert compound.detect(row, SCALES) == ["degenerating_generation"]
    steady_margin = evidence(entropy=1.0 + 0.1 * ramp, surprisal=1.0 + 0.1 * ramp)
    assert compound.detect(steady_margin, SCALES) == []
    short = evidence(steps=9, entropy=1.0 + 0.1 * ramp[:9], margin=0.5 - 0.02 * ramp[:9], surprisal=ramp[:9])
    assert compound.detect(short, SCALES) == []


def test_attention_bottleneck():
    collapsed = np.zeros((STEPS, 4))
    collapsed[:, 1] = 1.0  # 25% of (step, layer) pairs
    row = evidence(entropy=np.full(STEPS, 4.5), margin=np.full(STEPS, 0.1), collapsed=collapsed)
    assert compound.detect(row, SCALES) == ["attention_bottleneck"]
    assert compound.detect(evidence(collapsed=collapsed), SCALES) == []


def test_confident_repetition_risk_locked_in_or_looping():
    locked = evidence(
        entropy=np.full(STEPS, 0.3), surprisal=np.full(STEPS, 0.1), topk_mass=np.full(STEPS, 0.99)
    )
    assert compound.detect(locked, SCALES) == ["confident_repetition_risk"]
    looping = evidence(flags=Flags(repetition_loop=True))
    assert compound.detect(looping, SCALES) == ["confident_repetition_risk"]
    unsure_loop = evidence(
        entropy=np.full(STEPS, 4.5), margin=np.full(STEPS, 0.1), flags=Flags(repetition_loop=True)
    )
    assert compound.detect(unsure_loop, SCALES) == []


@pytest.mark.parametrize("steps", [0, 1])
def test_empty_single_and_nan_evidence(steps):
    assert compound.detect(evidence(steps=steps), SCALES) == []
    nan = np.full(STEPS, np.nan)
    broken = evidence(
        entropy=nan, margin=nan, surprisal=nan, topk_mass=nan, attention_spread=nan, collapsed=nan[:, None]
    )
    assert compound.detect(broken, SCALES) == []


def test_very_long_series():
    steps = 40_000
    ramp = np.arange(steps, dtype=np.float64) / steps
    row = evidence(steps=steps, entropy=1.0 + ramp * 100, margin=0.5 - ramp * 20, surprisal=1.0 + ramp * 100)
    assert "degenerating_generation" in compound.detect(row, SCALES)


def test_assess_reads_the_published_series_and_records_metrics():
    entropy = np.stack([np.full(STEPS, 2.0), np.full(STEPS, 6.5)], axis=1)
    margin = np.stack([np.full(STEPS, 0.35), np.full(STEPS, 0.5)], axis=1)
    series = make_series(logits__entropy=entropy, logits__margin=margin)
    results = results_with()
    compound.corevital_assess(make_info(rows=2), series, results)
    assert results.get("corevital.compound.signals") == ["", "confident_confusion"]
    assert [(m.name, m.attributes) for m in results.metrics] == [
        ("corevital.compound.signals", {"corevital.compound.signal": "confident_confusion"})
    ]
    quiet = results_with()
    compound.corevital_assess(make_info(rows=1), make_series(logits__entropy=np.full(STEPS, 2.0)), quiet)
    assert quiet.attributes == {} and quiet.metrics == []
