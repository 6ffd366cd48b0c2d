"""``corevital-otel calibrate --outcomes``: fit the risk combination to labelled generations of one model.

    corevital-otel calibrate --outcomes outcomes.jsonl --out risk.json [--spans spans.jsonl]

Each line of the outcomes file is one labelled row of a generation, either with the generation span's
exported attributes or with its trace id (then ``--spans`` names a file of OTLP JSON trace exports, one
``{"resourceSpans": [...]}`` document per line, as the Collector's ``file`` exporter writes them)::

    {"attributes": {"corevital.risk.features": [...], "gen_ai.request.model": "m", ...}, "label": "incorrect"}
    {"trace_id": "5b8efff798038103d269b633813fc60c", "row": 0, "label": "correct", "group": "prompt-17"}

The fit is a logistic regression of "label == --failure" on the row's ``corevital.risk.features``,
cross-validated with whole prompts held out (``group``, else the row's ``corevital.prompt.hash``, else the
trace id); the file it writes makes the risk score that fit's probability (docs/risk.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from corevital_otel.plugins import _logistic, _risk_features, _risk_model
from corevital_otel.plugins._baseline_file import BaselineError
from corevital_otel.plugins._baseline_file import load as load_baseline
from corevital_otel.plugins._scales import FAMILY_SCALES, Scales, from_baseline

FEATURES = "corevital.risk.features"
SCORE = "corevital.risk.score"  # one per row: how many rows the features hold
LINES_KNOWN = "corevital.risk.lines_known"
SCALES_SOURCE = "corevital.risk.calibration"
MODEL = "gen_ai.request.model"
PROMPT_HASH = "corevital.prompt.hash"
MIN_ROWS = 10
FOLDS = 5


class OutcomeError(ValueError):
    """The outcomes cannot be fitted; the message says why."""


@dataclass(frozen=True)
class Outcome:
    features: np.ndarray
    failed: bool
    group: str
    model: str
    scales_source: str
    lines_known: bool | None  # None: the span did not say (attribute not exported)


def _otlp_value(value: Mapping[str, Any]) -> Any:
    """An OTLP JSON ``AnyValue`` as a Python value (arrays as tuples)."""
    if "arrayValue" in value:
        return tuple(_otlp_value(item) for item in value["arrayValue"].get("values", ()))
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])
    return None


def spans_by_trace(lines: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Trace id (lower-case hex) -> attributes of its span that carries risk features."""
    found: dict[str, dict[str, Any]] = {}
    for line in lines:
        if not line.strip():
            continue
        for resource in json.loads(line).get("resourceSpans", ()):
            for scope in resource.get("scopeSpans", ()):
                for span in scope.get("spans", ()):
                    attributes = {
                        a["key"]: _otlp_value(a.get("value", {})) for a in span.get("attributes", ())
                    }
                    if FEATURES in attributes:
                        found[str(span.get("traceId", "")).lower()] = attributes
    return found


def _entry(value: Any, row: int) -> Any:
    if isinstance(value, (list, tuple)):
        return value[row] if row < len(value) else None
    return value


def is_failure(label: Any, failure: str) -> bool:
    """``label`` names the failure: equal as numbers when both are (a Langfuse score's 0 or 0.0), else as
    text, case-insensitive."""
    try:
        return float(label) == float(failure)
    except (TypeError, ValueError):
        return str(label).strip().lower() == failure.strip().lower()


def outcome(record: Mapping[str, Any], attributes: Mapping[str, Any], failure: str, number: int) -> Outcome:
    row = int(record.get("row", 0))
    width = len(_risk_features.NAMES)
    flat = attributes.get(FEATURES)
    if not isinstance(flat, (list, tuple)) or not flat:
        raise OutcomeError(f"line {number}: no {FEATURES} for row {row} (is the risk plugin on?)")
    score = attributes.get(SCORE)
    rows = len(score) if isinstance(score, (list, tuple)) else None  # a scalar: one row
    if len(flat) % width or (rows is not None and len(flat) != width * rows):
        raise OutcomeError(
            f"line {number}: {FEATURES} holds {len(flat)} values"
            + (f" for {rows} rows" if rows is not None else "")
            + f", not {width} per row: a span of another feature layout (this version reads layout "
            f"{_risk_features.VERSION}; layout 1 had 9 per row)"
        )
    if len(flat) < width * (row + 1):
        raise OutcomeError(f"line {number}: no {FEATURES} for row {row} (is the risk plugin on?)")
    lines = attributes.get(LINES_KNOWN)
    group = record.get("group") or _entry(attributes.get(PROMPT_HASH), row) or record.get("trace_id")
    return Outcome(
        features=np.asarray(flat[width * row : width * (row + 1)], dtype=np.float64),
        failed=is_failure(record["label"], failure),
        group=str(group if group is not None else f"line-{number}"),
        model=str(attributes.get(MODEL, "")),
        scales_source=str(attributes.get(SCALES_SOURCE, "")),
        lines_known=None if lines is None else bool(lines),
    )


def read_outcomes(
    lines: Iterable[str], spans: Mapping[str, Mapping[str, Any]], failure: str
) -> list[Outcome]:
    outcomes = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = json.loads(line)
        if "label" not in record:
            raise OutcomeError(f"line {number}: no label")
        attributes = record.get("attributes")
        if attributes is None:
            trace = str(record.get("trace_id", "")).lower()
            if trace not in spans:
                raise OutcomeError(f"line {number}: trace {trace!r} not found (pass --spans)")
            attributes = spans[trace]
        outcomes.append(outcome(record, attributes, failure, number))
    return outcomes


def scales_for(source: str, baseline: Path | None) -> Scales:
    """The scales the features were computed with, from the span's ``corevital.risk.calibration``."""
    kind, _, name = source.partition(":")
    if kind == "family" and name in FAMILY_SCALES:
        return Scales(source=source, entropy_high=0.0, **FAMILY_SCALES[name])
    if kind == "baseline":
        if baseline is None or baseline.name != name:
            raise OutcomeError(f"features were scaled by the baseline {name}: pass --baseline PATH to it")
        try:
            document = load_baseline(baseline)
        except BaselineError as error:
            raise OutcomeError(str(error)) from error
        family = document.family if document.family in FAMILY_SCALES else "default"
        return Scales(source=source, entropy_high=0.0, **from_baseline(document, FAMILY_SCALES[family]))
    raise OutcomeError(f"features scored under {source!r}: fit on spans scored with the default combination")


def fit_outcomes(
    outcomes: list[Outcome], model_name: str | None, failure: str, baseline: Path | None
) -> dict:
    """The calibration document for ``outcomes``, with its cross-validated quality under ``fit``."""
    if len(outcomes) < MIN_ROWS:
        raise OutcomeError(f"{len(outcomes)} labelled rows: at least {MIN_ROWS} are needed")
    failed = np.array([item.failed for item in outcomes])
    if failed.all() or not failed.any():
        raise OutcomeError(
            f"every row is {'a' if failed.all() else 'not a'} {failure!r}: both classes needed"
        )
    models = {item.model for item in outcomes}
    sources = {item.scales_source for item in outcomes}
    if model_name is None and len(models) != 1:
        raise OutcomeError(
            f"rows of several models {sorted(models)}: one calibration per model (--model-name)"
        )
    if len(sources) != 1:
        raise OutcomeError(f"rows scored under different scales {sorted(sources)}: fit them apart")
    lines = {item.lines_known for item in outcomes}
    if len(lines) != 1:
        raise OutcomeError(
            f"rows with and without their line ends ({LINES_KNOWN}: {sorted(lines, key=str)}): the line "
            "features mean different things then; fit them apart"
        )
    features = np.stack([item.features for item in outcomes])
    groups = [item.group for item in outcomes]
    folds = min(FOLDS, len(set(groups)))
    if folds < 2:
        raise OutcomeError("all rows come from one prompt (group): cross-validation needs two")
    held_out = _logistic.out_of_fold(features, failed, groups, folds)
    fitted = _logistic.fit(features, failed)
    quality = {
        "rows": len(outcomes),
        "failures": int(failed.sum()),
        "groups": len(set(groups)),
        "folds": folds,
        "l2": _logistic.DEFAULT_L2,
        "cv_auroc": _logistic.auroc(held_out, failed),
        "cv_ece": _logistic.expected_calibration_error(held_out, failed),
    }
    return _risk_model.document(
        model=model_name or models.pop(),
        predicts=failure,
        intercept=fitted.intercept,
        weights=fitted.weights,
        scales=scales_for(sources.pop(), baseline),
        fit=quality,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        lines_known=lines.pop() is True,
    )


def run(arguments: argparse.Namespace) -> int:
    try:
        spans = (
            spans_by_trace(arguments.spans.read_text(encoding="utf-8").splitlines())
            if arguments.spans
            else {}
        )
        lines = arguments.outcomes.read_text(encoding="utf-8").splitlines()
        outcomes = read_outcomes(lines, spans, arguments.failure)
        document = fit_outcomes(outcomes, arguments.model_name, arguments.failure, arguments.baseline)
    except (OSError, ValueError, KeyError) as error:  # OutcomeError and malformed JSON are ValueErrors
        print(f"calibrate: {error}", file=sys.stderr)
        return 2
    arguments.out.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    fit = document["fit"]
    print(
        f"wrote {arguments.out}: model {document['model']!r}, {fit['rows']} rows ({fit['failures']} "
        f"{arguments.failure!r}), {fit['groups']} prompts; held-out AUROC {fit['cv_auroc']:.3f}, "
        f"ECE {fit['cv_ece']:.3f}"
    )
    return 0
