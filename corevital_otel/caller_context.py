"""Context the caller attaches to the generations it runs: RAG metadata, tags and correlation ids.

    with corevital_otel.context(user_id="u-42", session_id="s-7", tags=["beta"],
                                rag={"context_tokens": 1800, "document_ids": ["doc-3", "doc-9"]}):
        model.generate(...)

Nested contexts merge, the inner values winning. Values land on the generation spans inside the
block only (never on metrics: ids are high-cardinality). ``session.id`` and ``user.id`` are the
attributes Langfuse reads for sessions and users.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

_CURRENT: ContextVar[Mapping[str, Any]] = ContextVar("corevital_caller_context", default=MappingProxyType({}))

_RAG_KEYS = {
    "context_tokens": ("corevital.rag.context_tokens", int),
    "document_ids": ("corevital.rag.document_ids", list),
    "retriever": ("corevital.rag.retriever", str),
}


def _attributes(
    rag: Mapping[str, Any] | None,
    tags: Sequence[str] | None,
    user_id: str | None,
    session_id: str | None,
    attributes: Mapping[str, Any] | None,
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if user_id is not None:
        values["user.id"] = str(user_id)
    if session_id is not None:
        values["session.id"] = str(session_id)
    if tags is not None:
        if isinstance(tags, str):
            raise TypeError("tags must be a sequence of strings, not a string")
        values["corevital.tags"] = tuple(str(tag) for tag in tags)
    for key, value in (rag or {}).items():
        if key not in _RAG_KEYS:
            raise ValueError(f"unknown rag key {key!r}; expected one of {', '.join(sorted(_RAG_KEYS))}")
        name, kind = _RAG_KEYS[key]
        values[name] = tuple(str(item) for item in value) if kind is list else kind(value)
    for key, value in (attributes or {}).items():
        if not key.startswith("corevital.context."):
            raise ValueError(f"custom context attribute {key!r} must start with 'corevital.context.'")
        values[key] = value
    return values


@contextlib.contextmanager
def context(
    *,
    rag: Mapping[str, Any] | None = None,
    tags: Sequence[str] | None = None,
    user_id: str | None = None,
    session_id: str | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[None]:
    """Attach caller context to every generation span started inside the block (this thread/task)."""
    merged = {**_CURRENT.get(), **_attributes(rag, tags, user_id, session_id, attributes)}
    token = _CURRENT.set(merged)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current_context_attributes() -> Mapping[str, Any]:
    return _CURRENT.get()
