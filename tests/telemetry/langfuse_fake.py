"""Langfuse as the telemetry tests see it: an in-process HTTP receiver answering like Langfuse's OTLP and
scores endpoints, Langfuse Python SDK clients bound to it, and what Langfuse makes of an OTLP span.

``langfuse_view`` restates the documented mapping of Langfuse's OTLP ingestion (its
``OtelIngestionProcessor`` and ``ObservationTypeMapper``, current for ingestion versions 3 and 4) for a
span of a non-Langfuse instrumentation scope: the observation type from ``gen_ai.operation.name`` (or, failing
that, a model attribute), the model from ``gen_ai.response.model`` then ``gen_ai.request.model``, usage from
``gen_ai.usage.*`` (``input_tokens`` -> ``input``, ``output_tokens`` -> ``output``), model parameters from
``gen_ai.request.*`` but the model, and every other attribute into ``metadata.attributes`` (values other
than strings JSON-encoded; ``gen_ai.input.messages`` / ``gen_ai.output.messages`` become input and output).
"""

from __future__ import annotations

import gzip
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

from tests.backends import otlp
from tests.backends.http_recorder import Recorded, Recorder, recording

TRACES_PATH = "/api/public/otel/v1/traces"
SCORES_PATH = "/api/public/scores"
ACCEPTED = (202, "application/json", json.dumps({"message": "Accepted"}).encode())
GENERATION_OPERATIONS = {"chat", "completion", "text_completion", "generate_content", "generate"}
_IO_KEYS = {"gen_ai.input.messages", "gen_ai.output.messages"}
_USAGE_KEYS = {
    "input_tokens": "input",
    "output_tokens": "output",
    "prompt_tokens": "input",
    "completion_tokens": "output",
}


class LangfuseServer:
    """Answers Langfuse's OTLP traces and scores endpoints; ``hold_scores`` makes score requests wait."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.hold_scores = threading.Event()
        self.hold_scores.set()
        self.score_request_arrived = threading.Event()

    @property
    def url(self) -> str:
        return self.recorder.url

    def respond(self, request: Recorded) -> tuple[int, str, bytes]:
        if request.path == TRACES_PATH:
            return otlp.OK_RESPONSE
        if request.path == SCORES_PATH:
            self.score_request_arrived.set()
            self.hold_scores.wait(timeout=60)  # bounded, even if a test forgets to release it
            return ACCEPTED
        return 404, "application/json", b'{"message": "not found"}'

    def requests(self, path: str) -> list[Recorded]:
        return [request for request in self.recorder.requests if request.path == path]

    def spans(self) -> list[otlp.ExportedSpan]:
        """The OTLP spans received on the traces endpoint (gzip, the SDK's default, undone)."""
        plain = []
        for request in self.requests(TRACES_PATH):
            body = (
                gzip.decompress(request.body)
                if request.headers.get("content-encoding") == "gzip"
                else request.body
            )
            plain.append(replace(request, body=body))
        return otlp.spans(plain)

    def scores(self) -> list[dict[str, Any]]:
        """Every score received (the SDK posts JSON lists; a single object is accepted too)."""
        found: list[dict[str, Any]] = []
        for request in self.requests(SCORES_PATH):
            body = request.json()
            found += body if isinstance(body, list) else [body]
        return found


@contextmanager
def langfuse_server() -> Iterator[LangfuseServer]:
    server: LangfuseServer | None = None
    with recording(lambda request: server.respond(request)) as recorder:  # type: ignore[union-attr]
        server = LangfuseServer(recorder)
        try:
            yield server
        finally:
            server.hold_scores.set()


def langfuse_clients(server: LangfuseServer) -> Iterator[Callable[..., Any]]:
    """Generator for a fixture: makes Langfuse SDK clients bound to ``server``, each with its own tracer
    provider (never the global one) and its own keys (the SDK keeps one client per public key); shuts
    them down afterwards."""
    from langfuse import Langfuse

    made: list[Any] = []

    def make(**kwargs: Any) -> Any:
        keys = dict(public_key=f"pk-lf-{uuid.uuid4().hex}", secret_key=f"sk-lf-{uuid.uuid4().hex}")
        provider = TracerProvider()
        client = Langfuse(**keys, base_url=server.url, tracer_provider=provider, **kwargs)
        client.test_keys = keys  # what the requests must authenticate with
        client.test_tracer_provider = provider  # where the SDK's span processor (and filter) sits
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            client.shutdown()


def langfuse_view(span: otlp.ExportedSpan) -> dict[str, Any]:
    """The observation Langfuse builds from ``span`` (see the module docstring)."""
    attributes = span.attributes
    operation = attributes.get("gen_ai.operation.name")
    model = attributes.get("gen_ai.response.model") or attributes.get("gen_ai.request.model")
    if operation is not None:
        kind = "GENERATION" if operation in GENERATION_OPERATIONS else "SPAN"
    else:
        kind = "GENERATION" if model else "SPAN"
    usage = {
        _USAGE_KEYS.get(name.removeprefix("gen_ai.usage."), name.removeprefix("gen_ai.usage.")): value
        for name, value in attributes.items()
        if name.startswith("gen_ai.usage.")
    }
    parameters = {
        name.removeprefix("gen_ai.request."): value
        for name, value in attributes.items()
        if name.startswith("gen_ai.request.") and name != "gen_ai.request.model"
    }
    metadata = {
        name: value if isinstance(value, str) else json.dumps(value)
        for name, value in attributes.items()
        if name not in _IO_KEYS and not name.startswith("langfuse.")
    }
    return {
        "id": span.span.span_id.hex(),
        "traceId": span.span.trace_id.hex(),
        "type": kind,
        "model": model,
        "usage": usage,
        "modelParameters": parameters,
        "metadata": {"attributes": metadata},
        "scope": span.scope_name,
    }
