"""Size one Collector here: spans/s it passes to Jaeger with corevital spans of three sizes, and what its
memory limiter does at overload. Loopback only; every run is bounded in count and time.

    .venv/bin/python scripts/measure_collector.py --rounds 3 --seconds 20

Throughput: the built Collector (collector-config/config.yaml) in front of the built Jaeger, fed by
deploy/otlp_load.py over OTLP/HTTP (8 spans per request, 4 in flight) for ``--seconds`` per size and round,
sizes interleaved round by round. A rate counts spans the Collector accepted; the run then waits until
its exporter has sent them all to Jaeger, and the drain time is part of the rate ("end to end").

Overload: the same Collector with a fixed memory limit of ``--limit-mib`` and Jaeger not started yet, so
its exporter queue grows; long spans are sent until the limiter refuses, the generator retries (as the
SDKs do), Jaeger starts after ``--outage`` seconds, and in the end every span sent must be in Jaeger.
Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.backends import live_stack  # noqa: E402  (the same runners as the live tests)
from tests.backends.repo import COLLECTOR_BASE  # noqa: E402
from tests.backends.tiers import free_port  # noqa: E402

SENT = "otelcol_exporter_sent_spans_total"
JAEGER = {"exporter": "otlp_grpc/jaeger"}  # not the debug exporter's counts


def _drain(collector: live_stack.RunningCollector, total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and collector.own_metrics(**JAEGER).get(SENT, 0) < total:
        time.sleep(0.2)


def throughput(load, templates: dict, rounds: int, seconds: float, workdir: Path) -> None:
    otelcol, jaeger_binary = live_stack.require_collector(), live_stack.require_jaeger()
    rates: dict[str, list[float]] = {size: [] for size in templates}
    for round_number in range(rounds):
        for size, template in templates.items():
            with live_stack.jaeger(jaeger_binary, workdir) as jaeger:
                environment = {"JAEGER_OTLP_GRPC_ENDPOINT": jaeger.otlp_grpc}
                with live_stack.collector(otelcol, [COLLECTOR_BASE], workdir, environment) as collector:
                    started = time.monotonic()
                    result = load.send(collector.otlp_http, template, 10**6, seconds, batch=8, concurrency=4)
                    _drain(collector, result.spans_sent, timeout=120)
                    elapsed = time.monotonic() - started
                    counters = collector.own_metrics(**JAEGER)
                    rss = round(collector.peak_rss_mib(), 1)
            rate = counters.get(SENT, 0) / elapsed
            rates[size].append(rate)
            print(
                json.dumps(
                    {
                        "measure": "throughput",
                        "round": round_number,
                        "size": size,
                        "span_bytes": len(template.body),
                        "accepted": result.spans_sent,
                        "exported": counters.get(SENT, 0),
                        "refusals": result.refusals,
                        "spans_per_s_end_to_end": round(rate, 1),
                        "mb_per_s": round(rate * len(template.body) / 1e6, 1),
                        "peak_rss_mib": rss,
                    }
                ),
                flush=True,
            )
    for size, values in rates.items():
        print(
            json.dumps(
                {
                    "measure": "throughput-summary",
                    "size": size,
                    "median": round(statistics.median(values), 1),
                    "min": round(min(values), 1),
                    "max": round(max(values), 1),
                    "rounds": len(values),
                }
            ),
            flush=True,
        )


def overload(load, template, limit_mib: int, outage: float, count: int, workdir: Path) -> None:
    otelcol, jaeger_binary = live_stack.require_collector(), live_stack.require_jaeger()
    jaeger_port = free_port()
    environment = {
        "JAEGER_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{jaeger_port}",
        "COREVITAL_COLLECTOR_MEMORY_LIMIT_MIB": str(limit_mib),
        "COREVITAL_COLLECTOR_MEMORY_SPIKE_MIB": str(limit_mib // 5),
    }
    with live_stack.collector(otelcol, [COLLECTOR_BASE], workdir, environment) as collector:
        started = threading.Event()
        jaeger_box: list = []

        def start_jaeger_later() -> None:
            time.sleep(outage)
            context = live_stack.jaeger(jaeger_binary, workdir, otlp_grpc_port=jaeger_port)
            jaeger_box.append((context, context.__enter__()))
            started.set()

        threading.Thread(target=start_jaeger_later, daemon=True).start()
        result = load.send(collector.otlp_http, template, count, seconds=outage + 240, batch=8, concurrency=4)
        started.wait(outage + 60)
        context, jaeger = jaeger_box[0]
        try:
            _drain(collector, result.spans_sent, timeout=180)
            counters = collector.own_metrics(**JAEGER)
            rss = round(collector.peak_rss_mib(), 1)
            name = f"text_completion {template.attributes['gen_ai.request.model']}"
            found = sum(1 for trace_id in result.trace_ids if jaeger.has_trace(trace_id, name))
        finally:
            context.__exit__(None, None, None)
    refused = {name: value for name, value in counters.items() if "refused" in name or "failed" in name}
    print(
        json.dumps(
            {
                "measure": "overload",
                "limit_mib": limit_mib,
                "outage_s": outage,
                "span_bytes": len(template.body),
                **result.summary(),
                "found_in_jaeger": found,
                "exported": counters.get(SENT, 0),
                "peak_rss_mib": rss,
                "collector_counters": refused,
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="sending time per size and round")
    parser.add_argument("--limit-mib", type=int, default=150, help="memory limit of the overload run")
    parser.add_argument("--outage", type=float, default=20.0, help="seconds before Jaeger starts (overload)")
    parser.add_argument(
        "--overload-count", type=int, default=1500, help="long spans sent in the overload run"
    )
    parser.add_argument("--skip", choices=("throughput", "overload"), action="append", default=[])
    parser.add_argument("--sizes", default="small,medium,long", help="span sizes of the throughput runs")
    arguments = parser.parse_args()
    load = live_stack.load_generator()
    sizes = arguments.sizes.split(",")
    templates = {size: load.capture(size) for size in dict.fromkeys([*sizes, "long"])}
    with tempfile.TemporaryDirectory() as directory:
        if "throughput" not in arguments.skip:
            chosen = {size: templates[size] for size in sizes}
            throughput(load, chosen, arguments.rounds, arguments.seconds, Path(directory))
        if "overload" not in arguments.skip:
            overload(
                load,
                templates["long"],
                arguments.limit_mib,
                arguments.outage,
                arguments.overload_count,
                Path(directory),
            )


if __name__ == "__main__":
    main()
