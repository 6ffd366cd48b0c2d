"""Layer blame: which decoder layers look responsible, why, and how badly (severity in [0, 1]).

Per row, from the per-step, per-layer series the hidden-state and attention plugins publish:

- ``nonfinite`` (severity 1.0): the layer's output (or its attention row) held NaN/Inf on some step, as
  the hidden-state and attention plugins' indicators say; without those indicators, an L2 norm that is
  not a finite number. A NaN raises blame, never an exception.
- ``l2_outlier`` (0.6 to 0.9): the layer's mean output norm is off the depth trend by more than a factor
  of ``L2_OUTLIER_RATIO`` either way. Residual-stream norms grow roughly exponentially with depth, so the
  trend is a robust (Theil-Sen) line through log-norm over layer index; needs 3 layers with finite norms.
- ``unstable_norm`` (0.3 to 0.5): the layer's norm swings across steps: (p90 - p10) / median above
  ``UNSTABLE_SPREAD``; needs 4 steps.
- ``collapse`` (0.35 to 0.5): the layer's attention counted as collapsed on at least ``COLLAPSE_FREQUENT``
  of the steps (structural collapse is common in healthy models, hence the moderate severity).

A layer's severity combines its reasons as independent evidence: ``1 - prod(1 - s_reason)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from corevital_otel import GenerationInfo, GenerationResults, StepSeries, hookimpl
from corevital_otel.plugins import _inputs
from corevital_otel.plugins._inputs import LayerInputs

COREVITAL_PLUGIN_NAME = "blame"

REASONS = ("nonfinite", "l2_outlier", "unstable_norm", "collapse")
L2_OUTLIER_RATIO = 6.0
UNSTABLE_SPREAD = 1.0
UNSTABLE_MIN_STEPS = 4
COLLAPSE_FREQUENT = 0.5


@dataclass(frozen=True)
class LayerBlame:
    layer: int
    severity: float
    reasons: tuple[str, ...]  # in REASONS order


def _column_statistics(values: np.ndarray, quantiles: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``(steps, layers)``: the finite-value count and the given percentiles (linear
    interpolation, NaN for an empty column), vectorised: one sort, no loop over layers."""
    finite = np.isfinite(values)
    counts = finite.sum(axis=0)
    ordered = np.sort(np.where(finite, values, np.inf), axis=0)  # non-finite values sort last
    columns = np.arange(values.shape[1])
    out = np.full((len(quantiles), values.shape[1]), np.nan)
    for index, quantile in enumerate(quantiles):
        position = np.maximum(counts - 1, 0) * quantile / 100.0
        low, high = np.floor(position).astype(np.int64), np.ceil(position).astype(np.int64)
        weight = position - low
        with np.errstate(invalid="ignore"):
            value = ordered[low, columns] * (1 - weight) + ordered[high, columns] * weight
        out[index] = np.where(counts > 0, value, np.nan)
    return counts, out


def _theil_sen_residuals(log_norms: np.ndarray) -> np.ndarray:
    """Residuals of finite ``log_norms`` (NaN elsewhere) from a robust line over the layer index."""
    layers = np.flatnonzero(np.isfinite(log_norms))
    points = log_norms[layers]
    first, second = np.triu_indices(layers.size, k=1)
    slope = float(np.median((points[second] - points[first]) / (layers[second] - layers[first])))
    intercept = float(np.median(points - slope * layers))
    residuals = np.full(log_norms.shape, np.nan)
    residuals[layers] = points - (intercept + slope * layers)
    return residuals


def _l2_evidence(l2: np.ndarray, nonfinite_from_l2: bool) -> dict[int, dict[str, float]]:
    """Per layer, the severity of each L2-based reason found."""
    evidence: dict[int, dict[str, float]] = {}
    with np.errstate(all="ignore"):
        if nonfinite_from_l2:
            for layer in np.flatnonzero((~np.isfinite(l2)).any(axis=0)):
                evidence.setdefault(int(layer), {})["nonfinite"] = 1.0
        finite = np.where(np.isfinite(l2), l2, 0.0)
        counts, (p10, median, p90) = _column_statistics(l2, (10, 50, 90))
        means = np.where(counts > 0, finite.sum(axis=0) / np.maximum(counts, 1), np.nan)
        log_norms = np.where(means > 0, np.log(means), np.nan)
        if np.isfinite(log_norms).sum() >= 3:
            residuals = _theil_sen_residuals(log_norms)
            limit = np.log(L2_OUTLIER_RATIO)
            for layer in np.flatnonzero(np.abs(np.nan_to_num(residuals)) > limit):
                excess = abs(residuals[layer]) / limit
                evidence.setdefault(int(layer), {})["l2_outlier"] = float(min(0.9, 0.5 + 0.1 * excess))
        spread = (p90 - p10) / median
        unstable = (counts >= UNSTABLE_MIN_STEPS) & (median > 0) & (spread > UNSTABLE_SPREAD)
        for layer in np.flatnonzero(unstable):
            severity = 0.3 + 0.2 * min(1.0, float(spread[layer]) / (2 * UNSTABLE_SPREAD))
            evidence.setdefault(int(layer), {})["unstable_norm"] = severity
    return evidence


def blame_row(inputs: LayerInputs) -> list[LayerBlame]:
    """The blamed layers of one row, most severe first (ties: lower layer first)."""
    evidence: dict[int, dict[str, float]] = {}
    if inputs.l2 is not None and inputs.l2.size:
        # With a NaN/Inf indicator published, it decides (a NaN there marks a step nothing was captured
        # for); without one, a norm that is not a finite number is the evidence.
        evidence = _l2_evidence(inputs.l2, nonfinite_from_l2=inputs.nonfinite is None)
    if inputs.nonfinite is not None and inputs.nonfinite.size:
        with np.errstate(invalid="ignore"):
            hits = inputs.nonfinite > 0.5
        for layer in np.flatnonzero(hits.any(axis=0)):
            evidence.setdefault(int(layer), {})["nonfinite"] = 1.0
    if inputs.collapsed is not None and inputs.collapsed.size:
        known = np.isfinite(inputs.collapsed)
        with np.errstate(invalid="ignore"):
            hits = ((inputs.collapsed > 0.5) & known).sum(axis=0)
        rates = hits / np.maximum(known.sum(axis=0), 1)
        for layer in np.flatnonzero(rates >= COLLAPSE_FREQUENT):
            evidence.setdefault(int(layer), {})["collapse"] = 0.2 + 0.3 * float(rates[layer])
    blamed = []
    for layer, found in evidence.items():
        severity = 1.0 - float(np.prod([1.0 - value for value in found.values()]))
        reasons = tuple(reason for reason in REASONS if reason in found)
        blamed.append(LayerBlame(layer, round(severity, 6), reasons))
    return sorted(blamed, key=lambda item: (-item.severity, item.layer))


def merge_rows(rows: list[list[LayerBlame]]) -> list[LayerBlame]:
    """Generation-level blame: every layer any row blames, at its worst severity, reasons united."""
    merged: dict[int, LayerBlame] = {}
    for blamed in rows:
        for item in blamed:
            known = merged.get(item.layer)
            if known is None:
                merged[item.layer] = item
                continue
            reasons = tuple(r for r in REASONS if r in known.reasons or r in item.reasons)
            merged[item.layer] = LayerBlame(item.layer, max(known.severity, item.severity), reasons)
    return sorted(merged.values(), key=lambda item: (-item.severity, item.layer))


@hookimpl(trylast=True)  # after the hidden-state and attention plugins' own assess
def corevital_assess(info: GenerationInfo, series: StepSeries, results: GenerationResults) -> None:
    inputs = [_inputs.layer_inputs(series, row) for row in range(_inputs.rows_of(info, series))]
    if not any(item.layers for item in inputs):
        return  # no per-layer evidence published (capture off, or summary mode skipped it)
    per_row = [blame_row(item) for item in inputs]
    merged = merge_rows(per_row)
    results.set("corevital.blame.layers", [item.layer for item in merged])
    if not merged:
        return  # looked, found nothing: the empty list says so; spans have a limited attribute budget
    results.set("corevital.blame.severity", [item.severity for item in merged])
    results.set("corevital.blame.reasons", [",".join(item.reasons) for item in merged])
    results.set_rows("corevital.blame.top_layer", [blamed[0].layer if blamed else -1 for blamed in per_row])
    results.set_rows(
        "corevital.blame.top_severity", [blamed[0].severity if blamed else 0.0 for blamed in per_row]
    )
    results.set_rows(
        "corevital.blame.top_reasons", [",".join(blamed[0].reasons) if blamed else "" for blamed in per_row]
    )
