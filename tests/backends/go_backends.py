"""Where scripts/build_go_backends.sh puts the Go-built backends: one folder per version under
``$COREVITAL_BACKENDS_DIR`` (default ``~/.cache/corevital-otel/backends``), outside the checkout so that a
fresh clone reuses them. A failed build leaves ``BUILD-FAILED`` there, whose text becomes the skip reason."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .repo import COLLECTOR_MANIFEST, ROOT

BACKENDS_ENV = ROOT / "scripts" / "backends.env"


def backends_dir() -> Path:
    default = Path.home() / ".cache" / "corevital-otel" / "backends"
    return Path(os.environ.get("COREVITAL_BACKENDS_DIR") or default)


@dataclass(frozen=True)
class Built:
    path: Path | None  # the executable, when it was built
    problem: str  # why not, when it was not


def collector_version() -> str:
    """dist.version, and a hash of the manifest's non-comment lines (as the build script computes it)."""
    text = COLLECTOR_MANIFEST.read_text()
    version = yaml.safe_load(text)["dist"]["version"]
    lines = "".join(line for line in text.splitlines(keepends=True) if not line.lstrip().startswith("#"))
    return f"{version}-{hashlib.sha256(lines.encode()).hexdigest()[:12]}"


def jaeger_version() -> str:
    match = re.search(r"^JAEGER_VERSION=(\S+)$", BACKENDS_ENV.read_text(), re.MULTILINE)
    assert match, f"{BACKENDS_ENV} names no JAEGER_VERSION"
    return match.group(1)


def _built(name: str, version: str, binary: str) -> Built:
    folder = backends_dir() / f"{name}-{version}"
    path = folder / binary
    if path.is_file() and os.access(path, os.X_OK):
        return Built(path, "")
    failed = folder / "BUILD-FAILED"
    if failed.is_file():
        return Built(None, f"the {name} {version} build failed ({failed}):\n{failed.read_text()[-2000:]}")
    return Built(None, f"{path} not built: run scripts/install_backends.sh")


def collector() -> Built:
    return _built("otelcol-corevital", collector_version(), "otelcol-corevital")


def jaeger() -> Built:
    return _built("jaeger", jaeger_version(), "jaeger")
