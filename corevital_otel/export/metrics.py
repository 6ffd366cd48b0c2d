"""The metric points of one generation: GenAI client metrics, plugin recordings and error counters."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..plugin_host import PluginFailure
from . import names
from .span import FinishedGeneration, error_type

if TYPE_CHECKING:
    from ..telemetry import Telemetry


def metric_base(model_name: str) -> dict[str, Any]:
    """The low-cardinality attributes every metric point carries."""
    return {
        names.OPERATION_NAME: names.OPERATION,
        names.PROVIDER_NAME: names.PROVIDER,
        names.REQUEST_MODEL: model_name,
    }


def record_metrics(
    telemetry: Telemetry,
    done: FinishedGeneration,
    duration: float,
    failures: list[PluginFailure],
    capture_failures: Iterable[str],
    interventions: Iterable[str],
) -> None:
    """Record every metric point of one generation (call inside the span's context: exemplars link it)."""
    completion, results, error = done.completion, done.results, done.error
    base = metric_base(done.request.model_name)
    outcome = base if error is None else {**base, names.ERROR: error_type(error)}
    telemetry.record(names.CLIENT_OPERATION_DURATION, duration, outcome)
    telemetry.record(names.CLIENT_TOKEN_USAGE, completion.input_tokens, {**base, names.TOKEN_TYPE: "input"})
    if error is None:
        output = completion.total_output_tokens
        telemetry.record(names.CLIENT_TOKEN_USAGE, output, {**base, names.TOKEN_TYPE: "output"})
    first_token, per_token = done.timing
    if first_token is not None:
        telemetry.record(names.SERVER_TIME_TO_FIRST_TOKEN, first_token, base)
    if per_token is not None:
        telemetry.record(names.SERVER_TIME_PER_OUTPUT_TOKEN, per_token, base)
    for recording in results.metrics:
        if recording.name not in telemetry.specs:
            why = f"undeclared metric {recording.name!r}"
            failures.append(PluginFailure("unknown", "record_metric", "KeyError", why))
            continue
        telemetry.record(recording.name, recording.value, {**base, **recording.attributes})
    for failure in failures:
        where = {"corevital.plugin.name": failure.plugin, "corevital.plugin.phase": failure.phase}
        telemetry.record("corevital.plugin.errors", 1, {**base, **where})
    for kind in capture_failures:
        telemetry.record("corevital.capture.errors", 1, {**base, "corevital.capture.kind": kind})
    for policy in interventions:
        reason = {"corevital.intervention.reason": policy}
        telemetry.record("corevital.interventions", 1, {**base, **reason})
