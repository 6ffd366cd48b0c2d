"""Attention rows of the newest query, computed beside the model's own attention implementation.

transformers models fetch their attention function at call time with
``AttentionInterface.get_interface(name, eager_default)``. We wrap that one method (an entry of
``corevital_otel.patching``'s table): when the calling thread has no active capture it returns exactly
what it returned before; when it has one, it returns a thin wrapper that hands query/key/mask to the
capture session and then calls the real function (sdpa, flash, flex, eager or a user registration).
The model keeps its kernel and its outputs are untouched. Under torch.compile the wrapper returns the real
function (no capture inside a compiled forward; the span says so). What the session does with query and key
(stash the new query row, score it later) is its business; the maths lives in ``attention_math``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from .active import ACTIVE_CAPTURE


def _observed_attention(
    session: Any, function: Callable[..., Any], module, query, key, value, attention_mask, *args, **kwargs
):
    session.observe_attention(module, query, key, attention_mask, kwargs)
    return function(module, query, key, value, attention_mask, *args, **kwargs)


def attention_function(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
    """The wrapper of ``AttentionInterface.get_interface`` (patching.ATTENTION_FUNCTION): unchanged when
    the calling thread has no active capture, else the real function behind an observer."""
    function = wrapped(*args, **kwargs)
    # A compiled forward traces this: the branch folds away and the graph calls the model's own function.
    # (Looking the capture up there broke the graph in every layer, and tracing on into the session
    # guarded on its state: a recompilation per step until dynamo gave up and ran the layer eagerly.)
    if torch.compiler.is_compiling():
        return function
    session = ACTIVE_CAPTURE.get()
    if session is None:
        return function
    return functools.partial(_observed_attention, session, function)
