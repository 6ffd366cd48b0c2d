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
from tiny_models import build_model, prompt_batch

import corevital_otel
import corevital_otel.plugins
from corevital_otel.hookspecs import ENTRY_POINT_GROUP, PROJECT_NAME, CoreVitalHookSpecs
from corevital_otel.instrumentor import CoreVitalInstrumentor
from corevital_otel.plugin_host import PluginHost
from corevital_otel.plugins import logits as logits_plugin

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
    telemetry = quiet(recorder)
    assert CoreVitalInstrumentor().runtime.plugins.names == ["recorder"]
    ids, mask = prompt_batch(batch=1)
    build_model("gpt2").generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    assert len(recorder.infos) == 1 and len(recorder.steps) == 3
    assert len(telemetry.generation_spans()) == 1


def test_builtin_plugins_load_through_the_entry_point_group():
    declared = {entry_point.value for entry_point in entry_points(group=ENTRY_POINT_GROUP)}
    for module_info in pkgutil.iter_modules(corevital_otel.plugins.__path__, "corevital_otel.plugins."):
        module = importlib.import_module(module_info.name)
        if any(hasattr(item, f"{PROJECT_NAME}_impl") for item in vars(module).values()):
            assert module_info.name in declared, f"{module_info.name} has hooks but no entry point"
    host = PluginHost.load()
    assert "logits" in host.names
    # The very module the entry point names, not a private registration path.
    assert host.manager.get_plugin("logits") is logits_plugin
    assert "logits" not in PluginHost.load(disabled={"logits"}).names
    assert PluginHost.load(use_entry_points=False).names == []


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
