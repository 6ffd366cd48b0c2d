"""``corevital-otel langfuse-dashboards``: create the CoreVital dashboards on a Langfuse instance.

Langfuse has no file provisioning, so the definitions in ``dashboards/langfuse/*.json`` go through its
dashboards API: each widget is created (``POST /api/public/unstable/dashboard-widgets``), then the
dashboard (``POST /api/public/unstable/dashboards``), then one placement per widget
(``POST /api/public/unstable/dashboards/{id}/placements``). A dashboard whose name already exists is
left alone, so running the command twice creates nothing twice.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, TextIO

API = "/api/public/unstable"
# The definitions ship in the source tree, next to the Grafana dashboards.
DEFAULT_FILE = Path(__file__).resolve().parents[2] / "dashboards" / "langfuse" / "corevital-dashboards.json"
_PAGE_SIZE = 100


class LangfuseError(RuntimeError):
    """A Langfuse API call failed (HTTP error or unreachable host)."""


class LangfuseClient:
    """The few dashboards-API calls this command needs, authenticated with the project's key pair."""

    def __init__(self, host: str, public_key: str, secret_key: str, timeout: float = 30.0) -> None:
        self.host = host.rstrip("/")
        token = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode("ascii")
        self._headers = {
            "Authorization": f"Basic {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        url = f"{self.host}{API}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:500]
            raise LangfuseError(f"{method} {url}: HTTP {error.code} {detail}") from None
        except (urllib.error.URLError, OSError) as error:
            raise LangfuseError(f"{method} {url}: {error}") from None
        return json.loads(payload) if payload else None

    def dashboard_names(self) -> set[str]:
        names: set[str] = set()
        page = 1
        while True:
            listing = self.request("GET", "/dashboards", query={"page": page, "limit": _PAGE_SIZE})
            names.update(item["name"] for item in listing.get("data", []))
            total_pages = listing.get("meta", {}).get("totalPages", 1)
            if page >= total_pages:
                return names
            page += 1

    def create_dashboard(self, definition: dict[str, Any]) -> str:
        """Create one dashboard with its widgets; returns the new dashboard's id."""
        widget_ids = [
            self.request("POST", "/dashboard-widgets", tile["widget"])["id"] for tile in definition["widgets"]
        ]
        body = {"name": definition["name"], "description": definition.get("description", "")}
        if definition.get("filters"):
            body["filters"] = definition["filters"]
        dashboard_id = self.request("POST", "/dashboards", body)["id"]
        for tile, widget_id in zip(definition["widgets"], widget_ids, strict=True):
            placement = {"type": "widget", "widgetId": widget_id}
            placement.update({key: tile[key] for key in ("x", "y", "width", "height") if key in tile})
            self.request("POST", f"/dashboards/{dashboard_id}/placements", placement)
        return dashboard_id


def load_definitions(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)["dashboards"]


def provision(client: LangfuseClient, definitions: list[dict[str, Any]], out: TextIO | None = None) -> int:
    """Create every dashboard that does not exist yet; returns how many were created."""
    out = out or sys.stdout
    existing = client.dashboard_names()
    created = 0
    for definition in definitions:
        if definition["name"] in existing:
            print(f"exists, left unchanged: {definition['name']}", file=out)
            continue
        dashboard_id = client.create_dashboard(definition)
        print(
            f"created: {definition['name']} ({len(definition['widgets'])} widgets, id {dashboard_id})",
            file=out,
        )
        created += 1
    return created


def run(arguments: argparse.Namespace) -> int:
    missing = [
        flag
        for flag, value in (
            ("--host", arguments.host),
            ("--public-key", arguments.public_key),
            ("--secret-key", arguments.secret_key),
        )
        if not value
    ]
    if missing:
        print(
            f"langfuse-dashboards: missing {', '.join(missing)} (or the LANGFUSE_* variables)",
            file=sys.stderr,
        )
        return 2
    if not arguments.file.is_file():
        print(f"langfuse-dashboards: no definitions at {arguments.file}; pass --file", file=sys.stderr)
        return 2
    definitions = load_definitions(arguments.file)
    client = LangfuseClient(arguments.host, arguments.public_key, arguments.secret_key, arguments.timeout)
    try:
        provision(client, definitions)
    except LangfuseError as error:
        print(f"langfuse-dashboards: {error}", file=sys.stderr)
        return 1
    return 0


def register(subcommands: Any) -> None:
    parser = subcommands.add_parser(
        "langfuse-dashboards",
        help="create the CoreVital dashboards on a Langfuse instance",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("LANGFUSE_HOST"),
        help="Langfuse base URL, e.g. https://cloud.langfuse.com (default: $LANGFUSE_HOST)",
    )
    parser.add_argument(
        "--public-key",
        default=os.environ.get("LANGFUSE_PUBLIC_KEY"),
        help="project public key (default: $LANGFUSE_PUBLIC_KEY)",
    )
    parser.add_argument(
        "--secret-key",
        default=os.environ.get("LANGFUSE_SECRET_KEY"),
        help="project secret key (default: $LANGFUSE_SECRET_KEY)",
    )
    parser.add_argument(
        "--file",
        type=Path,
        default=DEFAULT_FILE,
        help="dashboard definitions (default: dashboards/langfuse/corevital-dashboards.json)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request (default: 30)")
    parser.set_defaults(run=run)
