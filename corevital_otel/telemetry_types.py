"""Plain-data description of a metric instrument, declared by plugins and created by the core."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricKind = Literal["histogram", "counter", "up_down_counter"]


@dataclass(frozen=True)
class MetricSpec:
    """One OTLP metric a plugin records.

    ``name`` should start with ``corevital.``; ``unit`` follows UCUM (``bit``, ``s``, ``1``, ``{token}``);
    ``buckets`` sets explicit histogram bucket boundaries (ignored for counters).
    """

    name: str
    unit: str
    kind: MetricKind
    description: str
    buckets: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("histogram", "counter", "up_down_counter"):
            raise ValueError(f"metric {self.name!r}: unknown kind {self.kind!r}")
        if not self.name or " " in self.name:
            raise ValueError(f"metric name {self.name!r} must be a non-empty dotted name")
