"""Attention rows of the newest query, computed beside the model's own attention implementation.

transformers models fetch their attention function at call time with
``AttentionInterface.get_interface(name, eager_default)``. We replace that one method (an entry of
``corevital_otel.patching``'s table, installed :class:`~corevital_otel.patching.Direct`: it runs on every
layer of every step): when the calling thread has no active capture it returns exactly what it returned
before; when it has one, it returns the session's observer of that function, which hands query/key/mask to
the session and then calls the real function (sdpa, flash, flex, eager or a user registration). The
observer is found once per call and set of lookup arguments, so transformers' own lookup does not run
again on every layer and step of a traced call (it is the same function each time). The model
keeps its kernel and its outputs are untouched. Under torch.compile the proxy returns the real function (no
capture inside a compiled forward; the span says so). What the session does with query and key (stash the
new query row, score it later) is its business; the maths lives in ``attention_math``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from ..patching import Direct
from .active import ACTIVE_CAPTURE


def _interface_proxy(get_interface: Callable[..., Any]) -> Callable[..., Any]:
    # Dynamo folds this to True while it traces; run eagerly it is one frame that returns False, where
    # torch.compiler.is_compiling takes two (this runs on every layer of every step).
    is_compiling = torch.compiler.is_dynamo_compiling

    @functools.wraps(get_interface)
    def proxy(self: Any, *args: Any, **kwargs: Any) -> Any:
        # A compiled forward traces this: the branch folds away and the graph calls the model's own
        # function. (Looking the capture up there broke the graph in every layer, and tracing on into the
        # session guarded on its state: a recompilation per step until dynamo gave up and ran the layer
        # eagerly.)
        if is_compiling():
            return get_interface(self, *args, **kwargs)
        session = ACTIVE_CAPTURE.get()
        if session is None:
            return get_interface(self, *args, **kwargs)
        # The session's observer for these arguments (an implementation's name and the model's eager
        # default), made at the call's first lookup: transformers' own checks and mapping reads run once
        # per call, not on every layer of every step. The key holds the default function, so its id
        # stays unique while the entry lives.
        key = (id(self), args) if not kwargs else None
        observed = session.attention_observers.get(key) if key is not None else None
        if observed is None:
            observed = session.observer_of(get_interface(self, *args, **kwargs))
            if key is not None:
                session.attention_observers[key] = observed
        return observed

    return proxy


ATTENTION_INTERFACE = Direct(_interface_proxy)
