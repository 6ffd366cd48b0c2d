"""Per-model-family thresholds, shipped as JSON package data (``profiles/<family>.json``).

``default.json`` holds every threshold; a family file overrides some of them and may ``extend`` another
family. A caller overrides values per instrumentation with
``instrument(plugin_options={"profile": {"high_entropy_bits": 5.0, "family": "llama"}})``; an unknown
name or a non-numeric value raises, so a typo never silently keeps the default.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from functools import cache
from importlib import resources
from typing import Any

from corevital_otel import GenerationInfo

OPTIONS_KEY = "profile"
DEFAULT_FAMILY = "default"


@dataclass(frozen=True)
class Thresholds:
    """Every tunable the built-in plugins use; ``family`` names the profile the values came from."""

    family: str
    collapse_normalized_entropy: float  # a head whose entropy / log(keys) is below this is collapsed
    focus_max_weight: float  # a head whose largest weight is above this is focused
    collapse_head_fraction: float  # a layer collapses when at least this share of its heads does
    high_entropy_bits: float  # a step whose raw next-token entropy is above this is high-entropy
    # high_entropy_steps fires (and is counted) only when at least this share of a row's steps is
    # high-entropy: a few uncertain steps (a name, a number) are normal in any healthy text.
    high_entropy_min_fraction: float
    repetition_similarity: float  # last-layer cosine at which two steps count as the same state
    repetition_min_steps: int  # consecutive similar steps (at one lag) that make a state loop
    repetition_max_period: int  # longest loop period looked for, in tokens (also the state buffer size)
    token_loop_min_repeats: int  # a literal loop repeats its period at least this many times ...
    token_loop_min_tokens: int  # ... and spans at least this many tokens
    mid_layer_l2_ratio: float  # middle-layer L2 above this multiple of the early layers' mean explodes
    prompt_sparse_threshold: float  # prompt attention weights above this are kept (full capture)
    prompt_sparse_max_per_head: int  # at most this many (the largest) per prompt, layer and head


_INTEGER_FIELDS = {f.name for f in fields(Thresholds) if f.type == "int"}
_NUMERIC_FIELDS = {f.name for f in fields(Thresholds)} - {"family"}


def _profile_file(family: str) -> dict[str, Any]:
    path = resources.files(__package__).joinpath("profiles", f"{family}.json")
    return json.loads(path.read_text(encoding="utf-8"))


def available_families() -> list[str]:
    folder = resources.files(__package__).joinpath("profiles")
    return sorted(entry.name[: -len(".json")] for entry in folder.iterdir() if entry.name.endswith(".json"))


def _coerce(name: str, value: Any) -> float | int:
    if name not in _NUMERIC_FIELDS:
        raise ValueError(f"unknown corevital threshold {name!r}; known: {', '.join(sorted(_NUMERIC_FIELDS))}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"corevital threshold {name}={value!r}: expected a number")
    if name in _INTEGER_FIELDS:
        if int(value) != value or value < 1:
            raise ValueError(f"corevital threshold {name}={value!r}: expected a positive integer")
        return int(value)
    return float(value)


@cache
def load_profile(family: str) -> Thresholds:
    """The thresholds of ``family`` (its file over the files it extends over ``default.json``)."""
    chain: list[dict[str, Any]] = []
    name: str | None = family if family in available_families() else DEFAULT_FAMILY
    resolved = name
    while name is not None and name != DEFAULT_FAMILY:
        profile = _profile_file(name)
        chain.append(profile)
        name = profile.get("extends")
    values: dict[str, Any] = dict(_profile_file(DEFAULT_FAMILY)["thresholds"])
    for profile in reversed(chain):
        values.update(profile.get("thresholds", {}))
    return Thresholds(family=str(resolved), **{key: _coerce(key, value) for key, value in values.items()})


def thresholds_for(info: GenerationInfo) -> Thresholds:
    """The profile of the model's family with the caller's ``plugin_options["profile"]`` applied."""
    overrides: Mapping[str, Any] = info.options.get(OPTIONS_KEY) or {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"plugin_options[{OPTIONS_KEY!r}] must be a mapping, got {type(overrides).__name__}")
    family = str(overrides.get("family", info.family))
    if "family" in overrides and family not in available_families():
        raise ValueError(f"no corevital profile for family {family!r}; shipped: {available_families()}")
    changes = {key: _coerce(key, value) for key, value in overrides.items() if key != "family"}
    return replace(load_profile(family), **changes)
