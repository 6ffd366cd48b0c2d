"""Replaces ``GenerationMixin.generate`` with a tracing wrapper, and puts the original back exactly."""

from __future__ import annotations

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
