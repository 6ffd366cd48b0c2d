"""Loads metric plugins and calls them one by one, so one broken plugin never takes the others down.

pluggy would stop a hook call at the first exception; the core instead calls each implementation itself
(honouring pluggy's argument subsetting), logs a failure once per plugin and phase, and reports it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from .config import ConfigError
from .hookspecs import ENTRY_POINT_GROUP, PROJECT_NAME, CoreVitalHookSpecs
from .telemetry_types import MetricSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PluginFailure:
    plugin: str
    phase: str
    error_type: str
    message: str


def _plugin_name(plugin: Any) -> str:
    name = getattr(plugin, "COREVITAL_PLUGIN_NAME", None) or getattr(plugin, "__name__", None)
    return str(name or type(plugin).__name__)


class PluginHost:
    """The registered plugins of one instrumentation, and isolated calls into them."""

    def __init__(self, manager: pluggy.PluginManager) -> None:
        self.manager = manager
        self._logged: set[tuple[str, str]] = set()

    @classmethod
    def load(
        cls, extra_plugins: Iterable[Any] = (), disabled: Iterable[str] = (), use_entry_points: bool = True
    ) -> PluginHost:
        manager = pluggy.PluginManager(PROJECT_NAME)
        manager.add_hookspecs(CoreVitalHookSpecs)
        disabled = set(disabled)
        installed = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
        extra_plugins = tuple(extra_plugins)
        # A misspelt name would leave the plugin someone meant to switch off running.
        known = {ep.name for ep in installed} | {_plugin_name(plugin) for plugin in extra_plugins}
        if disabled - known:
            raise ConfigError(
                f"disabled_plugins / COREVITAL_DISABLED_PLUGINS: unknown plugin(s) "
                f"{', '.join(sorted(disabled - known))}; known: {', '.join(sorted(known))}"
            )
        if use_entry_points:
            for entry_point in installed:
                if entry_point.name in disabled:
                    continue
                try:
                    manager.register(entry_point.load(), name=entry_point.name)
                except Exception as error:  # noqa: BLE001 - a broken third-party plugin must not stop us
                    logger.warning("corevital plugin %r failed to load: %s", entry_point.name, error)
        for plugin in extra_plugins:
            name = _plugin_name(plugin)
            if name in disabled or manager.is_registered(plugin):
                continue
            if manager.get_plugin(name) is not None:
                raise ConfigError(f"plugins: a corevital plugin named {name!r} is already registered")
            manager.register(plugin, name=name)
            if not manager.get_hookcallers(plugin):  # e.g. a string, or a module without @hookimpl
                raise ConfigError(f"plugins: {plugin!r} implements no corevital hook")
        manager.check_pending()
        return cls(manager)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.manager.list_name_plugin()]

    def implementations(self, phase: str) -> list[pluggy.HookImpl]:
        return getattr(self.manager.hook, phase).get_hookimpls()

    def call_each(
        self, phase: str, failures: list[PluginFailure], **arguments: Any
    ) -> Iterator[tuple[str, Any]]:
        """Call every implementation of ``phase``; yield ``(plugin name, result)`` for each that succeeded.

        A failure is appended to ``failures`` (and logged once per plugin and phase) instead of raised.
        """
        # pluggy's tryfirst/trylast markers order a phase (e.g. risk after the health flags it reads);
        # unmarked implementations keep registration order.
        ordered = sorted(self.implementations(phase), key=lambda i: (not i.tryfirst) + bool(i.trylast))
        for implementation in ordered:
            try:
                result = implementation.function(*[arguments[name] for name in implementation.argnames])
            except Exception as error:  # noqa: BLE001
                self.record_failure(failures, implementation.plugin_name, phase, error)
                continue
            yield implementation.plugin_name, result

    def record_failure(
        self, failures: list[PluginFailure], plugin: str, phase: str, error: Exception
    ) -> None:
        failures.append(PluginFailure(plugin, phase, type(error).__name__, str(error)[:200]))
        if (plugin, phase) not in self._logged:
            self._logged.add((plugin, phase))
            logger.warning("corevital plugin %r failed in %s: %r (logged once)", plugin, phase, error)

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Let every plugin validate its settings; the first invalid one raises :class:`ConfigError`."""
        for implementation in self.implementations("corevital_check_options"):
            try:
                implementation.function(options)
            except (ValueError, TypeError) as error:
                raise ConfigError(f"plugin {implementation.plugin_name!r}: {error}") from error

    def declared_metrics(self, failures: list[PluginFailure]) -> dict[str, tuple[str, MetricSpec]]:
        """All declared metrics by name, with the declaring plugin; duplicates are failures."""
        declared: dict[str, tuple[str, MetricSpec]] = {}
        for plugin, specs in self.call_each("corevital_declare_metrics", failures):
            for spec in specs or ():
                if not isinstance(spec, MetricSpec):
                    self.record_failure(failures, plugin, "corevital_declare_metrics", TypeError(repr(spec)))
                elif spec.name in declared and declared[spec.name][1] != spec:
                    error = ValueError(f"metric {spec.name!r} already declared by {declared[spec.name][0]!r}")
                    self.record_failure(failures, plugin, "corevital_declare_metrics", error)
                else:
                    declared[spec.name] = (plugin, spec)
        return declared
