"""Narrative: 2-5 plain sentences per row, from templates, citing the actual values, steps and layers.

Built last (explain phase) from what the other plugins published, read by name, so it can only repeat
what the span already says: the risk level word is derived from the exported score, a flag is mentioned
if and only if it fired, and "no health flag fired" appears only when none did. docs/risk.md lists the
templates. Sentence order: the verdict, then by priority intervention, flags, entropy, blamed layer,
early warning, compound signals, baseline divergence, until five sentences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from corevital_otel import GenerationInfo, GenerationResults, StepSeries, hookimpl
from corevital_otel.plugins import _inputs
from corevital_otel.plugins._inputs import Flags
from corevital_otel.plugins._scales import resolve
from corevital_otel.plugins.risk import risk_level

COREVITAL_PLUGIN_NAME = "narrative"
MAX_SENTENCES = 5
MAX_CONTINUOUS_FACTORS = 2

FLAG_PHRASES = {
    "nan": "NaN values",
    "inf": "infinite values",
    "repetition_loop": "a repetition loop",
    "mid_layer_anomaly": "a mid-layer anomaly",
    "attention_collapse": "attention collapse",
}
FACTOR_PHRASES = {
    "entropy": "high entropy",
    "margin": "thin top-1 margins",
    "topk_mass": "a spread-out top-10 mass",
    "surprisal": "surprising tokens",
    "entropy_trend": "rising entropy",
}
WARNING_PHRASES = {
    "entropy_accelerating": "entropy is accelerating",
    "margin_collapsing": "the top-1 margin collapsed",
    "margin_declining": "the top-1 margin is declining",
    "surprisal_volatile": "surprisal is volatile",
    "entropy_margin_divergence": "entropy and margin move together instead of apart",
}
REASON_PHRASES = {
    "nonfinite": "NaN/Inf output",
    "l2_outlier": "output norm off the depth trend",
    "unstable_norm": "unstable output norm",
    "collapse": "frequent attention collapse",
}


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _at(results: GenerationResults, name: str, row: int) -> Any:
    values = results.get(name)
    if isinstance(values, (list, tuple)) and row < len(values):
        return values[row]
    return None


def _names(value: Any) -> list[str]:
    return [part for part in str(value).split(",") if part] if value else []


def flag_phrase(flags: Flags, name: str) -> str:
    if name == "high_entropy_steps":
        count = flags.high_entropy_steps
        return f"{count} high-entropy step{'s' if count != 1 else ''}"
    return FLAG_PHRASES[name]


def verdict(score: float | None, flags: Flags, factors: Sequence[str]) -> str:
    fired = list(flags.fired)
    continuous = [f for f in factors if f in FACTOR_PHRASES][:MAX_CONTINUOUS_FACTORS]
    drivers = [flag_phrase(flags, f) for f in fired] + [FACTOR_PHRASES[f] for f in continuous]
    if score is None or not math.isfinite(score):
        return f"Health flags raised: {_join(drivers)}." if fired else "No health flag fired."
    opening = f"Risk was {risk_level(score)} ({score:.2f})"
    if drivers:
        tail = "" if fired else "; no health flag fired"
        return f"{opening}, driven by {_join(drivers)}{tail}."
    return f"{opening}; no health flag fired and the metrics stayed near their typical values."


def _in_blamed_layer(results: GenerationResults, row: int, reason: str) -> str:
    """`` in layer N`` when the row's most blamed layer is blamed for ``reason``, else empty."""
    layer = _at(results, "corevital.blame.top_layer", row)
    reasons = _names(_at(results, "corevital.blame.top_reasons", row))
    return f" in layer {layer}" if layer is not None and layer >= 0 and reason in reasons else ""


def flag_sentences(flags: Flags, series: StepSeries, results: GenerationResults, row: int) -> list[str]:
    sentences = []
    if flags.nonfinite:
        kind = "NaN/Inf" if flags.nan and flags.inf else ("NaN" if flags.nan else "Inf")
        step = _inputs.nonfinite_step(series, row)
        where = f" at step {step}" if step >= 0 else " during generation"
        sentences.append(f"{kind} values first appeared{where}{_in_blamed_layer(results, row, 'nonfinite')}.")
    if flags.repetition_loop:
        step = _inputs.repetition_step(series, row)
        sentences.append(f"A repetition loop was detected{f' from step {step}' if step >= 0 else ''}.")
    if flags.mid_layer_anomaly:
        sentences.append("A mid-layer anomaly was detected in the hidden states.")
    if flags.attention_collapse:
        sentences.append(f"Attention collapsed{_in_blamed_layer(results, row, 'collapse')}.")
    return sentences


def entropy_sentence(series: StepSeries, row: int, high: float) -> str | None:
    entropy = _inputs.row_series(series, _inputs.ENTROPY, row)
    if entropy is None or not np.isfinite(entropy).any():
        return None
    usable = np.where(np.isfinite(entropy), entropy, np.nan)
    peak_step = int(np.nanargmax(usable))
    peak, low, mean = float(usable[peak_step]), float(np.nanmin(usable)), float(np.nanmean(usable))
    if peak >= high:
        return f"Entropy spiked to {peak:.1f} bits at step {peak_step} (mean {mean:.1f} bits)."
    return f"Entropy stayed between {low:.1f} and {peak:.1f} bits (mean {mean:.1f} bits)."


def blame_sentence(results: GenerationResults, row: int) -> str | None:
    layer = _at(results, "corevital.blame.top_layer", row)
    if layer is None or layer < 0:
        return None
    reasons = [REASON_PHRASES.get(r, r) for r in _names(_at(results, "corevital.blame.top_reasons", row))]
    severity = _at(results, "corevital.blame.top_severity", row)
    detail = f"; severity {severity:.2f}" if isinstance(severity, (int, float)) else ""
    return f"Layer {layer} is the most suspect ({_join(reasons)}{detail})."


def warning_sentence(results: GenerationResults, row: int) -> str | None:
    signals = _names(_at(results, "corevital.warning.signals", row))
    if not signals:
        return None
    onset = _at(results, "corevital.warning.onset_step", row)
    failure = _at(results, "corevital.warning.failure_risk", row)
    where = f" from step {onset}" if isinstance(onset, int) and onset >= 0 else ""
    risk = f" (failure risk {failure:.2f})" if isinstance(failure, (int, float)) else ""
    return f"Early warning{where}: {_join([WARNING_PHRASES.get(s, s) for s in signals])}{risk}."


def compound_sentence(results: GenerationResults, row: int) -> str | None:
    signals = _names(_at(results, "corevital.compound.signals", row))
    if not signals:
        return None
    plural = "s" if len(signals) > 1 else ""
    return f"Compound signal{plural}: {_join([s.replace('_', ' ') for s in signals])}."


def intervention_sentence(results: GenerationResults, row: int) -> str | None:
    policy = _at(results, "corevital.intervention.reasons", row)
    step = _at(results, "corevital.intervention.steps", row)
    if not policy:
        return None
    return f"Generation was stopped at step {step} by the {policy} intervention."


def baseline_sentence(results: GenerationResults, row: int) -> str | None:
    divergence = _at(results, "corevital.baseline.divergence", row)
    if not isinstance(divergence, (int, float)) or not math.isfinite(divergence):
        return None
    count = _at(results, "corevital.baseline.anomalous_steps", row) or 0
    first = _at(results, "corevital.baseline.first_anomalous_step", row)
    detail = ""
    if count:
        detail = f", with {count} anomalous step{'s' if count != 1 else ''} from step {first}"
    return f"Divergence from the calibrated baseline was {divergence:.2f}{detail}."


def row_narrative(
    info: GenerationInfo, series: StepSeries, results: GenerationResults, flags: Flags, row: int
) -> str:
    score = _at(results, "corevital.risk.score", row)
    factors = _names(_at(results, "corevital.risk.factors", row))
    sentences = [verdict(score, flags, factors)]
    candidates = [
        intervention_sentence(results, row),
        *flag_sentences(flags, series, results, row),
        entropy_sentence(series, row, resolve(info).entropy_high),
        blame_sentence(results, row),
        warning_sentence(results, row),
        compound_sentence(results, row),
        baseline_sentence(results, row),
    ]
    for sentence in candidates:
        if sentence and len(sentences) < MAX_SENTENCES:
            sentences.append(sentence)
    if len(sentences) < 2:
        steps = int(_inputs.row_lengths(series)[row]) if row < series.mask.shape[1] else 0
        sentences.append(f"{steps} token{'s were' if steps != 1 else ' was'} generated.")
    return " ".join(sentences)


def first_sentence(text: str) -> str:
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def report_severity(
    results: GenerationResults, row_flags: Sequence[Flags], narratives: Sequence[str]
) -> None:
    """ERROR for NaN/Inf output, WARNING for high risk or a serious flag; the worst row's first sentence
    is the message (Langfuse shows it as the observation's status message)."""
    levels = results.get("corevital.risk.level") or ()
    worst: tuple[int, int] | None = None  # (severity rank, row)
    for row, flags in enumerate(row_flags):
        level = levels[row] if isinstance(levels, (list, tuple)) and row < len(levels) else None
        rank = 2 if flags.nonfinite else 1 if flags.serious or level == "high" else 0
        if rank and (worst is None or rank > worst[0]):
            worst = (rank, row)
    if worst is not None:
        level = "ERROR" if worst[0] == 2 else "WARNING"
        results.report_severity(level, first_sentence(narratives[worst[1]]))


@hookimpl
def corevital_explain(info: GenerationInfo, series: StepSeries, results: GenerationResults) -> None:
    row_flags = _inputs.flags(info, series, results)
    if row_flags:
        narratives = [row_narrative(info, series, results, flags, row) for row, flags in enumerate(row_flags)]
        results.set_rows("corevital.narrative", narratives, important=True)
        report_severity(results, row_flags, narratives)
