"""Early warning: trend detectors over a row's step series, and a failure-risk value.

Signals that a generation is *heading* toward failure, not a promise of when. Each detector looks at one
row's real steps (NaN steps are left out, never propagated) and returns whether it fired, the step it
fired from and a strength in [0, 1]. The typical-to-bad distances ``span_x`` come from the same scales as
the risk score (plugins/_scales.py), so the detectors follow the model family or its baseline.

- ``entropy_accelerating``: over the early/middle/late thirds (6 steps or more), the late rise of mean
  entropy ``d2 = late - middle`` is at least ``delta = max(0.25, 0.15 span_entropy)`` bits and exceeds
  the early rise ``d1 = middle - early`` by at least ``delta / 2``. From the late third.
- ``margin_collapsing``: after a step with margin at or above the typical margin, the margin stays at
  or below the bad margin for 4 consecutive steps. From the first of those steps.
- ``margin_declining``: the least-squares margin change over the row (slope x (steps - 1)) is a drop of at
  least ``span_margin / 2`` (6 steps or more). From the first step below the early mean by a quarter span.
- ``surprisal_volatile``: the median of the rolling standard deviation of surprisal (5-step windows) is
  at least ``0.6 span_surprisal`` bits (sampling alone gets near half the span). From the end of the
  first window that reaches it.
- ``entropy_margin_divergence``: entropy and margin, normally opposed, move the same way: both rise (or
  both fall) over the row by at least ``delta`` bits and ``span_margin / 4``. From the late third.

``failure_risk = 1 - prod(1 - weight_d x strength_d)`` over fired detectors, raised to 0.9 by a
repetition loop and to 1.0 by NaN/Inf (the failure is then no longer ahead, it happened).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from corevital_otel import GenerationInfo, GenerationResults, MetricSpec, StepSeries, hookimpl
from corevital_otel.plugins import _inputs, _trends
from corevital_otel.plugins._inputs import Flags
from corevital_otel.plugins._scales import Scales, resolve

COREVITAL_PLUGIN_NAME = "early_warning"

MIN_TREND_STEPS = 6
COLLAPSE_RUN = 4
VOLATILITY_SPAN_SHARE = 0.6  # sampling alone gives surprisal a rolling std near half the span
VOLATILITY_WINDOW = 5
WEIGHTS: Mapping[str, float] = {
    "entropy_accelerating": 0.6,
    "margin_collapsing": 0.6,
    "margin_declining": 0.4,
    "surprisal_volatile": 0.4,
    "entropy_margin_divergence": 0.5,
}
DETECTORS = tuple(WEIGHTS)
REPETITION_FAILURE_RISK = 0.9


@dataclass(frozen=True)
class EarlyWarning:
    name: str
    onset: int  # step index
    strength: float  # in [0, 1]


@dataclass(frozen=True)
class RowSeries:
    entropy: np.ndarray
    margin: np.ndarray
    surprisal: np.ndarray


def _entropy_delta(scales: Scales) -> float:
    return max(0.25, 0.15 * abs(scales.entropy.bad - scales.entropy.typical))


def _margin_span(scales: Scales) -> float:
    return abs(scales.margin.typical - scales.margin.bad)


def entropy_accelerating(row: RowSeries, scales: Scales) -> EarlyWarning | None:
    if np.isfinite(row.entropy).sum() < MIN_TREND_STEPS:
        return None
    (early, middle, late), onset = _trends.thirds(row.entropy)
    delta = _entropy_delta(scales)
    late_rise, early_rise = late - middle, middle - early
    if late_rise >= delta and late_rise - early_rise >= delta / 2:
        return EarlyWarning("entropy_accelerating", onset, float(min(1.0, late_rise / (2 * delta))))
    return None


def margin_collapsing(row: RowSeries, scales: Scales) -> EarlyWarning | None:
    margin = row.margin
    confident = np.flatnonzero(margin >= scales.margin.typical)
    if not confident.size:
        return None
    after = confident[0] + 1
    with np.errstate(invalid="ignore"):
        collapsed = margin[after:] <= scales.margin.bad
    start = _trends.first_run(collapsed, COLLAPSE_RUN)
    if start < 0:
        return None
    onset = int(after + start)
    return EarlyWarning("margin_collapsing", onset, float(np.mean(collapsed[start:])))


def margin_declining(row: RowSeries, scales: Scales) -> EarlyWarning | None:
    steps, points = _trends.finite_points(row.margin)
    if points.size < MIN_TREND_STEPS:
        return None
    change = _trends.slope(row.margin) * (points.size - 1)
    span = _margin_span(scales)
    if change > -span / 2:
        return None
    (early, _, _), _ = _trends.thirds(row.margin)
    below = np.flatnonzero(points <= early - span / 4)
    onset = int(steps[below[0]]) if below.size else int(steps[0])
    return EarlyWarning("margin_declining", onset, float(min(1.0, -change / span)))


def surprisal_volatile(row: RowSeries, scales: Scales) -> EarlyWarning | None:
    spread, ends = _trends.rolling_std(row.surprisal, VOLATILITY_WINDOW)
    if not spread.size:
        return None
    limit = VOLATILITY_SPAN_SHARE * abs(scales.surprisal.bad - scales.surprisal.typical)
    typical = float(np.median(spread))
    if typical < limit:
        return None
    onset = int(ends[np.flatnonzero(spread >= limit)[0]])
    return EarlyWarning("surprisal_volatile", onset, float(min(1.0, typical / (2 * limit))))


def entropy_margin_divergence(row: RowSeries, scales: Scales) -> EarlyWarning | None:
    usable = np.isfinite(row.entropy[: row.margin.size]) & np.isfinite(row.margin[: row.entropy.size])
    if usable.sum() < MIN_TREND_STEPS:
        return None
    length = usable.size
    entropy = np.where(usable, row.entropy[:length], np.nan)
    margin = np.where(usable, row.margin[:length], np.nan)
    entropy_change = _trends.slope(entropy) * (usable.sum() - 1)
    margin_change = _trends.slope(margin) * (usable.sum() - 1)
    entropy_need, margin_need = _entropy_delta(scales), _margin_span(scales) / 4
    same_way = np.sign(entropy_change) == np.sign(margin_change)
    if not (same_way and abs(entropy_change) >= entropy_need and abs(margin_change) >= margin_need):
        return None
    strength = min(1.0, abs(entropy_change) / (2 * entropy_need), abs(margin_change) / (2 * margin_need))
    _, onset = _trends.thirds(entropy)
    return EarlyWarning("entropy_margin_divergence", onset, float(strength))


_DETECTOR_FUNCTIONS: Mapping[str, Callable[[RowSeries, Scales], EarlyWarning | None]] = {
    "entropy_accelerating": entropy_accelerating,
    "margin_collapsing": margin_collapsing,
    "margin_declining": margin_declining,
    "surprisal_volatile": surprisal_volatile,
    "entropy_margin_divergence": entropy_margin_divergence,
}


def detect(row: RowSeries, scales: Scales) -> list[EarlyWarning]:
    """Every detector that fires on one row, in ``DETECTORS`` order."""
    found = (_DETECTOR_FUNCTIONS[name](row, scales) for name in DETECTORS)
    return [warning for warning in found if warning is not None]


def failure_risk(warnings: list[EarlyWarning], flags: Flags) -> float:
    if flags.nonfinite:
        return 1.0
    survive = float(np.prod([1.0 - WEIGHTS[w.name] * w.strength for w in warnings]))
    risk = 1.0 - survive
    return max(risk, REPETITION_FAILURE_RISK) if flags.repetition_loop else risk


def _row(series: StepSeries, row: int) -> RowSeries:
    def values(name: str) -> np.ndarray:
        array = _inputs.row_series(series, name, row)
        return np.empty(0) if array is None else array

    return RowSeries(values(_inputs.ENTROPY), values(_inputs.MARGIN), values(_inputs.SURPRISAL))


@hookimpl
def corevital_declare_metrics() -> list[MetricSpec]:
    return [
        MetricSpec(
            "corevital.warnings",
            "{generation}",
            "counter",
            "Rows on which an early-warning detector fired, by corevital.warning.signal.",
        )
    ]


@hookimpl(trylast=True)  # reads the health flags set in the assess phase
def corevital_assess(info: GenerationInfo, series: StepSeries, results: GenerationResults) -> None:
    scales = resolve(info)
    row_flags = _inputs.flags(info, series, results)
    per_row = [detect(_row(series, row), scales) for row in range(len(row_flags))]
    if not per_row:
        return
    results.set_rows(
        "corevital.warning.failure_risk",
        [failure_risk(w, f) for w, f in zip(per_row, row_flags, strict=True)],
    )
    if any(per_row):  # spans have a limited attribute budget: detail only when something fired
        results.set_rows(
            "corevital.warning.signals", [",".join(w.name for w in warnings) for warnings in per_row]
        )
        results.set_rows(
            "corevital.warning.onset_step", [min((w.onset for w in ws), default=-1) for ws in per_row]
        )
    for warnings in per_row:
        for warning in warnings:
            results.record_metric("corevital.warnings", 1, {"corevital.warning.signal": warning.name})
            reason = f"warning:{warning.name}"
            # Step events exist only in full detail; one reason per step even when several rows share it.
            if info.capture_mode != "summary" and reason not in results.flagged_steps.get(warning.onset, ()):
                results.flag_step(warning.onset, reason)
