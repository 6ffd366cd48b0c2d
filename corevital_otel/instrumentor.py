"""The OpenTelemetry instrumentor run by ``opentelemetry-instrument`` and ``corevital_otel.instrument()``."""

from __future__ import annotations

import functools
from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

from .capture.attention import install_attention_capture, uninstall_attention_capture
from .config import resolve_options
from .content import register_tokenizer
from .generation import Runtime, run_instrumented
from .patching import patch_generate, patch_pipeline_init, unpatch_generate, unpatch_pipeline_init
from .plugin_host import PluginFailure, PluginHost
from .telemetry import Telemetry

_INSTRUMENTS = ("transformers >= 5.0, < 6",)


def _remember_pipeline_tokenizer(pipeline: Any) -> None:
    model, tokenizer = getattr(pipeline, "model", None), getattr(pipeline, "tokenizer", None)
    if model is not None and tokenizer is not None:
        register_tokenizer(model, tokenizer)


class CoreVitalInstrumentor(BaseInstrumentor):
    """Traces every transformers ``generate()`` call with CoreVital's internal metrics.

    Keyword arguments to ``instrument()``: ``tracer_provider``, ``meter_provider`` (default: the global
    ones, never replaced), ``plugins`` (extra plugin objects) and the options in ``corevital_otel.config``.
    """

    runtime: Runtime | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return _INSTRUMENTS

    def _instrument(self, **kwargs: Any) -> None:
        tracer_provider = kwargs.pop("tracer_provider", None)
        meter_provider = kwargs.pop("meter_provider", None)
        options = resolve_options(kwargs)
        extra_plugins = options.plugins
        if options.langfuse_scores is not False:
            from .integrations.langfuse import LangfuseScores, client_from_option

            extra_plugins = (*extra_plugins, LangfuseScores(client_from_option(options.langfuse_scores)))
        plugins = PluginHost.load(extra_plugins, options.disabled_plugins, options.load_entry_point_plugins)
        plugins.check_options(options.plugin_options)
        failures: list[PluginFailure] = []
        # A failure here is logged once by the plugin host, then counted and reported on every span.
        declared = {name: spec for name, (_, spec) in plugins.declared_metrics(failures).items()}
        runtime = Runtime(options, plugins, Telemetry(tracer_provider, meter_provider, declared), failures)
        self.runtime = runtime
        patch_generate(functools.partial(run_instrumented, runtime))
        install_attention_capture()
        patch_pipeline_init(_remember_pipeline_tokenizer)

    def _uninstrument(self, **kwargs: Any) -> None:
        unpatch_generate()
        uninstall_attention_capture()
        unpatch_pipeline_init()
        self.runtime = None
