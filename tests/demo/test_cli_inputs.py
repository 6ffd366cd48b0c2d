"""The command line: --help without torch, bad inputs as one-line errors with exit status 2, and the
demo's OTLP reporting (refused metrics fail the run; per-signal endpoint variables are honoured)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from corevital_otel.cli import main
from corevital_otel.demo_model import DEMO_MODEL_DIR
from tests.support.otlp_receiver import running_receiver

from .test_demo import no_otlp_env, write_prompts  # noqa: F401  (no_otlp_env is a fixture)

CLI = Path(sys.executable).with_name("corevital-otel")


def _cli(*arguments: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "COREVITAL_"))}
    env.update(OMP_NUM_THREADS="1")
    return subprocess.run([str(CLI), *arguments], capture_output=True, text=True, env=env, timeout=timeout)


def test_help_parses_arguments_before_importing_torch() -> None:
    code = (
        "import sys\n"
        "from corevital_otel.cli import main\n"
        "try:\n"
        "    main(['demo', '--help'])\n"
        "except SystemExit as done:\n"
        "    assert done.code == 0\n"
        "heavy = [m for m in ('torch', 'transformers', 'numpy', 'opentelemetry.sdk') if m in sys.modules]\n"
        "print('imported:' + ','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "imported:", done.stdout[-200:]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["demo", "--max-new-tokens", "0"], "argument --max-new-tokens: 0: must be at least 1"),
        (["demo", "--max-new-tokens", "lots"], "argument --max-new-tokens: invalid _positive value"),
        (["demo", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["nonsense"], "invalid choice: 'nonsense'"),
        (["demo", "--prompts", "/nonexistent/p.txt"], "--prompts /nonexistent/p.txt: No such file"),
        (["demo", "--model", "/nonexistent/model"], "--model /nonexistent/model: no such directory"),
        (["demo", "--max-new-tokens", "100000"], "--max-new-tokens 100000: the longest prompt"),
        (
            ["calibrate", "--model", "/nonexistent/model", "--prompts", "README.md", "--out", "/tmp/x.json"],
            "--model /nonexistent/model: no such directory",
        ),
        (["probe", "--model", "/nonexistent/model"], "--model /nonexistent/model: no such directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(arguments: list[str], message: str) -> None:
    done = _cli(*arguments)
    assert done.returncode == 2, (done.stdout, done.stderr)
    # One error line; progress lines (loading the model …) may precede it where the model had to load.
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_too_many_new_tokens_says_how_many_fit(no_otlp_env, capsys) -> None:  # noqa: F811
    assert main(["demo", "--max-new-tokens", "100000"]) == 2
    err = capsys.readouterr().err
    assert "exceed the model's 256 positions; use at most " in err
    allowed = int(err.rsplit("use at most ", 1)[1].split()[0])
    assert 200 < allowed < 256  # the longest default prompt is a few dozen tokens


def test_the_demo_model_triggers_no_max_length_warning(recwarn) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    assert "max_length" not in json.loads((DEMO_MODEL_DIR / "generation_config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR).eval()
    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    messages: list[str] = []
    handler = _ListHandler(messages)
    logger = hf_logging.get_logger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            with torch.no_grad():
                model.generate(**tokenizer("def main(", return_tensors="pt"), max_new_tokens=4)
    finally:
        logger.removeHandler(handler)
    said = messages + [str(w.message) for w in recwarn]
    assert not [m for m in said if "max_length" in m], said


class _ListHandler:
    """A logging handler that keeps the messages (transformers logs the warning, it does not warn)."""

    level = 0

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages

    def handle(self, record) -> None:  # type: ignore[no-untyped-def]
        self.messages.append(record.getMessage())


def test_refused_metrics_fail_the_demo_and_say_so(no_otlp_env, tmp_path, capsys) -> None:  # noqa: F811
    prompts = write_prompts(tmp_path, "def ")
    for receiver in running_receiver(refuse={"/v1/metrics": 405}):
        no_otlp_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        assert main(["demo", "--no-color", "--prompts", prompts, "--max-new-tokens", "4"]) == 1
        out = capsys.readouterr().out
        assert "OTLP traces: 1 span accepted by" in out
        assert f"OTLP metrics to {receiver.endpoint}/v1/metrics (http/protobuf): REFUSED" in out
        assert receiver.refused.get("/v1/metrics")


def test_a_traces_only_endpoint_sends_traces_and_no_metrics(no_otlp_env, tmp_path, capsys) -> None:  # noqa: F811
    prompts = write_prompts(tmp_path, "def ")
    for receiver in running_receiver():
        # The Langfuse direct recipe: only the traces variables, with a full URL path of its own.
        url = f"{receiver.endpoint}/api/public/otel/v1/traces"
        no_otlp_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)
        no_otlp_env.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
        assert main(["demo", "--no-color", "--prompts", prompts, "--max-new-tokens", "4"]) == 0
        out = capsys.readouterr().out
        assert f"OTLP traces: 1 span accepted by {receiver.endpoint}/api/public/otel/v1/traces" in out
        assert "OTLP metrics" not in out
        assert list(receiver.bodies) == ["/api/public/otel/v1/traces"]


def test_a_metrics_endpoint_of_its_own(no_otlp_env, tmp_path, capsys) -> None:  # noqa: F811
    prompts = write_prompts(tmp_path, "def ")
    for traces in running_receiver():
        for metrics in running_receiver():
            no_otlp_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", traces.endpoint)
            no_otlp_env.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", f"{metrics.endpoint}/v1/metrics")
            assert main(["demo", "--no-color", "--prompts", prompts, "--max-new-tokens", "4"]) == 0
            assert list(traces.bodies) == ["/v1/traces"] and list(metrics.bodies) == ["/v1/metrics"]
    capsys.readouterr()
