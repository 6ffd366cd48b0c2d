"""``corevital-otel demo`` end to end on the embedded model: in-process, as a console script, over OTLP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import corevital_otel
from corevital_otel.cli import main
from corevital_otel.commands.demo import DEFAULT_PROMPTS, SERVICE_NAME, PromptFileError, load_prompts
from corevital_otel.demo_model import DEMO_MODEL_DIR
from corevital_otel.report import Telemetry
from tests.support.otlp_receiver import OtlpReceiver, attributes, running_receiver

SECTIONS = ("prompt", "output", "tokens", "entropy", "flags", "risk", "blame", "narrative", "trace")
LOOP_FLAG = "repetition_loop_detected"


def reports(stdout: str) -> list[tuple[str, dict[str, str]]]:
    """Each report's title line and its sections (label -> text), from plain-text demo output."""
    found: list[tuple[str, dict[str, str]]] = []
    label, inside = "", False
    for line in stdout.splitlines():
        if line.startswith("━━ "):
            found.append((line, {}))
            inside = True
        elif not line.strip():
            inside = False  # a report ends at its blank line
        elif inside:
            label = line[2:12].strip() or label
            sections = found[-1][1]
            sections[label] = (sections.get(label, "") + "\n" + line[12:]).strip("\n")
    return found


@pytest.fixture
def no_otlp_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("OTEL_") or name.startswith("COREVITAL_"):
            monkeypatch.delenv(name)
    return monkeypatch


def write_prompts(tmp_path: Path, *items: dict) -> str:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(list(items)))
    return str(path)


def test_the_demo_model_ships_with_the_package() -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (DEMO_MODEL_DIR / name).is_file(), name


def test_default_demo_reports_healthy_uncertain_and_looping_generations(
    no_otlp_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--no-color"]) == 0
    out, err = capsys.readouterr()
    found = reports(out)
    assert [title.split(" · ")[1] for title, _ in found] == [p.label for p in DEFAULT_PROMPTS]
    for (title, sections), prompt in zip(found, DEFAULT_PROMPTS, strict=True):
        assert tuple(sections) == SECTIONS, title
        assert ("sampled" in title) == prompt.sample
        for name in ("output", "entropy", "flags", "risk", "blame", "narrative"):
            assert sections[name] and sections[name] != "—", (title, name)
        assert any(bar in sections["entropy"] for bar in "▁▂▃▄▅▆▇█")
        looping = prompt.label == "looping"
        assert (LOOP_FLAG in sections["flags"]) == looping, (title, sections["flags"])
        assert ("repetition loop" in sections["narrative"]) == looping, (title, sections["narrative"])
        if looping:
            assert " high" in sections["risk"].split(" · ")[0], sections["risk"]
    assert "OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 corevital-otel demo" in out
    assert "\033[" not in out
    assert "[4/4] looping: generating" in err  # progress goes to stderr, as plain lines off a terminal
    assert not corevital_otel.is_instrumented()


def test_console_script_runs_the_demo(no_otlp_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("corevital-otel")
    assert script.is_file(), "the corevital-otel console script is not installed next to this python"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("import os\\nimport sys\\n\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [str(script), "demo", "--model", str(DEMO_MODEL_DIR), "--prompts", str(prompts)]
    done = subprocess.run(
        [*command, "--max-new-tokens", "24"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    # --model: the directory's last component, as on the span, never the host path
    assert done.stdout.startswith(f"corevital-otel demo · {DEMO_MODEL_DIR.name} (gpt2, ")
    [(title, sections)] = reports(done.stdout)
    assert title.startswith("━━ 1/1 · prompt 1 · greedy")
    assert sections["prompt"] == "import os⏎import sys⏎"
    assert LOOP_FLAG in sections["flags"]


@pytest.mark.parametrize(("child", "message"), [("missing", "no such directory"), ("", "no config.json")])
def test_a_bad_model_path_fails_clearly(
    no_otlp_env: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    child: str,
    message: str,
) -> None:
    path = tmp_path / child if child else tmp_path
    assert main(["demo", "--model", str(path)]) == 2
    out, err = capsys.readouterr()
    assert f"corevital-otel demo: error: --model {path}: {message}" in err
    assert "Traceback" not in err and out == ""


def test_an_unsupported_otlp_protocol_fails_before_loading(
    no_otlp_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    no_otlp_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    no_otlp_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    assert main(["demo"]) == 2
    assert "OTEL_EXPORTER_OTLP_PROTOCOL='http/json'" in capsys.readouterr().err


@pytest.mark.parametrize(("protocol", "module"), [("grpc", ".grpc."), ("http/protobuf", ".http.")])
def test_the_otlp_protocol_variable_picks_the_exporter(
    no_otlp_env: pytest.MonkeyPatch, protocol: str, module: str
) -> None:
    no_otlp_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    no_otlp_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    telemetry = Telemetry.create(SERVICE_NAME)
    try:
        assert telemetry.otlp_traces is not None and telemetry.otlp_traces.protocol == protocol
        assert module in type(telemetry.otlp_traces.exporter.inner).__module__
        assert telemetry.otlp_metrics is not None
        assert module in type(telemetry.otlp_metrics.exporter.inner).__module__
    finally:
        telemetry.shutdown(0.5)


def test_demo_exports_spans_and_metrics_over_otlp_http(
    no_otlp_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = write_prompts(tmp_path, {"label": "looping", "prompt": "import os\nimport sys\n"})
    for receiver in running_receiver():
        no_otlp_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        no_otlp_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        assert main(["demo", "--no-color", "--prompts", prompts, "--max-new-tokens", "24"]) == 0
        out = capsys.readouterr().out
        assert f"OTLP traces: 1 span accepted by {receiver.endpoint}/v1/traces (http/protobuf)" in out
        assert f"accepted by {receiver.endpoint}/v1/metrics (http/protobuf)" in out
        assert_exported(receiver)


def assert_exported(receiver: OtlpReceiver) -> None:
    [span] = receiver.generation_spans()
    exported = attributes(span.attributes)
    assert exported["gen_ai.operation.name"] == "text_completion"
    assert exported["gen_ai.request.model"] == "corevital-otel-demo"
    assert exported[f"corevital.health.{LOOP_FLAG}"] is True
    assert "gen_ai.input.messages" not in exported  # content stays in the process by default
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest.FromString(receiver.bodies["/v1/traces"][0])
    assert attributes(request.resource_spans[0].resource.attributes)["service.name"] == SERVICE_NAME
    assert receiver.wait_for(lambda: "gen_ai.client.token.usage" in receiver.metrics())


def test_an_unreachable_endpoint_is_reported_and_fails_the_run(
    no_otlp_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:  # a port nobody listens on once the socket is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    no_otlp_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    prompts = write_prompts(tmp_path, "def ")
    assert main(["demo", "--no-color", "--prompts", prompts, "--max-new-tokens", "4"]) == 1
    assert "0 spans accepted, 1 failed" in capsys.readouterr().out


def test_prompt_files(tmp_path: Path) -> None:
    path = write_prompts(tmp_path, "a", {"prompt": "b\n", "label": "x", "sample": True})
    assert [(p.label, p.text, p.sample) for p in load_prompts(path)] == [
        ("prompt 1", "a", False),
        ("x", "b\n", True),
    ]
    text = tmp_path / "p.txt"
    text.write_text("\nfirst\\nline\n  \nsecond\n")
    assert [p.text for p in load_prompts(str(text))] == ["first\nline", "second"]
    for content, suffix, message in [
        ("[]", ".json", "no prompts"),
        ('[{"label": "x"}]', ".json", 'expected a string or an object with a "prompt"'),
        ("{", ".json", "Expecting"),
    ]:
        bad = tmp_path / f"bad{suffix}"
        bad.write_text(content)
        with pytest.raises(PromptFileError, match=message):
            load_prompts(str(bad))
    with pytest.raises(PromptFileError, match="No such file"):
        load_prompts(str(tmp_path / "absent.txt"))
