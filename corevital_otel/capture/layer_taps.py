"""Decoder-layer outputs for the active capture, without a torch forward hook on every layer.

A module with any forward hook leaves torch's fast call path (``forward`` straight away) for its general
one, which on every layer of every decoding step costs about twice what the hook itself does (measured
on a Llama layer between the matmuls that stream its weights through the caches: +15 µs with a no-op
hook, +6 µs with a wrapped ``forward``). So each decoder-layer class gets its ``forward`` wrapped once,
as a class attribute, while corevital is instrumented (:func:`untap_all` puts back exactly what the class
held, at uninstrument()); the wrapper hands the layer's output to the capture session the calling thread
runs, if any, and the session keeps only its own model's layers.

Where the class's forward is not what runs, or not the last to see the output, a layer keeps a forward
hook (see :func:`tappable`): an instance carrying its own ``forward`` (accelerate's device hooks replace
it), and a layer with forward hooks of its own, which may replace the output after ``forward`` returns
(the capture must see what the next layer gets).
"""

from __future__ import annotations

import functools
import inspect
import threading
import types
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..patching import Replaced, replace
from .active import ACTIVE_CAPTURE

_taps: dict[type, Replaced] = {}
_lock = threading.Lock()
# Taps go in only between open_taps() (instrument) and untap_all() (uninstrument): a generate() call that
# began before uninstrument() may attach its capture after untap_all() ran, and must not re-wrap a class.
_open = False


def _global_forward_hooks() -> bool:
    from torch.nn.modules import module as torch_module

    return bool(torch_module._global_forward_hooks)


def tappable(layer: nn.Module) -> bool:
    """Whether the class-level wrapper sees exactly this layer's output: its class's ``forward`` is a
    plain function that is what runs, and no forward hook can replace the output after it."""
    if "forward" in vars(layer) or layer._forward_hooks or _global_forward_hooks():
        return False
    return isinstance(inspect.getattr_static(type(layer), "forward", None), types.FunctionType)


def _make_proxy(original: Callable[..., Any]) -> Callable[..., Any]:
    # Dynamo folds this to True while it traces; run eagerly it is one frame that returns False, where
    # torch.compiler.is_compiling takes two (this runs on every layer of every step).
    is_compiling = torch.compiler.is_dynamo_compiling

    @functools.wraps(original)
    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        output = original(self, *args, **kwargs)
        # A compiled forward traces this function: the branch folds away and the graph is the layer's own
        # (tracing on into the session would guard on it, and recompile for every generate() call).
        if is_compiling():
            return output
        session = ACTIVE_CAPTURE.get()
        # A subclass whose own tapped forward calls this one through super(): the outer wrapper reports.
        if session is not None and type(self).forward is forward:
            session.layer_output(self, output)
        return output

    return forward


def tap(layers: Iterable[nn.Module]) -> list[nn.Module]:
    """Wrap the ``forward`` of every tappable layer's class (once per class); returns the layers whose
    output now reaches the active session's ``layer_output``. The others need a forward hook."""
    tapped: list[nn.Module] = []
    with _lock:
        if not _open:
            return tapped  # uninstrumented meanwhile: this call's layers keep forward hooks of their own
        for layer in layers:
            if not tappable(layer):
                continue
            owner = type(layer)
            installed = _taps.get(owner)
            if installed is None or not installed.current:
                # Not ours (yet, or any more: someone replaced it): wrap what is there now.
                _taps[owner] = replace(owner, "forward", _make_proxy)
            tapped.append(layer)
    return tapped


def open_taps() -> None:
    """Let :func:`tap` wrap classes again (at instrument)."""
    global _open
    with _lock:
        _open = True


def untap_all() -> None:
    """Put back every class's ``forward`` as it was, where our wrapper is still the one installed (one
    wrapped over ours by someone else stays, and ours beneath it then reports nothing), and wrap no more
    until :func:`open_taps`."""
    global _open
    with _lock:
        _open = False
        for installed in reversed(list(_taps.values())):
            installed.restore()
        _taps.clear()


def tapped_classes() -> tuple[type, ...]:
    """The classes whose ``forward`` is our wrapper right now."""
    return tuple(owner for owner, installed in _taps.items() if installed.current)
