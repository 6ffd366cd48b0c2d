"""Replaces ``GenerationMixin.generate`` with a tracing wrapper, and puts the original back exactly."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

_ORIGINAL_MARK = "__corevital_original__"


def _generation_mixin() -> type:
    from transformers.generation.utils import GenerationMixin

    return GenerationMixin


def patch_generate(run: Callable[[Any, Any, tuple, dict], Any]) -> None:
    """Route every ``generate()`` through ``run(original, model, args, kwargs)`` (idempotent)."""
    mixin = _generation_mixin()
    current = mixin.__dict__["generate"]
    original = getattr(current, _ORIGINAL_MARK, current)

    @functools.wraps(original)
    def generate(self: Any, *args: Any, **kwargs: Any) -> Any:
        return run(original, self, args, kwargs)

    setattr(generate, _ORIGINAL_MARK, original)
    mixin.generate = generate


def unpatch_generate() -> None:
    """Restore the original function object if our wrapper is still the one installed."""
    mixin = _generation_mixin()
    current = mixin.__dict__["generate"]
    original = getattr(current, _ORIGINAL_MARK, None)
    if original is not None:
        mixin.generate = original


def is_patched() -> bool:
    return hasattr(_generation_mixin().__dict__["generate"], _ORIGINAL_MARK)


def _pipeline_class() -> type | None:
    try:
        from transformers.pipelines.base import Pipeline
    except ImportError:
        return None
    return Pipeline


def patch_pipeline_init(on_pipeline: Callable[[Any], None]) -> None:
    """After a pipeline is built, call ``on_pipeline(pipeline)`` (to learn its model's tokenizer)."""
    pipeline = _pipeline_class()
    if pipeline is None or hasattr(pipeline.__dict__["__init__"], _ORIGINAL_MARK):
        return
    original = pipeline.__dict__["__init__"]

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        # Observing a pipeline must never break building it.
        with contextlib.suppress(Exception):
            on_pipeline(self)

    setattr(__init__, _ORIGINAL_MARK, original)
    pipeline.__init__ = __init__


def unpatch_pipeline_init() -> None:
    pipeline = _pipeline_class()
    if pipeline is None:
        return
    original = getattr(pipeline.__dict__["__init__"], _ORIGINAL_MARK, None)
    if original is not None:
        pipeline.__init__ = original
