"""Family cards: one per model family (thresholds, risk scales, model types, layer layouts), shipped as
package data; a new family is one new card; thresholds overridable per instrumentation."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from dataclasses import fields
from importlib import resources
from pathlib import Path

import pytest

from corevital_otel import families
from corevital_otel.families import FAMILIES, family_names, model_family
from corevital_otel.plugins import _profiles, _scales
from corevital_otel.plugins._profiles import Thresholds, available_families, load_profile, thresholds_for
from corevital_otel.plugins._scales import FAMILY_SCALES, METRICS
from tests.analysis.helpers import make_info

ROOT = Path(__file__).resolve().parents[2]
CARD_KEYS = {"description", "extends", "model_types", "thresholds", "risk_scales", "layouts"}
THRESHOLDS = {f.name for f in fields(Thresholds)} - {"family"}


def _cards() -> dict[str, dict]:
    folder = resources.files("corevital_otel").joinpath("family_cards")
    return {
        entry.name[: -len(".json")]: json.loads(entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    }


def test_every_family_has_a_card_and_every_card_loads():
    assert set(available_families()) == set(family_names()) == set(FAMILIES) | {"default"}
    assert set(FAMILY_SCALES) == set(family_names())
    for family in available_families():
        profile = load_profile(family)
        assert profile.family == family
        assert all(getattr(profile, f.name) is not None for f in fields(Thresholds))
        assert set(FAMILY_SCALES[family]) == set(METRICS)


def test_cards_hold_only_known_sections_and_extend_known_families():
    cards = _cards()
    for name, card in cards.items():
        assert set(card) <= CARD_KEYS and card["description"], name
        assert set(card.get("thresholds", {})) <= THRESHOLDS, name
        assert card.get("extends", "default") in cards, name
        for metric, pair in card.get("risk_scales", {}).items():
            assert metric in METRICS and len(pair) == 2 and pair[0] != pair[1], (name, metric)
        for model_type, layout in card.get("layouts", {}).items():
            assert set(layout) <= {"layers", "attention"} and model_family(model_type) == name, name
    assert set(cards["default"]["thresholds"]) == THRESHOLDS
    assert set(cards["default"]["risk_scales"]) == set(METRICS)
    claimed = [model_type for card in cards.values() for model_type in card.get("model_types", ())]
    assert len(claimed) == len(set(claimed)), "a model type is claimed by two cards"


def test_model_types_map_to_their_family():
    expected = {
        "gpt2": "gpt2",
        "llama": "llama",
        "qwen2_moe": "qwen2",
        "qwen2": "qwen2",
        "mt5": "t5",
        "umt5": "t5",
        "longt5": "t5",
        "mbart": "bart",
        "phi3": "phi3",
        "mixtral": "mixtral",
        "t5gemma": "default",
        "": "default",
        "falcon": "default",
    }
    assert {model_type: model_family(model_type) for model_type in expected} == expected


def test_family_cards_override_and_extend():
    assert load_profile("gpt2").collapse_head_fraction == 0.75
    assert load_profile("mistral").mid_layer_l2_ratio == load_profile("llama").mid_layer_l2_ratio == 12.0
    assert load_profile("qwen2").high_entropy_bits == 5.5  # its own value over llama's
    assert load_profile("unknown-family").family == "default"
    assert FAMILY_SCALES["mistral"] == FAMILY_SCALES["llama"]
    assert FAMILY_SCALES["qwen2"]["entropy"].bad == 5.5  # its own scale over llama's
    assert FAMILY_SCALES["qwen2"]["margin"] == FAMILY_SCALES["llama"]["margin"]


def _clear_card_caches() -> None:
    for cached in (families.family_names, families._raw, families.family_card, families.model_family):
        cached.cache_clear()
    _profiles.load_profile.cache_clear()
    _scales.family_scales.cache_clear()


def test_a_new_family_is_one_new_card(tmp_path, monkeypatch):
    folder = tmp_path / "family_cards"
    shutil.copytree(resources.files("corevital_otel").joinpath("family_cards"), folder)
    card = {
        "description": "A test family: one file, nothing else.",
        "extends": "llama",
        "model_types": ["falcon", "falcon_mamba"],
        "thresholds": {"high_entropy_bits": 6.5},
        "risk_scales": {"entropy": [2.5, 6.5]},
        "layouts": {"falcon": {"layers": "transformer.h", "attention": "self_attention"}},
    }
    (folder / "falcon.json").write_text(json.dumps(card))
    monkeypatch.setattr(families, "_folder", lambda: folder)
    _clear_card_caches()
    try:
        assert model_family("falcon_mamba") == "falcon" and "falcon" in available_families()
        assert load_profile("falcon").high_entropy_bits == 6.5
        assert load_profile("falcon").mid_layer_l2_ratio == 12.0  # from llama
        assert _scales.family_scales("falcon")["entropy"].bad == 6.5
        assert _scales.family_scales("falcon")["margin"] == FAMILY_SCALES["llama"]["margin"]
        assert families.layout_override("falcon") == card["layouts"]["falcon"]
        assert families.layout_override("falcon_mamba") == {}
    finally:
        monkeypatch.undo()
        _clear_card_caches()


def test_a_built_wheel_carries_every_family_card(tmp_path):
    """A plain ``pip install`` gets the JSON files: build a real wheel from a copy of the project."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", ".hypothesis", "tests"
    )
    shutil.copytree(ROOT, source, ignore=ignore)
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(tmp_path),
    ]
    subprocess.run([*command, str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {name.rsplit("/", 1)[1] for name in names if name.startswith("corevital_otel/family_cards/")}
    assert shipped == {f"{family}.json" for family in available_families()}


def test_overrides_from_plugin_options():
    info = make_info(family="gpt2", profile={"high_entropy_bits": 6, "repetition_min_steps": 5})
    thresholds = thresholds_for(info)
    assert thresholds.high_entropy_bits == 6.0 and thresholds.repetition_min_steps == 5
    assert thresholds.collapse_head_fraction == 0.75  # the rest still from gpt2's profile
    assert thresholds_for(make_info(family="gpt2", profile={"family": "t5"})).family == "t5"


@pytest.mark.parametrize(
    "override",
    [
        {"high_entropy_bitz": 1.0},
        {"high_entropy_bits": "high"},
        {"repetition_min_steps": 2.5},
        {"family": "nope"},
    ],
)
def test_invalid_overrides_raise(override):
    with pytest.raises(ValueError):
        thresholds_for(make_info(profile=override))
