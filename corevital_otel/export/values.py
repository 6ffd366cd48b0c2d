"""Plugin values to OpenTelemetry attribute values: numpy/torch scalars and arrays to plain Python."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

OMIT = object()  # a scalar that is not a finite number: not exported at all


def _plain(value: Any) -> Any:
    """numpy/torch scalars to Python; non-finite floats to None (JSON and OTLP consumers choke on NaN)."""
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        number = float(value)
        return number if math.isfinite(number) else None
    return value


def _clean_array(array: np.ndarray) -> tuple[Any, ...]:
    """A flat tuple of Python values; non-finite floats become None (converted in C where possible)."""
    flat = array.reshape(-1)
    items = flat.tolist()
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        return tuple(item if math.isfinite(item) else None for item in items)
    if flat.dtype.kind in "biuf":
        return tuple(items)
    return tuple(_plain(item) for item in items)


def clean_attribute(value: Any) -> Any:
    """An OpenTelemetry-valid attribute value, or ``OMIT`` for a scalar that is not a finite number."""
    if isinstance(value, np.ndarray):
        return _clean_array(value)
    if isinstance(value, (str, bytes)):
        return value
    if isinstance(value, Sequence):
        # Arrays must be homogeneous: a None stands for a non-finite entry (OTLP's empty AnyValue).
        return tuple(_plain(item) for item in value)
    plain = _plain(value)
    return OMIT if plain is None else plain


def first_entry(value: Any) -> Any:
    """The single entry of a one-row value (a per-row array at batch 1), else the value unchanged."""
    if isinstance(value, np.ndarray):
        return value.reshape(-1)[0] if value.size == 1 else value
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and len(value) == 1:
        return value[0]
    return value


def clean_mapping(attributes: dict[str, Any]) -> dict[str, Any]:
    """``clean_attribute`` over a mapping, leaving out the omitted scalars."""
    cleaned = {}
    for name, value in attributes.items():
        value = clean_attribute(value)
        if value is not OMIT:
            cleaned[name] = value
    return cleaned


def encoded_size(name: str, value: Any) -> int:
    """About how many bytes an attribute takes in an OTLP protobuf (KeyValue with its AnyValue): close
    enough to keep a span inside its byte budget without encoding it."""
    return len(name) + 4 + _value_size(value)


def _value_size(value: Any) -> int:
    if isinstance(value, tuple):
        return 4 + _items_size(value)
    if isinstance(value, (str, bytes)):
        return 3 + len(value)
    if isinstance(value, bool) or value is None:
        return 4
    if isinstance(value, int):
        return 3 + max(1, (abs(value).bit_length() + 6) // 7)
    return 11  # a double


def _items_size(items: tuple) -> int:
    """``sum(_value_size(item) for item in items)``, counted per type: arrays hold one kind of value (and
    None for a non-finite entry), so step series of thousands of doubles cost no call per entry."""
    kinds = set(map(type, items))
    if kinds <= {float, type(None)}:
        missing = items.count(None)
        return 11 * (len(items) - missing) + 4 * missing
    if kinds == {bool}:
        return 4 * len(items)
    return sum(_value_size(item) for item in items)
