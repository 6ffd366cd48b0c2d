"""Fingerprint: a fixed-length run-summary vector per row, and a salted hash of the prompt.

The vector (version ``VERSION``; docs/risk.md documents it element by element) lets runs be clustered and
compared offline. A value that is unknown (its plugin is off) is NaN, exported as ``null``.

The prompt hash is HMAC-SHA256, keyed by a salt, over the model id and the prompt's token ids with
padding removed (the only normalisation: the text itself never reaches plugins). The salt comes from
``plugin_options={"fingerprint": {"salt": "..."}}``, else ``COREVITAL_PROMPT_HASH_SALT``; without
either, a random salt is drawn once per process, so hashes are comparable within that process only
(``corevital.prompt.hash_scope`` says which). The token ids are never exported.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading

import numpy as np

from corevital_otel import GenerationInfo, GenerationResults, PromptCapture, StepSeries, hookimpl
from corevital_otel.plugins import _inputs, _options, _trends
from corevital_otel.plugins._scales import resolve

COREVITAL_PLUGIN_NAME = "fingerprint"
VERSION = 1
SALT_VARIABLE = "COREVITAL_PROMPT_HASH_SALT"
ELEMENTS = (
    "risk_score",
    "entropy_mean",
    "entropy_max",
    "entropy_std",
    "high_entropy_fraction",
    "margin_mean",
    "topk_mass_mean",
    "surprisal_mean",
    "entropy_slope",
    "failure_risk",
    "nan",
    "inf",
    "repetition_loop",
    "mid_layer_anomaly",
    "attention_collapse",
    "compound_signal_count",
    "steps",
)

_process_salt: bytes | None = None
_salt_lock = threading.Lock()


def _salt(info: GenerationInfo) -> tuple[bytes, str]:
    """(salt, scope): ``deployment`` for a configured salt, ``process`` for the random fallback."""
    global _process_salt
    configured = _options.settings(info.options, COREVITAL_PLUGIN_NAME).get("salt")
    configured = configured or os.environ.get(SALT_VARIABLE)
    if configured:
        return str(configured).encode("utf-8"), "deployment"
    with _salt_lock:
        if _process_salt is None:
            _process_salt = secrets.token_bytes(32)
        return _process_salt, "process"


def prompt_hash(token_ids: np.ndarray, model: str, salt: bytes) -> str:
    """Hex HMAC-SHA256 of the model id and the (already unpadded) token ids."""
    message = model.encode("utf-8") + b"\x00" + np.asarray(token_ids, dtype="<i8").tobytes()
    return hmac.new(salt, message, hashlib.sha256).hexdigest()


def unpadded(input_ids: np.ndarray, attention_mask: np.ndarray | None) -> list[np.ndarray]:
    """Each batch row's token ids without its padding positions."""
    if attention_mask is None:
        return [row for row in input_ids]
    return [row[mask.astype(bool)] for row, mask in zip(input_ids, attention_mask, strict=True)]


@hookimpl
def corevital_prompt(info: GenerationInfo, prompt: PromptCapture) -> None:
    # Keep references only; the ids are copied to the host after generation (no sync while decoding).
    info.state[COREVITAL_PLUGIN_NAME] = (prompt.input_ids, prompt.attention_mask)


def _prompt_hashes(info: GenerationInfo, rows: int) -> tuple[list[str], str] | None:
    kept = info.state.get(COREVITAL_PLUGIN_NAME)
    if not kept or kept[0] is None:
        return None
    input_ids, attention_mask = kept
    ids = input_ids.detach().cpu().numpy()
    mask = attention_mask.detach().cpu().numpy() if attention_mask is not None else None
    salt, scope = _salt(info)
    hashes = [prompt_hash(row, info.model_name, salt) for row in unpadded(ids, mask)]
    if not hashes:
        return None
    fanout = max(rows // len(hashes), 1)  # num_return_sequences / beams repeat each prompt
    return [hashes[min(row // fanout, len(hashes) - 1)] for row in range(rows)], scope


def _value(results: GenerationResults, name: str, row: int) -> float:
    values = results.get(name)
    if isinstance(values, (list, tuple)) and row < len(values) and values[row] is not None:
        return float(values[row])
    return float("nan")


def vector(
    info: GenerationInfo, series: StepSeries, results: GenerationResults, flags: _inputs.Flags, row: int
) -> list[float]:
    entropy = _inputs.row_series(series, _inputs.ENTROPY, row)
    entropy = np.empty(0) if entropy is None else entropy
    finite = entropy[np.isfinite(entropy)]

    def mean_of(name: str) -> float:
        values = _inputs.row_series(series, name, row)
        return float("nan") if values is None else _trends.mean(values)

    compound = results.get("corevital.compound.signals")
    signals = compound[row] if isinstance(compound, (list, tuple)) and row < len(compound) else None
    # The attribute is absent when no row showed a signal.
    signal_count = float(len([s for s in signals.split(",") if s])) if isinstance(signals, str) else 0.0
    high = resolve(info).entropy_high
    elements = {
        "risk_score": _value(results, "corevital.risk.score", row),
        "entropy_mean": float(finite.mean()) if finite.size else float("nan"),
        "entropy_max": float(finite.max()) if finite.size else float("nan"),
        "entropy_std": float(finite.std()) if finite.size else float("nan"),
        "high_entropy_fraction": float((finite >= high).mean()) if finite.size else float("nan"),
        "margin_mean": mean_of(_inputs.MARGIN),
        "topk_mass_mean": mean_of(_inputs.TOPK_MASS),
        "surprisal_mean": mean_of(_inputs.SURPRISAL),
        "entropy_slope": _trends.slope(entropy),
        "failure_risk": _value(results, "corevital.warning.failure_risk", row),
        **{name: float(bool(getattr(flags, name))) for name in _inputs.FLAG_NAMES},
        "compound_signal_count": signal_count,
        "steps": float(_inputs.row_lengths(series)[row]) if row < series.mask.shape[1] else 0.0,
    }
    return [elements[name] for name in ELEMENTS]


@hookimpl
def corevital_explain(info: GenerationInfo, series: StepSeries, results: GenerationResults) -> None:
    row_flags = _inputs.flags(info, series, results)
    rows = len(row_flags)
    if rows:
        vectors = [vector(info, series, results, row_flags[row], row) for row in range(rows)]
        results.set("corevital.fingerprint.vector", np.asarray(vectors, dtype=np.float64).reshape(-1))
        results.set("corevital.fingerprint.version", VERSION)
    hashed = _prompt_hashes(info, rows or info.rows)
    if hashed is not None:
        results.set_rows("corevital.prompt.hash", hashed[0])
        results.set("corevital.prompt.hash_scope", hashed[1])
