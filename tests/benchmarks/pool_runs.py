"""Pool the rounds of several overhead runs of the same code into one estimate per shape and variant.

    .venv/bin/python tests/benchmarks/pool_runs.py docs/benchmarks/overhead-llama-run6.json \\
        docs/benchmarks/overhead-llama-run7.json --out pooled.md

One run of 21 or 61 rounds on a shared machine pins its median down to about ±0.02, and the same code's
medians move by as much from run to run. Each round stays what ``overhead.py`` measured: a ratio to plain
generate() in the same round of the same process. Pooled, per shape and variant:

- the median of all rounds of all runs;
- a bootstrap 95 % interval with each run's rounds resampled within the run (the runs as they were);
- a wider, two-level one, with the runs resampled too, then their rounds: it counts the drift of the
  machine's state from run to run, not only the noise of rounds (with few runs it is coarse);
- the median of the per-round ratio to ``output_flags`` (both ran in the same rounds), with its
  within-run interval: whether a mode is at or below the prior-art design.

Runs pool only when they measured the same code: each JSON row carries ``code`` (``overhead.code_digest``)
since the eleventh session. Rows of earlier runs have none; ``--assume-same-code`` pools them, on the word
of whoever checked that ``corevital_otel/`` and ``plugins/`` did not change between them.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from overhead import bootstrap_interval  # noqa: E402 - a script beside this one

Runs = dict[int, list[float]]  # each run's round ratios, by the run's place in the command line
_BASELINES = ("plain", "output_flags", "placebo")  # compared with output_flags: only corevital's modes


class MixedCode(ValueError):
    """The runs measured different code, or some do not say which."""


def load_rounds(paths: list[Path], assume_same_code: bool = False) -> dict[tuple[str, str], Runs]:
    """``(shape, variant)`` -> each run's round ratios, keyed by the run's place in ``paths``."""
    codes = set()
    pooled: dict[tuple[str, str], Runs] = {}
    for index, path in enumerate(paths):
        for row in json.loads(path.read_text()):
            if "round_ratios" not in row:
                continue  # a memory-only row
            codes.add(row.get("code"))
            pooled.setdefault((row["shape"], row["variant"]), {})[index] = list(row["round_ratios"])
    if not pooled:
        raise ValueError("no timed rounds in them (memory-only runs?)")
    if codes == {None} and not assume_same_code:
        raise MixedCode(
            "the runs do not say which code they measured; pass --assume-same-code if you checked that"
            " corevital_otel/ and plugins/ did not change between them"
        )
    if len(codes) > 1:
        named = ", ".join(sorted(code or "none recorded" for code in codes))
        raise MixedCode(f"the runs measured different code ({named}): pool only runs of one code")
    return pooled


def _within_runs(runs: Runs) -> Callable[[random.Random], list[float]]:
    return lambda generator: [ratio for run in runs.values() for ratio in generator.choices(run, k=len(run))]


def _runs_then_rounds(runs: Runs) -> Callable[[random.Random], list[float]]:
    every_run = list(runs.values())

    def resample(generator: random.Random) -> list[float]:
        picked = generator.choices(every_run, k=len(every_run))
        return [ratio for run in picked for ratio in generator.choices(run, k=len(run))]

    return resample


def _paired(runs: Runs, baseline: Runs) -> Runs:
    """Each round's ratio of one variant to another that ran in the same round, in the runs that have both."""
    return {
        index: [ratio / base for ratio, base in zip(run, baseline[index], strict=True)]
        for index, run in runs.items()
        if index in baseline
    }


def pool(rounds: dict[tuple[str, str], Runs]) -> list[dict[str, Any]]:
    rows = []
    for (shape, variant), runs in rounds.items():
        if variant == "plain":
            continue  # each round's ratio to itself
        everything = [ratio for run in runs.values() for ratio in run]
        row: dict[str, Any] = {
            "shape": shape,
            "variant": variant,
            "runs": len(runs),
            "rounds": len(everything),
            "ratio": statistics.median(everything),
            "within_runs_ci95": bootstrap_interval(_within_runs(runs)),
            "two_level_ci95": bootstrap_interval(_runs_then_rounds(runs)),
            "run_medians": [statistics.median(run) for run in runs.values()],
        }
        paired = {} if variant in _BASELINES else _paired(runs, rounds.get((shape, "output_flags"), {}))
        if paired:
            row["vs_output_flags"] = statistics.median(ratio for run in paired.values() for ratio in run)
            row["vs_output_flags_ci95"] = bootstrap_interval(_within_runs(paired))
        rows.append(row)
    return rows


def _interval(bounds: tuple[float, float]) -> str:
    return f"{bounds[0]:.3f}–{bounds[1]:.3f}"


def table(rows: list[dict[str, Any]], paths: list[Path]) -> str:
    lines = [
        f"Pooled from {len(paths)} runs: " + ", ".join(f"`{path.name}`" for path in paths) + ".",
        "",
        "| shape | variant | runs | rounds | pooled median ratio | 95 % CI, rounds within runs"
        " | 95 % CI, runs then rounds | run medians | ÷ output_flags (95 % CI) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        versus = ""
        if "vs_output_flags" in row:
            versus = f"{row['vs_output_flags']:.3f} ({_interval(row['vs_output_flags_ci95'])})"
        medians = ", ".join(f"{median:.3f}" for median in row["run_medians"])
        lines.append(
            f"| {row['shape']} | {row['variant']} | {row['runs']} | {row['rounds']} | {row['ratio']:.3f}"
            f" | {_interval(row['within_runs_ci95'])} | {_interval(row['two_level_ci95'])} | {medians}"
            f" | {versus} |"
        )
    return "\n".join(lines) + "\n"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="the JSON files overhead.py wrote")
    parser.add_argument("--out", type=Path, help="write the Markdown table here (default: print it)")
    parser.add_argument(
        "--assume-same-code",
        action="store_true",
        help="pool runs that record no code digest (checked by hand to have measured the same code)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    try:
        rows = pool(load_rounds(args.runs, args.assume_same_code))
    except MixedCode as error:
        print(f"pool_runs: {error}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError, TypeError) as error:  # a missing file, or not overhead.py's JSON
        print(f"pool_runs: cannot read the runs: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    text = table(rows, args.runs)
    if args.out is None:
        print(text, end="")
    else:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
