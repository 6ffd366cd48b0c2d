"""Where a per-step logit metric stops being typical and becomes bad, per model family or per baseline.

The risk score's continuous components, the running risk and the compound signals normalise each metric
between a *typical* value (component 0) and a *bad* one (component 1). Without calibration those come
from the family cards (``risk_scales``): reasoned starting points, not fitted to released weights. With a
baseline calibrated for the model (``corevital-otel calibrate``), they come from the model's own distribution:
typical = its median, bad = its 99th percentile (1st for metrics where low is bad). That is what keeps a
healthy run of any model well below 1.0 (see docs/risk.md).

A caller can override the table per instrumentation:
``plugin_options={"risk": {"scales": {"entropy": [1.0, 4.5]}}}`` (``[typical, bad]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from corevital_otel import GenerationInfo, family_card, family_names
from corevital_otel.plugins import _inputs, _options
from corevital_otel.plugins._baseline_file import Baseline, BaselineError, baseline_for

OPTIONS_KEY = "risk"
METRICS = ("entropy", "margin", "topk_mass", "surprisal")
SERIES = {
    "entropy": _inputs.ENTROPY,
    "margin": _inputs.MARGIN,
    "topk_mass": _inputs.TOPK_MASS,
    "surprisal": _inputs.SURPRISAL,
}
# Smallest typical-to-bad distance, so a near-constant calibrated metric cannot make noise look bad.
_MIN_SPAN = {"entropy": 0.25, "margin": 0.02, "topk_mass": 0.02, "surprisal": 0.25}


@dataclass(frozen=True)
class Scale:
    typical: float
    bad: float  # above typical for entropy/surprisal, below it for margin/top-k mass

    def score(self, values: np.ndarray) -> np.ndarray:
        """0 at or on the good side of typical, 1 at or beyond bad, linear between; NaN stays NaN."""
        with np.errstate(invalid="ignore"):
            return np.clip(
                (np.asarray(values, dtype=np.float64) - self.typical) / (self.bad - self.typical), 0, 1
            )


@dataclass(frozen=True)
class Scales:
    source: str  # "family:<name>" or "baseline:<file>"
    entropy: Scale
    margin: Scale
    topk_mass: Scale
    surprisal: Scale
    entropy_high: float  # bits: a step above this is "high entropy" (compound signals, narrative)

    def of(self, metric: str) -> Scale:
        return getattr(self, metric)


@cache
def family_scales(name: str) -> dict[str, Scale]:
    """The (typical, bad) scale of each metric for a family (``default``'s for an unknown one)."""
    scales = family_card(name).risk_scales
    return {metric: Scale(*map(float, scales[metric])) for metric in METRICS}


# (typical, bad) per family, from the ``risk_scales`` section of each family card. Llama-style
# instruction models are sharper than GPT-2; a broad vocabulary (Qwen2's 150k tokens) leaves more room in
# bits before a distribution is truly flat.
FAMILY_SCALES: dict[str, dict[str, Scale]] = {name: family_scales(name) for name in family_names()}


def from_baseline(baseline: Baseline, fallback: dict[str, Scale]) -> dict[str, Scale]:
    scales = dict(fallback)
    for metric, series_name in SERIES.items():
        distribution = baseline.get(series_name)
        if distribution is None or distribution.count < 10:
            continue
        typical = distribution.quantile(0.5)
        low_is_bad = fallback[metric].bad < fallback[metric].typical
        bad = distribution.quantile(0.01 if low_is_bad else 0.99)
        span = max(abs(bad - typical), _MIN_SPAN[metric])
        scales[metric] = Scale(typical, typical - span if low_is_bad else typical + span)
    return scales


def _overrides(info: GenerationInfo) -> Mapping[str, Any]:
    overrides = _options.settings(info.options, OPTIONS_KEY).get("scales") or {}
    unknown = sorted(set(overrides) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown risk scale(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
    return overrides


def resolve(info: GenerationInfo) -> Scales:
    """The scales for this generation: baseline if one is calibrated for the model, else the family's;
    then the caller's overrides. Cached on ``info.state`` (several plugins ask)."""
    cached = info.state.get("_scales")
    if isinstance(cached, Scales):
        return cached
    card = family_card(info.family)
    scales = family_scales(card.name)
    source = f"family:{card.name}"
    entropy_high = _inputs.high_entropy_bits(info)
    try:
        baseline = baseline_for(info.model_name, info.options)
    except BaselineError:
        baseline = None  # the baseline plugin reports the unreadable file
    if baseline is not None:
        scales = from_baseline(baseline, scales)
        source = f"baseline:{baseline.source}"
        distribution = baseline.get(_inputs.ENTROPY)
        if distribution is not None and distribution.count >= 10:
            entropy_high = distribution.quantile(0.95)
    for metric, pair in _overrides(info).items():
        typical, bad = (float(value) for value in pair)
        if typical == bad:
            raise ValueError(f"risk scale {metric!r}: typical and bad must differ")
        scales = {**scales, metric: Scale(typical, bad)}
    resolved = Scales(source=source, entropy_high=entropy_high, **scales)
    info.state["_scales"] = resolved
    return resolved
