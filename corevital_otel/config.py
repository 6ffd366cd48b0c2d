"""Instrumentation options: one pydantic schema, read from instrument() keywords, then COREVITAL_* variables,
then defaults.

Each field carries its default, its meaning and (``env``) the variable it is read from; the docs table in
docs/configuration.md is tested against this schema. Every invalid value raises :class:`ConfigError` at
instrument() time, naming the argument or variable, so a typo never silently turns capture off in
production. A string given as a keyword is read the way its variable would be.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

CAPTURE_MODES = ("full", "summary", "on_risk")
CONTENT_MODES = ("NO_CONTENT", "SPAN_ONLY", "EVENT_ONLY", "SPAN_AND_EVENT")
_LEGACY_CONTENT = {"TRUE": "SPAN_AND_EVENT", "FALSE": "NO_CONTENT"}
MAX_BLOCK_STEPS = 256
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """An instrumentation option has an invalid value."""


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE | _FALSE:
            return word in _TRUE
        raise ValueError("expected one of true/false/1/0/yes/no/on/off")
    if not isinstance(value, bool):
        raise ValueError("expected True or False")
    return value


def _count(value: Any) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError("expected a non-negative integer") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("expected a non-negative integer")
    return value


def _block_steps(value: Any) -> int:
    try:
        value = _count(value)
    except ValueError:
        value = -1
    if not 1 <= value <= MAX_BLOCK_STEPS:
        raise ValueError(f"expected an integer from 1 to {MAX_BLOCK_STEPS}")
    return value


def _capture_mode(value: Any) -> str:
    mode = value.strip().lower() if isinstance(value, str) else None
    if mode not in CAPTURE_MODES:
        raise ValueError(f"expected one of {', '.join(CAPTURE_MODES)}")
    return mode


def _content_mode(value: Any) -> str:
    raw = value.strip().upper() if isinstance(value, str) else None
    mode = _LEGACY_CONTENT.get(raw or "", raw)
    if mode not in CONTENT_MODES:
        raise ValueError(f"expected one of {', '.join(CONTENT_MODES)}")
    return mode


def _names(value: Any, what: str) -> frozenset[str]:
    """A comma-separated string (a variable's form) or a collection of strings."""
    if isinstance(value, str):
        names = [part.strip() for part in value.split(",")]
        if any(not name for name in names) and value.strip():
            raise ValueError(f"expected comma-separated {what} without empty entries")
        return frozenset(name for name in names if name)
    try:
        items = tuple(value)
    except TypeError:
        items = None
    if items is None or not all(isinstance(item, str) for item in items):
        raise ValueError(f"expected a collection of {what}")
    return frozenset(items)


def _policies(value: Any) -> frozenset[str]:
    # Which names exist is known once the plugins that offer them are loaded: instrument() checks it.
    names = _names(value, "policy names")
    if "" in names:
        raise ValueError("expected non-empty policy names")
    return names


def _fraction(value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ValueError("expected a number in (0, 1]")
    return float(value)


def _plugin_objects(value: Any) -> tuple[Any, ...]:
    try:
        return tuple(value)
    except TypeError:
        raise ValueError("expected a collection of plugin objects") from None


def _mapping(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError("expected a mapping of plugin name to options")
    return value


def _callback(value: Any) -> Callable[..., Any] | None:
    if value is not None and not callable(value):
        raise ValueError("expected a callable or None")
    return value


def _langfuse(value: Any) -> Any:
    if isinstance(value, str):
        return _flag(value)
    if not (isinstance(value, bool) or callable(getattr(value, "create_score", None))):
        raise ValueError("expected True, False or a Langfuse client")
    return value


def _model_name(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip() or None
    if not (value is None or callable(value)):
        raise ValueError("expected a string, a function of the model, or None")
    return value


def _option(default: Any, meaning: str, env: str | None = None, **extra: Any) -> Any:
    schema_extra = {"env": env} if env else {}
    return Field(default, description=meaning, json_schema_extra=schema_extra, **extra)


class Options(BaseModel):
    """Resolved instrumentation options (docs/configuration.md is checked against this schema)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    capture_mode: Annotated[str, BeforeValidator(_capture_mode)] = _option(
        "on_risk", "on_risk, full or summary detail on the span", "COREVITAL_CAPTURE_MODE"
    )
    capture_logits: Annotated[bool, BeforeValidator(_flag)] = _option(
        True, "hand each step's raw logits to plugins", "COREVITAL_CAPTURE_LOGITS"
    )
    capture_hidden_states: Annotated[bool, BeforeValidator(_flag)] = _option(
        True, "hand each step's per-layer hidden state to plugins", "COREVITAL_CAPTURE_HIDDEN_STATES"
    )
    capture_attention: Annotated[bool, BeforeValidator(_flag)] = _option(
        True, "compute each step's per-layer attention row", "COREVITAL_CAPTURE_ATTENTION"
    )
    capture_prompt: Annotated[bool, BeforeValidator(_flag)] = _option(
        True, "keep the prefill/encoder internals for prompt analysis", "COREVITAL_CAPTURE_PROMPT"
    )
    prompt_max_tokens: Annotated[int, BeforeValidator(_count)] = _option(
        1024, "longer prompts get no prompt analysis", "COREVITAL_PROMPT_MAX_TOKENS"
    )
    max_step_events: Annotated[int, BeforeValidator(_count)] = _option(
        32, "at most this many corevital.step events per span", "COREVITAL_MAX_STEP_EVENTS"
    )
    max_span_kib: Annotated[int, BeforeValidator(_count)] = _option(
        60, "KiB of span attributes and events per generated row (0: no bound)", "COREVITAL_MAX_SPAN_KIB"
    )
    # Steps the capture stashes before plugins compute their step series in one pass (fewer when the
    # buffers would pass their memory budget; 1 whenever something reads step values live).
    block_steps: Annotated[int, BeforeValidator(_block_steps)] = _option(
        32, "steps stashed before one vectorised plugin pass", "COREVITAL_BLOCK_STEPS"
    )
    builtin_plugins: Annotated[bool, BeforeValidator(_flag)] = _option(
        True, "register the built-in plugins", "COREVITAL_BUILTIN_PLUGINS"
    )
    load_entry_point_plugins: Annotated[bool, BeforeValidator(_flag)] = _option(
        True, "load third-party plugins from the corevital_otel entry-point group", "COREVITAL_LOAD_PLUGINS"
    )
    disabled_plugins: Annotated[frozenset[str], BeforeValidator(lambda v: _names(v, "plugin names"))] = (
        _option(frozenset(), "plugin names not to load", "COREVITAL_DISABLED_PLUGINS")
    )
    plugins: Annotated[tuple[Any, ...], BeforeValidator(_plugin_objects)] = _option(
        (), "extra plugin objects to register"
    )
    plugin_options: Annotated[Any, BeforeValidator(_mapping)] = _option(
        {}, "per-plugin settings, validated by each plugin's schema"
    )
    on_step: Annotated[Any, BeforeValidator(_callback)] = _option(
        None, "callable(info, step_index, values) called as each step's metrics exist"
    )
    capture_content: Annotated[str, BeforeValidator(_content_mode)] = _option(
        "NO_CONTENT", "message content on spans/events", "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
    )
    intervene: Annotated[frozenset[str], BeforeValidator(_policies)] = _option(
        frozenset(), "intervention policies the plugins offer (nan, repetition, risk)", "COREVITAL_INTERVENE"
    )
    intervention_risk_threshold: Annotated[float, BeforeValidator(_fraction)] = _option(
        0.9, "running risk at which the risk policy stops a row", "COREVITAL_INTERVENTION_RISK_THRESHOLD"
    )
    # False, True (a Langfuse client from the LANGFUSE_* variables) or a Langfuse client object.
    langfuse_scores: Annotated[Any, BeforeValidator(_langfuse)] = _option(
        False, "send risk and flags to Langfuse as scores", "COREVITAL_LANGFUSE_SCORES"
    )
    # A string, or a function of the model (see model_names.py); None: derived from name_or_path.
    model_name: Annotated[Any, BeforeValidator(_model_name)] = _option(
        None, "the model's name on spans and metric labels", "COREVITAL_MODEL_NAME"
    )


def environment_variables(schema: type[BaseModel]) -> dict[str, str]:
    """Option name -> the variable it is read from, for every field of ``schema`` that has one."""
    found = {}
    for name, field in schema.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("env"):
            found[name] = str(extra["env"])
    return found


ENVIRONMENT_VARIABLES: dict[str, str] = environment_variables(Options)


def _validated(name: str, value: Any, label: str) -> Any:
    """One option checked by the schema; ``label`` (``name=value`` or ``VARIABLE=value``) heads the error."""
    try:
        return getattr(Options.model_validate({name: value}), name)
    except ValidationError as error:
        details = error.errors(include_url=False)[0]
        reason = str(details.get("ctx", {}).get("error") or details["msg"])
        raise ConfigError(f"{label}: {reason}") from None


def resolve_options(keywords: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Options:
    """Merge keyword arguments over environment variables over defaults, validating each."""
    environ = os.environ if environ is None else environ
    unknown = sorted(set(keywords) - set(Options.model_fields))
    if unknown:
        raise ConfigError(f"unknown instrumentation option(s): {', '.join(unknown)}")
    resolved: dict[str, Any] = {}
    for name, variable in ENVIRONMENT_VARIABLES.items():
        raw = environ.get(variable)
        if raw is not None and raw.strip() != "":
            resolved[name] = _validated(name, raw, f"{variable}={raw!r}")
    for name, value in keywords.items():
        resolved[name] = _validated(name, value, f"{name}={value!r}")
    return Options.model_construct(**resolved)
