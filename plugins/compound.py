"""Compound signals: failure patterns that only show when several metrics are read together.

Per row, over its real steps (NaN steps left out). "Recent" means the last 5 steps with a value, "late"
the last third, "high entropy" the family's (or baseline's) high-entropy threshold ``H_high``
(plugins/_scales.py: the health plugin's threshold, or the baseline's 95th percentile).

- ``context_loss``: late mean entropy >= ``H_high`` while the model lets go of its context: the new
  query's attention spreads (its normalised entropy, 0 focused .. 1 uniform over the keys, mean over
  layers, rose by >= 0.15 from the first to the last third; published in full detail only), or the
  prompt's basin score (middle-vs-boundary attention) is below 0.3.
- ``confident_confusion``: recent mean entropy >= ``H_high`` and recent mean margin >= 0.3: one strong
  pick over an otherwise flat distribution (plausible-looking but unreliable output).
- ``degenerating_generation``: over 10 steps or more, all three at once, as least-squares change over
  the row (slope x (steps - 1)): entropy rises by >= ``max(0.25, 0.15 span_entropy)`` bits, margin falls
  by >= ``span_margin / 4`` and surprisal rises by >= ``0.15 span_surprisal`` bits (``span`` = the
  typical-to-bad distance of the metric's scale), so a slow drift over a long generation counts too.
- ``attention_bottleneck``: the layers' attention counted as collapsed on >= 20% of (step, layer) pairs
  while mean entropy >= ``H_high``: information cannot be routed, and the model is unsure.
- ``confident_repetition_risk``: recent mean entropy <= half the typical entropy, recent surprisal <= 1
  bit and recent top-k mass >= 0.95 (locked in, confidently); or a repetition loop at recent entropy at or
  below the typical value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from corevital_otel import GenerationInfo, GenerationResults, MetricSpec, StepSeries, hookimpl
from corevital_otel.plugins import _inputs, _trends
from corevital_otel.plugins._inputs import Flags
from corevital_otel.plugins._scales import Scales, resolve

COREVITAL_PLUGIN_NAME = "compound"

SIGNALS = (
    "context_loss",
    "confident_confusion",
    "degenerating_generation",
    "attention_bottleneck",
    "confident_repetition_risk",
)
RECENT = 5
ATTENTION_SPREADING = 0.15
LOW_BASIN = 0.3
CONFIDENT_MARGIN = 0.3
DEGENERATION_MIN_STEPS = 10
BOTTLENECK_COLLAPSE_RATE = 0.2
LOCKED_SURPRISAL_BITS = 1.0
LOCKED_TOPK_MASS = 0.95


@dataclass(frozen=True)
class RowEvidence:
    """One row's inputs; an empty array (or None) when the metric was not published."""

    entropy: np.ndarray
    margin: np.ndarray
    surprisal: np.ndarray
    topk_mass: np.ndarray
    attention_spread: np.ndarray | None  # normalised attention entropy per step
    collapsed: np.ndarray | None  # (steps, layers) 0/1
    basin: float | None
    flags: Flags


def context_loss(row: RowEvidence, scales: Scales) -> bool:
    (_, _, late), _ = _trends.thirds(row.entropy)
    if not late >= scales.entropy_high:
        return False
    diffusing = False
    if row.attention_spread is not None:
        (early_spread, _, late_spread), _ = _trends.thirds(row.attention_spread)
        diffusing = late_spread - early_spread >= ATTENTION_SPREADING
    return diffusing or (row.basin is not None and row.basin < LOW_BASIN)


def confident_confusion(row: RowEvidence, scales: Scales) -> bool:
    entropy, margin = _trends.tail_mean(row.entropy, RECENT), _trends.tail_mean(row.margin, RECENT)
    return entropy >= scales.entropy_high and margin >= CONFIDENT_MARGIN


def degenerating_generation(row: RowEvidence, scales: Scales) -> bool:
    series = {"entropy": row.entropy, "margin": row.margin, "surprisal": row.surprisal}
    if any(np.isfinite(values).sum() < DEGENERATION_MIN_STEPS for values in series.values()):
        return False
    change = {name: _trends.slope(v) * (np.isfinite(v).sum() - 1) for name, v in series.items()}
    span = {name: abs(scales.of(name).bad - scales.of(name).typical) for name in series}
    return (
        change["entropy"] >= max(0.25, 0.15 * span["entropy"])
        and change["margin"] <= -span["margin"] / 4
        and change["surprisal"] >= 0.15 * span["surprisal"]
    )


def attention_bottleneck(row: RowEvidence, scales: Scales) -> bool:
    if row.collapsed is None:
        return False
    finite = row.collapsed[np.isfinite(row.collapsed)]
    if not finite.size:
        return False
    rate = float((finite > 0.5).mean())
    return rate >= BOTTLENECK_COLLAPSE_RATE and _trends.mean(row.entropy) >= scales.entropy_high


def confident_repetition_risk(row: RowEvidence, scales: Scales) -> bool:
    entropy = _trends.tail_mean(row.entropy, RECENT)
    if row.flags.repetition_loop and entropy <= scales.entropy.typical:
        return True
    if np.isfinite(row.entropy).sum() < RECENT:
        return False
    return (
        entropy <= scales.entropy.typical / 2
        and _trends.tail_mean(row.surprisal, RECENT) <= LOCKED_SURPRISAL_BITS
        and _trends.tail_mean(row.topk_mass, RECENT) >= LOCKED_TOPK_MASS
    )


_CONDITIONS: Mapping[str, Callable[[RowEvidence, Scales], bool]] = {
    "context_loss": context_loss,
    "confident_confusion": confident_confusion,
    "degenerating_generation": degenerating_generation,
    "attention_bottleneck": attention_bottleneck,
    "confident_repetition_risk": confident_repetition_risk,
}


def detect(row: RowEvidence, scales: Scales) -> list[str]:
    """The compound signals one row shows, in ``SIGNALS`` order."""
    with np.errstate(all="ignore"):  # comparisons with NaN are simply False
        return [name for name in SIGNALS if _CONDITIONS[name](row, scales)]


def evidence(
    series: StepSeries, results: GenerationResults, flags: Flags, row: int, rows: int
) -> RowEvidence:
    def values(name: str) -> np.ndarray:
        array = _inputs.row_series(series, name, row)
        return np.empty(0) if array is None else array

    return RowEvidence(
        entropy=values(_inputs.ENTROPY),
        margin=values(_inputs.MARGIN),
        surprisal=values(_inputs.SURPRISAL),
        topk_mass=values(_inputs.TOPK_MASS),
        attention_spread=_inputs.attention_spread(series, row),
        collapsed=_inputs.layer_inputs(series, row).collapsed,
        basin=_inputs.prompt_basin(results, rows, row),
        flags=flags,
    )


@hookimpl
def corevital_declare_metrics() -> list[MetricSpec]:
    return [
        MetricSpec(
            "corevital.compound.signals",
            "{generation}",
            "counter",
            "Rows showing a compound signal, by corevital.compound.signal.",
        )
    ]


@hookimpl(trylast=True)  # reads the health flags set in the assess phase
def corevital_assess(info: GenerationInfo, series: StepSeries, results: GenerationResults) -> None:
    scales = resolve(info)
    row_flags = _inputs.flags(info, series, results)
    rows = len(row_flags)
    per_row = [detect(evidence(series, results, row_flags[row], row, rows), scales) for row in range(rows)]
    if not any(per_row):
        return  # spans have a limited attribute budget: only when some row shows a signal
    results.set_rows("corevital.compound.signals", [",".join(signals) for signals in per_row])
    for signals in per_row:
        for signal in signals:
            results.record_metric("corevital.compound.signals", 1, {"corevital.compound.signal": signal})
