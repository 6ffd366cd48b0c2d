"""Run generations the way a user would and read back what the instrumentation exported.

The demo and ``scripts/validate_detectors.py`` both go through here: a real SDK ``TracerProvider`` with
an in-memory exporter (plus OTLP exporters when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set), one
``generate()`` per prompt, then the finished span's attributes and events. Nothing reads the plugins'
internals: what is reported is exactly what a backend would receive.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from .otlp import ExportSetupError, SignalExport, signal_export

GENERATION_SPAN_PREFIX = "text_completion"


class ModelLoadError(Exception):
    """A model directory that does not exist or does not load; the message says which and why."""


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' weight-loading bar and advisory warnings; the caller shows its own progress."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def check_model_directory(path: str | os.PathLike[str]) -> Path:
    """The directory, if it can hold a saved model (cheap: no import); else :class:`ModelLoadError`."""
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ModelLoadError(f"{path}: no such directory (expected a local model saved with save_pretrained)")
    if not (directory / "config.json").is_file():
        raise ModelLoadError(f"{path}: no config.json in this directory, so it is not a transformers model")
    return directory


def load_local_model(path: str | os.PathLike[str], display_name: str | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a local directory written by ``save_pretrained``; never the hub.

    ``display_name`` replaces the directory in ``gen_ai.request.model``. Raises :class:`ModelLoadError`.
    """
    directory = check_model_directory(path)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(directory, local_files_only=True)
            auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
            model = auto.from_pretrained(directory, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"{path}: could not load a model and its tokenizer: {error}") from error
    model.eval()
    if display_name:
        model.config.name_or_path = display_name
    return model, tokenizer


@dataclass
class Telemetry:
    """SDK providers for one run: every span kept in memory, and sent over OTLP when configured."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    spans: InMemorySpanExporter
    otlp_traces: SignalExport | None = None
    otlp_metrics: SignalExport | None = None

    @classmethod
    def create(cls, service_name: str, otlp: bool | None = None, timeout_s: float = 3.0) -> Telemetry:
        """``otlp=None``: export each signal over OTLP exactly when its endpoint variable is set
        (``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT``).

        ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` win over ``service_name``.
        Raises :class:`ExportSetupError`.
        """
        attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
        resource = Resource.create(attributes)
        spans = InMemorySpanExporter()
        tracer_provider = TracerProvider(resource=resource)
        # Simple (synchronous) processor: the span is readable the moment generate() returns.
        tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
        traces = signal_export("TRACES", timeout_s) if otlp is not False else None
        metrics = signal_export("METRICS", timeout_s) if otlp is not False else None
        if otlp and traces is None and metrics is None:
            raise ExportSetupError("OTLP export was asked for but no OTEL_EXPORTER_OTLP_*ENDPOINT is set")
        readers: list[MetricReader] = []
        if traces is not None:
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            tracer_provider.add_span_processor(BatchSpanProcessor(traces.exporter))
        if metrics is not None:
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            readers.append(PeriodicExportingMetricReader(metrics.exporter))
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        return cls(tracer_provider, meter_provider, spans, traces, metrics)

    @property
    def exporting(self) -> bool:
        return self.otlp_traces is not None or self.otlp_metrics is not None

    def shutdown(self, timeout_s: float = 3.0) -> bool:
        """Flush and stop both providers, each bounded by about ``timeout_s``; False if the span flush did
        not finish in time. The meter provider's shutdown does its final export itself."""
        millis = int(timeout_s * 1000)
        flushed = self.tracer_provider.force_flush(timeout_millis=millis)
        self.tracer_provider.shutdown()  # aborts exporters' pending retries
        self.meter_provider.shutdown(timeout_millis=millis)
        return bool(flushed)


@dataclass
class Observation:
    """One generate() call as the user sees it (decoded text) and as a backend sees it (the span)."""

    prompt: str
    text: str
    tokens: list[int]  # generated ids up to and including EOS
    span: ReadableSpan
    seconds: float
    attributes: Mapping[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.attributes = dict(self.span.attributes or {})

    def row(self, name: str, row: int = 0) -> Any:
        """Entry ``row`` of a per-row array attribute, or a scalar attribute as is; None when absent."""
        value = self.attributes.get(name)
        if isinstance(value, tuple):
            return value[row] if row < len(value) else None
        return value

    def series(self, name: str) -> list[float | None] | None:
        """The per-step series ``corevital.steps.<name>`` of row 0, or None when it was not exported."""
        values = self.attributes.get(f"corevital.steps.{name}")
        if values is None:
            return None
        steps = self.attributes.get("corevital.steps.count") or len(values)
        return list(values[:steps])


def _generated_ids(model: Any, tokenizer: Any, sequences: Any, prompt_length: int) -> list[int]:
    # Decoder-only models return prompt + continuation; encoder-decoders the decoder start token + output.
    start = 1 if getattr(model.config, "is_encoder_decoder", False) else prompt_length
    ids = sequences[0, start:].tolist()
    eos = tokenizer.eos_token_id
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos) + 1]
    return ids


def observe(
    model: Any, tokenizer: Any, spans: InMemorySpanExporter, prompt: str, **generate_kwargs: Any
) -> Observation:
    """Generate from ``prompt`` on an instrumented model and return the text and its exported span."""
    import torch

    encoded = tokenizer(prompt, return_tensors="pt")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generate_kwargs.setdefault("pad_token_id", pad)
    spans.clear()
    started = time.perf_counter()
    with torch.no_grad():
        sequences = model.generate(**encoded, **generate_kwargs)
    seconds = time.perf_counter() - started
    finished = [s for s in spans.get_finished_spans() if s.name.startswith(GENERATION_SPAN_PREFIX)]
    if not finished:
        raise RuntimeError("generate() produced no text_completion span: is the model instrumented?")
    ids = _generated_ids(model, tokenizer, sequences, encoded["input_ids"].shape[1])
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return Observation(prompt, text, ids, finished[-1], seconds)
