"""The commands docs/observability-stack.md shows for the Go-built stack, run verbatim: the validation
block, and the "Without Docker" blocks (install, start Jaeger, the Collector and Prometheus by hand, send
the demo, read it back). Those start servers on the documented fixed ports, so they run in a private
network namespace (and a private /tmp) of their own: nothing else on this machine is in the way, and
nothing of theirs outlives the test."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from . import live_stack
from .repo import ROOT, STACK_DOC

_BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)


def section_blocks(heading: str) -> list[str]:
    """The bash blocks of the section that starts with ``heading`` (up to the next heading of its level
    or above)."""
    text = STACK_DOC.read_text()
    level = len(heading.split(" ", 1)[0])
    start = text.index(f"\n{heading}\n")
    following = re.search(rf"\n#{{1,{level}}} ", text[start + len(heading) + 2 :])
    body = text[start : start + len(heading) + 2 + following.start()] if following else text[start:]
    return _BLOCK.findall(body)


def _path_with(binaries: dict[str, Path], directory: Path) -> str:
    """PATH with ``directory`` first, holding links named as the docs call the binaries."""
    directory.mkdir(exist_ok=True)
    for name, target in binaries.items():
        (directory / name).symlink_to(target)
    venv = Path(sys.executable).parent  # corevital-otel, the demo command
    return f"{directory}:{venv}:{os.environ['PATH']}"


def test_the_validation_block_runs(tmp_path: Path) -> None:
    (block,) = section_blocks("### A minimal Collector, and validating the config")
    path = _path_with({"otelcol-corevital": live_stack.require_collector()}, tmp_path / "bin")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, env={**os.environ, "PATH": path},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "tail_sampling" in result.stdout and "load_balancing" in result.stdout  # `components`


# Glue between the documented blocks: wait for each server, and poll the read-back commands until the
# data is there (Prometheus scrapes every 5 s). Only the documented lines touch the stack.
_WAIT = """
wait_for() {
    for _ in $(seq 120); do curl -sf -o /dev/null "$1" && return 0; sleep 0.5; done
    echo "no $1"; return 1
}
wait_for http://127.0.0.1:13133/
wait_for http://127.0.0.1:16686/api/v3/services
wait_for http://127.0.0.1:9090/-/ready
"""


def _poll(command: str, marker: str) -> str:
    return f"""
for _ in $(seq 60); do out=$({command}); case "$out" in *'{marker}'*) break;; esac; sleep 1; done
echo "=== {marker}"; echo "$out" | head -c 2000; echo
"""


def test_the_stack_started_by_hand_shows_the_demo(tmp_path: Path) -> None:
    live_stack.require_collector()
    live_stack.require_jaeger()
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus not installed (scripts/install_backends.sh installs Debian's)")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private network namespace")
    start, read_back = section_blocks("## Without Docker")
    demo, services, traces, metrics = read_back.strip().splitlines()
    script = "\n".join(
        [
            "set -u",
            "mount -t tmpfs tmpfs /tmp && ip link set lo up",
            start,
            _WAIT,
            demo,
            _poll(services, "corevital-otel-demo"),
            _poll(traces, "resourceSpans"),
            _poll(metrics, "gen_ai_client_operation_duration_seconds_count"),
            "kill %1 %2 %3; wait",
        ]
    )
    output = _run_in_namespace(script, timeout=420)
    sections = output.split("=== ")
    assert len(sections) >= 4, output[-4000:]
    assert '"services"' in sections[-3] and "corevital-otel-demo" in sections[-3], output[-4000:]
    assert "resourceSpans" in sections[-2], output[-4000:]
    assert "corevital-otel-demo" in sections[-1], output[-4000:]  # the job label, from service.name


def _run_in_namespace(script: str, timeout: float) -> str:
    """stdout+stderr of ``script`` in a new network and mount namespace; its whole process group is
    killed if it runs out of time, so no server it started is left behind."""
    venv = Path(sys.executable).parent
    process = subprocess.Popen(
        ["unshare", "--net", "--mount", "bash", "-c", script], cwd=ROOT,
        env={**os.environ, "PATH": f"{venv}:{os.environ['PATH']}"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the documented stack did not finish in {timeout:.0f}s:\n{output[-4000:]}")
    return output
