"""How the risk features become a score: the documented default combination, or a fitted calibration.

Both are a logistic combination ``p = 1 / (1 + exp(-(intercept + Σ weight_i × feature_i)))``. The default
weights are reasoned, not fitted (docs/risk.md); a calibration file written by
``corevital-otel calibrate --outcomes`` holds weights fitted to labelled generations of one model, and
then the score is the calibrated probability of the labelled failure. The score is capped at
``MAX_GRADED``: only NaN/Inf (decided by the risk plugin, outside this module) reaches 1.0.

Calibration file (JSON)::

    {"format": "corevital-risk-calibration", "version": 1, "model": "<gen_ai.request.model>",
     "created": "...", "predicts": "<failure label>",
     "features": {"version": 2, "names": [...], "lines_known": true},
     "scales": {"source": "family:gpt2", "entropy": [typical, bad], ...},
     "intercept": b, "weights": {"<feature>": w, ...}, "fit": {...cross-validated quality...}}

Configured with ``plugin_options={"risk": {"calibration": "risk.json"}}`` or
``COREVITAL_RISK_CALIBRATION=path[:path...]``; a file applies to generations of the model it names. A
file fitted on another feature layout (``features.version``; layout 1 had 9 features) is refused with an
error naming both versions: its weights would be read against the wrong features.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from corevital_otel.plugins import _risk_features
from corevital_otel.plugins._baseline_file import paths_from, read_json_object, same_model
from corevital_otel.plugins._scales import METRICS, Scale, Scales

FORMAT = "corevital-risk-calibration"
VERSION = 1
ENVIRONMENT_VARIABLE = "COREVITAL_RISK_CALIBRATION"
MAX_GRADED = 0.999
DEFAULT_SOURCE = "default"
# Reasoned default, in log-odds: a row at the typical values scores sigmoid(-3) ~ 0.05; every metric at
# its bad value ~ 0.78; a loop under way over the whole row alone ~ 0.73, one seen on its last step
# only stays near 0.05; a mid-layer anomaly alone 0.5. Entropy weighs 2 in all, half on the whole row
# and half on its first line, so without a tokenizer (the line is then the row) the score is layout 1's.
# A line ending is neither good nor bad in general: line_ended only enters a fitted calibration.
DEFAULT_INTERCEPT = -3.0
DEFAULT_WEIGHTS: Mapping[str, float] = {
    "entropy": 1.0,
    "margin": 0.75,
    "topk_mass": 0.5,
    "surprisal": 0.75,
    "entropy_trend": 0.5,
    "first_entropy": 0.25,
    "loop": 4.0,
    "mid_layer_anomaly": 3.0,
    "attention_collapse": 0.25,
    "line_entropy": 1.0,
    "line_ended": 0.0,
}


class CalibrationError(ValueError):
    """A risk calibration file is missing, unreadable or not in the expected format."""


@dataclass(frozen=True)
class RiskModel:
    source: str  # "default" or "outcomes:<file name>", for corevital.risk.calibration
    intercept: float
    weights: np.ndarray  # (len(NAMES),) in _risk_features.NAMES order
    model: str = ""  # the model a calibration applies to ("" for the default)
    scales: Mapping[str, Scale] | None = None  # the scales the fit's features were computed with
    lines_known: bool = False  # the fit's rows had their line ends (a tokenizer): line features live

    def logits(self, features: np.ndarray) -> np.ndarray:
        return self.intercept + np.asarray(features, dtype=np.float64) @ self.weights

    def score(self, features: np.ndarray) -> np.ndarray:
        """The probability for ``(..., features)``, below ``MAX_GRADED``."""
        return np.minimum(1.0 / (1.0 + np.exp(-self.logits(features))), MAX_GRADED)

    def with_scales(self, scales: Scales) -> Scales:
        """``scales`` with the metrics this calibration was fitted under (the same features, then)."""
        if not self.scales:
            return scales
        return Scales(
            source=scales.source, entropy_high=scales.entropy_high, **{**_by_metric(scales), **self.scales}
        )


def _by_metric(scales: Scales) -> dict[str, Scale]:
    return {metric: scales.of(metric) for metric in METRICS}


DEFAULT = RiskModel(
    DEFAULT_SOURCE, DEFAULT_INTERCEPT, np.array([DEFAULT_WEIGHTS[name] for name in _risk_features.NAMES])
)


def document(
    model: str,
    predicts: str,
    intercept: float,
    weights: np.ndarray,
    scales: Scales,
    fit: Mapping[str, Any],
    created: str,
    lines_known: bool = True,
) -> dict[str, Any]:
    """The calibration file's JSON document; ``lines_known``: whether the rows it was fitted on had their
    line ends (``corevital.risk.lines_known``)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": model,
        "created": created,
        "predicts": predicts,
        "features": {
            "version": _risk_features.VERSION,
            "names": list(_risk_features.NAMES),
            "lines_known": lines_known,
        },
        "scales": {
            "source": scales.source,
            **{metric: [scales.of(metric).typical, scales.of(metric).bad] for metric in METRICS},
        },
        "intercept": float(intercept),
        "weights": {name: float(w) for name, w in zip(_risk_features.NAMES, weights, strict=True)},
        "fit": dict(fit),
    }


def parse(document: Mapping[str, Any], source: str) -> RiskModel:
    """Validate a calibration document; raises :class:`CalibrationError` naming what is wrong."""
    if document.get("format") != FORMAT or document.get("version") != VERSION:
        raise CalibrationError(f"{source}: not a version {VERSION} {FORMAT} file")
    features = document.get("features") or {}
    if features.get("version") != _risk_features.VERSION or list(features.get("names", ())) != list(
        _risk_features.NAMES
    ):
        raise CalibrationError(
            f"{source}: fitted on risk feature layout version {features.get('version')} "
            f"({len(features.get('names', ()))} features); this version computes layout "
            f"{_risk_features.VERSION} ({len(_risk_features.NAMES)} features): refit it with "
            "corevital-otel calibrate --outcomes on spans of this version"
        )
    try:
        weights = np.array([float(document["weights"][name]) for name in _risk_features.NAMES])
        intercept = float(document["intercept"])
        scales = {metric: Scale(*(float(v) for v in document["scales"][metric])) for metric in METRICS}
    except (KeyError, TypeError, ValueError) as error:
        raise CalibrationError(f"{source}: missing or malformed {error}") from None
    if not (np.isfinite(weights).all() and np.isfinite(intercept)):
        raise CalibrationError(f"{source}: weights must be finite numbers")
    return RiskModel(
        f"outcomes:{Path(source).name}",
        intercept,
        weights,
        str(document.get("model", "")),
        scales,
        bool(features.get("lines_known", False)),
    )


@lru_cache(maxsize=32)
def _load_cached(path: str, modified: float) -> RiskModel:
    return parse(read_json_object(path, "risk calibration", CalibrationError), path)


def load(path: str | os.PathLike[str]) -> RiskModel:
    """Read and validate a calibration file, once per path and modification time."""
    path = os.path.abspath(os.fspath(path))
    try:
        modified = os.stat(path).st_mtime
    except OSError as error:
        raise CalibrationError(f"risk calibration {path!r}: {error.strerror or error}") from None
    return _load_cached(path, modified)


def configured_paths(settings: Mapping[str, Any]) -> list[str]:
    """Calibration files from the risk plugin's ``calibration`` option (a path or a list), else
    ``COREVITAL_RISK_CALIBRATION`` (paths separated by ``os.pathsep``)."""
    return paths_from(settings.get("calibration"), ENVIRONMENT_VARIABLE)


def model_for(model_name: str, settings: Mapping[str, Any]) -> RiskModel:
    """The configured calibration fitted for ``model_name``, else the default combination. A file that
    cannot be read raises :class:`CalibrationError`."""
    for path in configured_paths(settings):
        fitted = load(path)
        if same_model(fitted.model, model_name):
            return fitted
    return DEFAULT
