"""Drift: a relative jump of a generation's risk or entropy above the model's moving average.

The moving averages are the baseline plugin's rolling per-model EMAs (``plugins/baseline.py``: weight
``alpha``, exported as ``corevital.baseline.*.ema``); this plugin adds no second copy of them. It reads each
signal's EMA as it stood when the generation started, and after the generation a row drifts on a signal
when

    value - ema > fraction * |ema|    and    value - ema >= min_delta[signal]

once the EMA has seen at least ``min_samples`` rows. Each drifting signal raises one ``corevital.drift``
span event per generation and one count on ``corevital.drift.events`` — the inference-time analogue of a
training loop's perplexity-delta rollback trigger. The baseline plugin's own spike rule (3 standard
deviations) is a different, variance-based test; both read the same averages.

Options (``plugin_options={"drift": {...}}``): ``fraction`` (0.5), ``min_samples`` (the baseline's warm-up,
10), ``min_delta`` (``{"risk": 0.1, "entropy": 0.5}``: the baseline's spike floors), ``signals``
(``["risk", "entropy"]``). With the baseline plugin disabled, or its rolling baseline off, the averages
never warm up and no drift is reported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from corevital_otel import GenerationInfo, GenerationResults, MetricSpec, StepSeries, hookimpl
from corevital_otel.plugins import _options, baseline

COREVITAL_PLUGIN_NAME = "drift"
EVENT = "corevital.drift"
SIGNALS = tuple(baseline.EMA_METRICS)  # the signals the rolling baseline averages: risk, entropy


class DriftOptions(_options.PluginOptions):
    fraction: Any = _options.option(0.5, "relative rise over the rolling average that counts as drift")
    min_samples: Any = _options.option(baseline.WARMUP, "rows the rolling average must have seen first")
    min_delta: Any = _options.option(
        dict(baseline.SPIKE_MIN_DELTA), "smallest absolute rise per signal ({signal: value})"
    )
    signals: Any = _options.option(list(SIGNALS), "signals watched: risk, entropy")


COREVITAL_OPTIONS = DriftOptions


@dataclass(frozen=True)
class Settings:
    fraction: float
    min_samples: int
    min_delta: Mapping[str, float]
    signals: tuple[str, ...]

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Settings:
        raw = _options.settings(options, COREVITAL_PLUGIN_NAME, DriftOptions)
        fraction = float(raw.get("fraction", 0.5))
        min_samples = int(raw.get("min_samples", baseline.WARMUP))
        signals = tuple(raw.get("signals", SIGNALS))
        if not fraction > 0 or min_samples < 1:
            raise ValueError("plugin_options['drift']: fraction must be > 0 and min_samples >= 1")
        if set(signals) - set(SIGNALS):
            raise ValueError(f"plugin_options['drift']['signals']: choose from {', '.join(SIGNALS)}")
        min_delta = {**baseline.SPIKE_MIN_DELTA, **(raw.get("min_delta") or {})}
        return cls(fraction, min_samples, {name: float(min_delta[name]) for name in signals}, signals)


@dataclass(frozen=True)
class Drift:
    signal: str
    rows: tuple[int, ...]
    value: float  # the largest drifting row value
    baseline: float  # the EMA before this generation
    samples: int  # rows the EMA had seen


def detect(values: list, ema: baseline.Ema | None, settings: Settings, signal: str) -> Drift | None:
    """The rows of one generation that drift on ``signal`` against ``ema`` (the average before it)."""
    if ema is None or ema.count < settings.min_samples:
        return None
    floor = settings.min_delta[signal]
    drifting = [
        (row, float(value))
        for row, value in enumerate(values)
        if value is not None
        and math.isfinite(value)
        and value - ema.mean > settings.fraction * abs(ema.mean)
        and value - ema.mean >= floor
    ]
    if not drifting:
        return None
    return Drift(signal, tuple(row for row, _ in drifting), max(v for _, v in drifting), ema.mean, ema.count)


@hookimpl
def corevital_declare_metrics() -> list[MetricSpec]:
    # The averages restart with each instrumentation, as the baseline plugin does: with that plugin
    # disabled they stay empty instead of keeping a previous instrumentation's values.
    baseline.ROLLING.reset()
    return [
        MetricSpec(
            "corevital.drift.events",
            "{event}",
            "counter",
            "corevital.drift events: generations whose risk or entropy jumped above the model's moving "
            "average, by corevital.drift.signal.",
        )
    ]


@hookimpl
def corevital_generation_start(info: GenerationInfo) -> None:
    settings = Settings.from_options(info.options)
    # The averages as they stand before this generation: the baseline plugin adds this generation's rows
    # in its own explain hook, whichever runs first.
    before = {signal: baseline.ROLLING.snapshot(info.model_name, signal) for signal in settings.signals}
    info.state[COREVITAL_PLUGIN_NAME] = (settings, before)


@hookimpl
def corevital_explain(info: GenerationInfo, series: StepSeries, results: GenerationResults) -> None:
    settings, before = info.state.pop(COREVITAL_PLUGIN_NAME)
    if info.error_type is not None or not any(
        ema is not None and ema.count >= settings.min_samples for ema in before.values()
    ):
        return  # nothing to compare with yet (or nothing generated)
    found = []
    values = baseline.rolling_values(info, series, results)
    for signal in settings.signals:
        drift = detect(values[signal], before[signal], settings, signal)
        if drift is None:
            continue
        found.append(drift.signal)
        results.add_event(
            EVENT,
            {
                "corevital.drift.signal": drift.signal,
                "corevital.drift.value": drift.value,
                "corevital.drift.baseline": drift.baseline,
                "corevital.drift.relative_change": (drift.value - drift.baseline) / abs(drift.baseline)
                if drift.baseline
                else float("nan"),
                "corevital.drift.threshold": settings.fraction,
                "corevital.drift.rows": list(drift.rows),
                "corevital.drift.baseline_samples": drift.samples,
            },
        )
        results.record_metric("corevital.drift.events", 1, {"corevital.drift.signal": drift.signal})
    results.set("corevital.drift.detected", bool(found))
    if found:
        results.set("corevital.drift.signals", found)
