"""Every benchmark command docs/performance.md shows names a real script and options it accepts.

The commands take minutes to hours (that is what they measure), so they are not run here: each is parsed
by its own script's argument parser, so a renamed grid, option or script fails this test, not a reader.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tests.benchmarks.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "performance.md"


def _commands() -> list[str]:
    text = DOC.read_text()
    section = text[text.index("## The commands") :]
    block = section[section.index("```bash\n") + len("```bash\n") : section.index("```\n", 8)]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_the_doc_shows_commands():
    assert len(_commands()) >= 5


@pytest.mark.parametrize("command", _commands())
def test_each_command_parses(command):
    words = shlex.split(command)
    if words[:2] == ["taskset", "-c"]:
        words = words[3:]
    assert words[0] == ".venv/bin/python", command
    script = ROOT / words[1]
    assert script.is_file(), command
    module = load_script(script)
    module.parse_arguments(words[2:])  # argparse exits (SystemExit) on anything it does not accept
