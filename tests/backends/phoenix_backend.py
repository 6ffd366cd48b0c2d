"""Arize Phoenix, a real OTLP trace receiver with a UI, for the live tier and the screenshots script.

Phoenix lives in a venv of its own (its dependencies are not the project's), installed by
scripts/install_backends.sh at $COREVITAL_PHOENIX_VENV (default ~/.cache/corevital-otel/backends/phoenix).
Each use starts ``phoenix serve`` on 127.0.0.1, on free HTTP and gRPC ports, with a temporary working
directory (its SQLite database) and its usage telemetry off, and stops it afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .tiers import free_port, stop

VENV_VARIABLE = "COREVITAL_PHOENIX_VENV"
START_TIMEOUT_S = 180  # first start migrates its database; a loaded CI machine is slow


def phoenix_venv() -> Path:
    default = Path.home() / ".cache" / "corevital-otel" / "backends" / "phoenix"
    return Path(os.environ.get(VENV_VARIABLE) or default)


def phoenix_problem() -> str | None:
    """None when a Phoenix can be started here, else why not."""
    binary = phoenix_venv() / "bin" / "phoenix"
    if not binary.is_file():
        return f"no Phoenix at {binary}: scripts/install_backends.sh installs arize-phoenix there"
    return None


@dataclass
class Phoenix:
    url: str  # UI and REST API; OTLP/HTTP traces at {url}/v1/traces

    @property
    def traces_endpoint(self) -> str:
        return f"{self.url}/v1/traces"

    def get(self, path: str, **params: Any) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=15) as response:
            return json.load(response)

    def project_id(self, name: str = "default") -> str:
        projects = self.get("/v1/projects")["data"]
        return next(project["id"] for project in projects if project["name"] == name)

    def spans(self, project: str = "default", limit: int = 100) -> list[dict[str, Any]]:
        """Spans of ``project`` as its REST API gives them (attributes flattened to dotted keys)."""
        return self.get(f"/v1/projects/{project}/spans", limit=limit)["data"]

    def wait_for_spans(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        spans: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            spans = self.spans()
            if len(spans) >= count:
                return spans
            time.sleep(0.5)
        raise AssertionError(f"Phoenix holds {len(spans)} spans after {timeout:.0f}s, expected {count}")

    def trace_page(self, trace_id: str, project: str = "default") -> str:
        return f"{self.url}/projects/{self.project_id(project)}/traces/{trace_id}"


def _wait_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"phoenix serve exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"Phoenix not ready within {START_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")


@contextmanager
def running_phoenix(workdir: Path) -> Iterator[Phoenix]:
    """A Phoenix started for the block and stopped after (raises RuntimeError if it does not start)."""
    problem = phoenix_problem()
    if problem:
        raise RuntimeError(problem)
    port, grpc_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PHOENIX_", "OTEL_"))}
    env.update(
        PHOENIX_HOST="127.0.0.1",
        PHOENIX_PORT=str(port),
        PHOENIX_GRPC_PORT=str(grpc_port),
        PHOENIX_WORKING_DIR=str(workdir),
        PHOENIX_TELEMETRY_ENABLED="false",
    )
    log = workdir / "phoenix.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [str(phoenix_venv() / "bin" / "phoenix"), "serve"],
            env=env,
            cwd=workdir,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, process, log)
        yield Phoenix(url)
    finally:
        stop(process)
