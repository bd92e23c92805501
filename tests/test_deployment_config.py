"""docker-compose.yml and collector-config/ hang together (no Docker engine here: structure only).

No otelcol binary can be had from a package registry here, so the Collector's own
`validate` does not run; these tests check what can be checked from the files: components
and pipelines, the config merge of each profile, image pins, ports, secrets, and that the
dashboard asks for metrics, labels, columns and datasources that exist.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from hive_otel_failures import semconv
from hive_otel_failures.index import advice
from hive_otel_failures.index.schema import MIGRATIONS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "collector-config"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
BASE = yaml.safe_load((CONFIG / "otel-collector.yaml").read_text())
OVERLAYS = {p: yaml.safe_load((CONFIG / f"otel-collector.{p}.yaml").read_text()) for p in ("default", "central")}
DASHBOARD = json.loads((CONFIG / "grafana/dashboards/hive-failures.json").read_text())
DATASOURCES = yaml.safe_load((CONFIG / "grafana/provisioning/datasources/datasources.yaml").read_text())["datasources"]
CENTRAL_ONLY = {"postgres", "hive-failures-ingest"}
KINDS = ("receivers", "processors", "exporters", "connectors", "extensions")


def merge(base: object, overlay: object) -> object:
    """The Collector's merge of several --config files: maps merge deeply, anything else is replaced."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for key, value in overlay.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    return overlay


def collector(profile: str) -> dict:
    return merge(BASE, OVERLAYS[profile])  # type: ignore[return-value]


def targets(datasource_type: str | None = None) -> list[dict]:
    return [t for p in DASHBOARD["panels"] for t in p["targets"]
            if datasource_type is None or t["datasource"]["type"] == datasource_type]


# --- compose ---------------------------------------------------------------------------------

def test_every_mounted_file_exists_in_the_repository() -> None:
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in COMPOSE.get("volumes", {}), f"{name} uses undeclared volume {source}"


def test_ports_are_bound_to_loopback_only() -> None:
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and re.fullmatch(r"127\.0\.0\.1:\d+:\d+", port), \
                f"{name} exposes {port} beyond this machine"


def test_every_image_is_pinned_to_a_version() -> None:
    for name, service in SERVICES.items():
        if "build" in service:
            assert "image" not in service, f"{name}: a built image needs no tag that looks pulled"
            dockerfile = ROOT / service["build"]["context"] / service["build"]["dockerfile"]
            images = re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), re.M)
        else:
            images = [service["image"]]
        assert images, f"{name} has no image"
        for image in images:
            repository, _, tag = image.partition(":")
            assert repository and tag, f"{name}: {image} has no tag"
            # A release: major.minor[.patch] (postgres tags its releases 18.6), a variant suffix allowed.
            assert re.fullmatch(r"v?\d+\.\d+(\.\d+)?(-[a-z0-9.]+)?", tag), f"{name}: {image} is not a release"


def test_jaeger_is_the_v2_image() -> None:
    assert SERVICES["jaeger"]["image"].startswith("jaegertracing/jaeger:2.")
    assert not any(s.get("image", "").startswith("jaegertracing/all-in-one") for s in SERVICES.values())


def test_the_central_profile_is_what_adds_postgres_and_the_ingest() -> None:
    profiled = {name for name, service in SERVICES.items() if service.get("profiles")}
    assert profiled == CENTRAL_ONLY
    for name in CENTRAL_ONLY:
        assert SERVICES[name]["profiles"] == ["central"]
    default = set(SERVICES) - profiled
    assert default == {"otel-collector", "jaeger", "tempo", "prometheus", "grafana"}
    for name in default:  # a default service that waited on a central one would not start alone
        depends = SERVICES[name].get("depends_on", [])
        assert not CENTRAL_ONLY & set(depends), f"{name} depends on a central-only service"
    ingest = SERVICES["hive-failures-ingest"]
    assert ingest["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "collector-config/" in ingest["build"]["dockerfile"] and ingest["build"]["context"] == "."
    command = " ".join(ingest["command"])
    assert "--db=postgresql://hive@postgres:5432/" in command and "--grpc-port=4317" in command


def test_the_collector_loads_the_overlay_of_the_active_profile() -> None:
    command = SERVICES["otel-collector"]["command"]
    assert command[0] == "--config=/etc/otelcol/otel-collector.yaml"
    assert command[1] == "--config=/etc/otelcol/otel-collector.${COMPOSE_PROFILES:-default}.yaml"
    mounted = {v.split(":")[1] for v in SERVICES["otel-collector"]["volumes"]}
    for profile in ("default", "central"):
        assert f"/etc/otelcol/otel-collector.{profile}.yaml" in mounted


def test_secrets_come_from_the_environment_and_are_never_required_by_interpolation() -> None:
    # Compose interpolates every service before it applies profiles: a `${VAR:?}` in a
    # central-only service would stop the default profile from starting.
    assert ":?" not in json.dumps(COMPOSE)
    secrets = {"HIVE_FAILURES_INGEST_TOKEN", "HIVE_FAILURES_DB_PASSWORD", "HIVE_FAILURES_GRAFANA_DB_PASSWORD"}
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if key in secrets | {"POSTGRES_PASSWORD", "PGPASSWORD"}:
                assert re.fullmatch(r"\$\{HIVE_FAILURES_\w+:-\}", str(value)), f"{name}.{key} is not from the env"
    assert SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"] == "${HIVE_FAILURES_DB_PASSWORD:-}"
    assert SERVICES["hive-failures-ingest"]["environment"]["HIVE_FAILURES_INGEST_TOKEN"] \
        == SERVICES["otel-collector"]["environment"]["HIVE_FAILURES_INGEST_TOKEN"]
    assert "password" not in " ".join(SERVICES["hive-failures-ingest"]["command"]).lower()


def test_the_ingest_image_is_built_from_this_repository_with_the_postgres_extra() -> None:
    dockerfile = (CONFIG / "ingest/Dockerfile").read_text()
    assert re.search(r'pip install "\.\[postgres\]"', dockerfile)
    assert 'ENTRYPOINT ["hive-failures", "ingest"]' in dockerfile
    assert re.search(r"^USER (?!0\b|root\b)\S+", dockerfile, re.M), "the ingest must not run as root"
    ignore = (CONFIG / "ingest/Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*")] == "*" and "!hive_otel_failures/" in ignore
    for copied in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for source in copied.split():
            assert (ROOT / source).exists(), f"the Dockerfile copies missing {source}"


# --- the Collector ---------------------------------------------------------------------------

@pytest.mark.parametrize("profile", ["default", "central"])
def test_every_pipeline_names_defined_components(profile: str) -> None:
    config = collector(profile)
    pipelines = config["service"]["pipelines"]
    connectors = set(config.get("connectors", {}))
    used_as = {"exporter": set(), "receiver": set()}
    for name, pipeline in pipelines.items():
        signal = name.split("/")[0]
        assert signal in {"traces", "metrics", "logs"}, name
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                defined = set(config.get(kind, {})) | (connectors if kind != "processors" else set())
                assert component in defined, f"{profile}: {name} uses {component}, not defined"
                if component in connectors:
                    used_as[kind[:-1]].add(component)
        assert pipeline["receivers"] and pipeline["exporters"], name
    # A connector is the exporter of one pipeline and the receiver of another, or it is an error.
    assert used_as["exporter"] == used_as["receiver"] == connectors
    for extension in config["service"].get("extensions", []):
        assert extension in config["extensions"]
    # Nothing defined and left unused (the Collector accepts it, but it is a mistake here).
    for kind in ("receivers", "processors", "exporters"):
        used = {c for p in pipelines.values() for c in p.get(kind, [])}
        assert set(config.get(kind, {})) <= used, f"{profile}: unused {kind}"


@pytest.mark.parametrize("profile", ["default", "central"])
def test_memory_limiter_first_and_batch_last_in_every_pipeline(profile: str) -> None:
    for name, pipeline in collector(profile)["service"]["pipelines"].items():
        processors = pipeline["processors"]
        assert processors[0] == "memory_limiter", name
        assert processors[-1] == "batch", name


def test_all_traces_go_to_jaeger_v2_and_tempo() -> None:
    config = collector("default")
    (traces,) = [p for n, p in config["service"]["pipelines"].items() if "otlp_grpc/jaeger" in p["exporters"]]
    assert traces["receivers"] == ["otlp"] and traces["processors"] == ["memory_limiter", "batch"]
    assert {config["exporters"][e]["endpoint"] for e in traces["exporters"]} == {"jaeger:4317", "tempo:4317"}
    tempo = yaml.safe_load((CONFIG / "tempo.yaml").read_text())
    assert tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    # Tempo 3 refuses the 2.x blocks it removed.
    assert not {"ingester", "ingester_client", "compactor", "metrics_generator_client"} & set(tempo)


def test_collector_listens_where_the_client_sends() -> None:
    protocols = BASE["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317") and protocols["http"]["endpoint"].endswith(":4318")
    published = {p.split(":")[1] for p in SERVICES["otel-collector"]["ports"]}
    assert {"4317", "4318"} <= published


def test_failure_spans_are_selected_by_the_names_the_package_emits() -> None:
    statements = BASE["processors"]["transform/mark_failure_spans"]["trace_statements"]
    assert statements[0]["context"] == "spanevent"
    mark = statements[0]["statements"][0]
    assert f'spanevent.name == "{semconv.FAILURE_EVENT}"' in mark
    marker = re.search(r'set\(span\.attributes\["([^"]+)"\], true\)', mark).group(1)
    (condition,) = BASE["processors"]["filter/failure_and_run_spans"]["trace_conditions"]
    # Dropped: spans neither marked nor covering a run.
    assert condition == f'span.attributes["{marker}"] == nil and span.attributes["{semconv.RUN_OUTCOME}"] == nil'
    assert BASE["processors"]["transform/unmark"]["trace_statements"][0]["statements"] == [
        f'delete_key(span.attributes, "{marker}")']
    failures = BASE["service"]["pipelines"]["traces/failures"]["processors"]
    assert failures.index("transform/mark_failure_spans") < failures.index("filter/failure_and_run_spans") \
        < failures.index("transform/unmark")


def test_only_the_central_profile_sends_failure_spans_to_the_ingest_with_the_bearer_token() -> None:
    default, central = collector("default"), collector("central")
    assert default == BASE, "the default overlay must change nothing"
    assert "otlp_http/ingest" not in default["exporters"]
    assert central["service"]["pipelines"]["traces/failures"]["exporters"] == ["span_metrics", "otlp_http/ingest"]
    ingest = central["exporters"]["otlp_http/ingest"]
    assert ingest["endpoint"] == "http://hive-failures-ingest:4318"
    assert ingest["headers"] == {"Authorization": "Bearer ${env:HIVE_FAILURES_INGEST_TOKEN}"}
    assert "hive-failures-ingest" in SERVICES and "4318" in " ".join(SERVICES["hive-failures-ingest"]["command"])
    # Only failure and run spans: the ingest exporter sits in the filtered pipeline, nowhere else.
    for name, pipeline in central["service"]["pipelines"].items():
        if "otlp_http/ingest" in pipeline["exporters"]:
            assert "filter/failure_and_run_spans" in pipeline["processors"], name


# --- metrics: what span_metrics produces and the dashboard asks for ----------------------------

def produced_metrics() -> dict[str, set[str]]:
    """Prometheus names and labels of the span_metrics connector's output, as its README and the
    Prometheus exporter's UnderscoreEscapingWithSuffixes translation give them."""
    connector = BASE["connectors"]["span_metrics"]
    assert BASE["exporters"]["prometheus"]["translation_strategy"] == "UnderscoreEscapingWithSuffixes"
    assert connector["histogram"]["unit"] == "s"

    def prom(name: str) -> str:
        return re.sub(r"[^a-zA-Z0-9_]", "_", name)

    prefix = prom(connector["namespace"]) + "_"
    common = {"service_name", "span_name", "span_kind", "status_code"}
    common |= {prom(d["name"]) for d in connector["dimensions"]}
    events = common | {prom(d["name"]) for d in connector["events"]["dimensions"]}
    histogram = common | {"le"}
    return {prefix + "calls_total": common, prefix + "events_total": events,
            **{prefix + "duration_seconds_" + s: histogram for s in ("bucket", "sum", "count")}}


PROMQL_WORDS = {"sum", "by", "rate", "increase", "sort_desc", "without", "avg", "max", "min", "count", "topk"}


def promql_parts(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and label names a PromQL expression uses (the forms this dashboard writes)."""
    stripped = re.sub(r'"[^"]*"', '""', expr)
    labels = set(re.findall(r"([a-zA-Z_]\w*)\s*(?:!=|=~|!~|=)", stripped))
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", stripped):
        labels |= {g.strip() for g in group.split(",") if g.strip()}
    without_braces = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\b(?:by|without)\s*\([^)]*\)", " ", stripped)
    names = {w for w in re.findall(r"\b[a-zA-Z_:][\w:]*\b", without_braces) if w not in PROMQL_WORDS}
    return names, labels


def test_span_metrics_dimensions_are_the_attributes_the_package_emits() -> None:
    connector = BASE["connectors"]["span_metrics"]
    record_fields = {semconv.FAILURE_PREFIX + f for f in ("agent_id", "node_id", "kind", "error_type")}
    emitted = {semconv.GEN_AI_AGENT_ID, semconv.HIVE_NODE_ID, semconv.ERROR_TYPE, semconv.RUN_OUTCOME,
               semconv.RUN_AGENT_ID} | record_fields
    names = [d["name"] for d in connector["dimensions"] + connector["events"]["dimensions"]]
    assert set(names) <= emitted
    assert len(names) == len(set(names)), "a dimension named twice"
    assert record_fields <= set(names)
    assert connector["events"]["enabled"] is True


def test_dashboard_prometheus_queries_name_metrics_and_labels_span_metrics_produces() -> None:
    produced = produced_metrics()
    queries = [t["expr"] for t in targets("prometheus")]
    assert queries
    for expr in queries:
        names, labels = promql_parts(expr)
        assert names, expr
        for name in names:
            assert name in produced, f"{name} is not a metric span_metrics produces ({sorted(produced)})"
            missing = labels - produced[name]
            assert not missing, f"{name} has no label {missing} in: {expr}"


def test_the_promql_reader_catches_a_wrong_metric_or_label() -> None:
    produced = produced_metrics()
    names, labels = promql_parts('sum by (hive_failure_kind) (rate(hive_spans_calls_total{x="a{b}"}[5m]))')
    assert names == {"hive_spans_calls_total"} and labels == {"hive_failure_kind", "x"}
    assert not labels <= produced["hive_spans_calls_total"]  # event labels are not on calls
    assert "traces_span_metrics_calls_total" not in produced


def test_dashboard_shows_failure_rate_by_agent_and_node_and_the_run_failure_rate() -> None:
    exprs = " ".join(t["expr"] for t in targets("prometheus"))
    for label in ("hive_failure_agent_id", "hive_failure_node_id", "hive_failure_kind", "hive_failure_error_type",
                  "hive_run_agent_id", "hive_run_outcome"):
        assert label in exprs


# --- the index and traces panels --------------------------------------------------------------

def schema_columns() -> dict[str, set[str]]:
    tables: dict[str, set[str]] = {}
    for migration in MIGRATIONS:
        for table, body in re.findall(r"CREATE TABLE (\w+) \((.*?)\)(?: WITHOUT ROWID)?;", migration, re.S):
            tables[table] = {line.split()[0] for line in body.splitlines()
                             if line.strip() and not line.split()[0].isupper() and not line.strip().startswith("--")}
    return tables


def test_dashboard_sql_names_tables_and_columns_that_exist_in_the_schema() -> None:
    tables = schema_columns()
    assert {"fingerprint", "sessions", "count", "last_seen"} <= tables["patterns"]  # the reader itself works
    sqls = [t["rawSql"] for t in targets("grafana-postgresql-datasource")]
    assert sqls
    for sql in sqls:
        named = set(re.findall(r"\b(?:FROM|JOIN)\s+(?!LATERAL\b)(\w+)", sql))
        assert named, sql
        for table in named:
            assert table in tables, f"no table {table}"
        aliases = {t: t for t in named}
        aliased = r"\b(?:FROM|JOIN)\s+(?!LATERAL\b)(\w+)\s+(?!ON\b|WHERE\b|LEFT\b|ORDER\b)(\w+)"
        aliases.update({alias: table for table, alias in re.findall(aliased, sql)})
        # A LATERAL subquery's alias stands for the table it selects from.
        aliases.update({alias: table for table, alias in
                        re.findall(r"JOIN LATERAL \(\s*SELECT .*?\bFROM (\w+).*?\)\s+(\w+)\s+ON", sql, re.S)})
        for alias, column in re.findall(r'\b(\w+)\."?(\w+)"?', sql):
            assert alias in aliases, f"unknown alias {alias}"
            assert column in tables[aliases[alias]], f"{aliases[alias]} has no column {column}"
        # Unqualified columns inside the resolutions subquery.
        for column in ("resolution", "ts"):
            assert column in tables["resolutions"]


def test_dashboard_advice_uses_the_rules_of_the_index() -> None:
    (sql,) = [t["rawSql"] for t in targets("grafana-postgresql-datasource")]
    from hive_otel_failures.index import FailureIndex
    import inspect
    min_sessions = inspect.signature(FailureIndex.advise).parameters["min_sessions"].default
    assert f"p.sessions >= {min_sessions} THEN 'recurring'" in sql
    human = re.search(r"p\.kind IN \(([^)]*)\) THEN 'human'", sql).group(1)
    hard = re.search(r"p\.kind IN \(([^)]*)\) THEN 'hard_constraint'", sql).group(1)
    assert set(re.findall(r"'(\w+)'", human)) == set(advice.HUMAN_KINDS)
    assert set(re.findall(r"'(\w+)'", hard)) == set(advice.HARD_CONSTRAINT_KINDS)


def test_dashboard_traces_panel_searches_tempo_for_hive_failure_events() -> None:
    (query,) = [t["query"] for t in targets("tempo")]
    assert f'event:name = "{semconv.FAILURE_EVENT}"' in query
    emitted = {v for k, v in vars(semconv).items() if k.isupper() and isinstance(v, str)}
    for attribute in re.findall(r"\bspan\.([\w.]+)", query):
        assert attribute in emitted, f"the package emits no span attribute {attribute}"


def test_datasource_uids_match_between_provisioning_and_dashboard() -> None:
    provisioned = {d["uid"]: d for d in DATASOURCES}
    assert {d["type"] for d in DATASOURCES} == {"tempo", "jaeger", "prometheus", "grafana-postgresql-datasource"}
    for panel in DASHBOARD["panels"]:
        for ref in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert ref["uid"] in provisioned, f"panel {panel['title']!r} names unknown uid {ref['uid']}"
            assert provisioned[ref["uid"]]["type"] == ref["type"]
    urls = {d["uid"]: d["url"] for d in DATASOURCES}
    assert urls["tempo"] == "http://tempo:3200" and urls["jaeger"] == "http://jaeger:16686"
    assert urls["prometheus"] == "http://prometheus:9090"
    index = provisioned["hive-failure-index"]
    assert index["url"] == "postgres:5432"
    assert index["jsonData"]["database"] == SERVICES["postgres"]["environment"]["POSTGRES_DB"]
    assert index["secureJsonData"]["password"] == "$HIVE_FAILURES_GRAFANA_DB_PASSWORD"
    assert f"CREATE ROLE {index['user']} LOGIN" in (CONFIG / "postgres/10-grafana-reader.sh").read_text()
    for host in ("tempo", "jaeger", "prometheus", "postgres"):
        assert host in SERVICES


def test_prometheus_scrapes_the_collectors_metrics_exporter() -> None:
    prometheus = yaml.safe_load((CONFIG / "prometheus.yaml").read_text())
    scraped = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    port = BASE["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    assert f"otel-collector:{port}" in scraped
    assert any(v.endswith(":/etc/prometheus/prometheus.yml:ro") for v in SERVICES["prometheus"]["volumes"])
