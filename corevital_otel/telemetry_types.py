"""Plain data plugins declare at instrument() time: the metrics they record, the interventions they offer."""

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


@dataclass(frozen=True)
class InterventionSignal:
    """An intervention policy a plugin offers: rows stop when its step series ``series`` reaches
    ``threshold`` (``None``: the user's ``intervention_risk_threshold``). The user turns it on by
    ``policy`` name (``instrument(intervene=[...])``)."""

    policy: str
    series: str
    threshold: float | None = 0.5

    def __post_init__(self) -> None:
        if not self.policy or "," in self.policy or self.policy != self.policy.strip():
            raise ValueError(f"intervention policy {self.policy!r} must be a plain non-empty name")
