"""instrument() / uninstrument(): what is patched, what is restored, which providers are used."""

from __future__ import annotations

import inspect
import json
from importlib.metadata import entry_points, metadata

from opentelemetry import metrics, trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from packaging.requirements import Requirement
from transformers.generation.utils import GenerationMixin
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface
from transformers.pipelines.base import Pipeline

import corevital_otel
from corevital_otel import patching
from corevital_otel.instrumentor import CoreVitalInstrumentor
from tests.support.tiny_models import build_model, prompt_batch

from .helpers import instrument_with, run_python


def _patched_objects() -> dict[str, object]:
    """Every class attribute of the patch table, read from its class's own dict (None: inherited)."""
    return {target.attribute: vars(target.locate()).get(target.attribute) for target in patching.TARGETS}


def test_the_patch_table_names_what_instrumentation_replaces():
    assert {(target.locate(), target.attribute) for target in patching.TARGETS} == {
        (GenerationMixin, "generate"),
        (AttentionInterface, "get_interface"),
        (Pipeline, "__init__"),
    }


def _generate(model) -> None:
    ids, mask = prompt_batch(batch=1)
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False)


def test_uninstrument_restores_the_identical_objects(telemetry):
    originals = _patched_objects()
    model = build_model("gpt2")

    instrument_with(telemetry, builtin_plugins=False)
    assert corevital_otel.is_instrumented()
    patched = _patched_objects()
    assert all(patched[name] is not original for name, original in originals.items())
    # The wrapper looks like the original to introspection.
    assert patched["generate"].__wrapped__ is originals["generate"]
    assert inspect.signature(patched["generate"]) == inspect.signature(originals["generate"])
    _generate(model)

    corevital_otel.uninstrument()
    assert not corevital_otel.is_instrumented()
    assert _patched_objects() == originals
    assert all(_patched_objects()[name] is original for name, original in originals.items())
    _generate(model)
    assert len(telemetry.generation_spans()) == 1  # only the call made while instrumented
    corevital_otel.uninstrument()  # a second uninstrument is harmless
    assert all(_patched_objects()[name] is original for name, original in originals.items())


def test_instrument_twice_is_harmless(telemetry):
    originals = _patched_objects()
    first = instrument_with(telemetry, builtin_plugins=False)
    patched = _patched_objects()
    second = instrument_with(telemetry, builtin_plugins=False)
    assert second is first  # one instrumentor per process
    assert _patched_objects() == patched  # not wrapped twice
    _generate(build_model("llama"))
    assert len(telemetry.generation_spans()) == 1
    corevital_otel.uninstrument()
    assert _patched_objects() == originals


def test_attention_functions_are_untouched_outside_a_captured_call(telemetry):
    instrument_with(telemetry, builtin_plugins=False)
    # No capture is active on this thread: the registry hands out the real kernel, not a wrapper.
    assert ALL_ATTENTION_FUNCTIONS.get_interface("sdpa", None) is sdpa_attention_forward


def test_explicit_providers_leave_the_global_ones_alone(telemetry):
    tracer_provider, meter_provider = trace.get_tracer_provider(), metrics.get_meter_provider()
    instrument_with(telemetry, builtin_plugins=False)
    _generate(build_model("qwen2"))
    assert trace.get_tracer_provider() is tracer_provider
    assert metrics.get_meter_provider() is meter_provider
    assert len(telemetry.generation_spans()) == 1
    assert "gen_ai.client.token.usage" in telemetry.metrics()


# Global providers can be set once per process: this runs in its own interpreter.
_GLOBAL_PROVIDERS_APP = """
import json
import torch
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tests.support.tiny_models import build_model, prompt_batch
import corevital_otel

torch.set_num_threads(1)


def providers():
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    return tracer_provider, spans, MeterProvider(metric_readers=[reader]), reader


def metric_names(reader):
    data = reader.get_metrics_data()
    scopes = [sm for rm in (data.resource_metrics if data else ()) for sm in rm.scope_metrics]
    return sorted(m.name for sm in scopes for m in sm.metrics)


global_tracer, global_spans, global_meter, global_reader = providers()
trace.set_tracer_provider(global_tracer)
metrics.set_meter_provider(global_meter)
model = build_model("gpt2")
ids, mask = prompt_batch(batch=1)
result = {}

corevital_otel.instrument(builtin_plugins=False)
model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False)
corevital_otel.uninstrument()
result["global_spans"] = [s.name for s in global_spans.get_finished_spans()]
result["global_metrics"] = metric_names(global_reader)

own_tracer, own_spans, own_meter, own_reader = providers()
corevital_otel.instrument(
    tracer_provider=own_tracer, meter_provider=own_meter, builtin_plugins=False
)
model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False)
result["own_spans"] = [s.name for s in own_spans.get_finished_spans()]
result["own_metrics"] = metric_names(own_reader)
result["global_spans_after"] = len(global_spans.get_finished_spans())
result["globals_kept"] = (
    trace.get_tracer_provider() is global_tracer and metrics.get_meter_provider() is global_meter
)
print(json.dumps(result))
"""


def test_global_providers_used_when_none_given_and_never_replaced(tmp_path):
    completed = run_python(tmp_path, _GLOBAL_PROVIDERS_APP)
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["global_spans"] == ["text_completion gpt2"]
    assert "gen_ai.client.token.usage" in result["global_metrics"]
    assert result["own_spans"] == ["text_completion gpt2"]
    assert "gen_ai.client.token.usage" in result["own_metrics"]
    assert result["global_spans_after"] == 1  # the explicit providers got the second call
    assert result["globals_kept"] is True


def test_packaged_for_opentelemetry_instrument():
    """What opentelemetry-instrument looks for: the entry point, a BaseInstrumentor, the instruments extra."""
    (entry_point,) = entry_points(group="opentelemetry_instrumentor", name="corevital")
    instrumentor = entry_point.load()
    assert instrumentor is CoreVitalInstrumentor and issubclass(instrumentor, BaseInstrumentor)
    requirements = [Requirement(line) for line in metadata("corevital-otel").get_all("Requires-Dist")]
    instruments = [r for r in requirements if r.marker and r.marker.evaluate({"extra": "instruments"})]
    assert [r.name for r in instruments] == ["transformers"]
    (dependency,) = instrumentor().instrumentation_dependencies()
    assert Requirement(dependency).specifier == instruments[0].specifier
