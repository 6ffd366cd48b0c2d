"""``opentelemetry-instrument python app.py``: the app has no corevital code and still gets its spans."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support.otlp_receiver import attributes

from .helpers import run_python

OTEL_INSTRUMENT = Path(sys.executable).parent / "opentelemetry-instrument"

# Nothing of corevital_otel in here: only transformers and the app's own OpenTelemetry span.
APP = """
import torch
from opentelemetry import trace
from tests.support.tiny_models import build_model, prompt_batch

torch.set_num_threads(1)
model = build_model("qwen2")
ids, mask = prompt_batch(batch=2, length=5)
with trace.get_tracer("app").start_as_current_span("app-request"):
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False, suppress_tokens=[2])
"""


def _run_instrumented_app(directory: Path, endpoint: str, **env: str) -> None:
    if not OTEL_INSTRUMENT.exists():
        pytest.skip("opentelemetry-instrument is not installed next to this interpreter")
    run_python(
        directory,
        APP,
        (str(OTEL_INSTRUMENT), "--traces_exporter", "otlp", "--logs_exporter", "none"),
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_SERVICE_NAME="corevital-zero-code",
        **env,
    )


def test_opentelemetry_instrument_traces_generate(tmp_path, otlp_receiver):
    _run_instrumented_app(
        tmp_path,
        otlp_receiver.endpoint,
        OTEL_METRICS_EXPORTER="otlp",
        COREVITAL_CAPTURE_MODE="summary",  # options reach the zero-code path through the environment
    )

    spans = {span.name: span for span in otlp_receiver.spans()}
    assert set(spans) == {"app-request", "text_completion qwen2"}
    generation, parent = spans["text_completion qwen2"], spans["app-request"]
    assert generation.parent_span_id == parent.span_id and generation.trace_id == parent.trace_id
    values = attributes(generation.attributes)
    assert values["gen_ai.operation.name"] == "text_completion"
    assert values["gen_ai.usage.input_tokens"] == 8
    assert values["gen_ai.usage.output_tokens"] == 6
    assert values["gen_ai.response.finish_reasons"] == ("length", "length")
    assert "corevital.logits.entropy.mean" in values  # built-in plugins loaded by entry point
    assert not [event for event in generation.events if event.name == "corevital.step"]  # summary mode
    assert "gen_ai.client.token.usage" in otlp_receiver.metrics()


def test_disabled_instrumentations_switch_it_off(tmp_path, otlp_receiver):
    _run_instrumented_app(
        tmp_path,
        otlp_receiver.endpoint,
        OTEL_METRICS_EXPORTER="none",
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="corevital",
    )
    # The app's own span proves the exporter worked; the generation was not traced.
    assert [span.name for span in otlp_receiver.spans()] == ["app-request"]


# An application that never generates: it must not pay for torch, transformers or the plugins.
NO_GENERATION_APP = """
import json, sys
heavy = ("torch", "transformers", "corevital_otel.plugins.logits")
print(json.dumps(sorted(name for name in heavy if name in sys.modules)))
"""


def test_an_app_that_never_generates_imports_no_torch(tmp_path):
    if not OTEL_INSTRUMENT.exists():
        pytest.skip("opentelemetry-instrument is not installed next to this interpreter")
    completed = run_python(
        tmp_path,
        NO_GENERATION_APP,
        (str(OTEL_INSTRUMENT), "--traces_exporter", "none", "--metrics_exporter", "none"),
        OTEL_LOGS_EXPORTER="none",
        # The test environment also has OpenLLMetry's transformers instrumentor, which imports
        # transformers at start-up itself; only ours is under test here.
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="transformers",
    )
    assert completed.stdout.strip().splitlines()[-1] == "[]"


LATE_IMPORT_APP = """
import sys
import corevital_otel
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

spans = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(spans))
corevital_otel.instrument(tracer_provider=provider)
assert "torch" not in sys.modules and "transformers" not in sys.modules  # nothing heavy yet
from tests.support.tiny_models import build_model, prompt_batch  # the application imports transformers now

ids, mask = prompt_batch(batch=1, length=4)
build_model("llama").generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False)
(span,) = spans.get_finished_spans()
assert span.name == "text_completion llama" and "corevital.logits.entropy.mean" in span.attributes
corevital_otel.uninstrument()
print("traced")
"""


def test_instrument_before_transformers_is_imported_traces_once_it_is(tmp_path):
    completed = run_python(tmp_path, LATE_IMPORT_APP)
    assert completed.stdout.strip().splitlines()[-1] == "traced"
