"""Baselines and drift: divergence from a calibrated baseline, and a rolling per-model baseline.

**Calibrated** (``corevital-otel calibrate`` wrote a file; configure it with
``plugin_options={"baseline": {"path": "baseline.json"}}`` or ``COREVITAL_BASELINE``): each row of a
generation of that model gets

- a divergence score in [0, 1]: for each of entropy, surprisal, margin and top-k mass, the
  Kolmogorov-Smirnov distance between the row's values and the baseline distribution, averaged over the
  metrics present in both (0: same distribution; a row of few steps has a noise floor near 0.9/sqrt(steps));
- anomalous steps: steps where a metric is in its risky tail, beyond the baseline's 99th percentile
  (entropy, surprisal) or below its 1st (margin, top-k mass).

**Rolling** (always on unless ``{"baseline": {"rolling": False}}``): per model, exponential moving averages
(weight ``alpha``, default 0.1) of each row's risk score and mean entropy, and their exponentially weighted
variance; generations that raised are left out. After ``WARMUP`` rows, a row whose value exceeds the
average by more than 3 standard deviations (and by at least 0.1 risk / 0.5 bits) is a spike. The state
lives in this plugin, per process, guarded by a lock, and restarts when instrumentation starts.
``ROLLING``, ``Ema``, ``EMA_METRICS``, ``WARMUP`` and ``SPIKE_MIN_DELTA`` are read by the drift plugin.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from corevital_otel import GenerationInfo, GenerationResults, MetricSpec, StepSeries, hookimpl
from corevital_otel.plugins import _inputs, _options
from corevital_otel.plugins._baseline_file import (
    ENVIRONMENT_VARIABLE,
    OPTIONS_KEY,
    Baseline,
    BaselineError,
    baseline_for,
    configured_paths,
    load,
)

COREVITAL_PLUGIN_NAME = "baseline"

# step series -> which tail is risky
DIVERGENCE_METRICS: Mapping[str, str] = {
    _inputs.ENTROPY: "high",
    _inputs.SURPRISAL: "high",
    _inputs.MARGIN: "low",
    _inputs.TOPK_MASS: "low",
}
TAIL = 0.01
MAX_FLAGGED_STEPS = 8  # anomalous steps flagged for step events per generation
DEFAULT_ALPHA = 0.1
WARMUP = 10
SPIKE_SIGMAS = 3.0
SPIKE_MIN_DELTA: Mapping[str, float] = {"risk": 0.1, "entropy": 0.5}
EMA_METRICS: Mapping[str, str] = {
    "risk": "corevital.baseline.risk.ema",
    "entropy": "corevital.baseline.entropy.ema",
}
RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _settings(info: GenerationInfo) -> Mapping[str, Any]:
    return _options.settings(info.options, OPTIONS_KEY)


# -- calibrated baseline -----------------------------------------------------------------------------


def ks_distance(values: np.ndarray, cdf: Any) -> float:
    """Kolmogorov-Smirnov distance between the finite ``values`` and a distribution function; NaN if none."""
    points = np.sort(values[np.isfinite(values)])
    if not points.size:
        return float("nan")
    expected = cdf(points)
    above = np.arange(1, points.size + 1) / points.size - expected
    below = expected - np.arange(points.size) / points.size
    return float(max(above.max(), below.max()))


@dataclass(frozen=True)
class RowDivergence:
    score: float  # NaN when no metric could be compared
    anomalous_steps: tuple[int, ...]
    reasons: Mapping[int, tuple[str, ...]]  # step -> metrics in their risky tail


def row_divergence(values: Mapping[str, np.ndarray | None], baseline: Baseline) -> RowDivergence:
    distances, reasons = [], {}
    for name, tail in DIVERGENCE_METRICS.items():
        distribution, series = baseline.get(name), values.get(name)
        if distribution is None or series is None:
            continue
        distance = ks_distance(series, distribution.cdf)
        if math.isfinite(distance):
            distances.append(distance)
        with np.errstate(invalid="ignore"):
            if tail == "high":
                outside = series > distribution.quantile(1.0 - TAIL)
            else:
                outside = series < distribution.quantile(TAIL)
        for step in np.flatnonzero(outside):
            reasons.setdefault(int(step), []).append(name)
    score = float(np.mean(distances)) if distances else float("nan")
    steps = tuple(sorted(reasons))
    return RowDivergence(score, steps, {step: tuple(reasons[step]) for step in steps})


def _apply_calibrated(info: GenerationInfo, series: StepSeries, results: GenerationResults) -> None:
    _settings(info)
    try:
        baseline = baseline_for(info.model_name, info.options)
    except BaselineError as error:
        results.note_lost(f"baseline: {error}")
        return
    if baseline is None:
        return
    rows = _inputs.rows_of(info, series)
    divergences = [
        row_divergence({name: _inputs.row_series(series, name, row) for name in DIVERGENCE_METRICS}, baseline)
        for row in range(rows)
    ]
    results.set("corevital.baseline.source", baseline.source)
    results.set_rows("corevital.baseline.divergence", [d.score for d in divergences])
    results.set_rows("corevital.baseline.anomalous_steps", [len(d.anomalous_steps) for d in divergences])
    results.set_rows(
        "corevital.baseline.first_anomalous_step",
        [d.anomalous_steps[0] if d.anomalous_steps else -1 for d in divergences],
    )
    flagged = 0
    for divergence in divergences:
        if math.isfinite(divergence.score):
            results.record_metric("corevital.baseline.divergence", divergence.score)
        if divergence.anomalous_steps:
            results.record_metric("corevital.baseline.anomalous_steps", len(divergence.anomalous_steps))
        if info.capture_mode == "summary":
            continue  # no step events to point at
        for step in divergence.anomalous_steps:
            for name in divergence.reasons[step]:
                reason = f"baseline:{name}"
                if flagged < MAX_FLAGGED_STEPS and reason not in results.flagged_steps.get(step, ()):
                    results.flag_step(step, reason)
                    flagged += 1


# -- rolling baseline --------------------------------------------------------------------------------


@dataclass
class Ema:
    """Exponentially weighted mean and variance of one signal of one model."""

    mean: float = 0.0
    variance: float = 0.0
    count: int = 0

    def observe(self, value: float, alpha: float, min_delta: float) -> tuple[float, bool]:
        """Add ``value``; return (change of the mean, whether ``value`` was a spike before adding it)."""
        spike = (
            self.count >= WARMUP
            and value - self.mean > SPIKE_SIGMAS * math.sqrt(self.variance)
            and value - self.mean >= min_delta
        )
        before = self.mean
        if self.count == 0:
            self.mean, self.variance = value, 0.0
        else:
            difference = value - self.mean
            increment = alpha * difference
            self.mean += increment
            self.variance = (1.0 - alpha) * (self.variance + difference * increment)
        self.count += 1
        return self.mean - before, spike


class RollingBaselines:
    """Per (model, signal) moving averages, shared by every generation in the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[tuple[str, str], Ema] = {}

    def reset(self) -> None:
        with self._lock:
            self._state.clear()

    def observe(self, model: str, signal: str, value: float, alpha: float) -> tuple[float, bool]:
        with self._lock:
            ema = self._state.setdefault((model, signal), Ema())
            return ema.observe(value, alpha, SPIKE_MIN_DELTA[signal])

    def snapshot(self, model: str, signal: str) -> Ema | None:
        with self._lock:
            ema = self._state.get((model, signal))
            return None if ema is None else Ema(ema.mean, ema.variance, ema.count)


ROLLING = RollingBaselines()


def rolling_values(info: GenerationInfo, series: StepSeries, results: GenerationResults) -> dict[str, list]:
    """Per signal, the per-row values the rolling baseline averages (None where unknown): the row's risk
    score and the mean entropy of its real steps. The drift plugin compares the same values."""
    rows = _inputs.rows_of(info, series)
    risks = results.get("corevital.risk.score") or [None] * rows
    entropies: list = []
    for row in range(rows):
        entropy = _inputs.row_series(series, _inputs.ENTROPY, row)
        finite = entropy[np.isfinite(entropy)] if entropy is not None else np.empty(0)
        entropies.append(float(finite.mean()) if finite.size else None)
    return {"risk": [risks[row] if row < len(risks) else None for row in range(rows)], "entropy": entropies}


def _apply_rolling(info: GenerationInfo, series: StepSeries, results: GenerationResults) -> None:
    settings = _settings(info)
    if settings.get("rolling") is False or info.error_type is not None:
        return  # a generation that raised says nothing about the model's usual behaviour
    alpha = float(settings.get("alpha", DEFAULT_ALPHA))
    values = rolling_values(info, series, results)
    spikes: list[str] = []
    for row in range(_inputs.rows_of(info, series)):
        fired = []
        for signal, row_values in values.items():
            value = row_values[row]
            if value is None or not math.isfinite(value):
                continue
            change, spike = ROLLING.observe(info.model_name, signal, float(value), alpha)
            results.record_metric(EMA_METRICS[signal], change)
            if spike:
                fired.append(signal)
                results.record_metric("corevital.baseline.spikes", 1, {"corevital.baseline.signal": signal})
        spikes.append(",".join(fired))
    if any(spikes):
        results.set_rows("corevital.baseline.spike", spikes)


# -- hooks -------------------------------------------------------------------------------------------


@hookimpl
def corevital_check_options(options: Mapping[str, Any]) -> None:
    """A misspelt option or a baseline file that cannot be read fails instrument(), not every span."""
    _options.settings(options, OPTIONS_KEY)
    source = "plugin_options['baseline']['path']" if (options.get(OPTIONS_KEY) or {}).get("path") else None
    for path in configured_paths(options):
        try:
            load(path)
        except (BaselineError, OSError) as error:
            raise ValueError(f"{source or ENVIRONMENT_VARIABLE}: {error}") from error


@hookimpl
def corevital_declare_metrics() -> list[MetricSpec]:
    ROLLING.reset()  # the EMA gauges restart with the instruments created for this instrumentation
    return [
        MetricSpec(
            "corevital.baseline.divergence",
            "1",
            "histogram",
            "Divergence of each row from the model's calibrated baseline, in [0, 1].",
            RATIO_BUCKETS,
        ),
        MetricSpec(
            "corevital.baseline.anomalous_steps",
            "{step}",
            "counter",
            "Steps whose metrics fell in the calibrated baseline's risky tail.",
        ),
        MetricSpec(
            "corevital.baseline.risk.ema",
            "1",
            "up_down_counter",
            "Exponential moving average of the risk score, per model (current value).",
        ),
        MetricSpec(
            "corevital.baseline.entropy.ema",
            "bit",
            "up_down_counter",
            "Exponential moving average of rows' mean entropy, per model (current value).",
        ),
        MetricSpec(
            "corevital.baseline.spikes",
            "{generation}",
            "counter",
            "Rows whose risk or mean entropy spiked above the rolling baseline, by signal.",
        ),
    ]


@hookimpl
def corevital_assess(info: GenerationInfo, series: StepSeries, results: GenerationResults) -> None:
    _apply_calibrated(info, series, results)


@hookimpl
def corevital_explain(info: GenerationInfo, series: StepSeries, results: GenerationResults) -> None:
    _apply_rolling(info, series, results)  # explain: the risk score of the assess phase exists now
