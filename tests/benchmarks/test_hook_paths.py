"""The cold-path model of the capture's hooks (hook_paths.py) runs and keeps every step it times."""

from __future__ import annotations

import pytest

from tests.benchmarks.scripts import load_script


def test_every_path_is_timed_with_the_capture_keeping_every_step(capsys):
    hook_paths = load_script("hook_paths")
    hook_paths.main(["--steps", "12", "--layers", "2", "--evict-mib", "1", "--vocab", "64"])
    lines = capsys.readouterr().out.splitlines()
    table = [line for line in lines if line.startswith("| ") and "µs" not in line]
    assert [row.split(" | ")[0].lstrip("| ") for row in table] == list(hook_paths.PATHS)
    for row in table:
        on, off = (float(cell) for cell in row.split(" | ")[1:3])
        assert on > 0 and off > 0


def test_too_few_steps_are_refused():
    with pytest.raises(SystemExit):
        load_script("hook_paths").parse_arguments(["--steps", "3"])
