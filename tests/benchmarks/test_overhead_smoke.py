"""The benchmark script runs end to end on a tiny shape and writes its table (no timing asserted)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

# The benchmark is a script, not a package module: load it from its file.
_SPEC = importlib.util.spec_from_file_location("overhead", Path(__file__).with_name("overhead.py"))
overhead = importlib.util.module_from_spec(_SPEC)
sys.modules["overhead"] = overhead  # dataclasses look their module up there
_SPEC.loader.exec_module(overhead)


def test_benchmark_smoke_grid_writes_a_table(tmp_path):
    assert overhead.main(["--grid", "smoke", "--rounds", "2", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "overhead-smoke.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| tiny")]
    assert [row.split(" | ")[1] for row in rows] == list(overhead.VARIANTS)
    full = next(row for row in rows if " | full | " in row)
    assert full.rstrip(" |").split(" | ")[-1] == "0.00"  # no host sync per step while decoding
    plain = next(row for row in rows if " | plain | " in row)
    assert plain.split(" | ")[2] == "1.000"  # each round's ratio of plain to itself


def test_rounds_rotate_the_order_of_variants():
    assert [overhead.rotated(["a", "b", "c"], index) for index in range(4)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]


def test_profile_by_part_runs_on_a_tiny_shape():
    # A subprocess: the profile wraps corevital's classes with timers for the rest of its process.
    script = Path(__file__).with_name("profile_overhead.py")
    arguments = ["--shape", "tiny", "--prompt", "16", "--new-tokens", "8", "--rounds", "1"]
    completed = subprocess.run(
        [sys.executable, str(script), *arguments], capture_output=True, text=True, timeout=300, check=True
    )
    for part in ("hook layer_output", "fold (attention scoring)", "plugin logits (corevital_steps)"):
        assert part in completed.stdout, completed.stdout


def test_median_interval_brackets_the_median_and_narrows_with_rounds():
    noisy = [1.00, 1.08, 0.97, 1.05, 1.12, 1.02, 0.99, 1.06, 1.04, 1.10, 1.01]
    low, high = overhead.median_interval(noisy)
    assert low <= 1.04 <= high  # the sample median
    assert min(noisy) <= low < high <= max(noisy)
    assert overhead.median_interval(noisy) == (low, high)  # a fixed seed: reproducible from the JSON
    narrower = overhead.median_interval(noisy * 4)
    assert high - low > narrower[1] - narrower[0] > 0
    assert overhead.median_interval([1.03] * 5) == (1.03, 1.03)
