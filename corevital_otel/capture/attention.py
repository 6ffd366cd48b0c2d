"""Attention rows of the newest query, computed beside the model's own attention implementation.

transformers models fetch their attention function at call time with
``AttentionInterface.get_interface(name, eager_default)``. We patch that one method: when the calling
thread has no active capture it returns exactly what it returned before; when it has one, it returns a
thin wrapper that hands query/key/mask to the capture session and then calls the real function (sdpa,
flash, flex, eager or a user registration). The model keeps its kernel and its outputs are untouched.
What the session does with query and key (stash the new query row, score it later) is its business; the
maths lives in ``attention_math``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from .active import ACTIVE_CAPTURE

_ORIGINAL_MARK = "__corevital_original__"


def _observed_attention(
    session: Any, function: Callable[..., Any], module, query, key, value, attention_mask, *args, **kwargs
):
    session.observe_attention(module, query, key, attention_mask, kwargs)
    return function(module, query, key, value, attention_mask, *args, **kwargs)


def _attention_interface() -> type | None:
    try:
        from transformers.modeling_utils import AttentionInterface
    except ImportError:  # a transformers without the registry: attention capture is unavailable
        return None
    return AttentionInterface


def install_attention_capture() -> None:
    """Patch ``AttentionInterface.get_interface`` (idempotent)."""
    interface = _attention_interface()
    if interface is None or hasattr(interface.get_interface, _ORIGINAL_MARK):
        return
    original = interface.get_interface

    @functools.wraps(original)
    def get_interface(self: Any, attn_implementation: str, default: Callable[..., Any]) -> Callable[..., Any]:
        function = original(self, attn_implementation, default)
        session = ACTIVE_CAPTURE.get()
        if session is None:
            return function
        return functools.partial(_observed_attention, session, function)

    setattr(get_interface, _ORIGINAL_MARK, original)
    interface.get_interface = get_interface


def uninstall_attention_capture() -> None:
    """Restore the original ``get_interface`` if our patch is the one installed."""
    interface = _attention_interface()
    if interface is None:
        return
    original = getattr(interface.get_interface, _ORIGINAL_MARK, None)
    if original is not None:
        interface.get_interface = original


def attention_capture_installed() -> bool:
    interface = _attention_interface()
    return interface is not None and hasattr(interface.get_interface, _ORIGINAL_MARK)
