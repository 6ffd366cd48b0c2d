"""The OpenTelemetry side: tracer, and every metric instrument, created once per instrumentation."""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import Meter
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics

from .telemetry_types import MetricSpec
from .version import __version__

logger = logging.getLogger(__name__)

INSTRUMENTATION_NAME = "corevital_otel"
SCHEMA_URL = "https://opentelemetry.io/schemas/1.37.0"

# Bucket boundaries the OpenTelemetry GenAI metric conventions recommend (the semantic-conventions package
# carries the names, not the boundaries).
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)

CORE_METRICS = (
    MetricSpec(
        gen_ai_metrics.GEN_AI_CLIENT_OPERATION_DURATION,
        "s",
        "histogram",
        "Duration of generate() calls.",
        DURATION_BUCKETS,
    ),
    MetricSpec(
        gen_ai_metrics.GEN_AI_CLIENT_TOKEN_USAGE,
        "{token}",
        "histogram",
        "Tokens used, by gen_ai.token.type.",
        TOKEN_BUCKETS,
    ),
    MetricSpec(
        gen_ai_metrics.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN,
        "s",
        "histogram",
        "Time until the first token's logits.",
        TTFT_BUCKETS,
    ),
    MetricSpec(
        gen_ai_metrics.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN,
        "s",
        "histogram",
        "Decode time per token after the first.",
        TPOT_BUCKETS,
    ),
    MetricSpec(
        "corevital.plugin.errors", "{error}", "counter", "Metric plugin failures, by plugin and phase."
    ),
    MetricSpec(
        "corevital.interventions", "{generation}", "counter", "Rows stopped early by an intervention policy."
    ),
    MetricSpec("corevital.capture.errors", "{error}", "counter", "Capture failures, by capture kind."),
)


def _create(meter: Meter, spec: MetricSpec) -> Any:
    if spec.kind == "histogram":
        advisory = list(spec.buckets) if spec.buckets else None
        return meter.create_histogram(
            spec.name,
            unit=spec.unit,
            description=spec.description,
            explicit_bucket_boundaries_advisory=advisory,
        )
    if spec.kind == "counter":
        return meter.create_counter(spec.name, unit=spec.unit, description=spec.description)
    return meter.create_up_down_counter(spec.name, unit=spec.unit, description=spec.description)


class Telemetry:
    """Holds the tracer and instruments; ``record`` routes a value to the instrument of that name."""

    def __init__(
        self, tracer_provider: Any, meter_provider: Any, plugin_metrics: dict[str, MetricSpec]
    ) -> None:
        self.tracer = trace.get_tracer(
            INSTRUMENTATION_NAME, __version__, tracer_provider=tracer_provider, schema_url=SCHEMA_URL
        )
        meter = metrics.get_meter(
            INSTRUMENTATION_NAME, __version__, meter_provider=meter_provider, schema_url=SCHEMA_URL
        )
        self.specs: dict[str, MetricSpec] = {spec.name: spec for spec in CORE_METRICS}
        for name, spec in plugin_metrics.items():
            if name in self.specs:
                logger.warning("corevital: plugin metric %r clashes with a core metric; ignored", name)
                continue
            self.specs[name] = spec
        self._instruments = {name: _create(meter, spec) for name, spec in self.specs.items()}

    def record(self, name: str, value: float, attributes: dict[str, Any]) -> None:
        instrument = self._instruments[name]
        if self.specs[name].kind == "histogram":
            instrument.record(value, attributes)
        else:
            instrument.add(value, attributes)
