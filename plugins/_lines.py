"""Where each generated row's first line ends: the tokenizer's newline-bearing token ids.

A row's first line is its tokens up to and including the first one whose text contains a newline. Only a
tokenizer knows which ids those are; finding them decodes the whole vocabulary once (about 6 µs a token:
~1 s for a 150k vocabulary), so the ids are cached per tokenizer, weakly (a tokenizer that goes away
takes its entry with it), and found again only when the vocabulary grew (``add_tokens``).
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

_cache: weakref.WeakKeyDictionary[Any, tuple[int, np.ndarray]] = weakref.WeakKeyDictionary()


def _vocabulary_size(tokenizer: Any) -> int:
    try:
        return int(len(tokenizer))
    except TypeError:  # no __len__: the base vocabulary
        return int(tokenizer.vocab_size)


def _find(tokenizer: Any, size: int) -> np.ndarray:
    return np.array([i for i in range(size) if "\n" in str(tokenizer.decode([i]))], dtype=np.int64)


def newline_ids(tokenizer: Any) -> np.ndarray:
    """Sorted ids whose decoded text contains a newline (cached per tokenizer and vocabulary size)."""
    size = _vocabulary_size(tokenizer)
    try:
        cached = _cache.get(tokenizer)
    except TypeError:  # not weak-referenceable: found on every call
        return _find(tokenizer, size)
    if cached is not None and cached[0] == size:
        return cached[1]
    ids = _find(tokenizer, size)
    _cache[tokenizer] = (size, ids)
    return ids


def first_line_steps(tokens: np.ndarray, newlines: np.ndarray) -> int | None:
    """Steps of the first line (up to and including the first newline-bearing token), None if no token
    of ``tokens`` (one row's, over its real steps; -1 = unknown) ends a line."""
    hits = np.flatnonzero(np.isin(np.asarray(tokens, dtype=np.int64), newlines))
    return int(hits[0]) + 1 if hits.size else None
