"""The benchmark script runs end to end on a tiny shape and writes its table (no timing asserted)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.benchmarks.scripts import load_script

overhead = load_script("overhead")


def test_benchmark_smoke_grid_writes_a_table(tmp_path):
    assert overhead.main(["--grid", "smoke", "--rounds", "2", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "overhead-smoke.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| tiny")]
    assert [row.split(" | ")[1] for row in rows] == list(overhead.VARIANTS)
    full = next(row for row in rows if " | full | " in row)
    assert full.rstrip(" |").split(" | ")[-1] == "0.00"  # no host sync per step while decoding
    plain = next(row for row in rows if " | plain | " in row)
    assert plain.split(" | ")[2] == "1.000"  # each round's ratio of plain to itself
    measured = json.loads((tmp_path / "overhead-smoke.json").read_text())
    assert {row["code"] for row in measured} == {overhead.code_digest()}  # what pool_runs.py checks


def test_output_flags_hooks_are_on_the_shared_model_during_its_own_calls_only():
    # transformers hooks every layer and attention module for output_* and keeps the hooks: left on, they
    # slowed plain generate() too and made corevital hook the layers instead of tapping them.
    shape = overhead.Shape("tiny", 8, 3, 1)
    shared = overhead.build_model("tiny")
    plain = overhead.Variant("plain", shape, model=shared)
    flags = overhead.Variant("output_flags", shape, model=shared)
    for _ in range(2):  # installed by the first call, put back for the second
        flags.call()
        # Each step's hidden states: the embeddings' and both layers' outputs, recorded by those hooks.
        assert [len(step) for step in flags.last_output.hidden_states] == [3, 3, 3]
        assert overhead.forward_hooks(shared) == {}
        plain.call()
    assert len(flags.recording_hooks) == 4  # on each of the two decoder layers and attention modules


def test_a_variant_leaving_a_forward_hook_on_the_shared_model_is_refused():
    shape = overhead.Shape("tiny", 8, 3, 1)
    shared = overhead.build_model("tiny")
    variant = overhead.Variant("plain", shape, model=shared)
    variant.enter()
    shared.model.layers[0].register_forward_hook(lambda *args: None)
    with pytest.raises(RuntimeError, match="plain left 1 forward hooks on the shared model"):
        variant.exit()


@pytest.mark.parametrize("count", range(1, 8))
def test_orders_balance_positions_and_predecessors(count):
    orders = overhead.balanced_orders(count)
    assert len(orders) == (2 * count if count % 2 else count)
    assert all(sorted(order) == list(range(count)) for order in orders)
    per_position = Counter((position, item) for order in orders for position, item in enumerate(order))
    assert set(per_position.values()) == {len(orders) // count}
    neighbours = Counter(pair for order in orders for pair in itertools.pairwise(order))
    if count > 1:
        assert len(neighbours) == count * (count - 1)  # every ordered pair of distinct items
        assert set(neighbours.values()) == {1 if count % 2 == 0 else 2}


def test_rounds_cycle_through_the_balanced_orders():
    variants = ["plain", "summary", "full", "output_flags", "placebo"]
    rounds = [overhead.round_order(variants, index) for index in range(11)]
    assert rounds[0] == ["plain", "summary", "placebo", "full", "output_flags"]
    assert rounds[10] == rounds[0]  # ten orders for five variants, then again
    assert len({tuple(order) for order in rounds}) == 10


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


def test_code_digest_names_the_measured_code(tmp_path):
    for package in ("corevital_otel", "plugins"):
        (tmp_path / package / "__pycache__").mkdir(parents=True)
        (tmp_path / package / "module.py").write_text("x = 1\n")
    first = overhead.code_digest(tmp_path)
    (tmp_path / "corevital_otel" / "__pycache__" / "module.pyc").write_bytes(b"compiled")
    (tmp_path / "README.md").write_text("not measured code")
    assert overhead.code_digest(tmp_path) == first  # byte code and other files are not the code
    (tmp_path / "plugins" / "module.py").write_text("x = 2\n")
    second = overhead.code_digest(tmp_path)
    assert second != first
    (tmp_path / "tests" / "benchmarks").mkdir(parents=True)
    (tmp_path / "tests" / "benchmarks" / "overhead.py").write_text("how each variant runs")
    assert overhead.code_digest(tmp_path) != second  # the benchmark decides what was measured too
    assert len(first) == 16 and overhead.code_digest() != first  # the repository's own code
