"""The cold-path model of the capture's hooks (hook_paths.py) runs and keeps every step it times."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("hook_paths.py")


def _script():
    spec = importlib.util.spec_from_file_location("hook_paths", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("hook_paths", module)
    spec.loader.exec_module(module)
    return sys.modules["hook_paths"]


def test_every_path_is_timed_with_the_capture_keeping_every_step(capsys):
    hook_paths = _script()
    hook_paths.main(["--steps", "12", "--layers", "2", "--evict-mib", "1", "--vocab", "64"])
    lines = capsys.readouterr().out.splitlines()
    table = [line for line in lines if line.startswith("| ") and "µs" not in line]
    assert [row.split(" | ")[0].lstrip("| ") for row in table] == list(hook_paths.PATHS)
    for row in table:
        on, off = (float(cell) for cell in row.split(" | ")[1:3])
        assert on > 0 and off > 0


def test_too_few_steps_are_refused():
    with pytest.raises(SystemExit):
        _script().parse_arguments(["--steps", "3"])
