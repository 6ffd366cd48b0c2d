"""What the built-in metric plugins emit: documented names and types on every model family, step events
for flagged steps, and per-layer detail only in the capture modes that export it."""

from __future__ import annotations

import pytest
import torch

from corevital_otel import StepCapture, hookimpl
from corevital_otel.plugins import attention, health, hidden_states, logits, prompt
from tests.analysis.helpers import make_info
from tests.support import contract
from tests.support.plugin_testing import corrupt_layer, llama
from tests.support.tiny_models import FAMILIES, build_model, prompt_batch

BUILT_INS = (logits, attention, hidden_states, health, prompt)
OUR_NAMESPACES = ("logits", "attention", "hidden_states", "health", "layers", "prompt")
PLUGIN_PREFIXES = tuple(f"corevital.{name}." for name in OUR_NAMESPACES) + tuple(
    f"corevital.steps.{name}." for name in OUR_NAMESPACES
)
DETAIL = ("corevital.layers.", "corevital.prompt.positions.")
# Per-layer arrays kept in every mode but summary (the default span's compact layer view).
COMPACT = attention.COMPACT_LAYER_ATTRIBUTES | hidden_states.COMPACT_LAYER_ATTRIBUTES


def _ours(attributes) -> dict:
    return {
        name: value
        for name, value in attributes.items()
        if name.startswith(PLUGIN_PREFIXES)
        and not name.startswith(("corevital.prompt.hash", "corevital.steps.count"))
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_every_emitted_name_and_type_is_documented(instrumented, family):
    telemetry = instrumented(capture_mode="full")
    model = build_model(family)
    ids, mask = prompt_batch(batch=2)
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    span = telemetry.generation_spans()[-1]
    documented = contract.load()
    attributes = _ours(dict(span.attributes))
    assert len(attributes) > 40
    assert documented.undocumented(set(attributes), documented.span_attributes) == set()
    assert contract.type_mismatches(attributes, documented.span_attributes, documented) == []
    for event in span.events:
        values = _ours(
            {name.replace("corevital.", "corevital.steps.", 1): v for name, v in event.attributes.items()}
        )
        assert documented.undocumented(set(values), documented.span_attributes) == set()


def test_flag_only_names_are_documented_too(instrumented):
    """NaN, loops and explosions produce the conditional names (layers, first steps, reasons)."""
    telemetry = instrumented(capture_mode="full")
    model = llama(layers=6)
    ids, mask = prompt_batch(batch=2)
    with corrupt_layer(model, layer=2, value=float("nan"), from_call=2):
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    span = telemetry.generation_spans()[-1]
    attributes = _ours(dict(span.attributes))
    assert "corevital.health.layers.nan_detected" in attributes
    assert "corevital.health.first_step.mid_layer_anomaly_detected" in attributes
    documented = contract.load()
    assert documented.undocumented(set(attributes), documented.span_attributes) == set()
    assert contract.type_mismatches(attributes, documented.span_attributes, documented) == []


class Escalation:
    """Stands in for a risk plugin: marks the call escalated (or not) in the assess phase."""

    COREVITAL_PLUGIN_NAME = "escalation"

    def __init__(self, escalate: bool) -> None:
        self.escalate = escalate

    @hookimpl
    def corevital_assess(self, info, series, results) -> None:
        if self.escalate:
            results.escalate("test")


@pytest.mark.parametrize(
    ("mode", "escalate", "detail"),
    [("full", False, True), ("on_risk", True, True), ("on_risk", False, False), ("summary", False, False)],
)
def test_per_layer_and_per_position_detail_follows_the_capture_mode(instrumented, mode, escalate, detail):
    step_names: set[str] = set()
    telemetry = instrumented(
        capture_mode=mode,
        builtin_plugins=False,
        plugins=[*BUILT_INS, Escalation(escalate)],
        on_step=lambda info, step, outputs: step_names.update(outputs),
    )
    ids, mask = prompt_batch(batch=2)
    build_model("llama").generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    names = set(telemetry.generation_spans()[-1].attributes)
    assert any(name.startswith(DETAIL) and name not in COMPACT for name in names) == detail
    assert names >= COMPACT if mode != "summary" else not COMPACT & names
    assert ("corevital.layers.prompt.basin_score" in names) == detail
    assert "corevital.health.nan_detected" in names and "corevital.prompt.basin_score.min" in names
    # summary mode skips descriptive per-layer work nothing exports; what flags and blame need stays.
    assert ("hidden_states.layers.std" in step_names) == (mode != "summary")
    assert ("attention.layers.concentration.max" in step_names) == (mode != "summary")
    assert {
        "health.layers.nan",
        "hidden_states.layers.l2_norm",
        "attention.layers.collapsed",
    } <= step_names


def test_step_hooks_never_sync_with_the_host(monkeypatch):
    """No .item()/.cpu()/.tolist()/.numpy() inside step hooks: on a GPU each would stall generation."""
    calls: list[str] = []
    for method in ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, method)

        def guarded(self, *args, _original=original, _name=method, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, guarded)
    info = make_info(rows=2)
    for plugin in BUILT_INS:
        start = getattr(plugin, "corevital_generation_start", None)
        if start is not None:
            start(info)
    for index in range(4):
        step = StepCapture(
            index=index,
            rows=2,
            logits=torch.randn(2, 50),
            hidden=torch.randn(3, 2, 16),
            attention=torch.softmax(torch.randn(3, 2, 4, 5 + index), dim=-1),
            attention_keys=torch.full((3, 2), 5 + index),
            chosen=torch.tensor([7, 8]),
        )
        for plugin in BUILT_INS:
            hook = getattr(plugin, "corevital_step", None)
            if hook is not None:
                outputs = hook(info, step)
                assert all(value.shape[0] == 2 for value in outputs.values())
    assert calls == []
