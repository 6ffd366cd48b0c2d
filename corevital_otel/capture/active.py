"""Which capture session (if any) the current thread or task is running generate() for.

Hooks and the attention wrapper are shared by every caller of a model; each looks up the session in
this context variable and does nothing when it is not the caller's own, so concurrent generate() calls
in several threads never feed each other's capture.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .session import CaptureSession

ACTIVE_CAPTURE: ContextVar[CaptureSession | None] = ContextVar("corevital_active_capture", default=None)
