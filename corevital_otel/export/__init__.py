"""The export wing: everything that turns one generation into OpenTelemetry data lives here.

Where to add an exporter-facing attribute:

- a request or response fact every generation has (GenAI conventions): ``span.py``;
- a value a metric plugin computes: nowhere here, the plugin sets it on ``GenerationResults``
  (``set``/``set_rows``) and documents it in docs/telemetry.md;
- how much of it reaches the span in each capture mode (detail, per-row values, step series resolution,
  step events, the size budget): ``budget.py`` and ``events.py``;
- a metric point of the core (GenAI client metrics, error counters): ``metrics.py``.

``generation.py`` only orchestrates: it hands this wing the request, the completion, the series and the
plugins' results, and calls ``write_span`` and ``record_metrics`` once per generation.
"""

from .metrics import record_metrics
from .span import decode_timing, request_attributes, span_name, write_span

__all__ = ["decode_timing", "record_metrics", "request_attributes", "span_name", "write_span"]
