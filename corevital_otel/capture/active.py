"""Which capture session (if any) the current thread or task is running generate() for.

Hooks, tapped layers and the attention wrapper are shared by every caller of a model; each looks up the
session in this context variable and does nothing when it is not the caller's own, so concurrent
generate() calls in several threads never feed each other's capture.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from contextvars import ContextVar
from typing import Any, Protocol


class CaptureObserver(Protocol):
    """What the attention lookup and the tapped layers need of a session (``session.CaptureSession`` is
    one). A protocol, not an import: the session module imports this one, and types must not close a
    circle."""

    # (id(attention interface), the lookup's arguments) -> what the attention lookup hands the model for
    # the rest of this call.
    attention_observers: dict[Hashable, Callable[..., Any]]

    def observer_of(self, function: Callable[..., Any]) -> Callable[..., Any]: ...

    def layer_output(self, module: Any, output: Any) -> None: ...


ACTIVE_CAPTURE: ContextVar[CaptureObserver | None] = ContextVar("corevital_active_capture", default=None)
