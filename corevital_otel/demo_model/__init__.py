"""The embedded demo model: a small GPT-2 trained on the Python standard library's own sources.

Trained by ``scripts/train_demo_model.py`` (see this directory's README.md, the model card). Load it
like any local model::

    from corevital_otel.demo_model import DEMO_MODEL_DIR
    model = AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR)
"""

from __future__ import annotations

from pathlib import Path

DEMO_MODEL_DIR: Path = Path(__file__).resolve().parent
# Shown as gen_ai.request.model instead of the install path (which would leak a local directory name).
DEMO_MODEL_NAME = "corevital-otel-demo"

__all__ = ["DEMO_MODEL_DIR", "DEMO_MODEL_NAME"]
