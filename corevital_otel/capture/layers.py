"""Find a model's decoder layers and their self-attention modules, whatever the architecture names them.

Resolved once per model instance and cached: walking modules on every generate() would cost more than
the capture itself. A model type the search gets wrong is fixed in its family card (``layouts``): the
dotted path of its decoder layer list and the attribute holding each layer's self-attention.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from torch import nn

from ..families import layout_override

# Attribute names under which transformers models keep cross-attention inside a decoder layer.
_CROSS_ATTENTION_HINTS = ("cross", "encoder_attn", "encdec")


@dataclass(frozen=True)
class ModelLayout:
    """Where capture hooks go. ``layers`` is empty when no decoder layer list could be located."""

    layers: tuple[nn.Module, ...]
    self_attention: dict[int, int]  # id(attention module) -> layer index
    num_heads: int
    decoder_root: nn.Module | None = None  # its output's last_hidden_state is the post-final-norm state
    encoder_layers: tuple[nn.Module, ...] = ()  # seq2seq only
    encoder_self_attention: dict[int, int] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return len(self.layers)


_layouts: weakref.WeakKeyDictionary[nn.Module, ModelLayout] = weakref.WeakKeyDictionary()


def _config_int(config: object, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 0


def _decoder_root(model: nn.Module) -> nn.Module:
    """The sub-module that holds the decoder stack (the whole model for decoder-only ones)."""
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            decoder = get_decoder()
        except (AttributeError, NotImplementedError, TypeError, ValueError):
            decoder = None
        if isinstance(decoder, nn.Module):
            return decoder
    return model


def _find_layer_list(root: nn.Module, expected: int) -> nn.ModuleList | None:
    """The first ModuleList of ``expected`` modules of one class, else the longest homogeneous one."""
    best: nn.ModuleList | None = None
    for module in root.modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        if expected and len(module) == expected:
            return module
        if best is None or len(module) > len(best):
            best = module
    return best


def _self_attention_of(layer: nn.Module) -> nn.Module | None:
    """The module that calls the attention function: named *Attention, not cross-attention, and
    preferably one carrying ``layer_idx`` (T5 wraps its ``T5Attention`` in a ``T5LayerSelfAttention``)."""
    candidates = [
        module
        for name, module in layer.named_modules()
        if module is not layer
        and type(module).__name__.endswith("Attention")
        and not any(hint in name.lower() for hint in _CROSS_ATTENTION_HINTS)
    ]
    with_index = [module for module in candidates if hasattr(module, "layer_idx")]
    return (with_index or candidates or [None])[0]


def _encoder_root(model: nn.Module) -> nn.Module | None:
    if not getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return None
    get_encoder = getattr(model, "get_encoder", None)
    encoder = get_encoder() if callable(get_encoder) else None
    return encoder if isinstance(encoder, nn.Module) and encoder is not model else None


def _module_at(root: nn.Module, path: str) -> nn.Module | None:
    """``root.a.b`` for ``"a.b"``; None when a step is missing."""
    module: object = root
    for name in path.split("."):
        module = getattr(module, name, None)
    return module if isinstance(module, nn.Module) else None


def _attention_index(layers: tuple[nn.Module, ...], attribute: str | None = None) -> dict[int, int]:
    attention: dict[int, int] = {}
    for index, layer in enumerate(layers):
        module = _module_at(layer, attribute) if attribute else _self_attention_of(layer)
        if module is not None:
            attention[id(module)] = index
    return attention


def locate_layout(model: nn.Module) -> ModelLayout:
    """Return (and cache) the decoder layers and self-attention modules of ``model``."""
    cached = _layouts.get(model)
    if cached is not None:
        return cached
    config = getattr(model, "config", None)
    decoder_config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    expected = _config_int(
        decoder_config, "num_decoder_layers", "decoder_layers", "num_hidden_layers", "n_layer", "num_layers"
    )
    decoder_root = _decoder_root(model)
    override = layout_override(str(getattr(config, "model_type", "") or ""))
    if "layers" in override:
        layer_list = _module_at(model, override["layers"])
    else:
        layer_list = _find_layer_list(decoder_root, expected)
    layers = tuple(layer_list) if layer_list is not None else ()
    encoder_root = _encoder_root(model)
    encoder_list = None
    if encoder_root is not None:
        encoder_list = _find_layer_list(encoder_root, _config_int(config, "encoder_layers", "num_layers"))
    encoder_layers = tuple(encoder_list) if encoder_list is not None else ()
    heads = _config_int(
        decoder_config, "decoder_attention_heads", "num_attention_heads", "n_head", "num_heads"
    )
    layout = ModelLayout(
        layers=layers,
        self_attention=_attention_index(layers, override.get("attention")),
        num_heads=heads,
        decoder_root=decoder_root if decoder_root is not model else None,
        encoder_layers=encoder_layers,
        encoder_self_attention=_attention_index(encoder_layers),
    )
    _layouts[model] = layout
    return layout
