from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hive_otel_failures import FailureIndexProcessor, open_index

from .pg_server import ENV_SKIP, ENV_URL, PostgresServer, find_bindir


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing a test does may touch ~/.hive or an index set in the caller's environment."""
    monkeypatch.setenv("HIVE_HOME", str(tmp_path / "hive_home"))
    monkeypatch.delenv("HIVE_FAILURES_DB", raising=False)
    monkeypatch.delenv("HIVE_FAILURES_EXPORT_CONTENT", raising=False)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "failures.db"


class Pipeline:
    """A real SDK TracerProvider with an in-memory exporter and the index processor."""

    def __init__(self, db_path: Path, **processor_kwargs: object) -> None:
        self.db_path = db_path
        self.exporter = InMemorySpanExporter()
        self.processor = FailureIndexProcessor(str(db_path), **processor_kwargs)  # type: ignore[arg-type]
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("tests")

    def flush(self) -> None:
        assert self.processor.force_flush(10_000), "the writer did not drain in time"

    def index(self):
        return open_index(self.db_path, create=False)


@pytest.fixture
def pipeline(db_path: Path):
    p = Pipeline(db_path)
    yield p
    p.provider.shutdown()


def db_bytes(path: Path) -> bytes:
    """Every byte SQLite keeps for this database (main file, WAL, shared memory)."""
    data = b""
    for suffix in ("", "-wal", "-shm", "-journal"):
        f = Path(str(path) + suffix)
        if f.exists():
            data += f.read_bytes()
    return data


os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HIVE_NO_FILE_LOG", "1")


class OTLPReceiver:
    """A real OTLP/HTTP endpoint on loopback (a collector) that keeps every ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/v1/traces":
                    request = ExportTraceServiceRequest()
                    request.ParseFromString(body)
                    receiver.requests.append(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list:
        return [s for r in self.requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]

    def resource_attributes(self) -> dict:
        return {a.key: a.value.string_value for r in self.requests for rs in r.resource_spans
                for a in rs.resource.attributes}


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    r = OTLPReceiver()
    yield r
    r.server.shutdown()


# --- the index on both backends ---------------------------------------------------------------
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session (see tests/pg_server.py); missing binaries fail, never skip silently."""
    if os.environ.get(ENV_URL):
        yield PostgresServer(url=os.environ[ENV_URL])
        return
    if os.environ.get(ENV_SKIP) == "1":
        pytest.skip(f"{ENV_SKIP}=1: no PostgreSQL server for these tests")
    bindir = find_bindir()
    if bindir is None:
        pytest.fail("no PostgreSQL binaries (initdb, pg_ctl): install Debian's postgresql package, set "
                    f"HIVE_FAILURES_TEST_PG_BIN or {ENV_URL}, or {ENV_SKIP}=1 to skip these tests")
    server = PostgresServer(bindir).start()
    yield server
    server.stop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def new_location(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[[], str]]:
    """Makes fresh, empty index locations of the test's backend: a SQLite path, or a new PostgreSQL database."""
    made: list[str] = []
    server = request.getfixturevalue("postgres_server") if backend == "postgresql" else None

    def location() -> str:
        if server is None:
            made.append(str(tmp_path / f"failures-{len(made)}.db"))
        else:
            made.append(server.database())
        return made[-1]

    yield location
    if server is not None:
        for url in made:
            server.drop(url)


@pytest.fixture
def db_location(new_location: Callable[[], str]) -> str:
    """An empty index location (a SQLite path or a PostgreSQL URL): each test runs on both backends."""
    return new_location()
