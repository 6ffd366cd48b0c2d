"""The benchmarks are scripts run as files, not package modules: the tests load them from their files."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).parent


def load_script(path: Path | str) -> ModuleType:
    """The script at ``path`` (a name alone: the script of that name beside this file), loaded once and
    registered under its name in ``sys.modules``, where dataclasses look their module up."""
    path = Path(path)
    if path.suffix != ".py":
        path = HERE / f"{path}.py"
    loaded = sys.modules.get(path.stem)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path.resolve():
        return loaded
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module
