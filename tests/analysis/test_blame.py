"""Layer blame from constructed per-layer series: every reason, NaN robustness, degenerate shapes."""

from __future__ import annotations

import numpy as np
import pytest

from corevital_otel.plugins import blame
from corevital_otel.plugins._inputs import LayerInputs

from .helpers import make_info, make_series, results_with

LAYERS = 6
STEPS = 8
# Residual-stream norms growing ~exponentially with depth: healthy, nothing to blame.
HEALTHY = np.tile(10.0 * 1.5 ** np.arange(LAYERS), (STEPS, 1))


def inputs(l2=None, nonfinite=None, collapsed=None) -> LayerInputs:
    return LayerInputs(l2=l2, nonfinite=nonfinite, collapsed=collapsed)


def test_healthy_exponential_growth_is_not_blamed():
    assert blame.blame_row(inputs(l2=HEALTHY)) == []


def test_nan_norm_raises_blame_never_an_exception():
    l2 = HEALTHY.copy()
    l2[3:, 2] = np.nan
    (found,) = blame.blame_row(inputs(l2=l2))
    assert (found.layer, found.severity, found.reasons) == (2, 1.0, ("nonfinite",))


def test_the_nonfinite_indicator_decides_when_published():
    l2 = HEALTHY.copy()
    l2[:, 1] = np.nan  # nothing captured for layer 1 (NaN indicator), not a NaN output
    indicator = np.zeros((STEPS, LAYERS))
    indicator[:, 1] = np.nan
    indicator[5, 4] = 1.0
    (found,) = blame.blame_row(inputs(l2=l2, nonfinite=indicator))
    assert (found.layer, found.reasons) == (4, ("nonfinite",))


def test_l2_outlier_against_the_depth_trend():
    l2 = HEALTHY.copy()
    l2[:, 3] *= 20.0
    (found,) = blame.blame_row(inputs(l2=l2))
    assert found.layer == 3 and found.reasons == ("l2_outlier",)
    assert 0.6 <= found.severity <= 0.9
    l2[:, 3] = HEALTHY[:, 3] / 20.0  # a vanishing layer is off the trend too
    assert [item.layer for item in blame.blame_row(inputs(l2=l2))] == [3]


def test_unstable_norm_across_steps():
    l2 = HEALTHY.copy()
    l2[::2, 4] *= 4.0
    (found,) = blame.blame_row(inputs(l2=l2))
    assert found.layer == 4 and found.reasons == ("unstable_norm",)


def test_frequent_collapse_but_not_occasional():
    collapsed = np.zeros((STEPS, LAYERS))
    collapsed[:, 0] = 1.0
    collapsed[:2, 5] = 1.0  # 25% of steps: structural noise, not blamed
    (found,) = blame.blame_row(inputs(collapsed=collapsed))
    assert found.layer == 0 and found.reasons == ("collapse",) and found.severity == pytest.approx(0.5)


def test_reasons_combine_and_order_by_severity():
    l2 = HEALTHY.copy()
    l2[:, 2] *= 30.0
    l2[4, 5] = np.inf
    collapsed = np.zeros((STEPS, LAYERS))
    collapsed[:, 2] = 1.0
    found = blame.blame_row(inputs(l2=l2, collapsed=collapsed))
    assert [item.layer for item in found] == [5, 2]
    assert found[1].reasons == ("l2_outlier", "collapse")
    assert found[1].severity > 0.7  # 1 - (1 - outlier)(1 - collapse)


@pytest.mark.parametrize(
    "case",
    [
        inputs(),
        inputs(l2=np.empty((0, LAYERS))),
        inputs(l2=HEALTHY[:1]),  # one step
        inputs(l2=HEALTHY[:, :2]),  # two layers: no depth trend to compare with
        inputs(l2=np.full((STEPS, LAYERS), np.nan), nonfinite=np.full((STEPS, LAYERS), np.nan)),
        inputs(l2=np.zeros((STEPS, LAYERS))),
    ],
)
def test_degenerate_inputs(case):
    assert blame.blame_row(case) == []


def test_very_long_series():
    l2 = np.tile(HEALTHY, (2000, 1))
    l2[7000, 1] = np.nan
    assert [(b.layer, b.reasons) for b in blame.blame_row(inputs(l2=l2))] == [(1, ("nonfinite",))]


def test_assess_publishes_generation_and_per_row_blame():
    l2 = np.stack([HEALTHY, HEALTHY], axis=1)  # (steps, rows, layers)
    nan = np.zeros_like(l2)
    nan[2:, 1, 3] = 1.0
    series = make_series(hidden_states__layers__l2_norm=l2, health__layers__nan=nan)
    results = results_with()
    blame.corevital_assess(make_info(rows=2), series, results)
    assert results.get("corevital.blame.layers") == [3]
    assert results.get("corevital.blame.reasons") == ["nonfinite"]
    assert results.get("corevital.blame.top_layer") == [-1, 3]
    assert results.get("corevital.blame.top_severity") == [0.0, 1.0]
    assert results.get("corevital.blame.top_reasons") == ["", "nonfinite"]


def test_assess_with_nothing_to_blame_says_so_in_one_attribute():
    results = results_with()
    series = make_series(hidden_states__layers__l2_norm=HEALTHY[:, None, :])
    blame.corevital_assess(make_info(), series, results)
    assert results.attributes == {"corevital.blame.layers": []}


def test_assess_without_per_layer_series_publishes_nothing():
    results = results_with()
    blame.corevital_assess(make_info(), make_series(logits__entropy=np.ones(4)), results)
    assert not results.attributes
