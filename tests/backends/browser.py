"""Headless Chromium screenshots of a page served on loopback (Debian's ``chromium``).

Nothing leaves the machine: the host resolver maps every name but 127.0.0.1 to nowhere, and background
networking, component updates, sync and QUIC are off; each run gets a fresh profile directory.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(url: str, out: Path, width: int = 1600, height: int = 1000, wait_ms: int = 15000) -> Path:
    """Render ``url`` and write a PNG to ``out``; ``wait_ms`` of virtual time lets a script-built page
    (a React app polling its API) settle first. Raises RuntimeError when no image came out."""
    binary = chromium()
    if binary is None:
        raise RuntimeError("no chromium binary (scripts/install_backends.sh installs Debian's)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="corevital-chromium-") as profile:
        done = subprocess.run(
            [
                binary,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--virtual-time-budget={wait_ms}",
                f"--screenshot={out}",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    if not out.is_file() or not out.read_bytes().startswith(PNG_SIGNATURE):
        raise RuntimeError(f"chromium wrote no PNG for {url} (exit {done.returncode}): {done.stderr[-2000:]}")
    return out


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG header."""
    header = path.read_bytes()[:24]
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
