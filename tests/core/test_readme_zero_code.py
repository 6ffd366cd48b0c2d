"""The README's zero-code line, run exactly as written (read from README.md, not retyped), against an
in-process OTLP/HTTP receiver on the port the line names."""

from __future__ import annotations

import errno
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.support.otlp_receiver import OtlpReceiver, attributes

from .helpers import subprocess_env

README = Path(__file__).resolve().parents[2] / "README.md"
VENV_BIN = Path(sys.executable).parent

# The application the line runs: plain transformers, nothing of corevital_otel or OpenTelemetry.
APP = """
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from corevital_otel.demo_model import DEMO_MODEL_DIR

torch.set_num_threads(1)
model = AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR)
tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
model.generate(**tokenizer("def main(", return_tensors="pt"), max_new_tokens=8, pad_token_id=0)
"""


def zero_code_line() -> str:
    """The one shell line of README.md's bash blocks that runs ``opentelemetry-instrument python app.py``."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    lines = [line for block in blocks for line in block.splitlines() if "opentelemetry-instrument" in line]
    assert len(lines) == 1, lines
    return lines[0].strip()


def _receiver_for(line: str) -> tuple[OtlpReceiver, str, str | None]:
    """A receiver on the line's port; if that port is taken (another test run), on a free one, with the
    line rewritten in its port only and a note saying so."""
    match = re.search(r"OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:(\d+)\b", line)
    assert match, f"the README line names no localhost endpoint: {line}"
    port = int(match.group(1))
    try:
        return OtlpReceiver(port=port).start(), line, None
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
    receiver = OtlpReceiver().start()
    free = receiver.endpoint.rsplit(":", 1)[1]
    rewritten = line[: match.start(1)] + free + line[match.end(1) :]
    return receiver, rewritten, f"port {port} was taken: ran the README line on port {free} instead"


def test_the_readme_zero_code_line_works_as_written(tmp_path: Path) -> None:
    line = zero_code_line()
    words = shlex.split(line)
    assert words[-3:] == ["opentelemetry-instrument", "python", "app.py"], line
    (tmp_path / "app.py").write_text(APP)
    receiver, command, note = _receiver_for(line)
    if note:
        print(note)
    env = subprocess_env()
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # `python`: this venv's, as after activate
    try:
        done = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
        )
        assert done.returncode == 0, done.stderr[-4000:]
        assert "Failed" not in done.stderr, done.stderr[-4000:]  # e.g. gRPC against the HTTP port
        [span] = receiver.generation_spans()
        values = attributes(span.attributes)
        assert span.name == "text_completion demo_model"  # a local directory: its last path component
        assert values["gen_ai.usage.output_tokens"] == 8
        assert "corevital.logits.entropy.mean" in values
        assert receiver.wait_for(lambda: "gen_ai.client.token.usage" in receiver.metrics())
    finally:
        receiver.stop()
