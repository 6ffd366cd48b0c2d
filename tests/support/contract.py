"""docs/telemetry.md read as data: documented span attributes, event attributes and metrics.

A documented name may contain ``<placeholder>`` parts. A placeholder that names a column of some
table (``<series>`` and the "series" column of the step-series table) stands for exactly the values
listed there; any other placeholder stands for one or more characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[2] / "docs" / "telemetry.md"
# Metric attributes every metric carries, written "base" in the metrics table.
BASE_METRIC_ATTRIBUTES = ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model")

_CODE = re.compile(r"`([^`]+)`")
_PLACEHOLDER = re.compile(r"<([a-z_]+)>")


@dataclass
class Table:
    heading: str
    header: list[str]
    rows: list[dict[str, str]]

    def column(self, name: str) -> list[str]:
        return [unquote(row[name]) for row in self.rows]


@dataclass
class MetricContract:
    kind: str
    unit: str
    attributes: set[str]


@dataclass
class Contract:
    span_attributes: dict[str, str] = field(default_factory=dict)  # name -> documented type
    events: dict[str, dict[str, str]] = field(default_factory=dict)  # event name -> its attributes
    metrics: dict[str, MetricContract] = field(default_factory=dict)
    placeholder_values: dict[str, list[str]] = field(default_factory=dict)

    def _pattern(self, documented: str) -> re.Pattern[str]:
        parts = []
        for index, piece in enumerate(_PLACEHOLDER.split(documented)):
            if index % 2 == 0:
                parts.append(re.escape(piece))
            elif piece in self.placeholder_values:
                parts.append("(?:" + "|".join(map(re.escape, self.placeholder_values[piece])) + ")")
            else:
                parts.append(".+")
        return re.compile("".join(parts))

    def match(self, name: str, documented: dict[str, Any]) -> str | None:
        """The documented name ``name`` falls under (exact names first), or None if undocumented."""
        if name in documented:
            return name
        for candidate in documented:
            if "<" in candidate and self._pattern(candidate).fullmatch(name):
                return candidate
        return None

    def undocumented(self, names: set[str], documented: dict[str, Any]) -> set[str]:
        return {name for name in names if self.match(name, documented) is None}


def unquote(cell: str) -> str:
    codes = _CODE.findall(cell)
    return codes[0] if codes else cell.strip()


def _split_row(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def read_tables(text: str) -> list[Table]:
    tables: list[Table] = []
    heading = ""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("|") and index + 1 < len(lines) and set(lines[index + 1]) <= set("|-: "):
            header = _split_row(line)
            rows = []
            index += 2
            while index < len(lines) and lines[index].startswith("|"):
                rows.append(dict(zip(header, _split_row(lines[index]), strict=False)))
                index += 1
            tables.append(Table(heading, header, rows))
            continue
        index += 1
    return tables


def load(text: str | None = None) -> Contract:
    tables = read_tables(DOC.read_text() if text is None else text)
    contract = Contract()
    for table in tables:
        first = table.header[0]
        if first != "name":  # a table of placeholder values, e.g. the step series
            contract.placeholder_values.setdefault(first, []).extend(table.column(first))
        elif table.heading.startswith("Span attributes"):
            contract.span_attributes.update({unquote(row["name"]): row["type"] for row in table.rows})
        elif table.heading.startswith("Span event"):
            attributes = contract.events.setdefault(unquote(table.heading), {})
            attributes.update({unquote(row["name"]): row["type"] for row in table.rows})
        elif table.heading == "Metrics":
            for row in table.rows:
                names = {code for code in _CODE.findall(row["attributes"]) if "." in code}
                if "base" in row["attributes"]:
                    names.update(BASE_METRIC_ATTRIBUTES)
                contract.metrics[unquote(row["name"])] = MetricContract(
                    row["kind"].strip(), row["unit"].strip(), names
                )
    return contract


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Documented type -> check of an SDK attribute value (None stands for a non-finite array entry).
TYPE_CHECKS = {
    "string": lambda v: isinstance(v, str),
    "int": _is_int,
    "double": lambda v: isinstance(v, float),
    "bool": lambda v: isinstance(v, bool),
    "string[]": lambda v: isinstance(v, tuple) and all(isinstance(i, str) for i in v),
    "int[]": lambda v: isinstance(v, tuple) and all(_is_int(i) for i in v),
    "double[]": lambda v: isinstance(v, tuple) and all(i is None or isinstance(i, float) for i in v),
    "bool[]": lambda v: isinstance(v, tuple) and all(isinstance(i, bool) for i in v),
    "any": lambda v: True,
}


def type_check(documented_type: str) -> Any:
    """The check of one documented type; ``X/row`` (a per-row value) is a plain ``X`` at one row and an
    ``X[]`` with more rows, so either passes here (tests/telemetry/test_span_budget.py pins which)."""
    if documented_type.endswith("/row"):
        scalar, array = TYPE_CHECKS.get(documented_type[:-4]), TYPE_CHECKS.get(documented_type[:-4] + "[]")
        if scalar is None or array is None:
            return None
        return lambda value: scalar(value) or array(value)
    return TYPE_CHECKS.get(documented_type)


def type_mismatches(values: dict[str, object], documented: dict[str, str], contract: Contract) -> list[str]:
    """``name: value`` for each value whose Python type does not fit its documented type."""
    wrong = []
    for name, value in values.items():
        match = contract.match(name, documented)
        if match is None:
            continue
        check = type_check(documented[match].strip())
        if check is None or not check(value):
            wrong.append(f"{name} ({documented[match]}): {value!r}")
    return wrong
