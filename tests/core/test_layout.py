"""Decoder layers and their self-attention, found by search or named by the family card's layout."""

from __future__ import annotations

import pytest

from corevital_otel import families
from corevital_otel.capture import layers
from tests.support.tiny_models import build_model


@pytest.mark.parametrize("family", ["gpt2", "llama", "t5"])
def test_the_search_finds_every_decoder_layer_and_its_self_attention(family):
    model = build_model(family)
    layout = layers.locate_layout(model)
    config = model.config.get_text_config(decoder=True)
    expected = getattr(config, "num_decoder_layers", None) or config.num_hidden_layers
    assert layout.num_layers == expected
    assert sorted(layout.self_attention.values()) == list(range(expected))


def test_a_family_card_layout_overrides_the_search_for_its_model_type(monkeypatch):
    model = build_model("llama")
    # Deliberately not the attention: only the override can make these the "self-attention" modules.
    override = {"layers": "model.layers", "attention": "mlp"}
    monkeypatch.setattr(
        layers, "layout_override", lambda model_type: override if model_type == "llama" else {}
    )
    layout = layers.locate_layout(model)
    assert layout.layers == tuple(model.model.layers)
    assert layout.self_attention == {id(layer.mlp): index for index, layer in enumerate(model.model.layers)}


def test_layout_override_reads_the_card_of_the_model_types_family(monkeypatch):
    card = families.family_card("llama")
    with_layout = families.FamilyCard(
        card.name,
        card.description,
        card.model_types,
        card.thresholds,
        card.risk_scales,
        {"llama": {"layers": "model.layers"}},
    )
    shipped = families.family_card
    monkeypatch.setattr(
        families, "family_card", lambda name: with_layout if name == "llama" else shipped(name)
    )
    assert families.layout_override("llama") == {"layers": "model.layers"}
    assert families.layout_override("LLaMA") == {"layers": "model.layers"}
    assert families.layout_override("gpt2") == {}
