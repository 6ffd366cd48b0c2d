"""The compose files a Docker user starts: pinned images, every mounted file shipped, and the services
wired to one another the way the configs expect."""

from __future__ import annotations

import re

import yaml

from . import collector
from .repo import COLLECTOR_LANGFUSE, COMPOSE, COMPOSE_LANGFUSE

SERVICES = {"collector", "jaeger", "prometheus", "grafana"}


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_and_pinned_images() -> None:
    services = _compose()["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        assert re.search(r":v?\d+\.\d+\.\d+$", service["image"]), f"{name}: pin an exact image version"


def test_every_bind_mount_is_a_shipped_path() -> None:
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).resolve().exists(), (
                    f"{name}: {source} is not in the repository"
                )


def test_collector_configs_are_mounted_where_the_command_reads_them() -> None:
    base = _compose()["services"]["collector"]
    overlay = yaml.safe_load(COMPOSE_LANGFUSE.read_text())["services"]["collector"]
    for service in (base, {**base, **overlay}):
        mount = next(v for v in service["volumes"] if v.startswith("../collector-config:"))
        target = mount.split(":")[1]
        for argument in service["command"]:
            path = argument.removeprefix("--config=")
            assert path.startswith(f"{target}/")
            assert (COMPOSE.parent / "../collector-config" / path.removeprefix(f"{target}/")).is_file()


def test_langfuse_overlay_requires_every_variable_the_langfuse_config_reads() -> None:
    environment = yaml.safe_load(COMPOSE_LANGFUSE.read_text())["services"]["collector"]["environment"]
    needed = {
        name for name, default in collector.env_references(COLLECTOR_LANGFUSE).items() if default is None
    }
    assert needed == set(environment)
    assert all(":?" in value for value in environment.values()), "fail fast when a Langfuse variable is unset"


def test_prometheus_scrapes_the_collector_exporter_and_stores_exemplars() -> None:
    services = _compose()["services"]
    command = services["prometheus"]["command"]
    assert "--enable-feature=exemplar-storage" in command
    config_path = next(a for a in command if a.startswith("--config.file=")).split("=", 1)[1]
    mount = next(v for v in services["prometheus"]["volumes"] if v.startswith("../dashboards/prometheus:"))
    shipped = (
        COMPOSE.parent / "../dashboards/prometheus" / config_path.removeprefix(mount.split(":")[1] + "/")
    )
    prometheus = yaml.safe_load(shipped.read_text())
    targets = [t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    exporter = collector.load(collector.COLLECTOR_BASE)["exporters"]["prometheus"]["endpoint"]
    port = collector.ENV_REFERENCE.sub(lambda m: m.group(2) or "", exporter).rsplit(":", 1)[1]
    assert targets == [f"collector:{port}"]
