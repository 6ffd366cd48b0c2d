"""Langfuse: through the Langfuse Python SDK (whose default span filter must let our span through) a
generation arrives as an OTLP/HTTP request Langfuse turns into a *generation* with model and usage, health
flags and risk in its metadata; with ``langfuse_scores`` the risk score and flags also arrive as scores on
that observation, without generate() ever waiting on the network. A tier talks to a real Langfuse."""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

import corevital_otel
from corevital_otel import ConfigError
from corevital_otel.integrations.langfuse import Score, scores_from
from tests.core.helpers import run_python
from tests.support.tiny_models import build_model, prompt_batch

from .langfuse_fake import SCORES_PATH, TRACES_PATH, langfuse_clients, langfuse_server, langfuse_view

pytest.importorskip("langfuse")

HEALTH_FLAGS = {
    "corevital.health.nan_detected",
    "corevital.health.inf_detected",
    "corevital.health.attention_collapse_detected",
    "corevital.health.high_entropy_steps",
    "corevital.health.repetition_loop_detected",
    "corevital.health.mid_layer_anomaly_detected",
}


@pytest.fixture
def server():
    with langfuse_server() as server:
        yield server


@pytest.fixture
def langfuse_client(server):
    yield from langfuse_clients(server)


def _generate(model: Any = None, new: int = 16) -> None:
    ids, mask = prompt_batch(batch=1)
    (model or build_model("gpt2")).generate(
        ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False
    )


def _basic(keys: dict[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{keys['public_key']}:{keys['secret_key']}".encode()).decode()


def test_the_sdk_exports_our_span_and_langfuse_sees_a_generation(server, langfuse_client):
    """The Langfuse SDK's span processor, default filter: our span leaves as OTLP/HTTP protobuf to
    /api/public/otel/v1/traces with Basic auth and ingestion version 4, and maps to a generation."""
    client = langfuse_client()
    corevital_otel.instrument(tracer_provider=client.test_tracer_provider)  # every built-in plugin
    _generate()
    # The filter does filter: a span of an unknown scope without gen_ai.* attributes stays home.
    client.test_tracer_provider.get_tracer("some.library").start_span("not-genai").end()
    client.flush()

    (request,) = server.requests(TRACES_PATH)
    assert request.method == "POST"
    assert request.headers["authorization"] == _basic(client.test_keys)
    assert request.headers["x-langfuse-ingestion-version"] == "4"
    assert request.headers["content-type"] == "application/x-protobuf"
    (span,) = server.spans()
    assert span.scope_name == "corevital_otel"  # not Langfuse's own scope: attributes go to metadata
    observation = langfuse_view(span)
    assert observation["type"] == "GENERATION" and observation["model"] == "gpt2"
    attributes = span.attributes
    assert observation["usage"] == {
        "input": attributes["gen_ai.usage.input_tokens"],
        "output": attributes["gen_ai.usage.output_tokens"],
    }
    assert observation["usage"]["output"] == 16
    assert observation["modelParameters"]["max_tokens"] == 16
    metadata = observation["metadata"]["attributes"]
    assert set(metadata) >= HEALTH_FLAGS
    assert {
        "corevital.risk.score",
        "corevital.risk.level",
        "corevital.risk.factors",
        "corevital.risk.max",
    } <= set(metadata)
    assert metadata["corevital.risk.max"] == str(attributes["corevital.risk.max"])


def test_risk_and_flags_arrive_as_scores_on_the_observation(server, langfuse_client):
    client = langfuse_client()
    corevital_otel.instrument(tracer_provider=client.test_tracer_provider, langfuse_scores=client)
    _generate()
    client.flush()

    requests = server.requests(SCORES_PATH)
    assert requests and all(
        request.headers["authorization"] == _basic(client.test_keys) for request in requests
    )
    (span,) = server.spans()
    attributes = span.attributes
    scores = {score["name"]: score for score in server.scores()}
    assert set(scores) == {"corevital.risk.score", "corevital.risk.level"} | HEALTH_FLAGS
    for score in scores.values():
        assert (
            score["traceId"] == span.span.trace_id.hex() and score["observationId"] == span.span.span_id.hex()
        )
    risk = scores["corevital.risk.score"]
    assert (risk["dataType"], risk["value"]) == ("NUMERIC", attributes["corevital.risk.max"])
    assert risk["comment"] == f"factors: {attributes['corevital.risk.factors']}"  # one row: plain values
    level = scores["corevital.risk.level"]
    assert (level["dataType"], level["value"]) == ("CATEGORICAL", attributes["corevital.risk.level"])
    loop = scores["corevital.health.repetition_loop_detected"]
    assert (loop["dataType"], loop["value"]) == (
        "BOOLEAN",
        float(attributes["corevital.health.repetition_loop_detected"]),
    )
    steps = scores["corevital.health.high_entropy_steps"]
    assert (steps["dataType"], steps["value"]) == (
        "NUMERIC",
        float(attributes["corevital.health.high_entropy_steps"]),
    )


def test_a_stalled_langfuse_never_holds_generate_back(server, langfuse_client):
    """The scores endpoint hangs: generations go on; the scores follow once it answers."""
    client = langfuse_client(flush_interval=0.05)
    corevital_otel.instrument(tracer_provider=client.test_tracer_provider, langfuse_scores=client)
    model = build_model("gpt2")
    server.hold_scores.clear()
    _generate(model, new=4)
    # The SDK's sender has taken the first scores and now waits on the server (bounded wait).
    assert server.score_request_arrived.wait(timeout=30)
    more = threading.Thread(target=lambda: [_generate(model, new=4) for _ in range(2)], daemon=True)
    more.start()
    more.join(timeout=60)
    assert not more.is_alive(), "generate() waited on the stalled scores request"
    assert not server.hold_scores.is_set()  # it was still stalled the whole time
    server.hold_scores.set()
    client.flush()
    trace_ids = {score["traceId"] for score in server.scores()}
    assert len(trace_ids) == 3


def test_credentials_never_reach_the_logs(server, langfuse_client, caplog):
    client = langfuse_client()
    caplog.set_level(logging.DEBUG)
    corevital_otel.instrument(tracer_provider=client.test_tracer_provider, langfuse_scores=client)
    _generate(new=3)
    client.flush()
    assert server.scores()  # the keys were used...
    secret = client.test_keys["secret_key"]
    assert secret not in caplog.text and base64.b64encode(secret.encode()).decode() not in caplog.text


class _Client:
    """Stands in for a Langfuse client: records create_score calls, or fails on them."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = fail

    def create_score(self, **kwargs: Any) -> None:
        if self.fail:
            raise RuntimeError("langfuse unavailable")
        self.calls.append(kwargs)

    def flush(self) -> None:
        pass


def test_an_unsampled_generation_gets_no_scores(telemetry):
    client = _Client()
    corevital_otel.instrument(tracer_provider=TracerProvider(sampler=ALWAYS_OFF), langfuse_scores=client)
    _generate(new=3)
    assert client.calls == []


def test_a_failing_client_costs_the_scores_only(instrumented):
    telemetry = instrumented(langfuse_scores=_Client(fail=True))
    _generate(new=3)
    (span,) = telemetry.generation_spans()
    assert (
        "plugin langfuse_scores failed in corevital_explain: RuntimeError"
        in span.attributes["corevital.capture.lost"]
    )
    assert span.attributes["gen_ai.usage.output_tokens"] == 3 and "corevital.risk.score" in span.attributes
    (errors,) = telemetry.metrics()["corevital.plugin.errors"]
    assert errors.attributes["corevital.plugin.name"] == "langfuse_scores"


def test_scores_follow_the_riskiest_row():
    attributes = {
        "corevital.risk.score": (0.2, 0.85),
        "corevital.risk.level": ("low", "high"),
        "corevital.risk.factors": ("", "repetition_loop,entropy"),
        "corevital.health.nan_detected": False,
        "corevital.health.high_entropy_steps": 7,
        "corevital.health.per_row.nan_detected": (False, False),
        "corevital.health.first_step.repetition_loop_detected": 4,
        "corevital.health.profile": "gpt2",
    }
    assert scores_from(attributes) == [
        Score("corevital.risk.score", 0.85, "NUMERIC", "factors: repetition_loop,entropy"),
        Score("corevital.risk.level", "high", "CATEGORICAL"),
        Score("corevital.health.nan_detected", 0.0, "BOOLEAN"),
        Score("corevital.health.high_entropy_steps", 7.0, "NUMERIC"),
    ]
    assert scores_from({"corevital.logits.entropy.mean": (2.0,)}) == []  # no risk plugin, no flags


@pytest.mark.parametrize(
    ("options", "environment", "message"),
    [
        ({"langfuse_scores": True}, {}, "LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY"),
        ({"langfuse_scores": True}, {"LANGFUSE_PUBLIC_KEY": "pk"}, "LANGFUSE_SECRET_KEY"),
        ({}, {"COREVITAL_LANGFUSE_SCORES": "sometimes"}, "COREVITAL_LANGFUSE_SCORES"),
        ({"langfuse_scores": 42}, {}, "langfuse_scores"),
    ],
)
def test_a_misconfiguration_fails_at_instrument(monkeypatch, options, environment, message):
    for name in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "COREVITAL_LANGFUSE_SCORES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        corevital_otel.instrument(**options)
    assert not corevital_otel.is_instrumented()


def test_without_the_sdk_the_extra_is_named(monkeypatch):
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-x")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-x")
    monkeypatch.setitem(__import__("sys").modules, "langfuse", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"corevital-otel\[langfuse\]"):
        corevital_otel.instrument(langfuse_scores=True)
    assert not corevital_otel.is_instrumented()


ZERO_CONFIG_APP = """
import torch
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from tests.support.tiny_models import build_model, prompt_batch

import corevital_otel

torch.set_num_threads(1)
trace.set_tracer_provider(TracerProvider())  # the application's own provider
corevital_otel.instrument()  # COREVITAL_LANGFUSE_SCORES and LANGFUSE_* come from the environment
ids, mask = prompt_batch(batch=1)
build_model("gpt2").generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False)

from langfuse import get_client

get_client().flush()  # the SDK's client corevital used: spans (its processor) and scores
"""


def test_scores_from_the_environment_attach_to_the_exported_generation(tmp_path, server):
    """COREVITAL_LANGFUSE_SCORES=true and the LANGFUSE_* variables, no code: the Langfuse SDK client is
    created from the environment, exports the span, and the scores point at that very observation."""
    run_python(
        tmp_path,
        ZERO_CONFIG_APP,
        COREVITAL_LANGFUSE_SCORES="true",
        LANGFUSE_PUBLIC_KEY="pk-lf-env",
        LANGFUSE_SECRET_KEY="sk-lf-env",
        LANGFUSE_BASE_URL=server.url,
    )
    (span,) = [span for span in server.spans() if span.span.name == "text_completion gpt2"]
    assert langfuse_view(span)["type"] == "GENERATION"
    scores = server.scores()
    assert {score["name"] for score in scores} >= {"corevital.risk.score", "corevital.risk.level"}
    assert {(score["traceId"], score["observationId"]) for score in scores} == {
        (span.span.trace_id.hex(), span.span.span_id.hex())
    }
    auth = "Basic " + base64.b64encode(b"pk-lf-env:sk-lf-env").decode()
    assert all(request.headers["authorization"] == auth for request in server.recorder.requests)


def _real_langfuse() -> tuple[str, str, str] | None:
    """A real Langfuse project: COREVITAL_TEST_LANGFUSE_* (as tests/backends), else LANGFUSE_*."""
    for prefix in ("COREVITAL_TEST_LANGFUSE_", "LANGFUSE_"):
        host = os.environ.get(f"{prefix}BASE_URL") or os.environ.get(f"{prefix}HOST")
        public_key, secret_key = os.environ.get(f"{prefix}PUBLIC_KEY"), os.environ.get(f"{prefix}SECRET_KEY")
        if host and public_key and secret_key:
            return host, public_key, secret_key
    return None


def test_against_a_real_langfuse():
    """Sends a generation and its scores to a real Langfuse and reads them back (real-time read path)."""
    real = _real_langfuse()
    if real is None:
        pytest.skip(
            "no Langfuse: set COREVITAL_TEST_LANGFUSE_HOST, _PUBLIC_KEY, _SECRET_KEY (or LANGFUSE_BASE_URL / "
            "LANGFUSE_HOST, LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY) of a throwaway project"
        )
    from langfuse import Langfuse

    host, public_key, secret_key = real
    provider = TracerProvider()
    client = Langfuse(public_key=public_key, secret_key=secret_key, base_url=host, tracer_provider=provider)
    try:
        corevital_otel.instrument(tracer_provider=provider, langfuse_scores=client)
        with provider.get_tracer("corevital-test").start_as_current_span("langfuse-tier") as parent:
            _generate(new=8)
        client.flush()
        trace_id = f"{parent.get_span_context().trace_id:032x}"
        generation, names = None, set()
        deadline = time.monotonic() + 180  # ingestion is asynchronous: poll, bounded
        while time.monotonic() < deadline and (generation is None or len(names) < 2):
            found = client.api.observations.get_many(
                trace_id=trace_id, type="GENERATION", fields="core,basic,model,usage,metadata"
            )
            generation = found.data[0] if found.data else None
            names = {score.name for score in client.api.scores.get_many(trace_id=trace_id).data}
            time.sleep(2)
        assert generation is not None, f"no generation in trace {trace_id} after 180 s"
        assert generation.model == "gpt2" and generation.usage_details.get("output") == 8
        assert "corevital.risk" in str(generation.metadata)
        assert names >= {"corevital.risk.score", "corevital.risk.level"}
    finally:
        client.shutdown()
