"""The benchmark script runs end to end on a tiny shape and writes its table (no timing asserted)."""

from __future__ import annotations

import overhead  # tests/benchmarks is put on sys.path below


def test_benchmark_smoke_grid_writes_a_table(tmp_path):
    assert overhead.main(["--grid", "smoke", "--repeats", "1", "--no-memory", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "overhead-smoke.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| tiny")]
    assert [row.split(" | ")[1] for row in rows] == list(overhead.VARIANTS)
    full = next(row for row in rows if " | full | " in row)
    assert full.rstrip(" |").split(" | ")[-1] == "0.00"  # no host sync per step while decoding
