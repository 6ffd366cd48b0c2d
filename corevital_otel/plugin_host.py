"""Loads metric plugins and calls them one by one, so one broken plugin never takes the others down.

The built-in plugins are listed in code (``corevital_otel.plugins.BUILTIN_PLUGINS``); the
``corevital_otel`` entry-point group is for third-party plugins. pluggy would stop a hook call at the first
exception, so each implementation is called through its own pluggy hook caller (pluggy's argument
subsetting, call tracing and monitoring still apply); a failure is logged once per plugin and phase, and
reported. Wrappers (``hookwrapper=True`` / ``wrapper=True``) are refused: with calls made one plugin at a
time there is no single call for them to wrap.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from .config import ConfigError
from .hookspecs import ENTRY_POINT_GROUP, PROJECT_NAME, CoreVitalHookSpecs
from .plugin_options import check_plugin_options
from .telemetry_types import InterventionSignal, MetricSpec

logger = logging.getLogger(__name__)
# The phase a plugin failure is reported under when the plugin could not even be registered.
LOAD_PHASE = "load"


@dataclass(frozen=True)
class PluginFailure:
    plugin: str
    phase: str
    error_type: str
    message: str


def _plugin_name(plugin: Any) -> str:
    name = getattr(plugin, "COREVITAL_PLUGIN_NAME", None) or getattr(plugin, "__name__", None)
    return str(name or type(plugin).__name__)


def _builtin_plugins() -> dict[str, str]:
    from .plugins import BUILTIN_PLUGINS

    return BUILTIN_PLUGINS


class PluginRefused(ValueError):
    """A plugin that cannot be registered as it is (a wrapper implementation, a name already taken)."""


def _register(manager: pluggy.PluginManager, plugin: Any, name: str) -> None:
    """Register ``plugin``, refusing wrapper implementations (the registration is undone)."""
    if manager.get_plugin(name) is not None:
        raise PluginRefused(f"a corevital plugin named {name!r} is already registered")
    manager.register(plugin, name=name)
    wrappers = sorted(
        caller.name
        for caller in manager.get_hookcallers(plugin) or ()
        for implementation in caller.get_hookimpls()
        if implementation.plugin is plugin and (implementation.hookwrapper or implementation.wrapper)
    )
    if wrappers:
        manager.unregister(plugin)
        raise PluginRefused(
            f"plugin {name!r}: {', '.join(wrappers)} is a pluggy hookwrapper/wrapper, which corevital "
            "does not run (it calls each plugin on its own, so one failure never stops the others); "
            "implement the hook plainly, ordered with tryfirst/trylast if needed"
        )


class PluginHost:
    """The registered plugins of one instrumentation, and isolated calls into them."""

    def __init__(
        self,
        manager: pluggy.PluginManager,
        load_failures: Iterable[PluginFailure] = (),
        known_names: Iterable[str] = (),
    ) -> None:
        self.manager = manager
        # Plugins that could not be loaded (a third-party module that fails to import, a refused
        # plugin): reported on every span and counted like any plugin failure.
        self.load_failures = list(load_failures)
        self._logged: set[tuple[str, str]] = set()
        self._callers: dict[tuple[str, str], pluggy.HookCaller] = {}
        # Every plugin name known at load time, disabled ones included (their options are not typos).
        self.known_names = set(known_names) | set(self.names)
        for failure in self.load_failures:
            self._log_once(failure.plugin, failure.phase, f"{failure.error_type}: {failure.message}")

    @classmethod
    def load(
        cls,
        extra_plugins: Iterable[Any] = (),
        disabled: Iterable[str] = (),
        use_entry_points: bool = True,
        use_builtins: bool = True,
    ) -> PluginHost:
        manager = pluggy.PluginManager(PROJECT_NAME)
        manager.add_hookspecs(CoreVitalHookSpecs)
        disabled = set(disabled)
        builtins = _builtin_plugins()
        # An install made before the built-ins left the entry-point group still lists them: never
        # third-party plugins, they are skipped (or builtin_plugins=False would bring them back).
        installed = sorted(
            (ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.module not in builtins.values()),
            key=lambda ep: ep.name,
        )
        extra_plugins = tuple(extra_plugins)
        # A misspelt name would leave the plugin someone meant to switch off running.
        known = set(builtins) | {ep.name for ep in installed} | {_plugin_name(p) for p in extra_plugins}
        if disabled - known:
            raise ConfigError(
                f"disabled_plugins / COREVITAL_DISABLED_PLUGINS: unknown plugin(s) "
                f"{', '.join(sorted(disabled - known))}; known: {', '.join(sorted(known))}"
            )
        failures: list[PluginFailure] = []
        for name, module in builtins.items() if use_builtins else ():
            if name not in disabled:
                _register(manager, importlib.import_module(module), name)
        for entry_point in installed if use_entry_points else ():
            if entry_point.name in disabled:
                continue
            try:
                _register(manager, entry_point.load(), entry_point.name)
            except Exception as error:  # noqa: BLE001 - a broken third-party plugin must not stop us
                failure = PluginFailure(entry_point.name, LOAD_PHASE, type(error).__name__, str(error)[:200])
                failures.append(failure)
        for plugin in extra_plugins:
            name = _plugin_name(plugin)
            if name in disabled or manager.is_registered(plugin):
                continue
            try:
                _register(manager, plugin, name)
            except PluginRefused as error:
                raise ConfigError(f"plugins: {error}") from None
            if not manager.get_hookcallers(plugin):  # e.g. a string, or a module without @hookimpl
                raise ConfigError(f"plugins: {plugin!r} implements no corevital hook")
        manager.check_pending()
        return cls(manager, failures, known)

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
                results = self._caller(phase, implementation.plugin_name)(**arguments)
            except Exception as error:  # noqa: BLE001
                self.record_failure(failures, implementation.plugin_name, phase, error)
                continue
            yield implementation.plugin_name, results[0] if results else None

    def _caller(self, phase: str, plugin: str) -> pluggy.HookCaller:
        """pluggy's hook caller of ``phase`` restricted to one plugin (made once, then reused)."""
        caller = self._callers.get((phase, plugin))
        if caller is None:
            others = [other for name, other in self.manager.list_name_plugin() if name != plugin]
            caller = self.manager.subset_hook_caller(phase, remove_plugins=others)
            self._callers[(phase, plugin)] = caller
        return caller

    def record_failure(
        self, failures: list[PluginFailure], plugin: str, phase: str, error: Exception
    ) -> None:
        failures.append(PluginFailure(plugin, phase, type(error).__name__, str(error)[:200]))
        self._log_once(plugin, phase, repr(error))

    def _log_once(self, plugin: str, phase: str, error: str) -> None:
        if (plugin, phase) not in self._logged:
            self._logged.add((plugin, phase))
            logger.warning("corevital plugin %r failed in %s: %s (logged once)", plugin, phase, error)

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Validate ``plugin_options`` against the schemas plugins declare, then let every plugin check
        its settings; the first invalid one raises :class:`ConfigError`."""
        check_plugin_options(options, dict(self.manager.list_name_plugin()), self.known_names)
        for implementation in self.implementations("corevital_check_options"):
            try:
                self._caller("corevital_check_options", implementation.plugin_name)(options=options)
            except (ValueError, TypeError) as error:
                raise ConfigError(f"plugin {implementation.plugin_name!r}: {error}") from error

    def declared_interventions(self, failures: list[PluginFailure]) -> dict[str, InterventionSignal]:
        """All offered intervention policies by name; a second plugin offering a name is a failure."""
        declared: dict[str, tuple[str, InterventionSignal]] = {}
        for plugin, signals in self.call_each("corevital_declare_interventions", failures):
            for signal in signals or ():
                if not isinstance(signal, InterventionSignal):
                    error = TypeError(repr(signal))
                    self.record_failure(failures, plugin, "corevital_declare_interventions", error)
                elif signal.policy in declared:
                    first = declared[signal.policy][0]
                    error = ValueError(f"policy {signal.policy!r} already declared by {first!r}")
                    self.record_failure(failures, plugin, "corevital_declare_interventions", error)
                else:
                    declared[signal.policy] = (plugin, signal)
        return {policy: signal for policy, (_, signal) in declared.items()}

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
