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

from tests.support.contract import BASE_METRIC_ATTRIBUTES, load, read_tables, unquote

from .repo import TELEMETRY_DOC

_UNITS = {
    "d": "days", "h": "hours", "min": "minutes", "s": "seconds", "ms": "milliseconds",
    "us": "microseconds", "ns": "nanoseconds", "By": "bytes", "KiBy": "kibibytes", "MiBy": "mebibytes",
    "GiBy": "gibibytes", "m": "meters", "V": "volts", "A": "amperes", "J": "joules", "W": "watts",
    "g": "grams", "Cel": "celsius", "Hz": "hertz", "1": "", "%": "percent",
}  # fmt: skip
BASE_ATTRIBUTES = BASE_METRIC_ATTRIBUTES


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


def metrics() -> list[ContractMetric]:
    """Every row of the metrics table (the one with a `Prometheus name` column), read by the suite's one
    parser of docs/telemetry.md (tests.support.contract)."""
    tables = read_tables(TELEMETRY_DOC.read_text(encoding="utf-8"))
    [table] = [table for table in tables if "Prometheus name" in table.header]
    documented = load()
    rows = []
    for row in table.rows:
        name = unquote(row["name"])
        rows.append(
            ContractMetric(
                name=name,
                kind=row["kind"],
                unit=row["unit"],
                attributes=tuple(sorted(documented.metrics[name].attributes, key=_base_first)),
                prometheus_name=unquote(row["Prometheus name"]),
            )
        )
    return rows


def _base_first(attribute: str) -> tuple[int, str]:
    """The base attributes in their order, then the metric's own by name."""
    if attribute in BASE_ATTRIBUTES:
        return BASE_ATTRIBUTES.index(attribute), ""
    return len(BASE_ATTRIBUTES), attribute


def by_prometheus_name() -> dict[str, ContractMetric]:
    return {metric.prometheus_name: metric for metric in metrics()}
