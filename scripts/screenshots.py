"""Make the documentation's screenshots from real backends, with headless Chromium: one command,

    .venv/bin/python scripts/screenshots.py

writes into docs/images/:

- ``phoenix-trace.png``: a looping demo generation as Arize Phoenix shows it (its own venv, started here
  on loopback; the demo's spans go to it over OTLP/HTTP);
- ``prometheus-alert-firing.png``: the shipped ``CoreVitalHighRiskShare`` alert firing in Prometheus's
  UI, on demo-model traffic scraped without a Collector (docs/observability-stack.md's recipe). The rule
  fires after 5 minutes pending, so this takes about 6 minutes;
- ``prometheus-high-risk-share.png``: the overview dashboard's "High-risk share by model" query, drawn by
  Prometheus's graph page (no Grafana runs here: it is neither in Debian nor on PyPI).

Needs what scripts/install_backends.sh installs (Phoenix, Prometheus, chromium). Every server binds to
127.0.0.1 on a free port and is stopped at the end; ``--only phoenix|prometheus`` makes one group.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from backends import browser  # noqa: E402
from backends.phoenix_backend import running_phoenix  # noqa: E402
from backends.prometheus_backend import PrometheusApi  # noqa: E402
from backends.promql import dashboard_queries  # noqa: E402
from backends.tiers import free_port, stop, wait_http  # noqa: E402

IMAGES = ROOT / "docs" / "images"
ALERT = "CoreVitalHighRiskShare"
FIRING_TIMEOUT_S = 9 * 60  # 5 minutes "for", plus start-up and the first generations on a slow CPU
DASHBOARD_PANEL = "corevital-overview/High-risk share by model/A"


def log(message: str) -> None:
    print(f"screenshots: {message}", file=sys.stderr, flush=True)


def phoenix_trace(workdir: Path) -> Path:
    from corevital_otel.cli import main

    with running_phoenix(workdir) as phoenix:
        log(f"Phoenix at {phoenix.url}; running the demo against it")
        environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        environment["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = phoenix.traces_endpoint
        with _environment(environment), contextlib.redirect_stdout(io.StringIO()):
            if main(["demo", "--no-color"]) != 0:
                raise RuntimeError("the demo did not export its spans to Phoenix")
        spans = sorted(phoenix.wait_for_spans(4), key=lambda span: span["start_time"])
        looping = spans[2]  # the demo's third prompt falls into a loop
        return browser.screenshot(
            phoenix.trace_page(looping["context"]["trace_id"]), IMAGES / "phoenix-trace.png"
        )


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def prometheus_without_collector(workdir: Path) -> Iterator[PrometheusApi]:
    """The demo app under opentelemetry-instrument with the SDK's Prometheus exporter, scraped by a
    Prometheus using prometheus-direct.yml (its port changed to the exporter's free port)."""
    exporter_port, api_port = free_port(), free_port()
    shipped = ROOT / "dashboards" / "prometheus" / "prometheus-direct.yml"
    # The config and the rules side by side in a scratch directory: the UI shows the rule file's path,
    # which must not be this checkout's.
    config = workdir / "prometheus.yml"
    config.write_text(shipped.read_text().replace("127.0.0.1:9464", f"127.0.0.1:{exporter_port}"))
    shutil.copy(shipped.with_name("corevital-alerts.yaml"), workdir / "corevital-alerts.yaml")
    venv = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "COREVITAL_"))}
    env.update(
        OTEL_SERVICE_NAME="corevital-screenshots",
        OTEL_TRACES_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_METRICS_EXPORTER="prometheus",
        OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1",
        OTEL_EXPORTER_PROMETHEUS_PORT=str(exporter_port),
    )
    app_log, prometheus_log = (workdir / "app.log").open("w"), (workdir / "prometheus.log").open("w")
    app = subprocess.Popen(
        [
            str(venv / "opentelemetry-instrument"),
            str(venv / "python"),
            "deploy/demo_app.py",
            "--seconds",
            "720",
        ],
        cwd=ROOT,
        env=env,
        stdout=app_log,
        stderr=subprocess.STDOUT,
    )
    prometheus = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{api_port}",
        ],
        stdout=prometheus_log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{api_port}"
        wait_http(f"{url}/-/ready", 60, prometheus, workdir / "prometheus.log")
        yield PrometheusApi(url)
    finally:
        stop(app)
        stop(prometheus)
        app_log.close()
        prometheus_log.close()


def wait_for_alert(api: PrometheusApi, state: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    seen = "absent"
    while time.monotonic() < deadline:
        alerts = [a for a in api.get("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == ALERT]
        states = {alert["state"] for alert in alerts}
        if states and seen not in states:
            seen = ",".join(sorted(states))
            log(f"{ALERT}: {seen}")
        if state in states:
            return
        time.sleep(5)
    raise RuntimeError(f"{ALERT} not {state} within {timeout:.0f}s (last: {seen})")


def prometheus_images(workdir: Path) -> list[Path]:
    panel = next(query for query in dashboard_queries() if query.id == DASHBOARD_PANEL)
    with prometheus_without_collector(workdir) as api:
        log(f"Prometheus at {api.url}; waiting for {ALERT} to fire (about 6 minutes)")
        wait_for_alert(api, "firing", FIRING_TIMEOUT_S)
        alerts = browser.screenshot(
            f"{api.url}/classic/alerts", IMAGES / "prometheus-alert-firing.png", 1400, 900
        )
        graph = urllib.parse.urlencode(
            {"g0.expr": panel.promql, "g0.tab": "0", "g0.range_input": "6m", "g0.stacked": "0"}
        )
        share = browser.screenshot(
            f"{api.url}/classic/graph?{graph}", IMAGES / "prometheus-high-risk-share.png", 1400, 900
        )
    return [alerts, share]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=("phoenix", "prometheus"), help="make one group of images")
    arguments = parser.parse_args()
    if browser.chromium() is None:
        print("screenshots: no chromium (bash scripts/install_backends.sh)", file=sys.stderr)
        return 2
    made: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="corevital-screenshots-") as scratch:
        if arguments.only in (None, "phoenix"):
            (Path(scratch) / "phoenix").mkdir()
            made.append(phoenix_trace(Path(scratch) / "phoenix"))
        if arguments.only in (None, "prometheus"):
            (Path(scratch) / "prometheus").mkdir()
            made += prometheus_images(Path(scratch) / "prometheus")
    print(json.dumps({str(path.relative_to(ROOT)): browser.png_size(path) for path in made}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
