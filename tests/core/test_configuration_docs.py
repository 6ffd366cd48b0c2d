"""docs/configuration.md against the options schemas, both ways: every option and variable a schema
declares is documented with its variable, and every documented one exists in a schema."""

from __future__ import annotations

import re
from pathlib import Path

import corevital_otel
from corevital_otel.config import ENVIRONMENT_VARIABLES, Options, environment_variables
from corevital_otel.plugin_host import PluginHost
from corevital_otel.plugin_options import option_schemas

DOCS = Path(__file__).resolve().parents[2] / "docs"
# instrument()'s own arguments, documented in the same table but not options.
ARGUMENTS = {"tracer_provider", "meter_provider"}
_PLUGIN_ROW = re.compile(r'^\| `\{"(\w+)": \{(.*)\}\}`')


def _rows(text: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| `")
    ]


def _section(name: str) -> str:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    return text.split(f"## {name}", 1)[1].split("\n## ", 1)[0]


def _variables(cell: str) -> set[str]:
    return set(re.findall(r"`([A-Z][A-Z0-9_]+)`", cell))


def _top_level_keys(inner: str) -> list[str]:
    """``"a": 1, "b": {"c": 2}`` -> ``["a", "b"]`` (names at the first level only)."""
    keys, depth = [], 0
    for match in re.finditer(r'[{\[]|[}\]]|"(\w+)":', inner):
        token = match.group(0)
        if token in "{[":
            depth += 1
        elif token in "}]":
            depth -= 1
        elif depth == 0:
            keys.append(match.group(1))
    return keys


def test_every_core_option_is_documented_with_its_variable_and_nothing_else_is():
    text = (DOCS / "configuration.md").read_text(encoding="utf-8").split("\n## ", 1)[0]
    documented = {row[0].strip("`"): _variables(row[1]) for row in _rows(text)}
    assert set(documented) - ARGUMENTS == set(Options.model_fields)
    for option in Options.model_fields:
        expected = {ENVIRONMENT_VARIABLES[option]} if option in ENVIRONMENT_VARIABLES else set()
        assert documented[option] == expected, option


def _documented_plugin_options() -> dict[tuple[str, str], set[str]]:
    found: dict[tuple[str, str], set[str]] = {}
    for row in _rows(_section("Plugin settings")):
        if not row[0].startswith("`{"):
            continue  # the header
        match = _PLUGIN_ROW.match(f"| {row[0]}")
        assert match, row[0]
        key, inner = match.groups()
        for option in _top_level_keys(inner):
            found[(key, option)] = _variables(row[1])
    return found


def _thresholds_documented() -> set[str]:
    text = (DOCS / "telemetry.md").read_text(encoding="utf-8")
    table = text.split("### Threshold profiles", 1)[1].split("\n#", 1)[0]
    return {row[0].strip("`") for row in _rows(table)}


def test_every_plugin_option_is_documented_with_its_variable_and_nothing_else_is():
    host = PluginHost.load(use_entry_points=False)
    schemas = option_schemas(dict(host.manager.list_name_plugin()))
    assert {"risk", "baseline", "fingerprint", "prompt", "drift", "outcome", "kv_cache", "profile"} <= set(
        schemas
    )
    documented = _documented_plugin_options()
    declared: dict[tuple[str, str], set[str]] = {}
    for key, (_, schema) in schemas.items():
        variables = environment_variables(schema)
        for option in schema.model_fields:
            declared[(key, option)] = {variables[option]} if option in variables else set()
    # The profile's single thresholds are documented in telemetry.md's threshold table.
    thresholds = {option for key, option in declared if key == "profile"} - {"family"}
    assert thresholds == _thresholds_documented()
    declared = {entry: variables for entry, variables in declared.items() if entry[1] not in thresholds}
    assert documented == declared


def test_the_instrument_docstring_names_every_option():
    doc = corevital_otel.instrument.__doc__ or ""
    missing = [option for option in Options.model_fields if f"``{option}``" not in doc]
    assert missing == []
