"""Bounded OTLP/HTTP load of real corevital generation spans, for sizing a Collector (loopback only).

    python deploy/otlp_load.py --endpoint http://127.0.0.1:4318 --size medium --count 2000 --seconds 60

A template span comes from one real instrumented generate() call, captured in memory: ``small`` (the
embedded demo model, capture mode summary, 16 tokens), ``medium`` (demo model, full, 64 tokens), ``long``
(a tiny GPT-2 built from its config, full, 2,000 tokens, no byte budget, 500 step events: a span as large
as users make it, about 400 KB; the default budget keeps spans under 64 KiB), or ``healthy`` /
``looping`` (the demo's healthy and looping prompts, full, 48 tokens). Each trace sent is that span with
a fresh trace and span id, ``--batch`` spans per request. A request the Collector refuses (HTTP
429/502/503/504, e.g. its memory limiter) is retried with backoff, as the SDKs do, until ``--seconds``
are up; the count of refusals, of spans finally not accepted and of spans not tried when time ran out is
reported, so nothing is lost silently. Bounded in count and time, and it sends only to a loopback
address."""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

RETRYABLE = {429, 502, 503, 504}  # what an OTLP/HTTP exporter retries
HEALTHY_PROMPT = "    def __repr__(self):\n        return '<%s %r>' % (self.__class__.__name__, "
LOOPING_PROMPT = "import os\nimport sys\n"


@dataclass(frozen=True)
class Template:
    """One exported generation span as an OTLP ExportTraceServiceRequest, and the ids to replace."""

    body: bytes
    trace_id: bytes
    span_id: bytes
    attributes: dict[str, Any]

    def copy(self) -> tuple[bytes, str]:
        """The same span under a fresh trace and span id: (request bytes, trace id in hex)."""
        trace_id, span_id = os.urandom(16), os.urandom(8)
        body = self.body.replace(self.trace_id, trace_id).replace(self.span_id, span_id)
        return body, trace_id.hex()


def _generate(size: str) -> list[Any]:
    """The finished spans of one generate() call of the given kind."""
    import torch
    import transformers
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import corevital_otel
    from corevital_otel.demo_model import DEMO_MODEL_DIR, DEMO_MODEL_NAME
    from corevital_otel.report.generations import load_local_model

    torch.manual_seed(0)
    spans = InMemorySpanExporter()
    options: dict = {"capture_mode": "summary" if size == "small" else "full"}
    limits = SpanLimits()
    if size == "long":  # the largest span a user can configure: no byte budget, 500 step events
        options.update(max_span_kib=0, max_step_events=500)
        limits = SpanLimits(max_events=600)
    resource = Resource.create({"service.name": "corevital-load"})
    provider = TracerProvider(resource=resource, span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(spans))
    corevital_otel.instrument(tracer_provider=provider, meter_provider=MeterProvider(), **options)
    try:
        if size == "long":
            config = transformers.GPT2Config(
                vocab_size=512, n_embd=32, n_layer=2, n_head=4, n_positions=2048 + 16, bos_token_id=1,
                eos_token_id=2, pad_token_id=0,
            )  # fmt: skip
            model = transformers.GPT2LMHeadModel(config).eval()
            model.config.name_or_path = "load-gpt2-long"
            ids = torch.randint(3, 512, (1, 16))
            model.generate(ids, max_new_tokens=2000, min_new_tokens=2000, do_sample=False, pad_token_id=0)
        else:
            model, tokenizer = load_local_model(DEMO_MODEL_DIR, display_name=DEMO_MODEL_NAME)
            prompt = LOOPING_PROMPT if size == "looping" else HEALTHY_PROMPT
            tokens = {"small": 16, "medium": 64}.get(size, 48)
            ids = tokenizer(prompt, return_tensors="pt")
            model.generate(**ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    finally:
        corevital_otel.uninstrument()
    return list(spans.get_finished_spans())


def capture(size: str) -> Template:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    (span,) = _generate(size)
    context = span.get_span_context()
    trace_id, span_id = context.trace_id.to_bytes(16, "big"), context.span_id.to_bytes(8, "big")
    body = encode_spans([span]).SerializeToString()
    return Template(body, trace_id, span_id, dict(span.attributes or {}))


@dataclass
class Result:
    spans_sent: int = 0  # accepted by the receiver
    spans_lost: int = 0  # tried but never accepted: refused for good, or still refused when time ran out
    spans_unsent: int = 0  # never tried: the time ran out first
    requests: int = 0
    refusals: int = 0  # retryable answers (memory limiter, overload), each followed by a retry
    bytes_sent: int = 0
    seconds: float = 0.0
    trace_ids: list[str] = field(default_factory=list)

    @property
    def spans_per_second(self) -> float:
        return self.spans_sent / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        values = {key: value for key, value in asdict(self).items() if key != "trace_ids"}
        return {**values, "spans_per_second": round(self.spans_per_second, 1)}


def _loopback(endpoint: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(endpoint)
    host, port = parts.hostname or "", parts.port or 4318
    address = ipaddress.ip_address(socket.gethostbyname(host))
    if not address.is_loopback:
        raise SystemExit(f"otlp_load: {endpoint} is not a loopback address; this tool sends only to loopback")
    return host, port


def _requests(template: Template, count: int, batch: int) -> Iterator[tuple[bytes, list[str]]]:
    for start in range(0, count, batch):
        copies = [template.copy() for _ in range(min(batch, count - start))]
        # Concatenated requests are one request: protobuf appends repeated fields (resource_spans).
        yield b"".join(body for body, _ in copies), [trace_id for _, trace_id in copies]


def send(
    endpoint: str, template: Template, count: int, seconds: float, batch: int = 8, concurrency: int = 4
) -> Result:
    """Send ``count`` copies of the template, stopping at ``seconds``; retries refusals with backoff."""
    host, port = _loopback(endpoint)
    result = Result()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    requests = _requests(template, count, batch)
    local = threading.local()

    def connection() -> http.client.HTTPConnection:
        if getattr(local, "connection", None) is None:
            local.connection = http.client.HTTPConnection(host, port, timeout=30)
        return local.connection

    def post(body: bytes) -> int:
        try:
            connection().request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
            response = connection().getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            local.connection = None
            return 503  # a dropped connection is retried like a refusal

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                item = next(requests, None)
            if item is None:
                return
            body, trace_ids = item
            backoff = 0.1
            while True:
                status = post(body)
                with lock:
                    result.requests += 1
                if status == 200:
                    with lock:
                        result.spans_sent += len(trace_ids)
                        result.bytes_sent += len(body)
                        result.trace_ids += trace_ids
                    break
                if status not in RETRYABLE or time.monotonic() + backoff > deadline:
                    with lock:
                        result.spans_lost += len(trace_ids)
                    break
                with lock:
                    result.refusals += 1
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    result.seconds = time.monotonic() - started
    result.spans_unsent = count - result.spans_sent - result.spans_lost
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--endpoint", default="http://127.0.0.1:4318", help="OTLP/HTTP base URL (loopback)")
    parser.add_argument("--size", choices=("small", "medium", "long", "healthy", "looping"), default="medium")
    parser.add_argument("--count", type=int, default=1000, help="spans to send (at most)")
    parser.add_argument("--seconds", type=float, default=60.0, help="stop sending after this long")
    parser.add_argument("--batch", type=int, default=8, help="spans per request")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    arguments = parser.parse_args()
    template = capture(arguments.size)
    result = send(
        arguments.endpoint,
        template,
        arguments.count,
        arguments.seconds,
        arguments.batch,
        arguments.concurrency,
    )
    print(json.dumps({"size": arguments.size, "span_bytes": len(template.body), **result.summary()}))


if __name__ == "__main__":
    main()
