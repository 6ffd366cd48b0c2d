"""Instrumentation options: instrument() keywords first, then COREVITAL_* variables, then defaults.

Every invalid value raises :class:`ConfigError` at instrument() time, naming the argument or variable,
so a typo never silently turns capture off in production.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

CAPTURE_MODES = ("full", "summary", "on_risk")
CONTENT_MODES = ("NO_CONTENT", "SPAN_ONLY", "EVENT_ONLY", "SPAN_AND_EVENT")
_LEGACY_CONTENT = {"TRUE": "SPAN_AND_EVENT", "FALSE": "NO_CONTENT"}
MAX_BLOCK_STEPS = 256
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """An instrumentation option has an invalid value."""


@dataclass(frozen=True)
class Options:
    """Resolved instrumentation options (see docs/configuration.md for each variable)."""

    capture_mode: str = "on_risk"
    capture_logits: bool = True
    capture_hidden_states: bool = True
    capture_attention: bool = True
    capture_prompt: bool = True
    prompt_max_tokens: int = 1024
    max_step_events: int = 32
    # KiB of attributes and events a span may carry per generated row (0: no byte budget).
    max_span_kib: int = 60
    # Steps the capture stashes before plugins compute their step series in one pass (fewer when the
    # buffers would pass their memory budget; 1 whenever something reads step values live).
    block_steps: int = 32
    load_entry_point_plugins: bool = True
    disabled_plugins: frozenset[str] = frozenset()
    plugins: tuple[Any, ...] = ()
    plugin_options: Mapping[str, Any] = field(default_factory=dict)
    on_step: Callable[..., Any] | None = None
    capture_content: str = "NO_CONTENT"
    intervene: frozenset[str] = frozenset()
    intervention_risk_threshold: float = 0.9
    # False, True (a Langfuse client from the LANGFUSE_* variables) or a Langfuse client object.
    langfuse_scores: Any = False
    # The name on spans and metric labels: a string, or a function of the model (see model_names.py).
    model_name: Any = None


def _parse_bool(variable: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{variable}={raw!r}: expected one of true/false/1/0/yes/no/on/off")


def _parse_non_negative_int(variable: str, raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{variable}={raw!r}: expected a non-negative integer") from None
    if value < 0:
        raise ConfigError(f"{variable}={raw!r}: expected a non-negative integer")
    return value


def _parse_block_steps(variable: str, raw: str) -> int:
    value = _parse_non_negative_int(variable, raw)
    if not 1 <= value <= MAX_BLOCK_STEPS:
        raise ConfigError(f"{variable}={raw!r}: expected an integer from 1 to {MAX_BLOCK_STEPS}")
    return value


def _parse_capture_mode(variable: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in CAPTURE_MODES:
        raise ConfigError(f"{variable}={raw!r}: expected one of {', '.join(CAPTURE_MODES)}")
    return value


def _parse_name_list(variable: str, raw: str) -> frozenset[str]:
    names = [part.strip() for part in raw.split(",")]
    if any(not name for name in names) and raw.strip():
        raise ConfigError(f"{variable}={raw!r}: expected comma-separated plugin names without empty entries")
    return frozenset(name for name in names if name)


# option name -> (environment variable, parser)
def _parse_policies(variable: str, raw: str) -> frozenset[str]:
    from .intervention import POLICIES

    names = _parse_name_list(variable, raw)
    unknown = sorted(names - set(POLICIES))
    if unknown:
        raise ConfigError(
            f"{variable}={raw!r}: unknown polic(ies) {', '.join(unknown)}; use {', '.join(POLICIES)}"
        )
    return names


def _parse_content_mode(variable: str, raw: str) -> str:
    mode = _LEGACY_CONTENT.get(raw.strip().upper(), raw.strip().upper())
    if mode not in CONTENT_MODES:
        raise ConfigError(f"{variable}={raw!r}: expected one of {', '.join(CONTENT_MODES)}")
    return mode


def _parse_model_name(variable: str, raw: str) -> str | None:
    return raw.strip() or None


def _parse_fraction(variable: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{variable}={raw!r}: expected a number in (0, 1]") from None
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"{variable}={raw!r}: expected a number in (0, 1]")
    return value


ENVIRONMENT_VARIABLES: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "capture_mode": ("COREVITAL_CAPTURE_MODE", _parse_capture_mode),
    "capture_logits": ("COREVITAL_CAPTURE_LOGITS", _parse_bool),
    "capture_hidden_states": ("COREVITAL_CAPTURE_HIDDEN_STATES", _parse_bool),
    "capture_attention": ("COREVITAL_CAPTURE_ATTENTION", _parse_bool),
    "capture_prompt": ("COREVITAL_CAPTURE_PROMPT", _parse_bool),
    "prompt_max_tokens": ("COREVITAL_PROMPT_MAX_TOKENS", _parse_non_negative_int),
    "max_step_events": ("COREVITAL_MAX_STEP_EVENTS", _parse_non_negative_int),
    "max_span_kib": ("COREVITAL_MAX_SPAN_KIB", _parse_non_negative_int),
    "block_steps": ("COREVITAL_BLOCK_STEPS", _parse_block_steps),
    "load_entry_point_plugins": ("COREVITAL_LOAD_PLUGINS", _parse_bool),
    "disabled_plugins": ("COREVITAL_DISABLED_PLUGINS", _parse_name_list),
    "capture_content": ("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", _parse_content_mode),
    "intervene": ("COREVITAL_INTERVENE", _parse_policies),
    "intervention_risk_threshold": ("COREVITAL_INTERVENTION_RISK_THRESHOLD", _parse_fraction),
    "langfuse_scores": ("COREVITAL_LANGFUSE_SCORES", _parse_bool),
    "model_name": ("COREVITAL_MODEL_NAME", _parse_model_name),
}

_OPTION_NAMES = {f.name for f in fields(Options)}
_BOOL_OPTIONS = {
    "capture_logits",
    "capture_hidden_states",
    "capture_attention",
    "capture_prompt",
    "load_entry_point_plugins",
}
_COUNT_OPTIONS = {"max_step_events", "prompt_max_tokens", "max_span_kib"}


def _string_items(name: str, value: Any, what: str) -> tuple[str, ...]:
    """A keyword given as a collection of strings (a plain string goes through the variable's parser)."""
    try:
        items = tuple(value)
    except TypeError:
        items = None
    if items is None or not all(isinstance(item, str) for item in items):
        raise ConfigError(f"{name}={value!r}: expected a collection of {what}")
    return items


def _validate_keyword(name: str, value: Any) -> Any:
    """Check a keyword argument; strings go through the same parser as the environment variable."""
    if name in ENVIRONMENT_VARIABLES and isinstance(value, str):
        _, parse = ENVIRONMENT_VARIABLES[name]
        return parse(name, value)
    if name == "capture_content":
        raise ConfigError(f"capture_content={value!r}: expected one of {', '.join(CONTENT_MODES)}")
    if name == "capture_mode":
        raise ConfigError(f"capture_mode={value!r}: expected one of {', '.join(CAPTURE_MODES)}")
    if name in _COUNT_OPTIONS and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ConfigError(f"{name}={value!r}: expected a non-negative integer")
    if name == "block_steps":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}={value!r}: expected an integer from 1 to {MAX_BLOCK_STEPS}")
        return _parse_block_steps(name, str(value))
    if name in _BOOL_OPTIONS and not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r}: expected True or False")
    if name == "intervene":
        return _parse_policies(name, ",".join(_string_items(name, value, "policy names")))
    if name == "intervention_risk_threshold":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}={value!r}: expected a number in (0, 1]")
        return _parse_fraction(name, str(value))
    if name == "disabled_plugins":
        return frozenset(_string_items(name, value, "plugin names"))
    if name == "plugins":
        try:
            return tuple(value)
        except TypeError:
            raise ConfigError(f"plugins={value!r}: expected a collection of plugin objects") from None
    if name == "plugin_options" and not isinstance(value, Mapping):
        raise ConfigError(f"plugin_options={value!r}: expected a mapping of plugin name to options")
    if name == "on_step" and value is not None and not callable(value):
        raise ConfigError(f"on_step={value!r}: expected a callable or None")
    if name == "model_name" and not (value is None or callable(value)):
        raise ConfigError(f"model_name={value!r}: expected a string, a function of the model, or None")
    if name == "langfuse_scores" and not (
        isinstance(value, bool) or callable(getattr(value, "create_score", None))
    ):
        raise ConfigError(f"langfuse_scores={value!r}: expected True, False or a Langfuse client")
    return value


def resolve_options(keywords: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Options:
    """Merge keyword arguments over environment variables over defaults, validating each."""
    environ = os.environ if environ is None else environ
    unknown = sorted(set(keywords) - _OPTION_NAMES)
    if unknown:
        raise ConfigError(f"unknown instrumentation option(s): {', '.join(unknown)}")
    resolved: dict[str, Any] = {}
    for name, (variable, parse) in ENVIRONMENT_VARIABLES.items():
        raw = environ.get(variable)
        if raw is not None and raw.strip() != "":
            resolved[name] = parse(variable, raw)
    for name, value in keywords.items():
        resolved[name] = _validate_keyword(name, value)
    return Options(**resolved)
