"""Settings of the built-in plugins from ``plugin_options``: one pydantic schema beside each plugin.

A plugin module names its schema in ``COREVITAL_OPTIONS`` (a :class:`PluginOptions` subclass read from
``plugin_options[<plugin name>]``, or a mapping of ``plugin_options`` key to schema). The core validates
every given entry against it at instrument() time, refusing unknown keys with the plugin, the key and the
allowed keys; docs/configuration.md is tested against the schemas. Values keep being checked where they
are used, so a plugin that raises there fails its hook, reported on the span and on
``corevital.plugin.errors``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PluginOptions(BaseModel):
    """A plugin's options: every key it reads, with its default and meaning; any other key is refused."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)


def option(default: Any, meaning: str, env: str | None = None) -> Any:
    """A field of a plugin's schema; ``env`` names the variable the plugin falls back to."""
    return Field(default, description=meaning, json_schema_extra={"env": env} if env else {})


def schema_of(plugin: str) -> type[PluginOptions]:
    """The schema the built-in plugin module ``plugin`` declares for its own key."""
    declared = importlib.import_module(f"{__package__}.{plugin}").COREVITAL_OPTIONS
    return declared[plugin] if isinstance(declared, Mapping) else declared


def settings(
    options: Mapping[str, Any], plugin: str, schema: type[PluginOptions] | None = None
) -> Mapping[str, Any]:
    """``options[plugin]`` checked against that plugin's schema (``schema``, else the one its module
    declares); empty when not given."""
    schema = schema_of(plugin) if schema is None else schema
    value = options.get(plugin) or {}
    if not isinstance(value, Mapping):
        raise TypeError(f"plugin_options[{plugin!r}] must be a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - set(schema.model_fields))
    if unknown:
        known = ", ".join(schema.model_fields)
        raise ValueError(
            f"plugin_options[{plugin!r}]: unknown option(s) {', '.join(unknown)}; known: {known}"
        )
    return value
