"""What plugins read and write after generation: request info, step series and results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


SEVERITY_LEVELS = ("WARNING", "ERROR")  # least to most severe


def row_values(value: Any) -> list[Any]:
    """A per-row attribute as a list of its rows' values, whether it was read from a span (a plain value
    at one row, a tuple otherwise) or from ``GenerationResults`` (a list or array); [] when absent."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        return [value]
    return list(value)


@dataclass(frozen=True)
class Severity:
    level: str
    message: str


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
    # How each attribute is exported (see set()): names of per-row values, of detail values, and of values
    # kept in the default span although named like detail.
    per_row: set[str] = field(default_factory=set)
    rows_only: set[str] = field(default_factory=set)
    detail: dict[str, bool] = field(default_factory=dict)
    important: set[str] = field(default_factory=set)
    # Why a plugin asked for full detail (capture mode ``on_risk``), and the most severe level it reported.
    escalations: list[str] = field(default_factory=list)
    severity: Severity | None = None

    def set(
        self, name: str, value: AttributeValue, *, detail: bool | None = None, important: bool = False
    ) -> None:
        """Set span attribute ``name``. ``detail=True`` exports it only with full detail (capture mode
        ``full``, or ``on_risk`` once escalated); ``False`` in every mode; ``None`` by its name: the
        ``corevital.layers.*`` and ``corevital.prompt.positions.*`` families are detail. ``important``
        values (flags, risk) are the last plugin values left out when a span is over its budget."""
        self.attributes[name] = value
        self.per_row.discard(name)
        self.rows_only.discard(name)
        if detail is None:
            self.detail.pop(name, None)
        else:
            self.detail[name] = detail
        if important:
            self.important.add(name)
        else:
            self.important.discard(name)

    def set_rows(
        self,
        name: str,
        values: Sequence[Any] | np.ndarray,
        *,
        detail: bool | None = None,
        important: bool = False,
        rows_only: bool = False,
    ) -> None:
        """Set a per-row value (one entry per ``info.rows``): exported as a plain value when the generation
        has one row, as an array indexed by row otherwise. ``rows_only``: not exported at all with one row
        (a generation-level attribute already says the same); other plugins still read it."""
        self.set(name, values, detail=detail, important=important)
        self.per_row.add(name)
        if rows_only:
            self.rows_only.add(name)

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

    def escalate(self, reason: str) -> None:
        """Ask for full detail on this generation's span (capture mode ``on_risk``); ``reason`` is exported
        in ``corevital.capture.escalated``."""
        if reason not in self.escalations:
            self.escalations.append(reason)

    def report_severity(self, level: str, message: str) -> None:
        """Say how bad this generation looks: ``WARNING`` or ``ERROR``, with a one-sentence ``message``.
        Backends that show a level get the most severe one reported (Langfuse's observation level)."""
        if level not in SEVERITY_LEVELS:
            raise ValueError(f"severity level {level!r}: expected one of {', '.join(SEVERITY_LEVELS)}")
        if self.severity is None or SEVERITY_LEVELS.index(level) > SEVERITY_LEVELS.index(self.severity.level):
            self.severity = Severity(level, message)

    def note_lost(self, what: str) -> None:
        """Say what could not be captured or computed; it is exported as ``corevital.capture.lost``."""
        if what not in self.lost:
            self.lost.append(what)
