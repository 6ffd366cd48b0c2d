"""Langfuse scores: each generation's risk and health flags, attached to its Langfuse observation.

Langfuse reads scores only from its SDK or REST API, never from span attributes, so with
``instrument(langfuse_scores=True)`` (or ``COREVITAL_LANGFUSE_SCORES=true``) this plugin hands them to the
Langfuse Python SDK (the ``langfuse`` extra), which queues them and sends them from its own background
thread to ``POST /api/public/scores``, with timeouts and retries: generate() never waits on the network.

Scores are attached to the trace and observation Langfuse builds from the generation span: its W3C trace
id and span id in lower-case hex. Spans that are not sampled get no scores (there is nothing to attach
them to). Scores sent per generation:

- ``corevital.risk.score`` (NUMERIC): the highest row risk, ``corevital.risk.max``; the comment lists that
  row's risk factors;
- ``corevital.risk.level`` (CATEGORICAL): that row's level, ``low``, ``medium`` or ``high``;
- ``corevital.health.<flag>``: every health flag on the span, BOOLEAN for yes/no flags, NUMERIC for counts
  (``high_entropy_steps``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import ConfigError
from ..hookspecs import hookimpl
from ..results import GenerationInfo, GenerationResults

RISK_SCORE = "corevital.risk.score"
RISK_LEVEL = "corevital.risk.level"
RISK_FACTORS = "corevital.risk.factors"
HEALTH_PREFIX = "corevital.health."
_KEYS = ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY")


@dataclass(frozen=True)
class Score:
    """One Langfuse score, with the arguments ``Langfuse.create_score`` takes."""

    name: str
    value: float | str
    data_type: str  # NUMERIC, BOOLEAN or CATEGORICAL
    comment: str | None = None


def _riskiest_row(risks: Any) -> int | None:
    rows = [(float(risk), row) for row, risk in enumerate(risks) if risk is not None]
    return max(rows)[1] if rows else None


def _flag_score(name: str, value: Any) -> Score | None:
    if isinstance(value, (bool, np.bool_)):
        return Score(name, float(value), "BOOLEAN")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return Score(name, float(value), "NUMERIC")
    return None  # e.g. corevital.health.profile, a string


def scores_from(attributes: Mapping[str, Any]) -> list[Score]:
    """The scores of one generation, from the attributes its plugins wrote (empty when there are none)."""
    scores: list[Score] = []
    risks = attributes.get(RISK_SCORE)
    row = None if risks is None else _riskiest_row(risks)
    if row is not None:
        factors = attributes.get(RISK_FACTORS)
        comment = f"factors: {factors[row]}" if factors is not None and factors[row] else None
        scores.append(Score(RISK_SCORE, float(risks[row]), "NUMERIC", comment))
        levels = attributes.get(RISK_LEVEL)
        if levels is not None:
            scores.append(Score(RISK_LEVEL, str(levels[row]), "CATEGORICAL"))
    for name, value in attributes.items():
        # corevital.health.<flag> only: per-row, per-layer and first-step details have a further dot.
        if name.startswith(HEALTH_PREFIX) and "." not in name[len(HEALTH_PREFIX) :]:
            score = _flag_score(name, value)
            if score is not None:
                scores.append(score)
    return scores


def client_from_option(option: Any) -> Any:
    """The Langfuse client ``langfuse_scores`` asks for: the object itself, or for ``True`` the SDK's client
    for the ``LANGFUSE_*`` variables (the application's own when it made one with the same public key)."""
    if option is not True:
        return option
    missing = [name for name in _KEYS if not os.environ.get(name)]
    if missing:
        raise ConfigError(f"langfuse_scores=True needs {' and '.join(missing)}: the Langfuse project's keys")
    try:
        from langfuse import Langfuse
    except ImportError:
        raise ConfigError(
            "langfuse_scores=True needs the Langfuse SDK: pip install 'corevital-otel[langfuse]'"
        ) from None
    # Reads LANGFUSE_PUBLIC_KEY / _SECRET_KEY / _BASE_URL (or _HOST); the SDK keeps one client per key.
    return Langfuse()


class LangfuseScores:
    """A CoreVital plugin that sends every sampled generation's scores through a Langfuse client."""

    COREVITAL_PLUGIN_NAME = "langfuse_scores"

    def __init__(self, client: Any) -> None:
        self.client = client

    @hookimpl(trylast=True)  # after every assessment, so risk and flags are final
    def corevital_explain(self, info: GenerationInfo, results: GenerationResults) -> None:
        if info.trace_id is None or info.span_id is None:
            return
        for score in scores_from(results.attributes):
            # The SDK only enqueues here; a failure raises into the plugin host, which counts and logs it.
            self.client.create_score(
                name=score.name,
                value=score.value,
                trace_id=info.trace_id,
                observation_id=info.span_id,
                data_type=score.data_type,
                comment=score.comment,
            )
