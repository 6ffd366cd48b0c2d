"""The model name on spans, metric labels and alerts: short, stable, and never a host path.

A hub id (``gpt2``, ``Qwen/Qwen2-0.5B``) is kept as it is. A model loaded from a local directory is named
by the directory's last path component (``/srv/models/demo_model`` -> ``demo_model``): an absolute path
would leak the host's layout and split one model into a series per checkout. A directory in the Hugging
Face cache (``.../models--org--name/snapshots/<hash>``) gives back its hub id. ``instrument(model_name=...)``
overrides all of this, with one name or a function of the model.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

ModelNameOption = str | Callable[[Any], Any] | None

# The Hugging Face cache keeps a hub model at <cache>/models--<org>--<name>/snapshots/<revision>.
_HUB_CACHE = re.compile(r"(?:^|[\\/])models--(?P<id>[^\\/]+)[\\/]snapshots[\\/][^\\/]+[\\/]?$")


def _looks_like_path(name: str) -> bool:
    """A filesystem path rather than a hub id: absolute, home- or dot-relative, or an existing directory.

    A hub id has at most one ``/`` and none of these prefixes; ``org/name`` that is also a directory here
    is loaded from the directory by transformers, so it is named like one.
    """
    if os.path.isabs(name) or name.startswith(("~", ".", "\\")) or re.match(r"^[A-Za-z]:[\\/]", name):
        return True
    return name.count("/") > 1 or "\\" in name or os.path.isdir(name)


def short_model_name(name: str) -> str:
    """``name`` as spans show it: a hub id unchanged, a path reduced to its last component."""
    name = name.strip()
    cached = _HUB_CACHE.search(name)
    if cached:
        return cached.group("id").replace("--", "/")
    if not name or not _looks_like_path(name):
        return name
    # abspath: "." or "../model" name the directory they stand for, not a dot
    tail = os.path.basename(os.path.abspath(os.path.expanduser(name.replace("\\", "/"))))
    return tail or name


def default_model_name(model: Any) -> str:
    """The model's name from its config (``name_or_path``), else its model type, else its class name."""
    config = getattr(model, "config", None)
    name = str(getattr(config, "_name_or_path", "") or getattr(config, "name_or_path", "") or "")
    return short_model_name(name) or str(getattr(config, "model_type", "") or type(model).__name__)


def model_name(model: Any, override: ModelNameOption = None) -> str:
    """The name for ``model``: the ``model_name`` option when given (a function returning None or "" falls
    back to the default), else :func:`default_model_name`. A failing function falls back too: naming must
    never break a generate() call."""
    if isinstance(override, str) and override.strip():
        return override.strip()
    if callable(override):
        try:
            chosen = override(model)
        except Exception:  # noqa: BLE001 - the caller's function; the default name is always available
            logger.warning("corevital: the model_name function failed; using the default name", exc_info=True)
            chosen = None
        if chosen is not None and str(chosen).strip():
            return str(chosen).strip()
    return default_model_name(model)
