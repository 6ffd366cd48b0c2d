"""Live tier: byte-bounded batches, proved with volume. 1,000 long generations (a real 2,000-token span
with no byte budget and 500 step events, the largest a user can configure: ~0.4 MB of OTLP each, under
fresh trace ids) go through the built Collector to the built Jaeger, whose
OTLP gRPC receiver keeps gRPC's default 4 MiB message limit. Nothing may be lost: every trace is found
in Jaeger by its id, and the Collector's own counters show no failed send and no refused span."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import live_stack, span_facts
from .repo import COLLECTOR_BASE

COUNT = 1000
GRPC_DEFAULT_LIMIT = 4 * 2**20
# The Collector's own counters (Prometheus names of otelcol_exporter_send_failed_spans & co.).
SENT = "otelcol_exporter_sent_spans_total"
SEND_FAILED = "otelcol_exporter_send_failed_spans_total"
ENQUEUE_FAILED = "otelcol_exporter_enqueue_failed_spans_total"
REFUSED = "otelcol_receiver_refused_spans_total"
PROCESSOR_REFUSED = "otelcol_processor_refused_spans_total"
JAEGER = {"exporter": "otlp_grpc/jaeger"}  # not the debug exporter's counts


def _in_jaeger(jaeger: live_stack.RunningJaeger, trace_ids: list[str], span_name: str) -> set[str]:
    with ThreadPoolExecutor(4) as pool:
        found = pool.map(lambda trace_id: jaeger.has_trace(trace_id, span_name), trace_ids)
        return {trace_id for trace_id, present in zip(trace_ids, found, strict=True) if present}


def test_a_thousand_long_generations_reach_jaeger_whole(tmp_path: Path) -> None:
    otelcol, jaeger_binary = live_stack.require_collector(), live_stack.require_jaeger()
    load = live_stack.load_generator()
    template = load.capture("long")
    assert len(template.body) > 300_000, f"a long generation's span: {len(template.body)} bytes"
    assert COUNT * len(template.body) > 50 * GRPC_DEFAULT_LIMIT  # one unbounded batch would not pass
    name = template.attributes.get("gen_ai.request.model")
    with live_stack.jaeger(jaeger_binary, tmp_path) as jaeger:
        environment = {"JAEGER_OTLP_GRPC_ENDPOINT": jaeger.otlp_grpc}
        with live_stack.collector(otelcol, [COLLECTOR_BASE], tmp_path, environment) as collector:
            started = time.monotonic()
            sent = load.send(collector.otlp_http, template, COUNT, seconds=300, batch=16, concurrency=2)
            assert (sent.spans_sent, sent.spans_lost, sent.spans_unsent) == (COUNT, 0, 0), sent.summary()
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and collector.own_metrics(**JAEGER).get(SENT, 0) < COUNT:
                time.sleep(1)
            counters = collector.own_metrics(**JAEGER)
            drained = time.monotonic()
        found = _in_jaeger(jaeger, sent.trace_ids, f"text_completion {name}")
        whole = [span for span in jaeger.trace(sent.trace_ids[0]) if span_facts.is_generation(span.span.name)]
    print(
        f"\n{COUNT} spans of {len(template.body)} bytes: sent in {sent.seconds:.0f} s"
        f" ({sent.refusals} refusals retried), in Jaeger {drained - started:.0f} s after the first,"
        f" checked in {time.monotonic() - drained:.0f} s"
    )
    assert counters.get(SENT) == COUNT, (counters, collector.log.read_text()[-3000:])
    for counter in (SEND_FAILED, ENQUEUE_FAILED, REFUSED, PROCESSOR_REFUSED):
        assert counters.get(counter, 0.0) == 0.0, (counter, counters.get(counter))
    assert len(found) == COUNT, f"{COUNT - len(found)} of {COUNT} traces missing in Jaeger"
    (span,) = whole  # one decoded in full: the span arrived whole
    assert span.attributes["gen_ai.usage.output_tokens"] == template.attributes["gen_ai.usage.output_tokens"]
    assert len(span.span.attributes) == len(template.attributes)
