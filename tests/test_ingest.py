"""``hive-failures ingest``: real OTLP exporters (HTTP and gRPC) and raw HTTP into a real index.

Producers are real TracerProviders on which ``record_failure`` / ``record_run`` put records;
each also runs the local index processor, whose rows are what the central index must hold.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GRPCSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                      ExportTraceServiceResponse)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (BatchSpanProcessor, SimpleSpanProcessor, SpanExporter,
                                            SpanExportResult)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import hive_otel_failures as hof
from hive_otel_failures import semconv
from hive_otel_failures.export import ContentPolicyExporter
from hive_otel_failures.faces.ingest import IngestError, IngestServer
from hive_otel_failures.scrub import TRUNCATED_KEY

TOKEN = "s3cret-ingest-token"


# --- producers ---------------------------------------------------------------------------------
class Producer:
    """A host: a real TracerProvider exporting over OTLP, with the local index processor beside it."""

    def __init__(self, local_db: Path, exporter: SpanExporter | None = None, *, batch: bool = False) -> None:
        self.memory = InMemorySpanExporter()
        self.local = hof.FailureIndexProcessor(str(local_db))
        self.local_db = local_db
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.memory))
        self.provider.add_span_processor(self.local)
        self.exporter = exporter
        if exporter is not None:
            self.provider.add_span_processor(
                BatchSpanProcessor(exporter, schedule_delay_millis=50, max_export_batch_size=64)
                if batch else SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("tests.ingest")

    def run(self, session: str, failures: int, *, success: bool = False, agent: str = "orders",
            version: str = "v1", start: int = 0) -> list[hof.FailureRecord]:
        """One run of an agent: its failures on node spans, its outcome on the run span."""
        recorded = []
        with self.tracer.start_as_current_span("invoke_agent orders") as run_span:
            for i in range(start, start + failures):
                with self.tracer.start_as_current_span(f"node n{i % 3}"):
                    recorded.append(hof.record_failure(failure(session, i, agent=agent, version=version)))
            with self.tracer.start_as_current_span("plain child"):
                pass
            hof.record_run(hof.RunOutcome(session_id=session, agent_id=agent, agent_version=version,
                                          success=success, failures=failures), span=run_span)
        return recorded

    def flush(self) -> None:
        assert self.provider.force_flush(30_000), "the producer did not flush"
        assert self.local.force_flush(10_000), "the local index did not drain"

    def request(self) -> ExportTraceServiceRequest:
        """Every finished span as one OTLP request, encoded by the exporters' own encoder."""
        return encode_spans(self.memory.get_finished_spans())

    def spans(self) -> list[ReadableSpan]:
        return list(self.memory.get_finished_spans())

    def close(self) -> None:
        self.provider.shutdown()


def failure(session: str, i: int, *, agent: str = "orders", version: str = "v1") -> hof.FailureRecord:
    return hof.FailureRecord(
        session_id=session, agent_id=agent, node_id=f"n{i % 3}", agent_version=version,
        kind=["exception", "node_failed", "doom_loop", "constraint_violated"][i % 4],
        error_type=["builtins.KeyError", "hive.doom_loop", "builtins.ValueError"][i % 3],
        error_message=f"order {1000 + i} has no field 'total' (api_key=sk-abcdefghijklmnopqrstuvwx)",
        traceback=f'Traceback (most recent call last):\n  File "agent.py", line {i}, in run\nKeyError: total',
        attempts=1 + i % 3,
        judge_feedback=[hof.JudgeFeedback(attempt=a, action="RETRY", feedback=f"missing total, try {a}")
                        for a in range(1, 1 + i % 3)],
        input_context={"order": {"id": 1000 + i, "lines": [{"sku": f"s{k}", "qty": k} for k in range(5)]},
                       "password": "hunter2"},
        memory_snapshot={"buffer": {"orders": list(range(i % 7))}},
        graph_snapshot={"nodes": ["load", "report"], "edges": [["load", "report"]], "version": version},
        constraints_violated=["must include totals"] if i % 4 == 3 else [],
        criteria_unmet=["report has totals", "report is JSON"][: i % 3],
        tool_calls=[hof.ToolCallAttempt(tool_name="lookup_order", arguments={"id": 1000 + i}, result="{}",
                                        is_error=bool(i % 2))],
    )


# --- the ingest --------------------------------------------------------------------------------
@pytest.fixture
def start_ingest(tmp_path: Path) -> Iterator[Callable[..., IngestServer]]:
    servers: list[IngestServer] = []

    def start(db: Path | None = None, **kwargs: Any) -> IngestServer:
        kwargs.setdefault("port", 0)
        kwargs.setdefault("grpc_port", 0)
        server = IngestServer(str(db or tmp_path / "central.db"), **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def url(server: IngestServer, path: str = "/v1/traces") -> str:
    return f"http://127.0.0.1:{server.http_port}{path}"


def post(server: IngestServer, body: bytes, content_type: str = "application/x-protobuf",
         headers: dict[str, str] | None = None, path: str = "/v1/traces") -> tuple[int, Any, bytes]:
    request = urllib.request.Request(url(server, path), data=body, method="POST",
                                     headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def get(server: IngestServer, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url(server, path), headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def status_message(body: bytes) -> str:
    status = status_pb2.Status()
    status.ParseFromString(body)
    return status.message


def otlp_json(request: ExportTraceServiceRequest) -> dict[str, Any]:
    """OTLP/JSON as the spec writes it: ids in hex, not protobuf JSON's base64."""
    data = json_format.MessageToDict(request)
    for rs in data.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = __import__("base64").b64decode(span[key]).hex()
    return data


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def failure_ids(db: Path) -> list[str]:
    with hof.open_index(db, create=False) as index:
        return [r.failure_id for r in index.recent(limit=100_000)]


def same_as_local(central_db: Path, local_db: Path) -> list[str]:
    """Every failure of the local index is in the central one, field for field; returns the ids."""
    with hof.open_index(local_db, create=False) as local, hof.open_index(central_db, create=False) as central:
        local_ids = sorted(r.failure_id for r in local.recent(limit=100_000))
        central_ids = sorted(r.failure_id for r in central.recent(limit=100_000))
        assert central_ids == local_ids
        for failure_id in local_ids:
            assert central.get(failure_id).model_dump() == local.get(failure_id).model_dump()
        assert [(p.fingerprint, p.count, p.sessions, p.error_type, p.transient) for p in central.patterns()] == \
               [(p.fingerprint, p.count, p.sessions, p.error_type, p.transient) for p in local.patterns()]
        assert central.stats().model_dump() == local.stats().model_dump()
        return local_ids


def exporter(kind: str, server: IngestServer, headers: dict[str, str] | None = None) -> SpanExporter:
    if kind == "http":
        return HTTPSpanExporter(endpoint=url(server), headers=headers, timeout=30)
    return GRPCSpanExporter(endpoint=f"127.0.0.1:{server.grpc_port}", insecure=True,
                            headers=tuple((headers or {}).items()), timeout=30)


# --- the real exporters, and the round trip ----------------------------------------------------------
@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_exporters_deliver_every_failure_and_run_as_the_local_index_holds_them(
        kind: str, tmp_path: Path, start_ingest: Callable[..., IngestServer]) -> None:
    server = start_ingest()
    producer = Producer(tmp_path / "local.db", exporter(kind, server), batch=True)
    recorded = []
    for s in range(12):
        recorded += producer.run(f"sess-{s}", failures=s % 4, success=s % 4 == 0, version=f"v{s % 2}")
    producer.flush()
    ids = same_as_local(tmp_path / "central.db", tmp_path / "local.db")
    assert sorted(ids) == sorted(r.failure_id for r in recorded) and len(ids) == 18
    with hof.open_index(tmp_path / "central.db", create=False) as central:
        stats = central.stats()
        assert (stats.runs, stats.failed_runs) == (12, 9)
        one = central.get(recorded[0].failure_id)
        assert one == recorded[0]  # what record_failure prepared, scrubbed: the API key and password are gone
        assert "sk-abc" not in one.error_message and one.input_context["password"] != "hunter2"
    counters = server.stats()
    assert (counters.failures_received, counters.failures_indexed, counters.failures_duplicate) == (18, 18, 0)
    assert (counters.runs_received, counters.runs_indexed) == (12, 12)
    assert counters.spans == len(producer.spans()) and counters.rejected == 0 and counters.queued_records == 0
    producer.close()


def test_the_content_policy_keeps_content_off_the_wire_and_out_of_the_central_index(
        tmp_path: Path, start_ingest: Callable[..., IngestServer]) -> None:
    server = start_ingest()
    producer = Producer(tmp_path / "local.db", ContentPolicyExporter(exporter("http", server)))
    (record,) = producer.run("sess-1", failures=1, start=1)
    producer.flush()
    with hof.open_index(tmp_path / "central.db", create=False) as central:
        row = central.get(record.failure_id)
    assert row.input_context is None and row.memory_snapshot is None and row.graph_snapshot is None
    assert row.tool_calls == [] and row.judge_feedback == []
    assert row.model_dump(exclude={"input_context", "memory_snapshot", "graph_snapshot", "tool_calls",
                                   "judge_feedback"}) == \
        record.model_dump(exclude={"input_context", "memory_snapshot", "graph_snapshot", "tool_calls",
                                   "judge_feedback"})
    producer.close()


# --- raw HTTP: encodings ---------------------------------------------------------------------------
def test_json_and_gzip_and_deflate_are_read_as_protobuf_is(tmp_path: Path,
                                                          start_ingest: Callable[..., IngestServer]) -> None:
    producer = Producer(tmp_path / "local.db")
    for s in range(3):
        producer.run(f"sess-{s}", failures=2, start=2 * s)
    producer.flush()
    request = producer.request()
    body = json.dumps(otlp_json(request)).encode()
    assert b'"traceId": "' in body and '"intValue": "' in body.decode()  # hex ids, int64 as strings, as the spec
    server = start_ingest()
    status, headers, answer = post(server, gzip.compress(body), "application/json",
                                   {"Content-Encoding": "gzip"})
    assert (status, headers["Content-Type"], json.loads(answer)) == (200, "application/json", {})
    same_as_local(tmp_path / "central.db", tmp_path / "local.db")

    import zlib
    other = tmp_path / "deflate.db"
    server2 = start_ingest(other)
    status, headers, answer = post(server2, zlib.compress(request.SerializeToString()),
                                   headers={"Content-Encoding": "deflate"})
    assert status == 200 and ExportTraceServiceResponse.FromString(answer) == ExportTraceServiceResponse()
    same_as_local(other, tmp_path / "local.db")
    producer.close()


def test_events_from_other_producers_get_ids_from_their_span_and_stay_one_row_on_retry(
        tmp_path: Path, start_ingest: Callable[..., IngestServer]) -> None:
    """A hive.failure event that record_failure did not make (another SDK, a hand-written payload)."""
    trace_id, span_id = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
    payload = {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name",
                                                               "value": {"stringValue": "billing"}}]},
              "scopeSpans": [{"scope": {"name": "elsewhere"}, "spans": [{
                  "traceId": trace_id, "spanId": span_id, "name": "charge", "kind": 2,
                  "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000001000000000",
                  "status": {"code": "STATUS_CODE_ERROR"},
                  "events": [{"name": "hive.failure", "timeUnixNano": "1700000000500000000", "attributes": [
                      {"key": "hive.failure.agent_id", "value": {"stringValue": "billing"}},
                      {"key": "hive.failure.session_id", "value": {"stringValue": "b-1"}},
                      {"key": "hive.failure.error_type", "value": {"stringValue": "builtins.TimeoutError"}},
                      {"key": "hive.failure.error_message", "value": {"stringValue": "card api timed out"}},
                      {"key": "hive.failure.attempts", "value": {"intValue": "3"}},
                      {"key": "hive.failure.criteria_unmet",
                       "value": {"arrayValue": {"values": [{"stringValue": "charged once"}]}}},
                      {"key": "hive.failure.input_context", "value": {"stringValue": '{"token": "abc"}'}},
                      {"key": "unrelated", "value": {"doubleValue": 1.5}}]},
                      {"name": "hive.run", "attributes": [
                          {"key": "hive.run.session_id", "value": {"stringValue": "b-1"}},
                          {"key": "hive.run.agent_id", "value": {"stringValue": "billing"}},
                          {"key": "hive.run.outcome", "value": {"stringValue": "failure"}},
                          {"key": "hive.run.failures", "value": {"intValue": 1}}]}],
                  "unknownFieldFromTheFuture": True}]}]}]}
    server = start_ingest()
    body = json.dumps(payload).encode()
    for _ in range(3):  # the exporter retried twice
        status, _, answer = post(server, body, "application/json")
        assert (status, json.loads(answer)) == (200, {})
    with hof.open_index(tmp_path / "central.db", create=False) as central:
        (row,) = central.recent(limit=10)
        assert (row.trace_id, row.span_id) == (trace_id, span_id)
        assert row.timestamp.timestamp() == 1700000000.5
        assert (row.attempts, row.criteria_unmet, row.kind) == (3, ["charged once"], "exception")
        assert row.input_context["token"] != "abc"  # prepared here: scrubbed with the central limits
        assert row.fingerprint and row.transient is not None
        stats = central.stats()
        assert (stats.runs, stats.failed_runs) == (1, 1)
    with sqlite3.connect(tmp_path / "central.db") as conn:  # not in the public API: the run's own failure count
        assert conn.execute("SELECT failures FROM runs").fetchall() == [(1,)]
    counters = server.stats()
    assert (counters.failures_indexed, counters.failures_duplicate) == (1, 2)
    assert (counters.runs_indexed, counters.runs_duplicate) == (1, 2)


def test_the_same_request_twice_is_one_row_each_and_counted_as_duplicates(
        tmp_path: Path, start_ingest: Callable[..., IngestServer]) -> None:
    producer = Producer(tmp_path / "local.db")
    producer.run("sess-a", failures=5)
    producer.run("sess-b", failures=0, success=True)
    producer.flush()
    body = producer.request().SerializeToString()
    server = start_ingest()
    assert post(server, body)[0] == 200
    assert post(server, body)[0] == 200
    same_as_local(tmp_path / "central.db", tmp_path / "local.db")
    with sqlite3.connect(tmp_path / "central.db") as conn:
        assert sorted(conn.execute("SELECT session_id, failures FROM runs")) == [("sess-a", 5), ("sess-b", 0)]
    counters = server.stats()
    assert (counters.failures_received, counters.failures_indexed, counters.failures_duplicate) == (10, 5, 5)
    assert (counters.runs_received, counters.runs_indexed, counters.runs_duplicate) == (4, 2, 2)
    _, stats = get(server, "/stats")
    assert json.loads(stats)["duplicates"] == {"failures": 5, "runs": 2}
    producer.close()


# --- refusals ----------------------------------------------------------------------------------------
def test_malformed_payloads_are_answered_400_with_a_message_and_counted(
        tmp_path: Path, start_ingest: Callable[..., IngestServer]) -> None:
    server = start_ingest()
    cases = [
        (b"\xff\xff\xff\xff", "application/x-protobuf", {}, "protobuf"),
        (b"{not json", "application/json", {}, "invalid JSON"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}', "application/json", {},
         "not hex"),
        (b'{"resourceSpans": {"oops": 1}}', "application/json", {}, "not a list"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": 5}]}]}]}', "application/json", {},
         "ExportTraceServiceRequest"),
        (b"\x1f\x8b\x08\x00garbage", "application/x-protobuf", {"Content-Encoding": "gzip"}, "gzip"),
    ]
    for body, content_type, headers, words in cases:
        status, answer_headers, answer = post(server, body, content_type, headers)
        assert status == 400, body
        message = json.loads(answer)["message"] if content_type == "application/json" else status_message(answer)
        assert words in message
    assert server.stats().malformed == len(cases)
    status, _, answer = post(server, b"hello", "text/plain")
    assert status == 415 and "application/x-protobuf" in json.loads(answer)["message"]
    assert post(server, b"", headers={"Content-Encoding": "br"})[0] == 415
    assert server.stats().unsupported == 2

    producer = Producer(tmp_path / "local.db")
    producer.run("sess-1", failures=2)
    producer.flush()
    assert post(server, producer.request().SerializeToString())[0] == 200  # still serving
    same_as_local(tmp_path / "central.db", tmp_path / "local.db")
    producer.close()


def test_a_failure_event_that_is_not_a_record_is_a_partial_success(
        tmp_path: Path, start_ingest: Callable[..., IngestServer]) -> None:
    producer = Producer(tmp_path / "local.db")
    producer.run("sess-1", failures=2)
    producer.flush()
    request = producer.request()
    bad = request.resource_spans[0].scope_spans[0].spans[0].events.add()
    bad.name = "hive.failure"
    attribute = bad.attributes.add()
    attribute.key, attribute.value.string_value = "hive.failure.attempts", "many"
    server = start_ingest()
    status, _, answer = post(server, request.SerializeToString())
    response = ExportTraceServiceResponse.FromString(answer)
    assert status == 200 and response.partial_success.rejected_spans == 1
    assert "attempts" in response.partial_success.error_message
    assert server.stats().invalid_records == 1
    same_as_local(tmp_path / "central.db", tmp_path / "local.db")  # the valid ones are all there
    producer.close()


def test_a_prepared_event_beyond_this_index_limits_is_prepared_again_the_others_are_taken_as_they_are(
        tmp_path: Path, start_ingest: Callable[..., IngestServer], monkeypatch: pytest.MonkeyPatch) -> None:
    producer = Producer(tmp_path / "local.db")
    with producer.tracer.start_as_current_span("node big"):
        big = hof.record_failure(failure("sess-1", 0).model_copy(update={"input_context": {"doc": "word " * 4000}}))
    with producer.tracer.start_as_current_span("node small"):
        small = hof.record_failure(failure("sess-1", 1))
    producer.flush()
    monkeypatch.setenv(semconv.ENV_MAX_FIELD_BYTES, "2048")  # the central index keeps less than the producer
    server = start_ingest()
    status, _, _ = post(server, producer.request().SerializeToString())
    assert status == 200
    with hof.open_index(tmp_path / "central.db", create=False) as central, \
            hof.open_index(tmp_path / "local.db", create=False) as local:
        assert central.get(small.failure_id).model_dump() == local.get(small.failure_id).model_dump()
        capped = central.get(big.failure_id)
        assert TRUNCATED_KEY in json.dumps(capped.input_context) and len(json.dumps(capped.input_context)) < 4096
        assert capped.model_dump(exclude={"input_context"}) == local.get(big.failure_id).model_dump(
            exclude={"input_context"})
    producer.close()


def test_oversized_bodies_are_answered_413_and_counted(tmp_path: Path,
                                                       start_ingest: Callable[..., IngestServer]) -> None:
    server = start_ingest(max_request_bytes=64 * 1024)
    status, _, answer = post(server, b"\0" * (200 * 1024))
    assert status == 413 and "65536" in status_message(answer)
    bomb = gzip.compress(b"\0" * (1024 * 1024))  # 1 KB on the wire, 1 MB once inflated
    status, _, answer = post(server, bomb, headers={"Content-Encoding": "gzip"})
    assert status == 413 and "decompressed" in status_message(answer)
    assert server.stats().too_large == 2
    producer = Producer(tmp_path / "local.db", exporter("http", server))
    producer.run("sess-1", failures=1)
    producer.flush()
    same_as_local(tmp_path / "central.db", tmp_path / "local.db")
    producer.close()


def test_off_loopback_a_token_is_required_to_start_and_on_every_request(
        tmp_path: Path, start_ingest: Callable[..., IngestServer], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HIVE_FAILURES_INGEST_TOKEN", raising=False)
    with pytest.raises(IngestError, match="HIVE_FAILURES_INGEST_TOKEN"):
        IngestServer(str(tmp_path / "central.db"), host="0.0.0.0", port=0, grpc_port=0)
    monkeypatch.setenv("HIVE_FAILURES_INGEST_TOKEN", TOKEN)
    server = start_ingest(host="0.0.0.0")
    producer = Producer(tmp_path / "local.db")
    producer.run("sess-1", failures=3)
    producer.flush()
    body = producer.request().SerializeToString()

    status, headers, _ = post(server, body)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert post(server, body, headers={"Authorization": "Bearer wrong"})[0] == 401
    assert post(server, body, headers={"Authorization": TOKEN})[0] == 401  # no scheme
    assert get(server, "/stats")[0] == 401 and get(server, "/metrics")[0] == 401
    assert get(server, "/healthz") == (200, b'{"status": "ok"}')  # probes need no token
    assert server.stats().unauthorized == 5

    assert exporter("grpc", server).export(producer.spans()) is SpanExportResult.FAILURE  # UNAUTHENTICATED
    assert server.stats().unauthorized == 6
    with hof.open_index(tmp_path / "central.db", create=False) as central:
        assert central.recent() == []
    grpc_ok = exporter("grpc", server, {"authorization": f"Bearer {TOKEN}"})
    assert grpc_ok.export(producer.spans()) is SpanExportResult.SUCCESS
    assert post(server, body, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert get(server, "/stats", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    same_as_local(tmp_path / "central.db", tmp_path / "local.db")
    assert server.stats().failures_duplicate == 3
    producer.close()


def test_a_full_queue_answers_429_and_resource_exhausted_with_retry_info_and_loses_nothing(
        tmp_path: Path, start_ingest: Callable[..., IngestServer]) -> None:
    """The index is locked by another writer; what was accepted is committed once it is free."""
    server = start_ingest(queue_records=4)
    first = Producer(tmp_path / "first.db")
    first.run("sess-1", failures=3)  # 3 failures and 1 run: the whole queue
    first.flush()
    refused = Producer(tmp_path / "refused.db")
    refused.run("sess-2", failures=1)
    refused.flush()
    late = Producer(tmp_path / "late.db")
    late.run("sess-3", failures=2)
    late.flush()

    lock = sqlite3.connect(tmp_path / "central.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    answers: dict[str, Any] = {}
    threading.Thread(target=lambda: answers.setdefault(
        "first", post(server, first.request().SerializeToString())), daemon=True).start()
    wait_for(lambda: server.stats().queued_records == 4, "the first request to be queued")

    status, headers, answer = post(server, refused.request().SerializeToString())
    assert status == 429 and int(headers["Retry-After"]) >= 1 and "queue is full" in status_message(answer)

    stub = trace_service_pb2_grpc.TraceServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
    with pytest.raises(grpc.RpcError) as raised:
        stub.Export(refused.request(), timeout=30)
    error = raised.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(error.trailing_metadata())
    assert error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]).retry_delay.seconds >= 1
    details = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert details.details[0].Is(error_details_pb2.RetryInfo.DESCRIPTOR)

    # A real exporter is refused too, waits Retry-After, and gets in once the index is free.
    exported: dict[str, SpanExportResult] = {}
    threading.Thread(target=lambda: exported.setdefault(
        "late", exporter("http", server).export(late.spans())), daemon=True).start()
    wait_for(lambda: server.stats().busy >= 3, "the exporter to be refused")
    lock.execute("ROLLBACK")
    lock.close()
    wait_for(lambda: "first" in answers and "late" in exported, "the answers")
    assert answers["first"][0] == 200 and exported["late"] is SpanExportResult.SUCCESS

    with hof.open_index(tmp_path / "central.db", create=False) as central:
        stored = {r.failure_id for r in central.recent(limit=100)}
        assert central.stats().runs == 2
    accepted = set(failure_ids(first.local_db) + failure_ids(late.local_db))
    assert stored == accepted and len(stored) == 5  # the refused request was never acknowledged, nor stored
    assert server.stats().busy == 3
    for producer in (first, refused, late):
        producer.close()


def test_a_restart_mid_run_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    """Producers keep exporting while the ingest stops and starts again on the same ports."""
    db = tmp_path / "central.db"
    server = IngestServer(str(db), port=0, grpc_port=0).start()
    ports = {"port": server.http_port, "grpc_port": server.grpc_port}
    http = Producer(tmp_path / "http.db", exporter("http", server), batch=True)
    grpc_producer = Producer(tmp_path / "grpc.db", exporter("grpc", server), batch=True)
    try:
        for s in range(40):
            for producer in (http, grpc_producer):
                producer.run(f"{'hg'[producer is grpc_producer]}-{s}", failures=2, start=s)
            if s == 20:
                assert server.stop()
                server = IngestServer(str(db), **ports).start()
        http.flush()
        grpc_producer.flush()
    finally:
        server.stop()
    with hof.open_index(db, create=False) as central:
        stored = sorted(r.failure_id for r in central.recent(limit=1000))
        assert central.stats().runs == 80
    produced = sorted(failure_ids(http.local_db) + failure_ids(grpc_producer.local_db))
    assert stored == produced and len(stored) == 160
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*), sum(failures) FROM runs").fetchone() == (80, 160)
    http.close()
    grpc_producer.close()


PRODUCER_PROCESS = """
import sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
import hive_otel_failures as hof
from tests.test_ingest import failure

kind, endpoint, local_db, name = sys.argv[1:5]
if kind == "http":
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    exporter = OTLPSpanExporter(endpoint=endpoint, timeout=30)
else:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=30)
provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50, max_export_batch_size=16))
local = hof.FailureIndexProcessor(local_db)
provider.add_span_processor(local)
tracer = provider.get_tracer("producer")

def runs(sessions):
    for s in sessions:
        with tracer.start_as_current_span("invoke_agent orders") as run_span:
            for i in range(2):
                with tracer.start_as_current_span("node"):
                    hof.record_failure(failure(f"{name}-{s}", i))
            hof.record_run(hof.RunOutcome(session_id=f"{name}-{s}", agent_id="orders", success=False, failures=2),
                           span=run_span)

runs(range(10))
assert provider.force_flush(60_000)
print("half", flush=True)
sys.stdin.readline()  # the ingest is down now: these exports fail and are retried
runs(range(10, 20))
assert provider.force_flush(60_000) and local.force_flush(60_000)
provider.shutdown()
"""


def test_three_producer_processes_into_postgresql_lose_nothing_across_a_restart(
        tmp_path: Path, postgres_server: Any) -> None:
    """The SDK's own exporters in three processes (http/protobuf and gRPC); the ingest restarts mid-run."""
    central = postgres_server.database()
    server = IngestServer(central, port=0, grpc_port=0).start()
    ports = {"port": server.http_port, "grpc_port": server.grpc_port}
    endpoints = {"http": url(server), "grpc": f"127.0.0.1:{server.grpc_port}"}
    kinds = ["http", "grpc", "http"]
    producers = [subprocess.Popen(
        [sys.executable, "-c", PRODUCER_PROCESS, kind, endpoints[kind], str(tmp_path / f"local-{n}.db"), f"p{n}"],
        cwd=Path(__file__).parent.parent, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE) for n, kind in enumerate(kinds)]
    try:
        for producer in producers:
            assert producer.stdout.readline().strip() == "half", producer.communicate(timeout=60)[1]
        assert server.stop()
        for producer in producers:
            producer.stdin.write("go on\n")
            producer.stdin.flush()
        time.sleep(1.0)  # the producers export into a closed port meanwhile
        server = IngestServer(central, **ports).start()
        errors = []
        for producer in producers:
            errors.append(producer.communicate(timeout=120)[1])
            assert producer.returncode == 0, errors[-1]
        assert all("retrying" in err for err in errors)  # the SDK's exporters met the closed port and retried
    finally:
        server.stop()
        for producer in producers:
            producer.kill()
    produced = sorted(i for n in range(3) for i in failure_ids(tmp_path / f"local-{n}.db"))
    assert len(produced) == 3 * 20 * 2
    with hof.open_index(central, create=False) as index:
        assert sorted(r.failure_id for r in index.recent(limit=1000)) == produced  # each once, none lost
        assert (index.stats().runs, index.stats().failed_runs) == (60, 60)
    import psycopg

    with psycopg.connect(central) as conn:  # not in the public API: each run merged once
        assert conn.execute("SELECT count(*), sum(failures) FROM runs").fetchone() == (60, 120)


# --- health and counters --------------------------------------------------------------------------------
def test_healthz_stats_and_metrics(tmp_path: Path, start_ingest: Callable[..., IngestServer]) -> None:
    server = start_ingest()
    producer = Producer(tmp_path / "local.db", exporter("grpc", server))
    producer.run("sess-1", failures=2)
    producer.flush()
    post(server, b"junk")
    assert get(server, "/healthz") == (200, b'{"status": "ok"}')
    status, body = get(server, "/stats")
    stats = json.loads(body)
    assert status == 200
    assert stats["received"]["failures"] == 2 and stats["indexed"] == {"failures": 2, "runs": 1}
    assert stats["rejected"]["malformed"] == 1 and stats["rejected"]["requests"] == 1
    assert stats["received"]["requests"] == 1 + 1 + 3  # the junk, and one export per span
    status, metrics = get(server, "/metrics")
    lines = metrics.decode().splitlines()
    assert 'hive_failures_ingest_records_indexed_total{record="failure"} 2' in lines
    assert 'hive_failures_ingest_requests_rejected_total{reason="malformed"} 1' in lines
    assert "# TYPE hive_failures_ingest_requests_total counter" in lines
    assert get(server, "/nope")[0] == 404 and get(server, "/v1/traces")[0] == 405
    assert server.stop()
    producer.close()


# --- the command --------------------------------------------------------------------------------------
def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "hive_otel_failures", "ingest", *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


def test_the_command_serves_until_sigterm_and_commits_what_it_acknowledged(tmp_path: Path, db_location: str) -> None:
    db = db_location  # a SQLite file, or a PostgreSQL database
    proc = _cli("--db", db, "--port", "0", "--grpc-port", "0")
    lines = []
    while not any("OTLP/gRPC" in line for line in lines):
        line = proc.stderr.readline()
        assert line, f"the ingest exited: {''.join(lines)}{proc.stderr.read()}"
        lines.append(line)
    http_port = int(next(line for line in lines if "OTLP/HTTP" in line).split(":")[2].split("/")[0])
    grpc_port = int(next(line for line in lines if "OTLP/gRPC" in line).rsplit(":", 1)[1])
    producer = Producer(tmp_path / "local.db", GRPCSpanExporter(endpoint=f"127.0.0.1:{grpc_port}", insecure=True))
    producer.run("sess-1", failures=3)
    producer.flush()
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=30) as response:
        assert response.status == 200
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert '"indexed": {"failures": 3, "runs": 1}' in err and "Traceback" not in err
    same_as_local(db, tmp_path / "local.db")
    producer.close()


@pytest.mark.parametrize("args, words", [
    (["--host", "0.0.0.0"], "HIVE_FAILURES_INGEST_TOKEN"),
    (["--db", "postgresql://user@127.0.0.1:1/failures"], "PostgreSQL"),
    (["--port", "70000"], "'--port'"),
    (["--queue-size", "0"], "'--queue-size'"),
])
def test_the_command_refuses_bad_input_with_exit_2_and_no_traceback(tmp_path: Path, args: list[str],
                                                                    words: str) -> None:
    env = {"HIVE_FAILURES_INGEST_TOKEN": "", "COLUMNS": "200"}
    proc = _cli("--db", str(tmp_path / "c.db"), "--port", "0", "--grpc-port", "0", *args, env=env)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and words in err and "Traceback" not in err


def test_the_command_says_which_port_is_taken(tmp_path: Path, start_ingest: Callable[..., IngestServer]) -> None:
    running = start_ingest()
    for args in (["--port", str(running.http_port)], ["--port", "0", "--grpc-port", str(running.grpc_port)]):
        proc = _cli("--db", str(tmp_path / "other.db"), *(["--grpc-port", "0"] if "--grpc-port" not in args else []),
                    *args)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and "cannot listen" in err and "Traceback" not in err, err
