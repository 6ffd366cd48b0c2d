"""Nothing leaks: no prompt, completion or token text (or token ids) in any exported span, event, log
or metric by default; the prompt hash is salted; metric label sets stay bounded whatever the prompts;
the library opens no network listener; secrets (Langfuse keys, the hash salt) are never logged."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import ArrayValue
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor

import corevital_otel
from corevital_otel import GenerationResults, hookimpl
from corevital_otel.cli import main as cli_main
from tests.core.helpers import offline_tokenizer, run_python, scripted
from tests.support import contract
from tests.support.otlp_receiver import exporting_providers
from tests.support.tiny_models import VOCAB, build_model

from .support import full_scale, messages_in, strings_in

SALT = "salt-never-exported-7f3a"
PROMPT_IDS = (41, 77, 53, 88, 62, 45, 70, 59)  # distinct ids: a leak of the sequence cannot be chance
FORCED = (31, 84, 36, 92, 38, 67)  # the completion, scripted token by token
_REQUESTS = {"/v1/traces": ExportTraceServiceRequest, "/v1/metrics": ExportMetricsServiceRequest}


class FailingPlugin:
    """Fails once per call, so the library logs (its warning is exported through the OTLP log bridge)."""

    COREVITAL_PLUGIN_NAME = "failing"

    @hookimpl
    def corevital_summarize(self, results: GenerationResults) -> None:
        raise RuntimeError("plugin failure")


def _payload(receiver: Any) -> list[Any]:
    """Every request the receiver got, decoded: traces, metrics and logs."""
    decoded = [
        _REQUESTS[path].FromString(body) for path in _REQUESTS for body in receiver.bodies.get(path, [])
    ]
    decoded += [ExportLogsServiceRequest.FromString(body) for body in receiver.bodies.get("/v1/logs", [])]
    return decoded


def _int_arrays(message: Any) -> Iterator[tuple[int, ...]]:
    for nested in messages_in(message):
        if isinstance(nested, ArrayValue):
            yield tuple(item.int_value for item in nested.values if item.WhichOneof("value") == "int_value")


def _contains(array: tuple[int, ...], sequence: tuple[int, ...]) -> bool:
    return any(array[start : start + len(sequence)] == sequence for start in range(len(array)))


def _generate_with_everything_that_could_leak(receiver: Any, content_mode: str, monkeypatch) -> str:
    """One generation through real OTLP exporters (spans, metrics, logs), with every built-in plugin, a
    known tokenizer and a streamer. Returns the completion's text."""
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", content_mode)
    monkeypatch.setenv("COREVITAL_PROMPT_HASH_SALT", SALT)
    tokenizer = offline_tokenizer()
    model = build_model("llama")
    corevital_otel.register_tokenizer(model, tokenizer)
    ids = torch.tensor([PROMPT_IDS])
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(
        SimpleLogRecordProcessor(OTLPLogExporter(f"{receiver.endpoint}/v1/logs"))
    )
    handler = LoggingHandler(level=logging.DEBUG, logger_provider=logger_provider)
    logging.getLogger().addHandler(handler)
    try:
        for tracer_provider, meter_provider in exporting_providers(receiver, "corevital-leaks"):
            corevital_otel.instrument(
                tracer_provider=tracer_provider, meter_provider=meter_provider, plugins=[FailingPlugin()]
            )
            forced = {(0, step): token for step, token in enumerate(FORCED)}
            output = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=len(FORCED),
                do_sample=False,
                logits_processor=scripted(ids.shape[1], forced),
                tokenizer=tokenizer,
            )
            meter_provider.force_flush()
            corevital_otel.uninstrument()
    finally:
        logging.getLogger().removeHandler(handler)
        logger_provider.shutdown()
    assert tuple(output[0, len(PROMPT_IDS) :].tolist()) == FORCED
    return tokenizer.decode(FORCED)


@pytest.mark.parametrize("content_mode", ["NO_CONTENT", "SPAN_AND_EVENT"])
@pytest.mark.filterwarnings("ignore:.*LoggingHandler:DeprecationWarning")  # its successor is not installed
def test_no_text_token_ids_or_salt_in_the_otlp_payload_by_default(content_mode, otlp_receiver, monkeypatch):
    completion = _generate_with_everything_that_could_leak(otlp_receiver, content_mode, monkeypatch)
    prompt = offline_tokenizer().decode(PROMPT_IDS)
    words = set(prompt.split()) | set(completion.split())
    payload = _payload(otlp_receiver)
    assert {"/v1/traces", "/v1/metrics", "/v1/logs"} <= set(otlp_receiver.bodies)
    strings = [text for message in payload for text in strings_in(message)]
    assert any("plugin failure" in text for text in strings)  # the log record did travel
    leaked_words = {word for text in strings for word in re.findall(r"w\d+", text) if word in words}
    leaked_ids = [
        a for m in payload for a in _int_arrays(m) if _contains(a, PROMPT_IDS) or _contains(a, FORCED)
    ]
    assert not any(SALT in text for text in strings)
    assert leaked_ids == []
    if content_mode == "NO_CONTENT":
        assert leaked_words == set()
    else:  # the same check sees the text as soon as content capture is asked for
        assert leaked_words == words
        assert any(prompt in text for text in strings) and any(completion in text for text in strings)


def test_the_prompt_hash_is_salted(instrumented, monkeypatch):
    def prompt_hash() -> tuple[str, str]:
        ids = torch.tensor([PROMPT_IDS])
        telemetry = instrumented(plugin_options={"fingerprint": {"salt": salt}} if salt else {})
        build_model("gpt2").generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1)
        span = telemetry.generation_spans()[-1]
        corevital_otel.uninstrument()
        attributes = span.attributes  # one row: the hash is a plain value
        return attributes["corevital.prompt.hash"], attributes["corevital.prompt.hash_scope"]

    message = b"gpt2\x00" + np.asarray(PROMPT_IDS, dtype="<i8").tobytes()
    salt = SALT
    assert prompt_hash() == (hmac.new(SALT.encode(), message, hashlib.sha256).hexdigest(), "deployment")
    salt = ""
    default_hash, scope = prompt_hash()
    assert scope == "process"  # a random salt drawn once per process
    unsalted = {hashlib.sha256(message).hexdigest(), hmac.new(b"", message, hashlib.sha256).hexdigest()}
    assert default_hash not in unsalted and len(default_hash) == 64


def _series(telemetry: Any) -> dict[str, set[frozenset]]:
    """Metric name -> the attribute sets of its points (one point per series)."""
    return {
        name: {frozenset(p.attributes.items()) for p in points}
        for name, points in telemetry.metrics().items()
    }


def test_metric_label_sets_stay_bounded_over_distinct_prompts(instrumented):
    """Every call has a prompt never seen before (and some fail): the label sets saturate early and only
    ever hold documented attribute names with a handful of values each."""
    generations = 10_000 if full_scale() else 300
    checkpoint = generations // 3
    model = build_model("gpt2")
    telemetry = instrumented(capture_mode="summary", capture_prompt=False, plugins=[FailingPlugin()])
    generator = torch.Generator().manual_seed(0)
    counts = {}
    for call in range(generations):
        batch, length = 1 + call % 2, 2 + call % 11
        ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
        if call % 10 == 9:
            ids[0, 0] = VOCAB + call  # out of range: the call fails inside generate()
        with contextlib.suppress(IndexError):
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1 + call % 2)
        if call + 1 in (checkpoint, generations):
            counts[call + 1] = sum(len(sets) for sets in _series(telemetry).values())
    series = _series(telemetry)
    values: dict[str, set] = {}
    documented = contract.load().metrics
    for name, attribute_sets in series.items():
        for attribute_set in attribute_sets:
            keys = {key for key, _ in attribute_set}
            assert keys <= documented[name].attributes, (name, keys - documented[name].attributes)
            for key, value in attribute_set:
                values.setdefault(key, set()).add(value)
    print(f"\n{generations} generations with distinct prompts: series {counts}; label values per key:")
    print(json.dumps({key: len(found) for key, found in sorted(values.items())}))
    assert values["gen_ai.request.model"] == {"gpt2"}
    assert all(len(found) <= 16 for found in values.values()), values
    assert counts[generations] == counts[checkpoint]  # saturated: new prompts add no series
    assert counts[generations] <= 100


LISTENER_APP = """
import json, os, threading
import torch
import transformers
from tests.support.tiny_models import build_model, prompt_batch


def sockets():
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def listening(inodes):
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        with open(f"/proc/net/{table}") as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                # TCP state 0A is LISTEN; any bound UDP socket receives
                if fields[9] in inodes and (table.startswith("udp") or fields[3] == "0A"):
                    found.append((table, fields[1]))
    return found


torch.set_num_threads(1)
before, threads_before = sockets(), threading.active_count()
import corevital_otel
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.metrics import MeterProvider

corevital_otel.instrument(tracer_provider=TracerProvider(), meter_provider=MeterProvider())
ids, mask = prompt_batch(batch=2)
build_model("llama").generate(input_ids=ids, attention_mask=mask, max_new_tokens=3)
during = sockets()
corevital_otel.uninstrument()
print(json.dumps({"new_sockets": sorted(during - before), "listening": listening(during),
                  "threads": [threads_before, threading.active_count()]}))
"""


def test_the_library_opens_no_socket_and_no_listener(tmp_path):
    """In a fresh process: importing, instrumenting and generating (every built-in plugin) opens no socket."""
    completed = run_python(tmp_path, LISTENER_APP)
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report == {"new_sockets": [], "listening": [], "threads": [1, 1]}


class _LangfuseStub(BaseHTTPRequestHandler):
    """Rejects every request, remembering the Authorization header it was sent."""

    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.seen.append(self.headers.get("Authorization", ""))
        body = b'{"message": "Unauthorized"}'
        self.send_response(401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def langfuse_stub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LangfuseStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_langfuse_keys_come_from_the_environment_and_are_never_logged(
    langfuse_stub, tmp_path, monkeypatch, capsys, caplog
):
    public, secret = "pk-lf-public-6b1e", "sk-lf-secret-93d0"
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", public)
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", secret)
    caplog.set_level(logging.DEBUG)
    _LangfuseStub.seen.clear()
    refused = "http://127.0.0.1:9"  # discard port: nothing listens on loopback there
    definitions = (
        Path(__file__).resolve().parents[2] / "dashboards" / "langfuse" / "corevital-dashboards.json"
    )

    for host in (langfuse_stub, refused):
        monkeypatch.setenv("LANGFUSE_HOST", host)
        assert cli_main(["langfuse-dashboards", "--file", str(definitions), "--timeout", "5"]) == 1
    with pytest.raises(SystemExit):
        cli_main(["langfuse-dashboards", "--help"])

    token = base64.b64encode(f"{public}:{secret}".encode()).decode()
    assert _LangfuseStub.seen == [f"Basic {token}"]  # read from the environment, sent only as the header
    captured = capsys.readouterr()
    printed = captured.out + captured.err + "\n".join(record.getMessage() for record in caplog.records)
    assert "HTTP 401" in printed and "127.0.0.1:9" in printed  # the errors were reported...
    for needle in (public, secret, token):
        assert needle not in printed  # ...without the credentials
