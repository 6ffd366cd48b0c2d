"""Where a live test finds its backend, in order: a running instance named by an environment variable,
a local binary started by the test, a container when a Docker engine answers, else a skip with a reason."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from .go_backends import Built


@dataclass(frozen=True)
class Tier:
    kind: str  # "env", "local" or "container"
    target: str  # the variable's value, the binary's path, or the image


@functools.cache
def docker_problem() -> str | None:
    """None when a Docker engine answers (and testcontainers is installed), else why not."""
    try:
        import docker
        import testcontainers  # noqa: F401
    except ImportError as error:
        return f"testcontainers/docker not installed ({error.name})"
    try:
        docker.from_env(timeout=3).ping()
    except Exception as error:  # noqa: BLE001  (any failure means: no engine to use)
        return f"no Docker engine answers ({type(error).__name__})"
    return None


def choose(
    backend: str, env_var: str, binaries: tuple[str, ...], image: str | None, built: Built | None = None
) -> Tier:
    """The first available tier for ``backend``; skips the calling test when there is none. ``built`` is
    the binary scripts/build_go_backends.sh made, tried before those on PATH."""
    if os.environ.get(env_var):
        return Tier("env", os.environ[env_var])
    if built is not None and built.path is not None:
        return Tier("local", str(built.path))
    for binary in binaries:
        path = shutil.which(binary)
        if path:
            return Tier("local", path)
    problem = docker_problem() if image else "no single-container image for it"
    if problem is None and image:
        return Tier("container", image)
    local = f"install {' or '.join(binaries)}, " if binaries else ""
    why_not_built = f"; {built.problem}" if built is not None else ""
    pytest.skip(f"no {backend}: set {env_var}, {local}or run a Docker engine — {problem}{why_not_built}")


# Ports this process handed out: a port is only taken once its server binds it, so two servers whose
# ports were chosen before either started could otherwise get the same one ("address already in use").
_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, and never one this process handed out before."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def wait_http(
    url: str, timeout: float, process: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    """Poll ``url`` until it answers 2xx; fail with the process' log if it exits or time runs out."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if 200 <= response.status < 300:
                    return
        except (urllib.error.URLError, OSError) as error:
            last = str(error)
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    pytest.fail(f"{url} not ready within {timeout:.0f}s ({last})\n{tail}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
