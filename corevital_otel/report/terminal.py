"""Terminal building blocks: optional ANSI colour, a sparkline, and a progress line on stderr."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from typing import TextIO

BARS = "▁▂▃▄▅▆▇█"
MISSING = "—"


class Style:
    """ANSI styling that turns into plain text when colour is off."""

    _CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}

    def __init__(self, color: bool) -> None:
        self.color = color

    @classmethod
    def for_stream(cls, stream: TextIO, no_color: bool = False) -> Style:
        # https://no-color.org: NO_COLOR set to anything non-empty disables colour.
        wanted = not no_color and not os.environ.get("NO_COLOR")
        return cls(wanted and _is_tty(stream))

    def __call__(self, text: str, *styles: str) -> str:
        if not self.color or not styles or not text:
            return text
        codes = ";".join(self._CODES[name] for name in styles)
        return f"\033[{codes}m{text}\033[0m"


def plural(number: int, noun: str) -> str:
    """``1 prompt``, ``2 prompts``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def resample(values: Sequence[float | None], width: int) -> list[float | None]:
    """At most ``width`` points; each point is the max of its bucket, so a one-step spike stays visible."""
    if len(values) <= width:
        return list(values)
    points: list[float | None] = []
    for index in range(width):
        bucket = [
            v for v in values[index * len(values) // width : (index + 1) * len(values) // width] if _finite(v)
        ]
        points.append(max(bucket) if bucket else None)
    return points


def sparkline(values: Sequence[float | None], low: float, high: float) -> str:
    """One block character per value on the fixed scale ``[low, high]``; a space for a missing value."""
    span = high - low
    chars = []
    for value in values:
        if not _finite(value):
            chars.append(" ")
            continue
        fraction = 0.0 if span <= 0 else (min(max(value, low), high) - low) / span
        chars.append(BARS[min(len(BARS) - 1, int(fraction * len(BARS)))])
    return "".join(chars)


class Progress:
    """A single self-overwriting status line on a TTY; plain lines (only on ``phase``) elsewhere."""

    def __init__(self, stream: TextIO | None = None, min_interval: float = 0.1) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = _is_tty(self.stream)
        self._min_interval = min_interval
        self._last_write = 0.0
        self._phase = ""
        self._width = 0

    def phase(self, text: str) -> None:
        """A new stage of work: always shown (a new line when the stream is not a terminal)."""
        self._phase = text
        if self.live:
            self._draw(text)
        else:
            print(text, file=self.stream, flush=True)

    def detail(self, text: str) -> None:
        """Sub-progress of the current stage (e.g. a token counter): terminal only, rate-limited."""
        now = time.monotonic()
        if self.live and now - self._last_write >= self._min_interval:
            self._draw(f"{self._phase} {text}")

    def clear(self) -> None:
        if self.live and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def _draw(self, text: str) -> None:
        padding = " " * max(0, self._width - len(text))
        self.stream.write(f"\r{text}{padding}")
        self.stream.flush()
        self._width = len(text)
        self._last_write = time.monotonic()
