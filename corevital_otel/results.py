"""What plugins read and write after generation: request info, step series and results."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is only needed once there are series: not at start-up
    import numpy as np

AttributeValue = Any  # str | bool | int | float | sequences of one of those


@dataclass
class GenerationInfo:
    """Facts about one generate() call, fixed before the first forward pass.

    ``rows`` is the batch dimension the model's forward sees (batch x num_return_sequences, or
    batch x num_beams under beam search); step tensors and per-sequence values are indexed by it.
    ``state`` is scratch space: each plugin keeps its own entry, keyed by its plugin name.
    """

    model_name: str
    model_type: str
    family: str
    is_encoder_decoder: bool
    num_layers: int
    num_heads: int
    rows: int
    num_beams: int
    max_new_tokens: int | None
    capture_mode: str
    options: Mapping[str, Any]
    model: Any = None
    state: dict[str, Any] = field(default_factory=dict)
    caller: Mapping[str, Any] = field(default_factory=dict)  # attributes from corevital_otel.context()
    # Step series something reads while generating (intervention policies); None = all of them (an
    # on_step callback sees every series). Lets a plugin skip live-only work nothing consumes.
    live_series: frozenset[str] | None = frozenset()
    # The tokenizer content capture would use (generate(tokenizer=...), a streamer's, a pipeline's or a
    # registered one), or None. Plugins may decode ids to classify them; they never export the text.
    tokenizer: Any = None
    # Known once generate() returned or raised, before the summarize phase:
    finish_reasons: tuple[str, ...] = ()  # per returned sequence, as gen_ai.response.finish_reasons
    error_type: str | None = None  # fully qualified class of the exception generate() raised, if it did
    # The KV cache object generate() used (a transformers Cache), None without one; released after the
    # explain phase, so read its facts, never keep it.
    cache: Any = None
    # The generation span's W3C ids in lower-case hex (what Langfuse uses as trace and observation ids),
    # set once the span started (after corevital_generation_start); None when the span is not sampled.
    # For linking to the trace only: never put them on a metric (high cardinality).
    trace_id: str | None = None
    span_id: str | None = None

    def consumed_live(self, series: str) -> bool:
        """Whether step series ``series`` is read during generation, not only after it."""
        return self.live_series is None or series in self.live_series


@dataclass
class StepSeries:
    """Per-step values on the host after generation.

    ``arrays[name]`` has shape ``(steps, rows, ...)``; ``mask[s, r]`` is True where step ``s`` produced a
    real token for row ``r`` (False after that row finished, so padding never enters its metrics).
    ``tokens[s, r]`` is the token chosen at step ``s`` (-1 when unknown). ``step_seconds[s]`` is when step
    ``s``'s forward pass finished, in seconds since generate() started.
    """

    arrays: dict[str, np.ndarray]
    mask: np.ndarray
    tokens: np.ndarray
    step_seconds: np.ndarray

    @property
    def steps(self) -> int:
        return int(self.mask.shape[0])

    def get(self, name: str) -> np.ndarray | None:
        return self.arrays.get(name)


@dataclass
class MetricRecording:
    name: str
    value: float
    attributes: dict[str, AttributeValue]


@dataclass
class GenerationResults:
    """Everything plugins produced for one generation; the core turns it into telemetry.

    ``attributes`` become span attributes (per-sequence values are lists indexed by row). ``flagged_steps``
    maps a step index to the reasons it deserves a ``corevital.step`` event even when events are bounded.
    """

    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    flagged_steps: dict[int, list[str]] = field(default_factory=dict)
    metrics: list[MetricRecording] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    events: list[tuple[str, dict[str, AttributeValue]]] = field(default_factory=list)

    def set(self, name: str, value: AttributeValue) -> None:
        self.attributes[name] = value

    def get(self, name: str, default: Any = None) -> Any:
        return self.attributes.get(name, default)

    def flag_step(self, step: int, reason: str) -> None:
        self.flagged_steps.setdefault(int(step), []).append(reason)

    def record_metric(
        self, name: str, value: float, attributes: Mapping[str, AttributeValue] | None = None
    ) -> None:
        """Record one value on a metric the plugin declared; the core adds model/provider attributes."""
        self.metrics.append(MetricRecording(name, float(value), dict(attributes or {})))

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        """Ask for a span event (e.g. ``corevital.drift``); the core adds it within the span's event limit,
        before the ``corevital.step`` events, in every capture mode. Document its name and attributes."""
        self.events.append((name, dict(attributes or {})))

    def note_lost(self, what: str) -> None:
        """Say what could not be captured or computed; it is exported as ``corevital.capture.lost``."""
        if what not in self.lost:
            self.lost.append(what)
