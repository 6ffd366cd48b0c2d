"""The plugin API: hook specs, the exported marker, registration by object and by entry point."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pluggy
import pytest
import torch
from pydantic import BaseModel, ConfigDict

import corevital_otel
import corevital_otel.plugins
from corevital_otel.hookspecs import ENTRY_POINT_GROUP, PROJECT_NAME, CoreVitalHookSpecs
from corevital_otel.instrumentor import CoreVitalInstrumentor
from corevital_otel.plugin_host import PluginHost
from corevital_otel.plugins import BUILTIN_PLUGINS
from corevital_otel.plugins import logits as logits_plugin
from tests.support.tiny_models import build_model, prompt_batch

from .helpers import generation_span, metric_points

EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "example_plugin"
EXAMPLE_MODULE = EXAMPLE_DIR / "corevital_example_plugin.py"


def test_hookspecs_are_documented_and_marker_is_public():
    specs = [name for name, _ in inspect.getmembers(CoreVitalHookSpecs) if name.startswith("corevital_")]
    assert set(specs) >= {
        "corevital_declare_metrics",
        "corevital_generation_start",
        "corevital_prompt",
        "corevital_step",
        "corevital_summarize",
        "corevital_assess",
        "corevital_explain",
    }
    for name in specs:
        assert len(inspect.getdoc(getattr(CoreVitalHookSpecs, name)) or "") > 40, name
    assert isinstance(corevital_otel.hookimpl, pluggy.HookimplMarker)
    assert corevital_otel.hookimpl.project_name == PROJECT_NAME


def test_plugin_object_registered_at_instrument(quiet, recorder):
    import transformers.modeling_utils  # noqa: F401 - instrument() activates now, not on a later import

    telemetry = quiet(recorder)
    assert CoreVitalInstrumentor().runtime.plugins.names == ["recorder"]
    ids, mask = prompt_batch(batch=1)
    build_model("gpt2").generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    assert len(recorder.infos) == 1 and len(recorder.steps) == 3
    assert len(telemetry.generation_spans()) == 1


def test_builtin_plugins_are_listed_in_code_and_kept_without_entry_points():
    listed = set(BUILTIN_PLUGINS.values())
    for module_info in pkgutil.iter_modules(corevital_otel.plugins.__path__, "corevital_otel.plugins."):
        module = importlib.import_module(module_info.name)
        if any(hasattr(item, f"{PROJECT_NAME}_impl") for item in vars(module).values()):
            assert module_info.name in listed, f"{module_info.name} has hooks but is not a built-in"
    # Entry points are for third parties: the package declares none of its own.
    ours = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.value.startswith("corevital_otel.")]
    assert ours == []
    host = PluginHost.load()
    assert host.names[: len(BUILTIN_PLUGINS)] == list(BUILTIN_PLUGINS)
    assert host.manager.get_plugin("logits") is logits_plugin  # the module itself
    assert PluginHost.load(use_entry_points=False).names == list(BUILTIN_PLUGINS)
    assert "logits" not in PluginHost.load(disabled={"logits"}).names
    assert PluginHost.load(use_builtins=False, use_entry_points=False).names == []


def test_without_entry_points_the_builtin_metrics_stay(instrumented):
    telemetry = instrumented(load_entry_point_plugins=False)
    ids, mask = prompt_batch(batch=1)
    build_model("gpt2").generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    attributes = generation_span(telemetry).attributes
    assert "corevital.logits.entropy.mean" in attributes and "corevital.risk.score" in attributes
    assert metric_points(telemetry, "corevital.risk.score")


def _install_example_entry_point(root: Path) -> None:
    """Write the dist-info an install of tests/example_plugin would create, from its own pyproject."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((EXAMPLE_DIR / "pyproject.toml").read_text())["project"]
    entry_points = project["entry-points"][ENTRY_POINT_GROUP]
    dist_info = root / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{name} = {target}" for name, target in entry_points.items()]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")


def test_third_party_plugin_discovered_through_a_real_entry_point(tmp_path, monkeypatch, instrumented):
    _install_example_entry_point(tmp_path)
    monkeypatch.syspath_prepend(str(EXAMPLE_DIR))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "corevital_example_plugin", raising=False)
    assert "example" in PluginHost.load().names

    telemetry = instrumented()
    model = build_model("qwen2")
    ids, mask = prompt_batch(batch=2, length=5)
    output = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=4,
        do_sample=False,
        return_dict_in_generate=True,
        output_logits=True,
    )

    generated = output.sequences[:, ids.shape[1] :]
    chosen = [
        torch.softmax(logits, -1).gather(-1, generated[:, step, None]).squeeze(-1)
        for step, logits in enumerate(output.logits)
    ]
    expected = torch.stack(chosen).mean(dim=0).tolist()
    attributes = generation_span(telemetry).attributes
    assert attributes["corevital.example.chosen_probability.mean"] == pytest.approx(expected, rel=1e-5)
    assert "corevital.logits.entropy.mean" in attributes  # the built-ins still load beside it
    (point,) = metric_points(telemetry, "corevital.example.chosen_probability")
    assert point.count == 8


def test_example_plugin_uses_only_the_public_api():
    tree = ast.parse(EXAMPLE_MODULE.read_text())
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("corevital_otel"):
            assert node.module == "corevital_otel", f"private module {node.module}"
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            assert not any(alias.name.startswith("corevital_otel") for alias in node.names)
    assert imported and set(imported) <= set(corevital_otel.__all__)


def _write_dist(root: Path, name: str, entries: dict[str, str]) -> None:
    """The dist-info an installed third-party plugin package would have."""
    dist_info = root / f"{name}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{key} = {value}" for key, value in entries.items()]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")


def test_a_third_party_plugin_that_fails_to_import_is_reported_and_counted(
    tmp_path, monkeypatch, instrumented
):
    (tmp_path / "corevital_broken_plugin.py").write_text("import a_module_that_is_not_installed\n")
    _write_dist(tmp_path, "corevital_broken_plugin", {"broken": "corevital_broken_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "corevital_broken_plugin", raising=False)

    telemetry = instrumented()
    ids, mask = prompt_batch(batch=1)
    for _ in range(2):
        build_model("gpt2").generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False)
    for span in telemetry.generation_spans():
        lost = span.attributes["corevital.capture.lost"]
        assert "plugin broken failed in load: ModuleNotFoundError" in lost
        assert "corevital.logits.entropy.mean" in span.attributes  # the others still run
    points = [
        point
        for point in metric_points(telemetry, "corevital.plugin.errors")
        if point.attributes["corevital.plugin.name"] == "broken"
    ]
    assert [point.attributes["corevital.plugin.phase"] for point in points] == ["load"]
    assert points[0].value == 2  # once per generation, like any plugin failure


class _Wrapping:
    COREVITAL_PLUGIN_NAME = "wrapping"

    @corevital_otel.hookimpl(hookwrapper=True)
    def corevital_summarize(self, info, series, results):
        yield


class _NewStyleWrapping:
    COREVITAL_PLUGIN_NAME = "new_wrapping"

    @corevital_otel.hookimpl(wrapper=True)
    def corevital_assess(self, info, series, results):
        return (yield)


@pytest.mark.parametrize("plugin", [_Wrapping(), _NewStyleWrapping()], ids=["hookwrapper", "wrapper"])
def test_a_wrapper_implementation_is_refused_with_a_clear_error(plugin):
    with pytest.raises(corevital_otel.ConfigError, match=r"plugins: plugin '\w+': corevital_\w+ is a pluggy"):
        corevital_otel.instrument(plugins=[plugin], builtin_plugins=False)
    assert not corevital_otel.is_instrumented()


def test_a_wrapper_from_an_entry_point_is_a_load_failure(tmp_path, monkeypatch):
    module = tmp_path / "corevital_wrapping_plugin.py"
    module.write_text(
        "from corevital_otel import hookimpl\n\n"
        "@hookimpl(hookwrapper=True)\n"
        "def corevital_summarize(info, series, results):\n"
        "    yield\n"
    )
    _write_dist(tmp_path, "corevital_wrapping_plugin", {"wrapping": "corevital_wrapping_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path))
    host = PluginHost.load(use_builtins=False)
    assert host.names == []
    (failure,) = host.load_failures
    assert (failure.plugin, failure.phase, failure.error_type) == ("wrapping", "load", "PluginRefused")
    assert "hookwrapper" in failure.message


def test_calls_go_through_pluggy_so_its_tracing_sees_them_and_failures_stay_isolated():
    class Failing:
        COREVITAL_PLUGIN_NAME = "failing"

        @corevital_otel.hookimpl
        def corevital_assess(self, info, series, results):
            raise RuntimeError("broken")

    class Working:
        COREVITAL_PLUGIN_NAME = "working"

        @corevital_otel.hookimpl
        def corevital_assess(self, results):  # pluggy's argument subsetting still applies
            results.append("working")

    host = PluginHost.load([Failing(), Working()], use_entry_points=False, use_builtins=False)
    traced: list[tuple[str, list[str]]] = []
    undo = host.manager.add_hookcall_monitoring(
        lambda name, implementations, kwargs: traced.append((name, [i.plugin_name for i in implementations])),
        lambda outcome, name, implementations, kwargs: None,
    )
    failures: list = []
    seen: list[str] = []
    called = list(host.call_each("corevital_assess", failures, info=None, series=None, results=seen))
    undo()
    assert traced == [("corevital_assess", ["failing"]), ("corevital_assess", ["working"])]
    assert called == [("working", None)] and seen == ["working"]
    assert [(f.plugin, f.phase, f.error_type) for f in failures] == [
        ("failing", "corevital_assess", "RuntimeError")
    ]


class _MineOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    window: int = 8
    label: str = "x"


class _WithOptions:
    COREVITAL_PLUGIN_NAME = "mine"
    COREVITAL_OPTIONS = _MineOptions

    @corevital_otel.hookimpl
    def corevital_generation_start(self, info):
        pass


@pytest.mark.parametrize(
    ("plugin_options", "expected"),
    [
        (
            {"mine": {"windw": 3}},
            r"^plugin 'mine': plugin_options\['mine'\]: unknown option\(s\) windw; allowed: window, label$",
        ),
        (
            {"mine": {"window": "wide"}},
            r"^plugin 'mine': plugin_options\['mine'\]\['window'\]: Input should be a valid integer",
        ),
        ({"mine": ["window"]}, r"^plugin 'mine': plugin_options\['mine'\] must be a mapping"),
        ({"miner": {}}, r"^plugin_options: no plugin reads 'miner'; plugins and keys: .*mine"),
    ],
    ids=["unknown key", "invalid value", "not a mapping", "unknown entry"],
)
def test_plugin_options_are_checked_against_the_plugins_schema(plugin_options, expected):
    with pytest.raises(corevital_otel.ConfigError, match=expected):
        corevital_otel.instrument(plugins=[_WithOptions()], plugin_options=plugin_options)
    assert not corevital_otel.is_instrumented()


def test_valid_plugin_options_and_those_of_a_disabled_plugin_are_accepted(instrumented):
    instrumented(plugins=[_WithOptions()], plugin_options={"mine": {"window": 3}, "risk": {"running": False}})
    corevital_otel.uninstrument()
    instrumented(disabled_plugins={"risk"}, plugin_options={"risk": {"running": False}})
    assert corevital_otel.is_instrumented()


def test_entry_points_naming_builtin_modules_are_ignored(tmp_path, monkeypatch):
    """An environment installed when the built-ins were entry points still lists them: they stay built-ins."""
    _write_dist(tmp_path, "corevital_otel_stale", {"logits": "corevital_otel.plugins.logits"})
    monkeypatch.syspath_prepend(str(tmp_path))
    assert PluginHost.load(use_builtins=False).names == []
    host = PluginHost.load()
    assert host.names == list(BUILTIN_PLUGINS) and host.load_failures == []
