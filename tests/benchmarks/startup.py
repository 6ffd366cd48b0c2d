"""Start-up cost of corevital_otel under ``opentelemetry-instrument`` for an app that never generates.

    .venv/bin/python tests/benchmarks/startup.py --rounds 11

Runs ``opentelemetry-instrument python -c "import json"`` with corevital enabled and with it disabled
(``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``), interleaved and rotated, and prints the median wall time of
each and the median per-round difference. Other GenAI instrumentors installed beside it are disabled in
both runs, so the difference is ours alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

INSTRUMENT = Path(sys.executable).parent / "opentelemetry-instrument"


def run_once(disabled: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "COREVITAL_"))}
    env.update(
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=",".join(disabled),
    )
    start = time.perf_counter()
    subprocess.run([str(INSTRUMENT), sys.executable, "-c", "import json"], env=env, check=True)
    return time.perf_counter() - start


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (also checked against every command docs/performance.md shows)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    others = sorted(
        ep.name for ep in entry_points(group="opentelemetry_instrumentor") if ep.name != "corevital"
    )
    variants = {"with corevital": others, "without corevital": [*others, "corevital"]}
    timings: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    run_once(others)  # warm the file cache
    for round_index in range(args.rounds):
        for name in names[round_index % 2 :] + names[: round_index % 2]:
            timings[name].append(run_once(variants[name]))
    for name, values in timings.items():
        spread = f"{min(values):.3f}-{max(values):.3f}"
        print(f"{name:18s} median {statistics.median(values):.3f} s  min-max {spread}")
    differences = [
        a - b for a, b in zip(timings["with corevital"], timings["without corevital"], strict=True)
    ]
    print(f"difference         median {statistics.median(differences):+.3f} s over {args.rounds} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
