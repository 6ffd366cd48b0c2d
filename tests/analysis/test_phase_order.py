"""The analysis plugins' assess hooks are ``trylast``: they run after the health flags of the same phase."""

from __future__ import annotations

import corevital_otel
from corevital_otel.plugin_host import PluginHost


class _Plugin:
    def __init__(self, name: str, **marks: bool) -> None:
        self.COREVITAL_PLUGIN_NAME = name

        @corevital_otel.hookimpl(**marks)
        def corevital_assess(results) -> None:
            results.append(name)

        self.corevital_assess = corevital_assess


def test_trylast_runs_after_unmarked_and_tryfirst_before_whatever_the_registration_order():
    plugins = [
        _Plugin("late", trylast=True),
        _Plugin("plain"),
        _Plugin("early", tryfirst=True),
        _Plugin("also"),
    ]
    host = PluginHost.load(plugins, use_entry_points=False, use_builtins=False)
    order: list[str] = []
    for _ in host.call_each("corevital_assess", [], info=None, series=None, results=order):
        pass
    assert order == ["early", "plain", "also", "late"]


def test_every_analysis_assess_hook_is_marked_trylast():
    from corevital_otel.plugins import blame, compound, early_warning, risk

    for module in (risk, blame, compound, early_warning):
        host = PluginHost.load([module], use_entry_points=False, use_builtins=False)
        (implementation,) = host.implementations("corevital_assess")
        assert implementation.trylast, module.__name__
