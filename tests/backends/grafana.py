"""Grafana files through grafana-foundation-sdk: decode a dashboard into the SDK's typed models for the
pinned Grafana line, encode it back, and report every key the SDK did not know (it drops those)."""

from __future__ import annotations

import json
from importlib.metadata import version
from typing import Any

from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

plugins.register_default_plugins()


def sdk_grafana_line() -> str:
    """`1769699379!11.6.0` -> `11.6`: the Grafana release the installed SDK describes."""
    release = version("grafana-foundation-sdk").split("!")[-1]
    return ".".join(release.split(".")[:2])


def round_trip(dashboard: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(Dashboard.from_json(dashboard), cls=JSONEncoder))


def lost_keys(original: Any, encoded: Any, path: str = "$") -> list[str]:
    """Paths present in ``original`` that are missing or different in ``encoded`` (defaults the SDK adds
    are fine; anything it dropped or changed is not)."""
    if isinstance(original, dict):
        if not isinstance(encoded, dict):
            return [path]
        lost = []
        for key, value in original.items():
            if key not in encoded:
                lost.append(f"{path}.{key}")
            else:
                lost += lost_keys(value, encoded[key], f"{path}.{key}")
        return lost
    if isinstance(original, list):
        if not isinstance(encoded, list) or len(original) != len(encoded):
            return [path]
        return [
            lost
            for index, item in enumerate(original)
            for lost in lost_keys(item, encoded[index], f"{path}[{index}]")
        ]
    return [] if original == encoded else [f"{path} ({original!r} became {encoded!r})"]


def knows_panel_type(panel_type: str) -> bool:
    return cogruntime.panelcfg_config(panel_type) is not None


def knows_datasource_type(datasource_type: str) -> bool:
    return datasource_type in cogruntime.Runtime().dataquery_variants
