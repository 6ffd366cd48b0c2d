"""Model families: one card per family (``family_cards/<family>.json``), everything a family changes.

A card holds a ``description``, the transformers ``model_types`` it covers (besides ``<family>`` and
``<family>_*``), optionally the family it ``extends``, and its sections: ``thresholds`` and
``risk_scales`` (read by the built-in plugins, opaque to the core) and ``layouts`` (per-``model_type``
layer-layout overrides for capture: ``{"layers": "<dotted path to the decoder layer list>",
"attention": "<attribute of a layer holding its self-attention>"}``). A section merges key by key over
the card it extends, then over ``default.json``. Adding a family is adding one file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

DEFAULT_FAMILY = "default"
SECTIONS = ("thresholds", "risk_scales", "layouts")


@dataclass(frozen=True)
class FamilyCard:
    name: str
    description: str
    model_types: tuple[str, ...] = ()
    thresholds: dict[str, Any] = field(default_factory=dict)
    risk_scales: dict[str, list[float]] = field(default_factory=dict)
    layouts: dict[str, dict[str, str]] = field(default_factory=dict)


def _folder() -> Any:
    return resources.files(__package__).joinpath("family_cards")


@cache
def family_names() -> tuple[str, ...]:
    """Every shipped card, ``default`` included."""
    return tuple(sorted(e.name[: -len(".json")] for e in _folder().iterdir() if e.name.endswith(".json")))


@cache
def _raw(name: str) -> dict[str, Any]:
    return json.loads(_folder().joinpath(f"{name}.json").read_text(encoding="utf-8"))


@cache
def family_card(name: str) -> FamilyCard:
    """The card of ``name`` with what it extends merged in (an unknown name gives ``default``'s card)."""
    name = name if name in family_names() else DEFAULT_FAMILY
    chain, current = [], name
    while current not in (None, DEFAULT_FAMILY):
        chain.append(_raw(current))
        current = _raw(current).get("extends", DEFAULT_FAMILY)
    chain.append(_raw(DEFAULT_FAMILY))
    sections = {section: {} for section in SECTIONS}
    for card in reversed(chain):
        for section in SECTIONS:
            sections[section].update(card.get(section, {}))
    own = _raw(name)
    return FamilyCard(name, own["description"], tuple(own.get("model_types", ())), **sections)


@cache
def model_family(model_type: str) -> str:
    """The family of a transformers ``model_type``: a card naming it in ``model_types``, else the card whose
    name it is or starts with (``qwen2_moe`` -> ``qwen2``), else ``default``."""
    model_type = (model_type or "").lower()
    names = sorted(family_names(), key=len, reverse=True)
    for name in names:
        if model_type in family_card(name).model_types:
            return name
    for name in names:
        if name != DEFAULT_FAMILY and (model_type == name or model_type.startswith(name + "_")):
            return name
    return DEFAULT_FAMILY


def layout_override(model_type: str) -> dict[str, str]:
    """The layer-layout override of ``model_type`` from its family's card (empty: find the layers)."""
    return dict(family_card(model_family(model_type)).layouts.get((model_type or "").lower(), {}))


FAMILIES = tuple(name for name in family_names() if name != DEFAULT_FAMILY)
