"""Model families: which threshold profile a model's metrics are judged against."""

from __future__ import annotations

FAMILIES = ("gpt2", "llama", "mistral", "mixtral", "qwen2", "phi3", "t5", "bart")


def model_family(model_type: str) -> str:
    """The family of a transformers ``model_type`` (``qwen2_moe`` -> ``qwen2``), else ``default``."""
    model_type = (model_type or "").lower()
    for family in sorted(FAMILIES, key=len, reverse=True):
        if model_type == family or model_type.startswith(family + "_"):
            return family
    if model_type in ("mt5", "umt5", "longt5"):
        return "t5"
    if model_type in ("mbart", "bart"):
        return "bart"
    return "default"
