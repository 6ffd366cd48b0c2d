"""Langfuse: the dashboard definitions follow its dashboards API, `corevital-otel langfuse-dashboards`
sends the right requests (checked against an in-process receiver), and a direct OTLP export carries what
Langfuse needs to show a CoreVital span as a generation."""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from corevital_otel import cli
from tests.support.tiny_models import build_model, prompt_batch

from . import otlp
from .http_recorder import Recorded, Recorder, recording
from .repo import LANGFUSE_DASHBOARDS

# The documented contract of Langfuse's (unstable) dashboards API and its observations view.
VIEWS = {"observations", "scores-numeric", "scores-boolean", "scores-categorical"}
CHART_TYPES = {"LINE_TIME_SERIES", "AREA_TIME_SERIES", "BAR_TIME_SERIES", "HORIZONTAL_BAR", "VERTICAL_BAR",
               "PIE", "NUMBER", "HISTOGRAM", "PIVOT_TABLE"}  # fmt: skip
AGGREGATIONS = {"sum", "avg", "count", "max", "min", "p50", "p75", "p90", "p95", "p99", "histogram", "uniq"}
OBSERVATION_DIMENSIONS = {"environment", "type", "name", "level", "version", "tags", "release", "traceName",
                          "traceRelease", "traceVersion", "providedModelName", "promptName", "promptVersion",
                          "isRootObservation", "startTimeMonth"}  # fmt: skip
OBSERVATION_MEASURES = {"count", "latency", "streamingLatency", "inputTokens", "outputTokens", "totalTokens",
                        "outputTokensPerSecond", "tokensPerSecond", "inputCost", "outputCost", "totalCost",
                        "timeToFirstToken", "countScores"}  # fmt: skip
FILTER_OPERATORS = {
    "string": {"=", "contains", "does not contain", "starts with", "ends with"},
    "stringOptions": {"any of", "none of"},
    "number": {"=", ">", "<", ">=", "<="},
}
WIDGET_KEYS = {"name", "description", "view", "dimensions", "metrics", "filters", "chartType", "chartConfig"}
API = "/api/public/unstable"


def _definitions() -> list[dict]:
    return json.loads(LANGFUSE_DASHBOARDS.read_text())["dashboards"]


def _check_filters(filters: list[dict]) -> None:
    for item in filters:
        assert item["column"] in OBSERVATION_DIMENSIONS
        assert item["operator"] in FILTER_OPERATORS[item["type"]]


@pytest.mark.parametrize("dashboard", _definitions(), ids=lambda dashboard: dashboard["name"])
def test_definitions_follow_the_dashboards_api(dashboard: dict) -> None:
    _check_filters(dashboard.get("filters", []))
    cells: set[tuple[int, int]] = set()
    for tile in dashboard["widgets"]:
        widget = tile["widget"]
        assert (
            {"name", "view", "dimensions", "metrics", "filters", "chartType"} <= widget.keys() <= WIDGET_KEYS
        )
        assert widget["view"] == "observations" and widget["view"] in VIEWS
        assert {d["field"] for d in widget["dimensions"]} <= OBSERVATION_DIMENSIONS
        for metric in widget["metrics"]:
            assert metric["measure"] in OBSERVATION_MEASURES and metric["agg"] in AGGREGATIONS, metric
        _check_filters(widget["filters"])
        assert widget["chartType"] in CHART_TYPES
        assert widget.get("chartConfig", {}).get("type", widget["chartType"]) == widget["chartType"]
        assert tile["x"] + tile["width"] <= 12, f"{widget['name']}: the grid has 12 columns"
        covered = {
            (x, y)
            for x in range(tile["x"], tile["x"] + tile["width"])
            for y in range(tile["y"], tile["y"] + tile["height"])
        }
        assert not covered & cells, f"{widget['name']} overlaps another widget"
        cells |= covered


class FakeLangfuse:
    """Answers like Langfuse's dashboards API; ``existing`` dashboards are listed, two per page."""

    def __init__(self, existing: tuple[str, ...] = (), fail_with: int | None = None) -> None:
        self.existing = list(existing)
        self.fail_with = fail_with
        self.created = 0

    def __call__(self, request: Recorded) -> tuple[int, str, bytes]:
        if self.fail_with:
            return self.fail_with, "application/json", b'{"message": "Invalid credentials"}'
        if request.method == "GET":
            page = int(request.path.split("page=")[1].split("&")[0])
            items = [{"id": f"old{i}", "name": name} for i, name in enumerate(self.existing)]
            body = {
                "data": items[(page - 1) * 2 : page * 2],
                "meta": {"page": page, "totalPages": max(1, (len(items) + 1) // 2)},
            }
            return 200, "application/json", json.dumps(body).encode()
        self.created += 1
        return 200, "application/json", json.dumps({"id": f"id{self.created}"}).encode()


@pytest.fixture
def langfuse() -> Iterator[Callable[..., Recorder]]:
    with recording(lambda request: (500, "text/plain", b"")) as recorder:

        def configure(**kwargs: object) -> Recorder:
            recorder._respond = FakeLangfuse(**kwargs)  # noqa: SLF001
            return recorder

        yield configure


def _run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(["langfuse-dashboards", *args])
    return code, out.getvalue(), err.getvalue()


def test_command_creates_widgets_dashboard_and_placements(langfuse: Callable[..., Recorder]) -> None:
    recorder = langfuse(existing=("someone else's",))
    code, out, err = _run(
        "--host", recorder.url + "/", "--public-key", "pk-lf-test", "--secret-key", "sk-lf-test"
    )
    assert code == 0, err
    definition = _definitions()[0]
    widgets = definition["widgets"]
    calls = [(request.method, request.path.split("?")[0]) for request in recorder.requests]
    assert calls == (
        [("GET", f"{API}/dashboards")]
        + [("POST", f"{API}/dashboard-widgets")] * len(widgets)
        + [("POST", f"{API}/dashboards")]
        + [("POST", f"{API}/dashboards/id{len(widgets) + 1}/placements")] * len(widgets)
    )
    token = base64.b64encode(b"pk-lf-test:sk-lf-test").decode()
    assert all(request.headers["authorization"] == f"Basic {token}" for request in recorder.requests)
    posts = [request.json() for request in recorder.requests if request.method == "POST"]
    assert posts[: len(widgets)] == [tile["widget"] for tile in widgets]
    assert posts[len(widgets)] == {k: definition[k] for k in ("name", "description", "filters")}
    placements = posts[len(widgets) + 1 :]
    assert [p["widgetId"] for p in placements] == [f"id{i + 1}" for i in range(len(widgets))]
    assert all(p["type"] == "widget" for p in placements)
    assert [(p["x"], p["y"], p["width"], p["height"]) for p in placements] == [
        (t["x"], t["y"], t["width"], t["height"]) for t in widgets
    ]
    assert f"created: {definition['name']}" in out


def test_command_leaves_an_existing_dashboard_alone(langfuse: Callable[..., Recorder]) -> None:
    # the third dashboard on the list is on its second page
    recorder = langfuse(existing=("a", "b", _definitions()[0]["name"]))
    code, out, _ = _run("--host", recorder.url, "--public-key", "pk", "--secret-key", "sk")
    assert code == 0
    assert [request.method for request in recorder.requests] == ["GET", "GET"]
    assert "exists, left unchanged" in out


def test_command_reports_an_api_error(langfuse: Callable[..., Recorder]) -> None:
    recorder = langfuse(fail_with=401)
    code, _, err = _run("--host", recorder.url, "--public-key", "pk", "--secret-key", "wrong")
    assert code == 1
    assert "HTTP 401" in err and "Invalid credentials" in err


def test_command_takes_keys_from_the_environment(
    langfuse: Callable[..., Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = langfuse()
    monkeypatch.setenv("LANGFUSE_HOST", recorder.url)
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-env")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-env")
    assert _run()[0] == 0
    assert (
        recorder.requests[0].headers["authorization"]
        == "Basic " + base64.b64encode(b"pk-env:sk-env").decode()
    )


def test_command_without_keys_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LANGFUSE_HOST", "LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = _run("--host", "http://127.0.0.1:9")
    assert code == 2 and "--public-key" in err


def test_direct_otlp_export_is_a_langfuse_generation(
    instrument_with: Callable[..., object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented direct export: OTEL_EXPORTER_OTLP_TRACES_* variables, no Collector."""
    with recording(lambda request: otlp.OK_RESPONSE) as receiver:
        token = base64.b64encode(b"pk-lf-1:sk-lf-1").decode()
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{receiver.url}/api/public/otel/v1/traces")
        monkeypatch.setenv(
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            f"Authorization=Basic%20{token},x-langfuse-ingestion-version=4",
        )
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
        instrument_with(provider)
        ids, mask = prompt_batch(batch=1)
        build_model("gpt2").generate(
            ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0
        )
        provider.shutdown()
    request = receiver.requests[-1]
    assert request.path == "/api/public/otel/v1/traces"
    assert request.headers["authorization"] == f"Basic {token}"
    assert request.headers["x-langfuse-ingestion-version"] == "4"
    (span,) = otlp.spans(receiver.requests)
    # Langfuse makes a span a generation on this operation name or on a request model
    assert span.attributes["gen_ai.operation.name"] in ("text_completion", "chat", "generate")
    assert span.attributes["gen_ai.request.model"] == "gpt2"
    assert (
        span.attributes["gen_ai.usage.input_tokens"] > 0 and span.attributes["gen_ai.usage.output_tokens"] > 0
    )


@pytest.fixture
def real_langfuse() -> tuple[str, str, str]:
    host = os.environ.get("COREVITAL_TEST_LANGFUSE_HOST")
    if not host:
        pytest.skip(
            "no Langfuse: set COREVITAL_TEST_LANGFUSE_HOST, _PUBLIC_KEY and _SECRET_KEY (a throwaway "
            "project); Langfuse needs Postgres, ClickHouse, Redis and S3: no single local binary or container"
        )
    return (
        host,
        os.environ["COREVITAL_TEST_LANGFUSE_PUBLIC_KEY"],
        os.environ["COREVITAL_TEST_LANGFUSE_SECRET_KEY"],
    )


def test_command_against_a_real_langfuse(real_langfuse: tuple[str, str, str]) -> None:
    from corevital_otel.commands.langfuse_dashboards import LangfuseClient

    host, public_key, secret_key = real_langfuse
    code, _, err = _run("--host", host, "--public-key", public_key, "--secret-key", secret_key)
    assert code == 0, err
    client = LangfuseClient(host, public_key, secret_key)
    assert {d["name"] for d in _definitions()} <= client.dashboard_names()
    assert _run("--host", host, "--public-key", public_key, "--secret-key", secret_key)[0] == 0  # idempotent
