"""Per-model-family thresholds: the ``thresholds`` section of each family card
(``corevital_otel/family_cards/<family>.json``, read through ``corevital_otel.family_card``).

``default.json`` holds every threshold; a family card overrides some of them and may ``extend`` another
family. A caller overrides values per instrumentation with
``instrument(plugin_options={"profile": {"high_entropy_bits": 5.0, "family": "llama"}})``; an unknown
name or a non-numeric value raises, so a typo never silently keeps the default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from functools import cache
from typing import Any

from pydantic import create_model

from corevital_otel import GenerationInfo, family_card, family_names
from corevital_otel.plugins._options import PluginOptions, option

PROFILE_KEY = "profile"
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


# ``plugin_options["profile"]``: another family's profile and/or single thresholds.
ProfileOptions = create_model(
    "ProfileOptions",
    __base__=PluginOptions,
    family=(Any, option(None, "judge against this family's profile instead of the model's")),
    **{name: (Any, option(None, "override this threshold")) for name in sorted(_NUMERIC_FIELDS)},
)


def available_families() -> list[str]:
    """Every shipped family card, ``default`` included."""
    return list(family_names())


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
    """The thresholds of ``family`` (its card over the cards it extends over ``default.json``)."""
    card = family_card(family)
    values = {key: _coerce(key, value) for key, value in card.thresholds.items()}
    return Thresholds(family=card.name, **values)


def thresholds_for(info: GenerationInfo) -> Thresholds:
    """The profile of the model's family with the caller's ``plugin_options["profile"]`` applied."""
    overrides: Mapping[str, Any] = info.options.get(PROFILE_KEY) or {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"plugin_options[{PROFILE_KEY!r}] must be a mapping, got {type(overrides).__name__}")
    family = str(overrides.get("family", info.family))
    if "family" in overrides and family not in available_families():
        raise ValueError(f"no corevital profile for family {family!r}; shipped: {available_families()}")
    changes = {key: _coerce(key, value) for key, value in overrides.items() if key != "family"}
    return replace(load_profile(family), **changes)
