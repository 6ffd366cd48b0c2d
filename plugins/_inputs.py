"""Input adapter of the analysis plugins: the one module that knows which names they read.

The risk, blame, compound, early-warning, baseline, fingerprint and narrative plugins never read another
plugin's output by a literal name; they call the functions here. When a metric plugin renames what it
publishes, the change is one constant below.

Everything is read through the public API, in the assess/explain phases: per-step series with
``series.get(name)`` and attributes with ``results.get(name)``. A missing input is never an error: the
reader returns None (or a neutral value) and the analysis uses what is there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from corevital_otel import GenerationInfo, GenerationResults, StepSeries

# -- per-step series, (steps, rows): plugins/logits.py --------------------------------------------
ENTROPY = "logits.entropy"  # bits
MARGIN = "logits.margin"  # top-1 minus top-2 probability
TOPK_MASS = "logits.top10_mass"  # probability mass of the 10 most likely tokens
SURPRISAL = "logits.surprisal"  # bits

# -- per-step 0/1 series, (steps, rows): plugins/health.py (also the intervention policies' signals) --
STEP_NONFINITE = ("health.nonfinite",)  # a NaN/Inf in the logits, a layer's output or attention row
STEP_REPETITION = ("health.repetition",)  # a repetition loop under way (recurring states or tokens)
# (steps, rows, layers) head entropy / log(keys), full detail only: free of the growth with key count
ATTENTION_NORMALIZED_ENTROPY = "attention.layers.normalized_entropy.mean"

# -- per-step, per-layer series, (steps, rows, layers): hidden_states.py, health.py, attention.py ---
LAYER_L2 = "hidden_states.layers.l2_norm"  # L2 norm of the layer's output at the new position
LAYER_NONFINITE = ("health.layers.nan", "health.layers.inf")  # NaN in output/attention row; Inf in output
LAYER_COLLAPSED = "attention.layers.collapsed"  # 1 where the layer counted as collapsed at this step

# -- per-row health flags (attributes, one entry per row): plugins/health.py -----------------------
FLAG_ATTRIBUTES = {
    "nan": "corevital.health.per_row.nan_detected",
    "inf": "corevital.health.per_row.inf_detected",
    "repetition_loop": "corevital.health.per_row.repetition_loop_detected",
    "mid_layer_anomaly": "corevital.health.per_row.mid_layer_anomaly_detected",
    "attention_collapse": "corevital.health.per_row.attention_collapse_detected",
}
HIGH_ENTROPY_STEPS = "corevital.health.per_row.high_entropy_steps"

# -- prompt analysis (attributes, one entry per prompt): plugins/prompt.py -------------------------
PROMPT_BASIN = "corevital.prompt.basin_score.mean"  # middle-vs-boundary attention of the prompt

# Flags in the order every report lists them: most serious first.
FLAG_NAMES = (
    "nan",
    "inf",
    "repetition_loop",
    "mid_layer_anomaly",
    "attention_collapse",
    "high_entropy_steps",
)
SERIOUS_FLAGS = ("nan", "inf", "repetition_loop", "mid_layer_anomaly")
_FALLBACK_HIGH_ENTROPY_BITS = 4.0


@dataclass(frozen=True)
class Flags:
    """The health flags of one row; ``fired`` lists the raised ones in ``FLAG_NAMES`` order
    (``high_entropy_steps`` is a count; it fires when above 0)."""

    nan: bool = False
    inf: bool = False
    repetition_loop: bool = False
    mid_layer_anomaly: bool = False
    attention_collapse: bool = False
    high_entropy_steps: int = 0

    @property
    def nonfinite(self) -> bool:
        return self.nan or self.inf

    @property
    def fired(self) -> tuple[str, ...]:
        return tuple(name for name in FLAG_NAMES if getattr(self, name))

    @property
    def serious(self) -> bool:
        return any(getattr(self, name) for name in SERIOUS_FLAGS)


def rows_of(info: GenerationInfo, series: StepSeries) -> int:
    return int(series.mask.shape[1]) if series.mask.ndim == 2 else int(info.rows)


def row_lengths(series: StepSeries) -> np.ndarray:
    """Real steps per row (the mask is a prefix: a row's steps end at its EOS)."""
    if series.mask.ndim != 2:
        return np.zeros(0, dtype=np.int64)
    return series.mask.sum(axis=0).astype(np.int64)


def row_series(series: StepSeries, name: str, row: int) -> np.ndarray | None:
    """Row ``row``'s values of a ``(steps, rows)`` series over its real steps (index = step), or None."""
    array = series.get(name)
    if array is None or array.ndim != 2 or row >= array.shape[1]:
        return None
    length = int(row_lengths(series)[row])
    return np.asarray(array[:length, row], dtype=np.float64)


def row_layer_series(series: StepSeries, name: str, row: int) -> np.ndarray | None:
    """Row ``row``'s ``(real steps, layers)`` values of a ``(steps, rows, layers)`` series, or None."""
    array = series.get(name)
    if array is None or array.ndim != 3 or row >= array.shape[1]:
        return None
    length = int(row_lengths(series)[row])
    return np.asarray(array[:length, row], dtype=np.float64)


def _per_row(value: Any, rows: int) -> list[Any] | None:
    """An attribute as one entry per row: a scalar applies to every row, a sequence is taken as is."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = value.reshape(-1).tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return [value] * rows
    values = list(value)
    return values if len(values) == rows else None


def _first_hit(values: np.ndarray | None) -> int:
    if values is None:
        return -1
    hits = np.flatnonzero(values > 0.5)
    return int(hits[0]) if hits.size else -1


def _first_of(series: StepSeries, names: Sequence[str], row: int) -> tuple[int, bool]:
    """First step any of the named series rises for ``row`` (-1 if never), and whether any exists."""
    found = [row_series(series, name, row) for name in names]
    steps = [step for step in (_first_hit(values) for values in found) if step >= 0]
    return (min(steps) if steps else -1), any(values is not None for values in found)


def nonfinite_step(series: StepSeries, row: int) -> int:
    """First step at which row ``row`` produced NaN/Inf anywhere; -1 if none (or unknown)."""
    step, known = _first_of(series, STEP_NONFINITE, row)
    if known:
        return step
    # Without those series: a non-finite logit statistic on a real step means non-finite logits.
    entropy = row_series(series, ENTROPY, row)
    return _first_hit(None if entropy is None else (~np.isfinite(entropy)).astype(np.float64))


def repetition_step(series: StepSeries, row: int) -> int:
    """First step at which a repetition loop was under way for row ``row``; -1 if none (or unknown)."""
    return _first_of(series, STEP_REPETITION, row)[0]


def flags(info: GenerationInfo, series: StepSeries, results: GenerationResults) -> list[Flags]:
    """The health flags of every row, as the health plugin published them. Where it published none
    (plugin off), NaN/Inf and loops are still read from the step series (a non-finite logit statistic
    on a real step counts as ``nan``); the other flags stay False."""
    rows = rows_of(info, series)
    columns = {name: _per_row(results.get(attribute), rows) for name, attribute in FLAG_ATTRIBUTES.items()}
    high = _per_row(results.get(HIGH_ENTROPY_STEPS), rows)
    nonfinite_published = columns["nan"] is not None or columns["inf"] is not None
    out = []
    for row in range(rows):
        values = {name: bool(column[row]) if column else False for name, column in columns.items()}
        if not nonfinite_published:
            values["nan"] = nonfinite_step(series, row) >= 0
        if columns["repetition_loop"] is None:
            values["repetition_loop"] = repetition_step(series, row) >= 0
        count = int(high[row]) if high and high[row] is not None else 0
        out.append(Flags(high_entropy_steps=count, **values))
    return out


@dataclass(frozen=True)
class LayerInputs:
    """Per-layer evidence for one row, over its real steps; a field is None when not published."""

    l2: np.ndarray | None  # (steps, layers) output L2 norms
    nonfinite: np.ndarray | None  # (steps, layers) 1 where the layer's output held NaN/Inf
    collapsed: np.ndarray | None  # (steps, layers) 1 where the layer's attention collapsed

    @property
    def layers(self) -> int:
        for array in (self.l2, self.nonfinite, self.collapsed):
            if array is not None:
                return int(array.shape[1])
        return 0


def _any_layer(series: StepSeries, names: Sequence[str], row: int) -> np.ndarray | None:
    """Element-wise OR of 0/1 per-layer series (NaN where every one is NaN); None if none exists."""
    found = [v for v in (row_layer_series(series, name, row) for name in names) if v is not None]
    found = [v for v in found if v.shape == found[0].shape]
    if not found:
        return None
    with np.errstate(invalid="ignore"):
        stacked = np.stack(found)
        hit = (stacked > 0.5).any(axis=0)
        unknown = (~np.isfinite(stacked)).all(axis=0)
    return np.where(unknown, np.nan, hit.astype(np.float64))


def layer_inputs(series: StepSeries, row: int) -> LayerInputs:
    return LayerInputs(
        l2=row_layer_series(series, LAYER_L2, row),
        nonfinite=_any_layer(series, LAYER_NONFINITE, row),
        collapsed=row_layer_series(series, LAYER_COLLAPSED, row),
    )


def attention_spread(series: StepSeries, row: int) -> np.ndarray | None:
    """Row ``row``'s normalised attention entropy per step (0 focused .. 1 uniform over the keys), the
    mean over layers; None when not published (the attention plugin keeps it for full detail)."""
    values = row_layer_series(series, ATTENTION_NORMALIZED_ENTROPY, row)
    if values is None:
        return None
    with np.errstate(all="ignore"):
        finite = np.isfinite(values)
        totals = np.where(finite, values, 0.0).sum(axis=1)
        counts = finite.sum(axis=1)
    return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


def prompt_basin(results: GenerationResults, rows: int, row: int) -> float | None:
    """The prompt's basin score for row ``row`` (prompt values are per batch row); None if absent."""
    values = results.get(PROMPT_BASIN)
    if values is None:
        return None
    if isinstance(values, (int, float)):
        return float(values)
    values = list(np.asarray(values, dtype=np.float64).reshape(-1))
    if not values:
        return None
    fanout = max(rows // len(values), 1)
    value = values[min(row // fanout, len(values) - 1)]
    return float(value) if np.isfinite(value) else None


def high_entropy_bits(info: GenerationInfo) -> float:
    """The family's high-entropy threshold, the same one the health plugin counts steps against."""
    try:
        from corevital_otel.plugins._profiles import thresholds_for
    except ImportError:  # the profile module ships with the health plugin
        return _FALLBACK_HIGH_ENTROPY_BITS
    try:
        return float(thresholds_for(info).high_entropy_bits)
    except (ValueError, AttributeError):
        return _FALLBACK_HIGH_ENTROPY_BITS
