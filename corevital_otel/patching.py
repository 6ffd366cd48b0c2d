"""The one table of what corevital patches in transformers, wrapped and unwrapped by one mechanism.

Every target is a method of a transformers class. :func:`wrap` replaces it with a plain function that
calls ``wrapper(wrapped, instance, args, kwargs)`` (wrapt's signature; ``wrapped`` is the original bound
to the instance); :func:`unwrap` puts back exactly what the class held before: the same object in the
class's own ``__dict__``, or nothing when the attribute was inherited. The same record (:class:`Replaced`)
puts back the decoder-layer ``forward`` methods the capture taps (``capture/layer_taps.py``).

A plain function rather than a ``wrapt.FunctionWrapper`` proxy: torch.compile traces into a plain
function like any other, so what a compiled forward gets is the wrapper's own decision (the attention
wrapper hands it the model's function), while it looks through a wrapt proxy to the original.

A target called on every layer of every step (the attention lookup) may instead be given as
:class:`Direct`: a function that makes the proxy itself from the original, so no wrapper frame sits
between them (each frame there costs microseconds, run cold between two layers' matmuls).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Wrapper = Callable[[Callable[..., Any], Any, tuple, dict], Any]


@dataclass(frozen=True)
class Direct:
    """``make_proxy(original)`` returns the function to install in the original's place; it is called
    with the instance first, like the original."""

    make_proxy: Callable[[Callable[..., Any]], Callable[..., Any]]


@dataclass(frozen=True)
class PatchTarget:
    module: str
    owner: str
    attribute: str
    why: str

    def locate(self) -> type | None:
        """The class to patch; None when this transformers has no such module or class."""
        try:
            module = importlib.import_module(self.module)
        except ImportError:
            return None
        owner = getattr(module, self.owner, None)
        return owner if isinstance(owner, type) and hasattr(owner, self.attribute) else None


GENERATE = PatchTarget(
    "transformers.generation.utils", "GenerationMixin", "generate", "every generate() call is traced"
)
# Models fetch their attention function at call time through this method (see capture/attention.py).
ATTENTION_FUNCTION = PatchTarget(
    "transformers.modeling_utils", "AttentionInterface", "get_interface", "new-query attention rows"
)
PIPELINE_INIT = PatchTarget(
    "transformers.pipelines.base", "Pipeline", "__init__", "a pipeline's tokenizer decodes content"
)
TARGETS: tuple[PatchTarget, ...] = (GENERATE, ATTENTION_FUNCTION, PIPELINE_INIT)


@dataclass(frozen=True)
class Replaced:
    """A class attribute we replaced with ``proxy``, and how to put back what was there."""

    owner: type
    attribute: str
    had_own: bool  # the attribute was in the class's own __dict__ (else inherited)
    original: Callable[..., Any]  # the function found there
    proxy: Callable[..., Any]

    @property
    def current(self) -> bool:
        """Whether our proxy is still the class's attribute (not replaced again by someone else)."""
        return vars(self.owner).get(self.attribute) is self.proxy

    def restore(self) -> None:
        """Put back exactly what the class held, if our proxy is still installed (one wrapped over ours
        by another instrumentation stays, with ours beneath it)."""
        if not self.current:
            return
        if self.had_own:
            setattr(self.owner, self.attribute, self.original)
        else:
            delattr(self.owner, self.attribute)


def replace(owner: type, attribute: str, make_proxy: Callable[[Any], Callable[..., Any]]) -> Replaced:
    """Set ``owner.attribute`` to ``make_proxy(what it resolves to now)``; the record restores it."""
    had_own = attribute in vars(owner)
    raw = inspect.getattr_static(owner, attribute)
    proxy = make_proxy(raw)
    setattr(owner, attribute, proxy)
    return Replaced(owner, attribute, had_own, raw, proxy)


_installed: dict[PatchTarget, Replaced] = {}


def original(target: PatchTarget) -> Any:
    """The function our wrapper of ``target`` wraps (KeyError when it is not installed)."""
    return _installed[target].original


def _around(wrapper: Wrapper, raw: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(raw)
    def proxy(self: Any, *args: Any, **kwargs: Any) -> Any:
        return wrapper(raw.__get__(self, type(self)), self, args, kwargs)

    return proxy


def wrap(target: PatchTarget, wrapper: Wrapper | Direct) -> bool:
    """Install ``wrapper`` around ``target`` (replacing an earlier wrapper of ours); False when this
    transformers lacks the target."""
    unwrap(target)
    owner = target.locate()
    if owner is None:
        return False
    raw = inspect.getattr_static(owner, target.attribute)
    if not isinstance(raw, types.FunctionType):
        raise TypeError(f"patching: {target.owner}.{target.attribute} is not a plain method: {raw!r}")
    make_proxy = wrapper.make_proxy if isinstance(wrapper, Direct) else functools.partial(_around, wrapper)
    _installed[target] = replace(owner, target.attribute, make_proxy)
    return True


def unwrap(target: PatchTarget) -> None:
    """Restore ``target`` exactly, if our wrapper is still the one installed (another instrumentation
    that wrapped it after us keeps its wrapper; ours then stays beneath it)."""
    installed = _installed.pop(target, None)
    if installed is not None:
        installed.restore()


def wrap_all(wrappers: Mapping[PatchTarget, Wrapper | Direct]) -> None:
    """Wrap every target of the table; a target without a wrapper is a programming error."""
    missing = [target.attribute for target in TARGETS if target not in wrappers]
    if missing or len(wrappers) != len(TARGETS):
        raise ValueError(f"patching: wrappers must cover exactly the table (missing: {missing})")
    for target in TARGETS:
        wrap(target, wrappers[target])


def unwrap_all() -> None:
    for target in TARGETS:
        unwrap(target)


def installed() -> tuple[PatchTarget, ...]:
    """The targets whose class attribute is our wrapper right now."""
    return tuple(target for target, entry in _installed.items() if entry.current)
