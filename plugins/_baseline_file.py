"""The calibrated baseline profile: its JSON format, building it from observed values, and reading it.

``corevital-otel calibrate`` writes one file per model (format documented in docs/risk.md)::

    {"format": "corevital-baseline", "version": 1, "model": "...", "model_type": "...", "family": "...",
     "created": "...", "generation": {...}, "metrics": {"logits.entropy": {"count": n, "mean": ..,
     "std": .., "quantiles": [101 values: the 0th, 1st, ..., 100th percentile]}, ...},
     "layers": {"hidden_states.layers.l2_norm": {"median": [one value per layer]}}}

The baseline and risk plugins read it; the quantile grid is the metric's distribution function.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from corevital_otel.model_names import short_model_name

FORMAT = "corevital-baseline"
VERSION = 1
LEVELS = np.linspace(0.0, 1.0, 101)  # the quantile grid: every percentile
ENVIRONMENT_VARIABLE = "COREVITAL_BASELINE"
OPTIONS_KEY = "baseline"


class BaselineError(ValueError):
    """A baseline file is missing, unreadable or not in the expected format."""


@dataclass(frozen=True)
class MetricDistribution:
    """One per-step metric's calibrated distribution."""

    count: int
    mean: float
    std: float
    quantiles: np.ndarray  # (101,) non-decreasing

    def quantile(self, level: float) -> float:
        return float(np.interp(level, LEVELS, self.quantiles))

    def cdf(self, values: np.ndarray) -> np.ndarray:
        """P(X <= value) under the baseline: 0 below the minimum, 1 above the maximum, linear between
        percentiles. A value the grid repeats (ties) gets its highest level (right-continuous)."""
        reversed_grid = self.quantiles[::-1]
        unique, first_in_reversed = np.unique(reversed_grid, return_index=True)
        levels = LEVELS[LEVELS.size - 1 - first_in_reversed]
        return np.interp(np.asarray(values, dtype=np.float64), unique, levels, left=0.0, right=1.0)


@dataclass(frozen=True)
class Baseline:
    model: str
    model_type: str
    family: str
    source: str  # the file's name, for the span
    metrics: Mapping[str, MetricDistribution]
    layer_medians: Mapping[str, np.ndarray] = field(default_factory=dict)  # per-layer series -> (layers,)

    def get(self, name: str) -> MetricDistribution | None:
        return self.metrics.get(name)


def distribution(values: Iterable[float]) -> dict[str, Any] | None:
    """The JSON entry of one metric from its observed values (non-finite ones left out)."""
    array = np.asarray(list(values), dtype=np.float64)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return None
    return {
        "count": int(array.size),
        "mean": float(array.mean()),
        "std": float(array.std()),
        "quantiles": [float(q) for q in np.quantile(array, LEVELS)],
    }


def build(
    observed: Mapping[str, Iterable[float]],
    model: str,
    model_type: str,
    family: str,
    generation: Mapping[str, Any],
    created: str,
    layer_medians: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """The baseline document for ``observed`` (metric name -> every value seen on a real step) and, per
    per-layer series, each layer's median (``layers``: what layer blame compares a run's layers with)."""
    metrics = {}
    for name in sorted(observed):
        entry = distribution(observed[name])
        if entry is not None:
            metrics[name] = entry
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": model,
        "model_type": model_type,
        "family": family,
        "created": created,
        "generation": dict(generation),
        "metrics": metrics,
        "layers": {
            name: {"median": [float(v) for v in values]} for name, values in (layer_medians or {}).items()
        },
    }


def parse(document: Mapping[str, Any], source: str) -> Baseline:
    """Validate a baseline document; raises :class:`BaselineError` naming what is wrong."""
    if document.get("format") != FORMAT:
        raise BaselineError(f"{source}: not a corevital baseline (format {document.get('format')!r})")
    if document.get("version") != VERSION:
        raise BaselineError(f"{source}: unsupported baseline version {document.get('version')!r}")
    metrics: dict[str, MetricDistribution] = {}
    for name, entry in (document.get("metrics") or {}).items():
        quantiles = np.asarray(entry.get("quantiles", ()), dtype=np.float64)
        if quantiles.shape != LEVELS.shape or not np.all(np.isfinite(quantiles)):
            raise BaselineError(f"{source}: metric {name!r} needs {LEVELS.size} finite quantiles")
        if np.any(np.diff(quantiles) < 0):
            raise BaselineError(f"{source}: metric {name!r} quantiles are not sorted")
        metrics[name] = MetricDistribution(
            int(entry.get("count", 0)),
            float(entry.get("mean", np.nan)),
            float(entry.get("std", np.nan)),
            quantiles,
        )
    layers = {}
    for name, entry in (document.get("layers") or {}).items():  # optional: older files have none
        medians = np.asarray(entry.get("median", ()), dtype=np.float64)
        if medians.ndim != 1 or not np.all(np.isfinite(medians)):
            raise BaselineError(f"{source}: per-layer {name!r} needs one finite median per layer")
        layers[name] = medians
    return Baseline(
        layer_medians=layers,
        model=str(document.get("model", "")),
        model_type=str(document.get("model_type", "")),
        family=str(document.get("family", "")),
        source=Path(source).name,
        metrics=metrics,
    )


_CACHE: dict[tuple[str, float], Baseline] = {}
_CACHE_LOCK = threading.Lock()


def load(path: str | os.PathLike[str]) -> Baseline:
    """Read and validate a baseline file, once per path and modification time (thread-safe)."""
    path = os.fspath(path)
    try:
        key = (os.path.abspath(path), os.stat(path).st_mtime)
    except OSError as error:
        raise BaselineError(f"baseline {path!r}: {error.strerror or error}") from None
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if cached is not None:
        return cached
    baseline = parse(read_json_object(path, "baseline", BaselineError), path)
    with _CACHE_LOCK:
        _CACHE[key] = baseline
    return baseline


def configured_paths(options: Mapping[str, Any]) -> list[str]:
    """Baseline files from ``plugin_options["baseline"]["path"]`` (a path or a list), else the
    ``COREVITAL_BASELINE`` variable (paths separated by ``os.pathsep``)."""
    settings = options.get(OPTIONS_KEY) or {}
    return paths_from(settings.get("path") if isinstance(settings, Mapping) else None, ENVIRONMENT_VARIABLE)


def paths_from(configured: Any, variable: str) -> list[str]:
    """Files from an option (a path or a list of paths), else from ``variable`` (joined by ``os.pathsep``)."""
    if configured is None:
        raw = os.environ.get(variable, "")
        return [part for part in raw.split(os.pathsep) if part.strip()]
    if isinstance(configured, (str, os.PathLike)):
        return [os.fspath(configured)]
    return [os.fspath(item) for item in configured]


def read_json_object(path: str, what: str, error: type[ValueError]) -> Mapping[str, Any]:
    """The JSON object in ``path``; raises ``error`` naming ``what`` when unreadable or not an object."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as problem:
        raise error(f"{what} {path!r}: {problem}") from None
    if not isinstance(document, Mapping):
        raise error(f"{what} {path!r}: expected a JSON object")
    return document


def same_model(first: str, second: str) -> bool:
    """Equal names, two spellings of one local model directory (relative vs absolute path), or a
    directory and the short name spans give it (a baseline written before names were shortened)."""
    if first == second or (first and second and short_model_name(first) == short_model_name(second)):
        return True
    if not (first and second and os.path.isdir(first) and os.path.isdir(second)):
        return False
    return os.path.realpath(first) == os.path.realpath(second)


def baseline_for(model_name: str, options: Mapping[str, Any]) -> Baseline | None:
    """The configured baseline calibrated for ``model_name``, if any. A file that cannot be read raises
    :class:`BaselineError` (the caller reports it; a typo must not look like "no baseline")."""
    for path in configured_paths(options):
        baseline = load(path)
        if same_model(baseline.model, model_name):
            return baseline
    return None
