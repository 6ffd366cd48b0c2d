"""Jaeger: the part we own is the OTLP payload a CoreVital span travels in. It is checked here against an
in-process OTLP/HTTP receiver; a live tier sends it to a real Jaeger and reads it back from Jaeger's API."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import corevital_otel
from tests.support.tiny_models import build_model, prompt_batch

from . import otlp
from .http_recorder import recording
from .tiers import Tier, choose, stop, wait_http

SERVICE = "corevital-jaeger-test"
IMAGE = "jaegertracing/jaeger:2.10.0"


def _traced_generations(exporter: OTLPSpanExporter, instrument_with: Callable[..., object]) -> None:
    """One successful generation inside a caller's span, and one that fails inside generate()."""
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrument_with(provider)
    model = build_model("gpt2")
    ids, mask = prompt_batch(batch=2)
    with provider.get_tracer("caller").start_as_current_span("handle request"):
        model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    with pytest.raises(ValueError):
        model.generate(ids, attention_mask=mask, max_new_tokens=2, not_a_generate_argument=1)
    provider.shutdown()


@pytest.fixture
def exported(instrument_with: Callable[..., object]) -> list[otlp.ExportedSpan]:
    with recording(lambda request: otlp.OK_RESPONSE) as receiver:
        _traced_generations(OTLPSpanExporter(endpoint=f"{receiver.url}/v1/traces"), instrument_with)
    assert {request.path for request in receiver.requests} == {"/v1/traces"}
    assert all(r.headers["content-type"] == "application/x-protobuf" for r in receiver.requests)
    return otlp.spans(receiver.requests)


def _generations(spans: list[otlp.ExportedSpan]) -> list[otlp.ExportedSpan]:
    return [span for span in spans if span.span.name.startswith("text_completion")]


def test_generation_span_in_the_otlp_payload(exported: list[otlp.ExportedSpan]) -> None:
    assert len(_generations(exported)) == 2
    ok = _generations(exported)[0]
    caller = next(span for span in exported if span.span.name == "handle request")
    assert ok.span.name == "text_completion gpt2"
    assert ok.span.kind == Span.SPAN_KIND_INTERNAL
    assert ok.span.parent_span_id == caller.span.span_id and ok.span.trace_id == caller.span.trace_id
    assert ok.resource["service.name"] == SERVICE  # Jaeger's service
    assert (ok.scope_name, ok.scope_version) == ("corevital_otel", corevital_otel.__version__)
    attributes = ok.attributes
    assert attributes["gen_ai.operation.name"] == "text_completion"
    assert attributes["gen_ai.provider.name"] == "huggingface"
    assert attributes["gen_ai.request.model"] == "gpt2"
    assert attributes["gen_ai.usage.output_tokens"] == 10
    assert attributes["gen_ai.response.finish_reasons"] == ["length", "length"]
    # typed values survive (Jaeger shows arrays as JSON strings, numbers as numbers)
    kinds = otlp.value_kinds(list(ok.span.attributes))
    assert kinds["gen_ai.usage.input_tokens"] == "int_value"
    assert kinds["corevital.time_to_first_token"] == "double_value"
    assert kinds["gen_ai.response.finish_reasons"] == "array_value"
    assert kinds["corevital.logits.entropy.mean"] == "array_value"
    assert len(attributes["corevital.logits.entropy.mean"]) == 2  # one per row


def test_step_events_in_the_otlp_payload(exported: list[otlp.ExportedSpan]) -> None:
    ok = _generations(exported)[0]
    steps = ok.events("corevital.step")
    assert len(steps) == ok.attributes["corevital.step.events_emitted"] == 5
    assert sorted(step["corevital.step.index"] for step in steps) == [0, 1, 2, 3, 4]
    assert all(len(step["corevital.logits.entropy"]) == 2 for step in steps)  # one value per row


def test_failed_generation_in_the_otlp_payload(exported: list[otlp.ExportedSpan]) -> None:
    failed = _generations(exported)[1]
    assert failed.span.status.code == Status.STATUS_CODE_ERROR  # Jaeger: error=true
    assert failed.attributes["error.type"] == "builtins.ValueError"
    (exception,) = failed.events("exception")
    assert exception["exception.type"] == "ValueError"


# -- live tier ----------------------------------------------------------------------------------------


@contextmanager
def _jaeger(tier: Tier, workdir: Path) -> Iterator[tuple[str, str]]:
    """(query API base URL, OTLP/HTTP base URL) of a running Jaeger."""
    if tier.kind == "env":
        query = tier.target.rstrip("/")
        host = urllib.parse.urlsplit(query).hostname
        yield query, os.environ.get("COREVITAL_TEST_JAEGER_OTLP_URL", f"http://{host}:4318")
    elif tier.kind == "local":  # Jaeger v2's built-in all-in-one configuration, on loopback
        log = workdir / "jaeger.log"
        with log.open("w") as output:
            process = subprocess.Popen(
                [tier.target],
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**os.environ, "JAEGER_LISTEN_HOST": "127.0.0.1"},
            )
        try:
            wait_http("http://127.0.0.1:16686/api/services", 60, process, log)
            yield "http://127.0.0.1:16686", "http://127.0.0.1:4318"
        finally:
            stop(process)
    else:
        from testcontainers.core.container import DockerContainer

        with DockerContainer(tier.target).with_exposed_ports(4318, 16686) as container:
            host = container.get_container_host_ip()
            query = f"http://{host}:{container.get_exposed_port(16686)}"
            wait_http(f"{query}/api/services", 60)
            yield query, f"http://{host}:{container.get_exposed_port(4318)}"


def _traces(query: str) -> list[dict]:
    url = f"{query}/api/traces?{urllib.parse.urlencode({'service': SERVICE, 'limit': 20})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response).get("data") or []


def test_jaeger_shows_the_generation(instrument_with: Callable[..., object], tmp_path: Path) -> None:
    tier = choose("Jaeger", "COREVITAL_TEST_JAEGER_URL", ("jaeger",), IMAGE)
    with _jaeger(tier, tmp_path) as (query, otlp_url):
        _traced_generations(OTLPSpanExporter(endpoint=f"{otlp_url}/v1/traces"), instrument_with)
        deadline = time.monotonic() + 30
        spans: list[dict] = []
        while time.monotonic() < deadline and not spans:
            spans = [
                s for t in _traces(query) for s in t["spans"] if s["operationName"] == "text_completion gpt2"
            ]
            time.sleep(0.5)
    assert spans, "the generation span never reached Jaeger's query API"
    tags = {tag["key"]: tag["value"] for tag in spans[0]["tags"]}
    assert tags["gen_ai.request.model"] == "gpt2" and tags["gen_ai.usage.output_tokens"] == 10
    logged = [{f["key"]: f["value"] for f in log["fields"]} for log in spans[0]["logs"]]
    assert sum(1 for fields in logged if fields.get("event") == "corevital.step") == 5
