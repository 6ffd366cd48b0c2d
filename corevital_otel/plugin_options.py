"""``plugin_options`` checked at instrument() time against the schemas plugins declare.

A plugin declares its options in ``COREVITAL_OPTIONS``: a pydantic model read from
``plugin_options[<plugin name>]``, or a mapping of ``plugin_options`` key to model (several plugins may
read one shared key, e.g. the threshold ``profile``). An entry no plugin reads, an unknown key in an
entry, or a value its model rejects is a :class:`ConfigError` naming the plugin, the key and the allowed
keys: a typo fails at start-up instead of silently keeping a default.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from .config import ConfigError


def option_schemas(plugins: Mapping[str, Any]) -> dict[str, tuple[str, type[BaseModel]]]:
    """``plugin_options`` key -> (declaring plugin, schema), from each plugin's ``COREVITAL_OPTIONS``."""
    schemas: dict[str, tuple[str, type[BaseModel]]] = {}
    for name, plugin in plugins.items():
        declared = getattr(plugin, "COREVITAL_OPTIONS", None)
        for key, schema in (declared if isinstance(declared, Mapping) else {name: declared}).items():
            if isinstance(schema, type) and issubclass(schema, BaseModel):
                schemas.setdefault(key, (name, schema))
    return schemas


def _validate_plugin_options(key: str, value: Any, plugin: str, schema: type[BaseModel]) -> None:
    if not isinstance(value, Mapping):
        raise ConfigError(f"plugin {plugin!r}: plugin_options[{key!r}] must be a mapping, got {value!r}")
    unknown = sorted(set(value) - set(schema.model_fields))
    if unknown:
        raise ConfigError(
            f"plugin {plugin!r}: plugin_options[{key!r}]: unknown option(s) {', '.join(map(str, unknown))}; "
            f"allowed: {', '.join(schema.model_fields)}"
        )
    try:
        schema.model_validate(dict(value))
    except ValidationError as error:
        details = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in details["loc"])
        message = f"plugin {plugin!r}: plugin_options[{key!r}][{where!r}]: {details['msg']}"
        raise ConfigError(message) from None


def check_plugin_options(
    options: Mapping[str, Any], plugins: Mapping[str, Any], known_names: Iterable[str]
) -> None:
    """Every entry of ``options`` read by a plugin (``known_names`` includes disabled ones, whose options
    are no typo) and valid against its schema."""
    schemas = option_schemas(plugins)
    readers = set(schemas) | set(known_names)
    for key, value in options.items():
        if key not in readers:
            raise ConfigError(
                f"plugin_options: no plugin reads {key!r}; plugins and keys: {', '.join(sorted(readers))}"
            )
        if key in schemas:
            _validate_plugin_options(key, value, *schemas[key])
