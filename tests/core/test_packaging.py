"""What a wheel ships: every folder of the package that holds code or data is listed in pyproject.toml's
packages (setuptools installs only those; an editable install would hide a missing one)."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def test_every_package_folder_is_listed():
    listed = set(_setuptools()["packages"])
    folders = {
        path.parent for path in (ROOT / "corevital_otel").rglob("*") if path.suffix in (".py", ".json")
    }
    package = ROOT / "corevital_otel"
    names = {".".join(("corevital_otel", *folder.relative_to(package).parts)) for folder in folders}
    assert names - listed == set()


def test_the_family_cards_ship_as_package_data():
    data = _setuptools()["package-data"]["corevital_otel.family_cards"]
    cards = sorted(path.name for path in (ROOT / "corevital_otel" / "family_cards").glob("*.json"))
    assert data == ["*.json"] and "default.json" in cards
