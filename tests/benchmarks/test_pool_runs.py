"""Pooling overhead runs: the pooled statistics, the code guard, and the doc's pooled table reproduced."""

from __future__ import annotations

import json
import shlex
import statistics
import subprocess
from pathlib import Path

import pytest

from tests.benchmarks.scripts import load_script

pool_runs = load_script("pool_runs")  # it imports overhead.py from beside itself

ROOT = Path(__file__).resolve().parents[2]


def _run_file(tmp_path: Path, name: str, ratios: dict[str, list[float]], code: str | None) -> Path:
    rows = []
    for variant, values in ratios.items():
        row = {"shape": "tiny p8 n4 b1", "variant": variant, "round_ratios": values}
        if code is not None:
            row["code"] = code
        rows.append(row)
    path = tmp_path / name
    path.write_text(json.dumps(rows))
    return path


def _two_runs(tmp_path: Path, codes: tuple[str | None, str | None] = ("abc", "abc")) -> list[Path]:
    first = {"plain": [1.0] * 3, "summary": [1.02, 1.05, 0.99], "output_flags": [1.04, 1.05, 1.10]}
    second = {"plain": [1.0] * 4, "summary": [1.01, 1.03, 1.04, 1.08], "output_flags": [1.03, 1.03, 1.0, 1.2]}
    return [_run_file(tmp_path, "a.json", first, codes[0]), _run_file(tmp_path, "b.json", second, codes[1])]


def test_pooled_median_is_over_every_round_of_every_run(tmp_path):
    rows = pool_runs.pool(pool_runs.load_rounds(_two_runs(tmp_path)))
    summary = next(row for row in rows if row["variant"] == "summary")
    everything = [1.02, 1.05, 0.99, 1.01, 1.03, 1.04, 1.08]
    assert (summary["runs"], summary["rounds"]) == (2, 7)
    assert summary["ratio"] == statistics.median(everything)
    assert summary["run_medians"] == pytest.approx([1.02, 1.035])
    for low, high in (summary["within_runs_ci95"], summary["two_level_ci95"]):
        assert min(everything) <= low <= summary["ratio"] <= high <= max(everything)
    assert "plain" not in {row["variant"] for row in rows}


def test_the_comparison_with_output_flags_pairs_rounds(tmp_path):
    ratios = {"plain": [1.0] * 5, "output_flags": [1.0, 1.1, 1.2, 0.9, 1.3]}
    ratios["full"] = [0.98 * value for value in ratios["output_flags"]]  # 2 % under it in every round
    rows = pool_runs.pool(pool_runs.load_rounds([_run_file(tmp_path, "r.json", ratios, "abc")]))
    full = next(row for row in rows if row["variant"] == "full")
    assert full["vs_output_flags"] == pytest.approx(0.98)
    assert full["vs_output_flags_ci95"] == pytest.approx((0.98, 0.98))
    assert "vs_output_flags" not in next(row for row in rows if row["variant"] == "output_flags")


def test_the_comparison_pairs_only_runs_that_have_both_variants(tmp_path):
    # The first run has no output_flags, the second no full: nothing pairs, whatever the round counts.
    first = _run_file(tmp_path, "a.json", {"plain": [1.0] * 2, "full": [1.1, 1.2]}, "abc")
    second = _run_file(tmp_path, "b.json", {"plain": [1.0] * 2, "output_flags": [1.0, 1.0]}, "abc")
    both = {"plain": [1.0] * 2, "full": [1.05, 1.05], "output_flags": [1.0] * 2}
    third = _run_file(tmp_path, "c.json", both, "abc")
    rows = pool_runs.pool(pool_runs.load_rounds([first, second]))
    assert "vs_output_flags" not in next(row for row in rows if row["variant"] == "full")
    rows = pool_runs.pool(pool_runs.load_rounds([first, second, third]))
    full = next(row for row in rows if row["variant"] == "full")
    assert full["vs_output_flags"] == pytest.approx(1.05)  # the third run's rounds only
    assert (full["runs"], full["rounds"]) == (2, 4)


@pytest.mark.parametrize(
    ("codes", "flag"), [(("abc", "abd"), True), (("abc", None), False), ((None, None), False)]
)
def test_runs_of_different_or_unnamed_code_are_refused(tmp_path, capsys, codes, flag):
    arguments = [str(path) for path in _two_runs(tmp_path, codes)] + (["--assume-same-code"] if flag else [])
    assert pool_runs.main(arguments) == 2
    expected = "do not say which code" if codes == (None, None) else "measured different code"
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize(
    "content", [None, "not json", '[{"variant": "plain"}]', '[{"variant": "plain", "round_ratios": [1]}]']
)
def test_unreadable_runs_are_named_not_a_traceback(tmp_path, capsys, content):
    path = tmp_path / "run.json"
    if content is not None:
        path.write_text(content)
    assert pool_runs.main([str(path), "--assume-same-code"]) == 2
    assert capsys.readouterr().err.startswith("pool_runs: cannot read the runs: ")


def test_runs_that_name_no_code_pool_when_the_caller_vouches(tmp_path, capsys):
    paths = [str(path) for path in _two_runs(tmp_path, (None, None))]
    assert pool_runs.main([*paths, "--assume-same-code"]) == 0
    table = capsys.readouterr().out
    assert "| tiny p8 n4 b1 | summary | 2 | 7 | 1.030 |" in table


def _pool_commands() -> list[str]:
    doc = (ROOT / "docs" / "performance.md").read_text()
    command = ".venv/bin/python tests/benchmarks/pool_runs.py "
    return [line.split("  #")[0] for line in doc.splitlines() if line.startswith(command)]


def test_the_doc_pools_runs():
    assert len(_pool_commands()) >= 2


@pytest.mark.parametrize("command", _pool_commands())
def test_each_pooled_table_in_the_docs_is_what_its_command_writes(command):
    """docs/performance.md's pool_runs commands, run verbatim from the repository root, rewrite the tables
    they name byte for byte (a fixed bootstrap seed): the doc's pooled figures come from the archived runs."""
    words = shlex.split(command)
    out = ROOT / words[words.index("--out") + 1]
    committed = out.read_bytes()
    subprocess.run(words, cwd=ROOT, check=True, timeout=300)
    assert out.read_bytes() == committed
