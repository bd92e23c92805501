"""docker-compose.yml and collector-config/ hang together (no Docker engine here: structure only)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
COLLECTOR = yaml.safe_load((ROOT / "collector-config" / "otel-collector.yaml").read_text())


def test_every_mounted_file_exists_in_the_repository() -> None:
    for name, service in COMPOSE["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_ports_are_bound_to_loopback_only() -> None:
    for name, service in COMPOSE["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} exposes {port} beyond this machine"


def test_collector_pipeline_uses_only_defined_components_and_reaches_both_backends() -> None:
    (pipeline,) = COLLECTOR["service"]["pipelines"].values()
    for kind in ("receivers", "processors", "exporters"):
        for component in pipeline[kind]:
            assert component in COLLECTOR[kind], f"{component} used but not defined"
    endpoints = {COLLECTOR["exporters"][e]["endpoint"] for e in pipeline["exporters"]}
    assert endpoints == {"jaeger:4317", "tempo:4317"}
    for host in ("jaeger", "tempo"):
        assert host in COMPOSE["services"]
    assert COMPOSE["services"]["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    tempo = yaml.safe_load((ROOT / "collector-config" / "tempo.yaml").read_text())
    assert tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")


def test_collector_listens_where_the_client_sends() -> None:
    protocols = COLLECTOR["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317") and protocols["http"]["endpoint"].endswith(":4318")
    published = {p.split(":")[1] for p in COMPOSE["services"]["otel-collector"]["ports"]}
    assert {"4317", "4318"} <= published


def test_grafana_datasources_and_dashboard_point_at_the_services() -> None:
    datasources = yaml.safe_load(
        (ROOT / "collector-config/grafana/provisioning/datasources/datasources.yaml").read_text())["datasources"]
    urls = {d["uid"]: d["url"] for d in datasources}
    assert urls == {"tempo": "http://tempo:3200", "jaeger": "http://jaeger:16686"}
    dashboard = json.loads((ROOT / "collector-config/grafana/dashboards/hive-failures.json").read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids <= set(urls)
    assert any('event:name = "hive.failure"' in t["query"] for p in dashboard["panels"] for t in p["targets"])
