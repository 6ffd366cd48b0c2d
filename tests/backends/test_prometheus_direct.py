"""docs/observability-stack.md's "Without a Collector" recipe, run as written: the SDK's Prometheus exporter
under opentelemetry-instrument, Debian's Prometheus scraping it with prometheus-direct.yml, and the shipped
risk alert going pending on the demo app's traffic.

Run verbatim except: ``bash scripts/setup.sh`` (CI's first step, and this test already runs inside that
venv), and a port that is taken on this machine (another test run) is replaced by a free one, in the
commands and in a copy of the config, saying so.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .prometheus_backend import PrometheusApi
from .repo import PROMETHEUS, ROOT, STACK_DOC

SETUP = "bash scripts/setup.sh"
DEADLINE_S = 150  # model load + a few generations + scrapes + rule evaluations, on a slow shared CPU


def recipe() -> list[str]:
    """The shell lines of the doc's bash block under "### Without a Collector"."""
    section = STACK_DOC.read_text(encoding="utf-8").split("### Without a Collector", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S)
    assert block, "no bash block in the section"
    return [line for line in block.group(1).splitlines() if line.strip()]


def _taken(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_prometheus_without_a_collector_as_documented(tmp_path: Path) -> None:
    lines = recipe()
    assert lines[0] == SETUP
    script = "\n".join(lines[1:])
    if not shutil.which("prometheus"):
        pytest.skip("no prometheus binary: scripts/install_backends.sh installs Debian's")
    venv = ROOT / ".venv" / "bin"
    if Path(sys.executable).parent.resolve() != venv.resolve():
        pytest.skip(f"the recipe runs {venv}, which is not this test's interpreter ({sys.executable})")
    config = PROMETHEUS / "prometheus-direct.yml"
    config_text = config.read_text()
    notes = []
    for port in (9464, 9090):
        if _taken(port):
            free = _free_port()
            script = script.replace(f"={port}", f"={free}").replace(f":{port}", f":{free}")
            config_text = config_text.replace(f":{port}", f":{free}")
            notes.append(f"port {port} was taken: used {free}")
    if config_text != config.read_text():  # a copy beside the original: its rule_files path still resolves
        copy = PROMETHEUS / f".prometheus-direct-{os.getpid()}.yml"
        copy.write_text(config_text)
        script = script.replace("prometheus-direct.yml", copy.name)
    else:
        copy = None
    print("; ".join(notes) or "ran the recipe on its own ports")
    api_port = int(re.search(r"--web.listen-address=127.0.0.1:(\d+)", script).group(1))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "COREVITAL_"))}
    log = tmp_path / "recipe.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            ["bash", "-c", script],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        api = PrometheusApi(f"http://127.0.0.1:{api_port}")
        alert = _wait_for_alert(api, process, log)
        assert alert["labels"]["gen_ai_request_model"] == "demo_model"  # never a host path
        assert "demo_model" in alert["annotations"]["summary"]
        series = api.query('corevital_generations_total{corevital_risk_level="high"}')
        assert series and float(series[0]["value"][1]) > 0
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the app and Prometheus, both started by the recipe
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        if copy is not None:
            copy.unlink(missing_ok=True)


def _wait_for_alert(api: PrometheusApi, process: subprocess.Popen, log: Path) -> dict:
    """The CoreVitalHighRiskShare alert once it is pending or firing."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the recipe exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            alerts = api.get("/api/v1/alerts")["alerts"]
        except OSError:
            alerts = []
        for alert in alerts:
            if alert["labels"]["alertname"] == "CoreVitalHighRiskShare" and alert["state"] in (
                "pending",
                "firing",
            ):
                return alert
        time.sleep(1)
    pytest.fail(f"CoreVitalHighRiskShare not pending within {DEADLINE_S}s:\n{log.read_text()[-3000:]}")
