"""Fingerprint vector layout and the salted, padding-insensitive prompt hash."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corevital_otel.plugins import fingerprint

from .helpers import make_info, make_series, results_with


class _Prompt:
    def __init__(self, input_ids, attention_mask=None):
        self.input_ids, self.attention_mask = input_ids, attention_mask


def _hashes(info, prompt, rows):
    fingerprint.corevital_prompt(info, prompt)
    series = make_series(logits__entropy=np.full((3, rows), 2.0))
    results = results_with()
    fingerprint.corevital_explain(info, series, results)
    return results


def test_padding_is_removed_before_hashing_and_rows_follow_their_prompt():
    ids = torch.tensor([[0, 0, 5, 6, 7], [5, 6, 7, 8, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    info = make_info(rows=4, fingerprint={"salt": "s1"})  # num_return_sequences=2
    hashes = _hashes(info, _Prompt(ids, mask), rows=4).get("corevital.prompt.hash")
    unpadded = _hashes(make_info(rows=1, fingerprint={"salt": "s1"}), _Prompt(torch.tensor([[5, 6, 7]])), 1)
    assert hashes[0] == hashes[1] == unpadded.get("corevital.prompt.hash")[0]
    assert hashes[2] == hashes[3] != hashes[0]
    assert len(hashes[0]) == 64


def test_the_salt_and_the_model_change_the_hash():
    ids = np.array([5, 6, 7])
    assert fingerprint.prompt_hash(ids, "m", b"a") != fingerprint.prompt_hash(ids, "m", b"b")
    assert fingerprint.prompt_hash(ids, "m", b"a") != fingerprint.prompt_hash(ids, "n", b"a")
    assert fingerprint.prompt_hash(ids, "m", b"a") == fingerprint.prompt_hash(ids.astype(np.int32), "m", b"a")


def test_salt_from_options_environment_or_process(monkeypatch):
    ids = torch.tensor([[5, 6, 7]])
    configured = _hashes(make_info(fingerprint={"salt": "x"}), _Prompt(ids), 1)
    assert configured.get("corevital.prompt.hash_scope") == "deployment"
    monkeypatch.setenv(fingerprint.SALT_VARIABLE, "x")
    from_env = _hashes(make_info(), _Prompt(ids), 1)
    assert from_env.get("corevital.prompt.hash") == configured.get("corevital.prompt.hash")
    monkeypatch.delenv(fingerprint.SALT_VARIABLE)
    first = _hashes(make_info(), _Prompt(ids), 1)
    second = _hashes(make_info(), _Prompt(ids), 1)
    assert first.get("corevital.prompt.hash_scope") == "process"
    assert first.get("corevital.prompt.hash") == second.get("corevital.prompt.hash")  # same process
    assert first.get("corevital.prompt.hash") != configured.get("corevital.prompt.hash")


def test_vector_has_the_documented_layout():
    entropy = np.array([[1.0, 2.0], [3.0, np.nan], [5.0, 6.0]])
    series = make_series(lengths=[3, 1], logits__entropy=entropy)
    results = results_with(
        corevital__risk__score=[0.25, 1.0],
        corevital__warning__failure_risk=[0.1, 1.0],
        corevital__compound__signals=["a,b", ""],
        corevital__health__per_row__nan_detected=np.array([False, True]),
    )
    fingerprint.corevital_explain(make_info(rows=2), series, results)
    assert results.get("corevital.fingerprint.version") == fingerprint.VERSION
    vectors = np.asarray(results.get("corevital.fingerprint.vector")).reshape(2, len(fingerprint.ELEMENTS))
    first = dict(zip(fingerprint.ELEMENTS, vectors[0], strict=True))
    second = dict(zip(fingerprint.ELEMENTS, vectors[1], strict=True))
    assert first["risk_score"] == 0.25 and first["entropy_mean"] == 3.0 and first["entropy_max"] == 5.0
    assert first["high_entropy_fraction"] == pytest.approx(1 / 3)  # default profile: 4.0 bits
    assert first["entropy_slope"] == pytest.approx(2.0) and first["compound_signal_count"] == 2.0
    assert first["steps"] == 3.0 and first["nan"] == 0.0
    assert second["nan"] == 1.0 and second["steps"] == 1.0 and second["compound_signal_count"] == 0.0
    assert np.isnan(second["entropy_slope"]) and np.isnan(first["margin_mean"])  # unknown stays NaN


def test_without_prompt_no_hash_but_still_a_vector():
    results = results_with()
    fingerprint.corevital_explain(make_info(), make_series(logits__entropy=np.ones(2)), results)
    assert "corevital.prompt.hash" not in results.attributes
    assert len(results.get("corevital.fingerprint.vector")) == len(fingerprint.ELEMENTS)
