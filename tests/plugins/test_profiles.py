"""Threshold profiles: one per covered family, shipped as package data, overridable per instrumentation."""

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
from analysis.helpers import make_info

from corevital_otel.families import FAMILIES
from corevital_otel.plugins._profiles import Thresholds, available_families, load_profile, thresholds_for

ROOT = Path(__file__).resolve().parents[2]


def test_every_family_has_a_profile_and_every_profile_loads():
    assert set(available_families()) == set(FAMILIES) | {"default"}
    for family in available_families():
        profile = load_profile(family)
        assert profile.family == family
        assert all(getattr(profile, f.name) is not None for f in fields(Thresholds))


def test_profiles_name_only_known_thresholds_and_extend_known_families():
    names = {f.name for f in fields(Thresholds)} - {"family"}
    folder = resources.files("corevital_otel.plugins").joinpath("profiles")
    for entry in folder.iterdir():
        data = json.loads(entry.read_text(encoding="utf-8"))
        assert set(data["thresholds"]) <= names, entry.name
        assert data.get("extends", "default") in available_families(), entry.name
        assert data["description"], entry.name
    assert set(json.loads(folder.joinpath("default.json").read_text())["thresholds"]) == names


def test_family_files_override_and_extend():
    assert load_profile("gpt2").collapse_head_fraction == 0.75
    assert load_profile("mistral").mid_layer_l2_ratio == load_profile("llama").mid_layer_l2_ratio == 12.0
    assert load_profile("qwen2").high_entropy_bits == 5.5  # its own value over llama's
    assert load_profile("unknown-family").family == "default"


def test_a_built_wheel_carries_every_profile(tmp_path):
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
    shipped = {
        name.rsplit("/", 1)[1] for name in names if name.startswith("corevital_otel/plugins/profiles/")
    }
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
