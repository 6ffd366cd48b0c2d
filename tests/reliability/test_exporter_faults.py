"""The OTLP endpoint refuses connections or never answers: generate() is not slowed (export happens in
the SDK's background threads, as ``opentelemetry-instrument`` sets it up) and the process exits within
the SDK's own export timeouts — the instrumentation adds no wait of its own."""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.core.helpers import run_python

OTEL_INSTRUMENT = Path(sys.executable).parent / "opentelemetry-instrument"
EXPORT_TIMEOUT_S = 2  # OTEL_EXPORTER_OTLP_TIMEOUT: the SDK's bound on one export attempt
CALLS = 12

# No corevital code in the app but a look at the result: zero-code instrumentation, the production setup.
APP = """
import json, time
import torch
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor
from tests.support.tiny_models import build_model, prompt_batch
import corevital_otel


class Ended(SpanProcessor):
    count = 0

    def on_end(self, span):
        Ended.count += span.name.startswith("text_completion")


torch.set_num_threads(1)
trace.get_tracer_provider().add_span_processor(Ended())
model = build_model("gpt2")
ids, mask = prompt_batch(batch=2, length=4)
durations = []
for _ in range(CALLS):
    start = time.perf_counter()
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False)
    durations.append(time.perf_counter() - start)
print(json.dumps({"instrumented": corevital_otel.is_instrumented(), "ended": Ended.count,
                  "durations": durations, "exiting_at": time.time()}), flush=True)
""".replace("CALLS", str(CALLS))


@pytest.fixture(params=["refusing", "never-answering"])
def dead_endpoint(request) -> Iterator[str]:
    """A loopback port that refuses connections (bound, not listening) or accepts and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        if request.param == "never-answering":
            sock.listen(64)  # the kernel completes connections; nobody ever reads or replies
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_dead_exporter_neither_slows_generate_nor_blocks_exit(dead_endpoint, tmp_path):
    if not OTEL_INSTRUMENT.exists():
        pytest.skip("opentelemetry-instrument is not installed next to this interpreter")
    completed = run_python(
        tmp_path,
        APP,
        (str(OTEL_INSTRUMENT),),
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_LOGS_EXPORTER="none",
        OTEL_EXPORTER_OTLP_ENDPOINT=dead_endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_TIMEOUT=str(EXPORT_TIMEOUT_S),
        OTEL_BSP_SCHEDULE_DELAY="50",  # span exports start while the app is still generating
        OTEL_METRIC_EXPORT_INTERVAL="100",
    )
    exited_at = time.time()
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    exit_s = exited_at - report["exiting_at"]
    print(f"\n{dead_endpoint}: generate() max {max(report['durations']):.3f} s, exit {exit_s:.2f} s")
    assert report["instrumented"] and report["ended"] == CALLS
    # A call that waited for an export would last at least one export timeout.
    assert max(report["durations"]) < EXPORT_TIMEOUT_S / 2
    # At exit the SDK flushes spans and metrics: each may finish an attempt in flight, then make a last
    # one, each bounded by the export timeout; one more second for the interpreter to tear down.
    assert exit_s < 4 * EXPORT_TIMEOUT_S + 1
