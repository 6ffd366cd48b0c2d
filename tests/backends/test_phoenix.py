"""Live tier against a real trace UI: Arize Phoenix (its own venv, started here on loopback) receives the
demo's spans over OTLP/HTTP; its REST API must show them as LLM spans with the model name and token
counts, the risk as plain values, and a span within the attribute budget; a headless Chromium saves a
screenshot of one trace."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corevital_otel.demo_model import DEMO_MODEL_DIR, DEMO_MODEL_NAME

from . import browser, span_fields
from .phoenix_backend import Phoenix, phoenix_problem, running_phoenix
from .repo import ROOT, STACK_DOC

DEMO_GENERATIONS = 4
MAX_NEW_TOKENS = 48


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phoenix]:
    problem = phoenix_problem()
    if problem:
        pytest.skip(problem)
    with running_phoenix(tmp_path_factory.mktemp("phoenix")) as running:
        yield running


def documented_command() -> str:
    """docs/observability-stack.md's command that sends the demo's spans to Phoenix."""
    section = STACK_DOC.read_text(encoding="utf-8").split("## Arize Phoenix", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S)
    assert block, "no bash block in the Phoenix section"
    [line] = [line for line in block.group(1).splitlines() if line.strip()]
    return line


@pytest.fixture(scope="module")
def demo_spans(phoenix: Phoenix) -> list[dict[str, Any]]:
    """The demo's four generations, sent by the documented command (traces only), its port replaced
    by the one this Phoenix listens on."""
    command = documented_command().replace("http://127.0.0.1:6006", phoenix.url)
    assert phoenix.url in command, command
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "COREVITAL_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"OTLP traces: {DEMO_GENERATIONS} spans accepted by {phoenix.traces_endpoint}" in done.stdout
    spans = phoenix.wait_for_spans(DEMO_GENERATIONS)
    return sorted(spans, key=lambda span: span["start_time"])  # the demo's order: healthy first


def test_phoenix_shows_llm_spans_with_model_and_token_counts(demo_spans: list[dict[str, Any]]) -> None:
    assert len(demo_spans) == DEMO_GENERATIONS
    for span in demo_spans:
        attributes = span["attributes"]
        assert span["name"] == f"text_completion {DEMO_MODEL_NAME}"
        assert span["span_kind"] == "LLM"  # Phoenix read our gen_ai.* attributes
        assert attributes["llm.model_name"] == attributes["gen_ai.request.model"] == DEMO_MODEL_NAME
        assert attributes["llm.token_count.completion"] == attributes["gen_ai.usage.output_tokens"]
        assert 0 < attributes["gen_ai.usage.output_tokens"] <= MAX_NEW_TOKENS
        assert attributes["llm.token_count.prompt"] == attributes["gen_ai.usage.input_tokens"] > 0
        assert str(DEMO_MODEL_DIR) not in json.dumps(attributes)  # no host path anywhere
        # Content capture is off: Phoenix shows no input and no output (nothing of ours read as one).
        assert not [name for name in attributes if name.startswith(("input.", "output."))], attributes


@pytest.fixture(scope="module")
def default_mode_spans(phoenix: Phoenix, demo_spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The demo's prompts from a plain app under opentelemetry-instrument: the default capture mode (the
    demo itself asks for full detail, to draw every step). At 48 tokens, as in the demo, the first stays
    healthy (at 64 it starts to loop and is escalated to full detail, rightly)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "COREVITAL_"))}
    env.update(
        OTEL_SERVICE_NAME="corevital-default-mode",
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=phoenix.traces_endpoint,
        OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="http/protobuf",
    )
    bin_dir = Path(sys.executable).parent
    app = [str(bin_dir / "opentelemetry-instrument"), sys.executable, str(ROOT / "deploy" / "demo_app.py")]
    done = subprocess.run(
        [*app, "--generations", str(DEMO_GENERATIONS), "--max-new-tokens", str(MAX_NEW_TOKENS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    spans = phoenix.wait_for_spans(2 * DEMO_GENERATIONS)
    ours = [span for span in spans if span["name"] == "text_completion demo_model"]
    assert len(ours) == DEMO_GENERATIONS, [span["name"] for span in spans]
    return sorted(ours, key=lambda span: span["start_time"])


def test_phoenix_shows_the_risk_as_values_and_a_span_within_budget(
    default_mode_spans: list[dict[str, Any]],
) -> None:
    levels = []
    for span in default_mode_spans:
        score, level = span_fields.risk(span["attributes"])
        levels.append(level)
    assert levels[0] == "low" and levels[-1] == "high"  # healthy first, a loop last
    assert not default_mode_spans[0]["attributes"].get("corevital.capture.escalated")
    assert default_mode_spans[-1]["attributes"]["corevital.capture.escalated"] is True
    healthy = span_fields.own_keys(default_mode_spans[0]["attributes"])
    assert len(healthy) <= span_fields.DEFAULT_MODE_MAX_KEYS, f"{len(healthy)} attribute keys: {healthy}"
    assert isinstance(default_mode_spans[-1]["attributes"][span_fields.FLAGS], list)


def test_a_trace_screenshot(phoenix: Phoenix, demo_spans: list[dict[str, Any]], tmp_path: Path) -> None:
    if browser.chromium() is None:
        pytest.skip("no chromium: scripts/install_backends.sh installs Debian's")
    trace_id = demo_spans[-1]["context"]["trace_id"]
    image = browser.screenshot(phoenix.trace_page(trace_id), tmp_path / "phoenix-trace.png")
    assert browser.png_size(image) == (1600, 1000)
    assert image.stat().st_size > 30_000  # a rendered page, not a blank one (about 100 KB here)
