"""corevital_otel: every transformers generate(), observed from the inside, through OpenTelemetry.

import corevital_otel
corevital_otel.instrument()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .caller_context import context
from .config import ConfigError, Options
from .content import register_tokenizer
from .families import FamilyCard, family_card, family_names
from .hookspecs import hookimpl, hookspec
from .results import GenerationInfo, GenerationResults, StepSeries, row_values
from .telemetry_types import InterventionSignal, MetricSpec
from .version import __version__

if TYPE_CHECKING:
    from .capture.records import PromptCapture, StepBlock, StepCapture

__all__ = [
    "ConfigError",
    "FamilyCard",
    "GenerationInfo",
    "GenerationResults",
    "InterventionSignal",
    "MetricSpec",
    "Options",
    "PromptCapture",
    "StepBlock",
    "StepCapture",
    "StepSeries",
    "__version__",
    "context",
    "family_card",
    "family_names",
    "hookimpl",
    "hookspec",
    "instrument",
    "is_instrumented",
    "register_tokenizer",
    "row_values",
    "uninstrument",
]


def instrument(tracer_provider: Any = None, meter_provider: Any = None, **options: Any) -> Any:
    """Trace every ``generate()`` in this process. Uses the given providers, else the global ones.

    Options (schema: :class:`corevital_otel.config.Options`; most also read from a ``COREVITAL_*``
    variable, see docs/configuration.md):

    - what is captured: ``capture_mode`` (``full``/``summary``/``on_risk``), ``capture_logits``,
      ``capture_hidden_states``, ``capture_attention``, ``capture_prompt``, ``prompt_max_tokens``,
      ``capture_content`` (message content, off by default);
    - how it is emitted and computed: ``max_step_events``, ``max_span_kib``, ``block_steps``;
    - plugins: ``builtin_plugins``, ``load_entry_point_plugins`` (third-party ones), ``disabled_plugins``,
      ``plugins`` (extra plugin objects), ``plugin_options`` (checked against each plugin's schema);
    - live use: ``on_step`` (a callback per step), ``intervene`` and ``intervention_risk_threshold``
      (stop a row early), ``langfuse_scores`` (risk and flags as Langfuse scores);
    - naming: ``model_name`` (a string, or a function of the model, naming it on spans and metric labels
      instead of its shortened ``name_or_path``).

    Raises :class:`ConfigError` on an invalid value. Returns the instrumentor. Calling it again while
    instrumented does nothing.
    """
    from .config import resolve_options
    from .instrumentor import CoreVitalInstrumentor

    resolve_options(options)  # fail here, with the option's name, before anything is patched
    instrumentor = CoreVitalInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider, **options)
    return instrumentor


def uninstrument() -> None:
    """Remove the instrumentation: ``generate()`` and attention functions are restored exactly."""
    from .instrumentor import CoreVitalInstrumentor

    CoreVitalInstrumentor().uninstrument()


def is_instrumented() -> bool:
    from .instrumentor import CoreVitalInstrumentor

    return CoreVitalInstrumentor().is_instrumented_by_opentelemetry


def __getattr__(name: str) -> Any:
    # The capture records import torch; ``import corevital_otel`` stays light until a plugin asks for them.
    if name in ("PromptCapture", "StepBlock", "StepCapture"):
        from .capture import records

        return getattr(records, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
