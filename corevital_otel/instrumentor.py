"""The OpenTelemetry instrumentor run by ``opentelemetry-instrument`` and ``corevital_otel.instrument()``.

Importing this module (which ``opentelemetry-instrument`` does at start-up) imports neither torch nor
transformers. When transformers' model code is already imported, ``instrument()`` sets everything up at
once; otherwise it waits for the application to import it (a post-import hook on
``transformers.modeling_utils``, which every model and pipeline imports), so an application that never
generates pays nothing for torch, transformers or the plugins.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import wrapt
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

from . import patching
from .config import ConfigError, Options, resolve_options
from .content import register_tokenizer

if TYPE_CHECKING:
    from .runtime import Runtime

logger = logging.getLogger(__name__)

_INSTRUMENTS = ("transformers >= 5.0, < 6",)
# Defines PreTrainedModel and the attention registry, after transformers' generation code: once it is
# imported, everything instrument() patches exists.
TRIGGER_MODULE = "transformers.modeling_utils"


def _pipeline_built(wrapped: Any, pipeline: Any, args: tuple, kwargs: dict) -> None:
    """The wrapper of ``Pipeline.__init__``: learn the pipeline model's tokenizer (for content)."""
    wrapped(*args, **kwargs)
    # Observing a pipeline must never break building it.
    with contextlib.suppress(Exception):
        model, tokenizer = getattr(pipeline, "model", None), getattr(pipeline, "tokenizer", None)
        if model is not None and tokenizer is not None:
            register_tokenizer(model, tokenizer)


def _traced_generate(run: Callable[..., Any], wrapped: Any, model: Any, args: tuple, kwargs: dict) -> Any:
    """The wrapper of ``GenerationMixin.generate``: ``run(original, model, args, kwargs)`` calls
    ``original(model, ...)``, while wrapt hands us generate already bound to the model."""
    return run(lambda _model, *a, **k: wrapped(*a, **k), model, args, kwargs)


class CoreVitalInstrumentor(BaseInstrumentor):
    """Traces every transformers ``generate()`` call with CoreVital's internal metrics.

    Keyword arguments to ``instrument()``: ``tracer_provider``, ``meter_provider`` (default: the global
    ones, never replaced), ``plugins`` (extra plugin objects) and the options in ``corevital_otel.config``.
    """

    runtime: Runtime | None = None
    # The set-up waiting for transformers to be imported (a token, so uninstrument() can cancel it).
    _waiting: object | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return _INSTRUMENTS

    def _instrument(self, **kwargs: Any) -> None:
        tracer_provider = kwargs.pop("tracer_provider", None)
        meter_provider = kwargs.pop("meter_provider", None)
        options = resolve_options(kwargs)
        if TRIGGER_MODULE in sys.modules:
            self._activate(options, tracer_provider, meter_provider)
            return
        token = object()
        CoreVitalInstrumentor._waiting = token
        hook = functools.partial(self._activate_on_import, token, options, tracer_provider, meter_provider)
        wrapt.register_post_import_hook(hook, TRIGGER_MODULE)

    def _activate_on_import(
        self, token: object, options: Options, tracer_provider: Any, meter_provider: Any, module: Any
    ) -> None:
        if CoreVitalInstrumentor._waiting is not token:  # uninstrumented (or instrumented anew) since
            return
        CoreVitalInstrumentor._waiting = None
        try:
            self._activate(options, tracer_provider, meter_provider)
        except Exception:  # noqa: BLE001 - the application's import of transformers must not fail
            logger.warning(
                "corevital could not instrument transformers: generate() is not traced", exc_info=True
            )

    def _activate(self, options: Options, tracer_provider: Any, meter_provider: Any) -> None:
        from .capture import layer_taps
        from .capture.attention import ATTENTION_INTERFACE
        from .generation import run_instrumented
        from .plugin_host import PluginFailure, PluginHost
        from .runtime import Runtime
        from .telemetry import Telemetry

        extra_plugins = options.plugins
        if options.langfuse_scores is not False:
            from .integrations.langfuse import LangfuseScores, client_from_option

            extra_plugins = (*extra_plugins, LangfuseScores(client_from_option(options.langfuse_scores)))
        plugins = PluginHost.load(
            extra_plugins, options.disabled_plugins, options.load_entry_point_plugins, options.builtin_plugins
        )
        plugins.check_options(options.plugin_options)
        # A plugin that failed to load or to declare its metrics is logged once by the plugin host, then
        # counted and reported on every span.
        failures: list[PluginFailure] = list(plugins.load_failures)
        declared = {name: spec for name, (_, spec) in plugins.declared_metrics(failures).items()}
        interventions = plugins.declared_interventions(failures)
        unknown = sorted(options.intervene - set(interventions))
        if unknown:  # before anything is patched
            offered = ", ".join(sorted(interventions)) or "none"
            raise ConfigError(
                f"intervene (COREVITAL_INTERVENE): no loaded plugin offers polic(ies) {', '.join(unknown)}"
                f" (offered: {offered})"
            )
        telemetry = Telemetry(tracer_provider, meter_provider, declared)
        runtime = Runtime(options, plugins, telemetry, failures, interventions)
        self.runtime = runtime
        run = functools.partial(run_instrumented, runtime)
        layer_taps.open_taps()
        patching.wrap_all(
            {
                patching.GENERATE: functools.partial(_traced_generate, run),
                patching.ATTENTION_FUNCTION: ATTENTION_INTERFACE,
                patching.PIPELINE_INIT: _pipeline_built,
            }
        )

    def _uninstrument(self, **kwargs: Any) -> None:
        CoreVitalInstrumentor._waiting = None
        if self.runtime is None:
            return  # never activated: transformers was not imported, nothing was patched
        patching.unwrap_all()
        from .capture import layer_taps  # torch is loaded: something was patched

        layer_taps.untap_all()
        self.runtime = None
