"""The metric table of docs/telemetry.md, and the OTLP -> Prometheus name translation it claims.

The translation follows the Collector's prometheus exporter (and Prometheus' own OTLP ingestion, both
built on prometheus/otlptranslator with suffixes on): the name is split into tokens at every character
outside [a-zA-Z0-9:], the unit is mapped (s -> seconds, By -> bytes, ...; a unit it does not know is
kept as it is, so `bit` stays `bit`; `1` and `{...}` annotations add nothing) and appended unless already
a token, counters end in `total`, and `ratio` is appended for unit `1` on gauges only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .repo import TELEMETRY_DOC

_UNITS = {
    "d": "days", "h": "hours", "min": "minutes", "s": "seconds", "ms": "milliseconds",
    "us": "microseconds", "ns": "nanoseconds", "By": "bytes", "KiBy": "kibibytes", "MiBy": "mebibytes",
    "GiBy": "gibibytes", "m": "meters", "V": "volts", "A": "amperes", "J": "joules", "W": "watts",
    "g": "grams", "Cel": "celsius", "Hz": "hertz", "1": "", "%": "percent",
}  # fmt: skip
BASE_ATTRIBUTES = ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model")


@dataclass(frozen=True)
class ContractMetric:
    name: str
    kind: str
    unit: str
    attributes: tuple[str, ...]
    prometheus_name: str

    @property
    def series_names(self) -> tuple[str, ...]:
        """The names of the Prometheus series this metric becomes."""
        if self.kind == "histogram":
            return tuple(f"{self.prometheus_name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        return (self.prometheus_name,)

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(label_name(attribute) for attribute in self.attributes)


def label_name(attribute: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", attribute)


def prometheus_name(name: str, unit: str, kind: str) -> str:
    tokens = [token for token in re.split(r"[^a-zA-Z0-9:]+", name) if token]
    main_unit = "" if "{" in unit or not unit else _UNITS.get(unit, unit)
    if main_unit and main_unit not in tokens:
        tokens.append(main_unit)
    if kind == "counter":
        tokens = [token for token in tokens if token != "total"] + ["total"]
    if unit == "1" and kind == "gauge":
        tokens = [token for token in tokens if token != "ratio"] + ["ratio"]
    return "_".join(tokens)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _code(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def metrics() -> list[ContractMetric]:
    """Every row of the metrics table (the table whose header has a `Prometheus name` column)."""
    lines = TELEMETRY_DOC.read_text(encoding="utf-8").splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("|") and "Prometheus name" in line)
    columns = _cells(lines[header])
    rows = []
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        row = dict(zip(columns, _cells(line), strict=True))
        attributes = list(BASE_ATTRIBUTES) if "base" in row["attributes"] else []
        # only attribute names, not their listed values: `corevital.risk.level` (`low`/...) keeps the key
        attributes += [code for code in _code(row["attributes"]) if "." in code]
        rows.append(
            ContractMetric(
                name=_code(row["name"])[0],
                kind=row["kind"],
                unit=row["unit"],
                attributes=tuple(attributes),
                prometheus_name=_code(row["Prometheus name"])[0],
            )
        )
    return rows


def by_prometheus_name() -> dict[str, ContractMetric]:
    return {metric.prometheus_name: metric for metric in metrics()}
