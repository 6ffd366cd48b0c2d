"""The risk score's inputs: one fixed-layout feature vector per row, graded, never saturating.

Layout version 2 (``corevital.risk.features``, rows x 11, row-major; docs/risk.md):

====  =====================  ====================================================================
 0    ``entropy``            mean over steps of the scaled entropy ``(x - typical) / (bad - typical)``
 1    ``margin``             the same for the top-1 margin (its bad value is below typical)
 2    ``topk_mass``          the same for the top-10 mass
 3    ``surprisal``          the same for the chosen token's surprisal
 4    ``entropy_trend``      entropy rise over the row (least-squares) / entropy span; 0 under 4 steps
 5    ``first_entropy``      the first step's scaled entropy
 6    ``loop``               0 without a repetition loop; else half its share of the steps from its
                             onset on plus half the share of steps it was under way: in (0, 1]
 7    ``mid_layer_anomaly``  0 or 1
 8    ``attention_collapse`` 0 or 1
 9    ``line_entropy``       mean scaled entropy over the first generated line: the steps up to and
                             including the first token whose text holds a newline; the whole row when
                             the line never ended or no tokenizer told where it did
10    ``line_ended``         1 when a newline-bearing token was generated, else 0 (also 0 when unknown)
====  =====================  ====================================================================

Version 1 was indices 0-8 alone. Line ends need the tokenizer (plugins/_lines.py); the span's
``corevital.risk.lines_known`` says whether the risk plugin had them. Scaled values are clipped per step
to ``[-1, 3]`` rather than ``[0, 1]``: a value better than typical still counts a little, so two healthy
rows rarely tie, and a value far past bad still ranks above one at bad. A missing series gives the
neutral 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from corevital_otel.plugins import _trends
from corevital_otel.plugins._inputs import Flags
from corevital_otel.plugins._scales import METRICS, Scales

VERSION = 2
NAMES = (
    "entropy",
    "margin",
    "topk_mass",
    "surprisal",
    "entropy_trend",
    "first_entropy",
    "loop",
    "mid_layer_anomaly",
    "attention_collapse",
    "line_entropy",
    "line_ended",
)
SCALED_RANGE = (-1.0, 3.0)
TREND_MIN_STEPS = 4


def scaled(values: np.ndarray, scales: Scales, metric: str) -> np.ndarray:
    """Per step ``(x - typical) / (bad - typical)`` clipped to ``SCALED_RANGE``; a NaN/Inf step is NaN
    (skipped, as a broken step is everywhere else)."""
    scale = scales.of(metric)
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ratio = np.clip((values - scale.typical) / (scale.bad - scale.typical), *SCALED_RANGE)
    return np.where(np.isfinite(values), ratio, np.nan)


def loop_grade(repetition: np.ndarray | None, flagged: bool) -> float:
    """How much of the row a repetition loop took: 0 for none; a loop seen only on the last of n steps
    grades about 1/n, one under way from the first step to the end grades 1."""
    if repetition is None or repetition.size == 0:
        return 0.5 if flagged else 0.0  # the flag without its step series: onset unknown
    with np.errstate(invalid="ignore"):
        under_way = np.asarray(repetition, dtype=np.float64) > 0.5
    hits = np.flatnonzero(under_way)
    if not hits.size:
        return 0.5 if flagged else 0.0
    steps = repetition.size
    return 0.5 * (steps - hits[0]) / steps + 0.5 * hits.size / steps


def row_features(
    values: Mapping[str, np.ndarray | None],
    repetition: np.ndarray | None,
    flags: Flags,
    scales: Scales,
    line_steps: int | None = None,
) -> np.ndarray:
    """The feature vector (``NAMES`` order) of one row from its step series by metric name; ``line_steps``
    is how many steps its first line took (None: the line never ended, or no tokenizer told)."""
    out = np.zeros(len(NAMES))
    for index, metric in enumerate(METRICS):
        series = values.get(metric)
        if series is None:
            continue
        if np.isfinite(series).any():
            out[index] = _trends.mean(scaled(series, scales, metric))
    entropy = values.get("entropy")
    if entropy is not None and np.isfinite(entropy).sum() >= TREND_MIN_STEPS:
        _, points = _trends.finite_points(entropy)
        rise = _trends.slope(entropy) * (points.size - 1)
        out[4] = float(np.clip(rise / abs(scales.entropy.bad - scales.entropy.typical), -1.0, 1.0))
    if entropy is not None and entropy.size and np.isfinite(entropy[0]):
        out[5] = float(scaled(entropy[:1], scales, "entropy")[0])
    out[6] = loop_grade(repetition, flags.repetition_loop)
    out[7] = float(flags.mid_layer_anomaly)
    out[8] = float(flags.attention_collapse)
    out[9] = line_entropy(entropy, scales, line_steps)
    out[10] = float(line_steps is not None)
    return out


def line_entropy(entropy: np.ndarray | None, scales: Scales, line_steps: int | None) -> float:
    """Mean scaled entropy over the row's first line: its steps up to and including the one that ended
    it, or every step when it never ended (or its end is unknown)."""
    if entropy is None:
        return 0.0
    line = entropy if line_steps is None else entropy[:line_steps]
    return _trends.mean(scaled(line, scales, "entropy")) if np.isfinite(line).any() else 0.0
