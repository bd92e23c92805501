"""``hive-failures ingest``: one index for many hosts, fed over OTLP.

Producers (an instrumented Hive, or a Collector that routes failure spans here) export
traces over OTLP/HTTP (``POST /v1/traces``, protobuf or JSON, gzip or deflate) or OTLP/gRPC
(``TraceService/Export``). Spans that carry a ``hive.failure`` event become failures, spans
that carry a ``hive.run`` event become run outcomes; everything else is counted and dropped.

Why it is built this way:

- One mapping. Event attributes are decoded from OTLP AnyValues into the plain values the
  SDK would hold and go through ``record.from_attributes``/``to_attributes``, as in the local
  index processor: a failure indexed here is the row the producer's own processor writes.
  Events that ``record_failure`` marked prepared were scrubbed and capped on the producer;
  they are validated, not prepared a second time (that costs ~200 us a record). Others are
  prepared here with this index's limits.
- Acknowledged means committed. A request is answered 200 only once its rows are committed;
  a full queue answers 429 (gRPC RESOURCE_EXHAUSTED with RetryInfo) and a failing index 503
  (UNAVAILABLE with RetryInfo), both with a Retry-After the OTel exporters honour.
- Retries are harmless. A failure is keyed by its failure_id (the index keeps the first);
  an event without one gets an id derived from its span and position, so a retried request
  carries the same ids. A run outcome is merged into its session's row by the index, which
  adds its failure count: the ingest remembers the (trace, span) of the last runs it
  committed and merges each once.
- The writer is one thread that commits what waiting requests brought in one transaction,
  so many small exports cost one commit.
- Off loopback a bearer token is required (``HIVE_FAILURES_INGEST_TOKEN``), and whenever one
  is set every request but ``/healthz`` must carry it.

HTTP uses the standard library's threading server: no dependency, and each request's cost
is its payload's decoding and the commit, not the HTTP parsing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                      ExportTraceServiceResponse)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from pydantic import ValidationError

from .. import semconv
from ..index import FailureIndex, FailureIndexError, open_index
from ..record import (RunOutcome, as_prepared, filled_from_span, from_attributes, from_time_ns, prepare,
                      run_from_attributes, to_attributes)
from ..scrub import Limits

_log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 4318
DEFAULT_GRPC_PORT = 4317
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024  # compressed and decompressed alike
DEFAULT_QUEUE_RECORDS = 20_000  # failures and runs accepted, not yet committed
MAX_TRANSACTION_RECORDS = 4096  # records the writer commits at once
ACK_TIMEOUT_SECONDS = 30.0  # a request whose rows are not committed by then is answered 503 (a retry is harmless)
_RUNS_REMEMBERED = 200_000  # (trace, span) of committed run outcomes, to merge each once
_DRAIN_LIMIT = 64 * 1024 * 1024  # an unwanted body up to this size is read before answering, so the client sees it

_SERVICE = trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name
_FAILURE_EVENT, _RUN_EVENT = semconv.FAILURE_EVENT, semconv.RUN_EVENT
_PREFIX = semconv.FAILURE_PREFIX
_PROTOBUF_TYPES = frozenset({"application/x-protobuf", "application/protobuf"})
_JSON_TYPE = "application/json"


class IngestError(Exception):
    """The ingest cannot start: an unusable index, address or token."""


# --- counters -------------------------------------------------------------------------------------
@dataclass
class IngestStats:
    """What the ingest did since it started. Requests are export calls; records are failures and runs."""

    requests: int = 0  # export requests received (HTTP and gRPC), whatever became of them
    spans: int = 0  # spans in the requests that were read
    failures_received: int = 0
    runs_received: int = 0
    failures_indexed: int = 0  # new rows
    runs_indexed: int = 0  # run outcomes merged into the index
    failures_duplicate: int = 0  # already in the index (a retry, or the same failure sent twice)
    runs_duplicate: int = 0  # a run span already merged (a retry)
    invalid_records: int = 0  # hive.failure / hive.run events that are not records: reported as partial success
    unauthorized: int = 0  # 401 / UNAUTHENTICATED
    malformed: int = 0  # 400 / INVALID_ARGUMENT: not an OTLP export request
    too_large: int = 0  # 413
    unsupported: int = 0  # 415: a content type or encoding that is not OTLP's
    busy: int = 0  # 429 / RESOURCE_EXHAUSTED: the queue was full
    unavailable: int = 0  # 503 / UNAVAILABLE: the index failed to commit, or the ingest is stopping
    queued_records: int = 0
    queue_capacity: int = 0

    @property
    def rejected(self) -> int:
        return self.unauthorized + self.malformed + self.too_large + self.unsupported + self.busy + self.unavailable

    def as_json(self) -> dict[str, Any]:
        return {
            "received": {"requests": self.requests, "spans": self.spans, "failures": self.failures_received,
                         "runs": self.runs_received},
            "indexed": {"failures": self.failures_indexed, "runs": self.runs_indexed},
            "duplicates": {"failures": self.failures_duplicate, "runs": self.runs_duplicate},
            "rejected": {"requests": self.rejected, "unauthorized": self.unauthorized, "malformed": self.malformed,
                         "too_large": self.too_large, "unsupported": self.unsupported, "busy": self.busy,
                         "unavailable": self.unavailable, "invalid_records": self.invalid_records},
            "queue": {"records": self.queued_records, "capacity": self.queue_capacity},
        }

    def prometheus(self) -> str:
        """The counters in Prometheus' text exposition format."""
        out: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, int]]) -> None:
            out.append(f"# HELP hive_failures_ingest_{name} {help_text}")
            out.append(f"# TYPE hive_failures_ingest_{name} {kind}")
            out.extend(f"hive_failures_ingest_{name}{labels} {value}" for labels, value in samples)

        metric("requests_total", "counter", "OTLP export requests received.", [("", self.requests)])
        metric("spans_total", "counter", "Spans in the export requests that were read.", [("", self.spans)])
        for name, help_text, failures, runs in (
                ("records_received_total", "Failures and run outcomes received.", self.failures_received,
                 self.runs_received),
                ("records_indexed_total", "Failures and run outcomes written to the index.", self.failures_indexed,
                 self.runs_indexed),
                ("records_duplicate_total", "Failures and run outcomes the index already had (retries).",
                 self.failures_duplicate, self.runs_duplicate)):
            metric(name, "counter", help_text, [('{record="failure"}', failures), ('{record="run"}', runs)])
        metric("records_invalid_total", "counter", "hive.failure or hive.run events that are not records.",
               [("", self.invalid_records)])
        metric("requests_rejected_total", "counter", "Export requests not accepted, by reason.",
               [(f'{{reason="{reason}"}}', getattr(self, reason)) for reason in
                ("unauthorized", "malformed", "too_large", "unsupported", "busy", "unavailable")])
        metric("queue_records", "gauge", "Records accepted and not yet committed.", [("", self.queued_records)])
        metric("queue_capacity_records", "gauge", "Records the queue holds at most.", [("", self.queue_capacity)])
        return "\n".join(out) + "\n"


# --- OTLP -> records ------------------------------------------------------------------------------
class Malformed(ValueError):
    """The payload is not an OTLP export request (400 / INVALID_ARGUMENT)."""


class _TooLarge(ValueError):
    """The payload is larger than the ingest accepts (413)."""


_SCALARS = frozenset({"string_value", "bool_value", "int_value", "double_value", "bytes_value"})


def _value(v: AnyValue) -> Any:
    """An OTLP AnyValue as the plain value an SDK attribute holds (arrays as tuples)."""
    kind = v.WhichOneof("value")
    if kind in _SCALARS:
        return getattr(v, kind)
    if kind == "array_value":
        return tuple(_value(item) for item in v.array_value.values)
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return None


def _attributes(kvs: Iterable[Any]) -> dict[str, Any]:
    out = {}
    for kv in kvs:  # _value inlined for the scalars: a failure event has two dozen, and this is per event
        v = kv.value
        kind = v.WhichOneof("value")
        out[kv.key] = getattr(v, kind) if kind in _SCALARS else _value(v)
    return out


def _derived_failure_id(trace_id: str, span_id: str, ordinal: int, time_ns: int) -> str:
    """An id for a failure event that has none, the same on every retry of its request."""
    return hashlib.sha256(f"{trace_id}/{span_id}/{ordinal}/{time_ns}".encode()).hexdigest()[:32]


def failure_attributes(attributes: Mapping[str, Any], *, trace_id: str | None, span_id: str | None,
                       time_ns: int, ordinal: int, limits: Limits) -> dict[str, Any]:
    """The prepared ``hive.failure`` attributes the index stores for one received event.

    As the local processor: trace and span ids and the time come from the span and the event
    when the record has none. A prepared event that does not check out (a type, a size beyond
    this index's limits) is prepared again here. Raises ValidationError (or ValueError) for
    what is not a record.
    """
    prepared = as_prepared(attributes, limits)  # a producer's record_failure made it: taken as it is
    if prepared is not None:
        return prepared
    record = from_attributes(attributes)  # validates every field
    if _PREFIX + "failure_id" not in attributes:
        record = record.model_copy(
            update={"failure_id": _derived_failure_id(trace_id or "", span_id or "", ordinal, time_ns)})
    record = filled_from_span(record, trace_id=trace_id, span_id=span_id,
                              time_ns=None if _PREFIX + "timestamp" in attributes else time_ns)
    return to_attributes(prepare(record, limits))


RunKey = tuple[str, str]  # (trace id, span id) of the span that carried a run outcome


@dataclass
class Records:
    """What one export request brings: prepared failure attributes, run outcomes, what could not be read."""

    spans: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    runs: list[tuple[RunKey | None, RunOutcome]] = field(default_factory=list)  # None: a span without ids
    invalid: int = 0
    first_error: str | None = None

    def __len__(self) -> int:
        return len(self.failures) + len(self.runs)


def records_from_request(request: ExportTraceServiceRequest, limits: Limits) -> Records:
    """Failures and run outcomes of an export request; an event that is not a record is counted, not raised."""
    out = Records()
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.spans += 1
                run_seen = False
                trace_id = span.trace_id.hex() or None
                span_id = span.span_id.hex() or None
                for ordinal, event in enumerate(span.events):
                    name = event.name
                    if name == _FAILURE_EVENT:
                        try:
                            out.failures.append(failure_attributes(
                                _attributes(event.attributes), trace_id=trace_id, span_id=span_id,
                                time_ns=event.time_unix_nano, ordinal=ordinal, limits=limits))
                        except (ValidationError, ValueError, TypeError) as exc:
                            out.invalid += 1
                            out.first_error = out.first_error or f"a hive.failure event is not a FailureRecord: {exc}"
                    elif name == _RUN_EVENT and not run_seen:  # the first, as the local processor reads it
                        run_seen = True
                        try:
                            outcome = run_from_attributes(_attributes(event.attributes),
                                                          from_time_ns(span.start_time_unix_nano),
                                                          from_time_ns(span.end_time_unix_nano))
                        except (ValidationError, ValueError, TypeError, KeyError) as exc:
                            out.invalid += 1
                            out.first_error = out.first_error or f"a hive.run event is not a run outcome: {exc!r}"
                        else:
                            out.runs.append(((trace_id, span_id) if trace_id and span_id else None, outcome))
    return out


_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _hex_ids_to_base64(obj: dict[str, Any]) -> None:
    for key in _ID_KEYS:
        value = obj.get(key)
        if isinstance(value, str) and value:
            try:
                obj[key] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
            except ValueError:
                raise Malformed(f"{key} {value[:40]!r} is not hex (OTLP/JSON carries ids as hex)") from None


def _list(obj: Any, *keys: str) -> list[Any]:
    if not isinstance(obj, dict):
        raise Malformed(f"expected an object, got {type(obj).__name__}")
    for key in keys:
        if key in obj:
            value = obj[key]
            if value is None:
                return []
            if not isinstance(value, list):
                raise Malformed(f"{key} is not a list")
            return value
    return []


def parse_json_request(body: bytes) -> ExportTraceServiceRequest:
    """An OTLP/JSON export request: ids in hex, enums as numbers or names, unknown fields ignored."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Malformed(f"invalid JSON: {exc}") from None
    for resource_spans in _list(data, "resourceSpans", "resource_spans"):
        for scope_spans in _list(resource_spans, "scopeSpans", "scope_spans"):
            for span in _list(scope_spans, "spans"):
                if not isinstance(span, dict):
                    raise Malformed("a span is not an object")
                _hex_ids_to_base64(span)
                for link in _list(span, "links"):
                    if isinstance(link, dict):
                        _hex_ids_to_base64(link)
    request = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(data, request, ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, ValueError) as exc:
        raise Malformed(f"not an OTLP ExportTraceServiceRequest: {exc}") from None
    return request


def parse_protobuf_request(body: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except (DecodeError, ValueError) as exc:
        raise Malformed(f"not an OTLP ExportTraceServiceRequest in protobuf: {exc}") from None
    return request


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate", "x-gzip"):
        raise _Unsupported(f"Content-Encoding {encoding!r} is not supported (gzip, deflate or none)")
    inflater = zlib.decompressobj(47)  # 32 + 15: gzip or zlib, detected from the header
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise Malformed(f"the body is not valid {encoding}: {exc}") from None
    if len(data) > limit:
        raise _TooLarge(f"the decompressed body exceeds {limit} bytes")
    if not inflater.eof:
        raise Malformed(f"the {encoding} body is truncated")
    return data


class _Unsupported(ValueError):
    """A content type or encoding the ingest does not read (415)."""


# --- the writer: a bounded queue, one transaction for what is waiting --------------------------------
OK, BUSY, UNAVAILABLE, INVALID = "ok", "busy", "unavailable", "invalid"


class _Pending:
    __slots__ = ("records", "done", "outcome", "message")

    def __init__(self, records: Records) -> None:
        self.records = records
        self.done = threading.Event()
        self.outcome = UNAVAILABLE
        self.message = ""

    def finish(self, outcome: str, message: str = "") -> None:
        self.outcome, self.message = outcome, message
        self.done.set()


@dataclass(frozen=True)
class Answer:
    """What to tell the client: OK (maybe with rejected records), or an error and when to retry."""

    outcome: str
    message: str = ""
    rejected_records: int = 0
    retry_after: int = 0


class _Writer:
    def __init__(self, index: FailureIndex, count: Callable[..., None], capacity: int) -> None:
        self.index = index
        self.count = count  # the server's counters: IngestServer._count
        self.capacity = capacity
        self.cond = threading.Condition()
        self.queue: deque[_Pending] = deque()
        self.queued = 0  # records in self.queue
        self.closing = False
        self.rate = 0.0  # records committed per second, smoothed: sizes Retry-After
        self.runs_seen: OrderedDict[RunKey, None] = OrderedDict()
        self.thread = threading.Thread(target=self._run, name="hive-failures-ingest-writer", daemon=True)
        self.thread.start()

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained, 1 to 30."""
        with self.cond:
            queued, rate = self.queued, self.rate
        return max(1, min(30, math.ceil(queued / rate))) if rate > 0 else 1

    def submit(self, records: Records) -> Answer:
        """Queue ``records`` and wait until they are committed (or refused)."""
        n = len(records)
        pending = _Pending(records)
        with self.cond:
            if self.closing:
                refused = UNAVAILABLE
            elif self.queued and self.queued + n > self.capacity:  # an empty queue takes any request
                refused = BUSY
            else:
                refused = None
                self.queue.append(pending)
                self.queued += n
                self.cond.notify()
        if refused == BUSY:
            return Answer(BUSY, f"the ingest queue is full ({self.capacity} records); retry later",
                          retry_after=self.retry_after())
        if refused == UNAVAILABLE:
            return Answer(UNAVAILABLE, "the ingest is shutting down; retry later", retry_after=1)
        if not pending.done.wait(ACK_TIMEOUT_SECONDS):
            return Answer(UNAVAILABLE, f"not committed within {ACK_TIMEOUT_SECONDS:.0f} s; retry later",
                          retry_after=self.retry_after())
        if pending.outcome == OK:
            return Answer(OK)
        return Answer(pending.outcome, pending.message, retry_after=self.retry_after())

    def close(self, timeout: float) -> bool:
        """Refuse new requests, commit what was accepted; False if that did not finish in time."""
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not self.closing:
                    self.cond.wait()
                if not self.queue:
                    return
                taken, size = [], 0
                while self.queue and (not taken or size + len(self.queue[0].records) <= MAX_TRANSACTION_RECORDS):
                    pending = self.queue.popleft()
                    taken.append(pending)
                    size += len(pending.records)
            started = time.monotonic()
            try:
                self._write(taken)
            except BaseException as exc:  # noqa: BLE001 - never leave a request waiting
                _log.exception("hive-failures ingest: the writer failed")
                for pending in taken:
                    if not pending.done.is_set():
                        pending.finish(UNAVAILABLE, f"the index write failed: {exc!r}")
            elapsed = max(time.monotonic() - started, 1e-6)
            with self.cond:
                self.queued -= size
                self.rate = size / elapsed if self.rate == 0 else 0.8 * self.rate + 0.2 * size / elapsed

    def _write(self, taken: Sequence[_Pending]) -> None:
        failures = [f for p in taken for f in p.records.failures]
        runs: list[RunOutcome] = []
        keys: set[RunKey] = set()
        run_duplicates = 0
        for p in taken:
            for key, outcome in p.records.runs:
                if key is not None and (key in self.runs_seen or key in keys):
                    run_duplicates += 1
                else:
                    if key is not None:
                        keys.add(key)
                    runs.append(outcome)
        try:
            added = self.index.add_prepared(failures, runs)
        except FailureIndexError as exc:
            if len(taken) > 1:  # one request's rows are refused: write the others on their own
                for p in taken:
                    self._write([p])
                return
            taken[0].finish(INVALID, f"the index refused the records: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - a locked or full database: the client retries
            _log.warning("hive-failures ingest: cannot commit to the index: %r", exc)
            for p in taken:
                p.finish(UNAVAILABLE, f"the index could not commit: {exc}")
            return
        for key in keys:
            self.runs_seen[key] = None
        while len(self.runs_seen) > _RUNS_REMEMBERED:
            self.runs_seen.popitem(last=False)
        self.count(failures_indexed=added, failures_duplicate=len(failures) - added, runs_indexed=len(runs),
                   runs_duplicate=run_duplicates)
        for p in taken:
            p.finish(OK)


# --- the server ----------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (``0.0.0.0`` and ``::`` are not)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


class IngestServer:
    """The OTLP receiver: ``start()``, then ``stop()``. Ports 0 pick free ones (see ``http_port``, ``grpc_port``)."""

    def __init__(self, db: str | os.PathLike[str] | None = None, *, host: str = DEFAULT_HOST,
                 port: int = DEFAULT_HTTP_PORT, grpc_port: int | None = DEFAULT_GRPC_PORT,
                 token: str | None = None, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 queue_records: int = DEFAULT_QUEUE_RECORDS, grpc_workers: int = 16) -> None:
        token = token if token is not None else os.environ.get(semconv.ENV_INGEST_TOKEN)
        self.token = token.strip() if token and token.strip() else None
        self.host = host
        if not is_loopback(host) and self.token is None:
            raise IngestError(f"refusing to listen on {host}, which is not a loopback address, without a token: "
                              f"set {semconv.ENV_INGEST_TOKEN} (producers send it as 'Authorization: Bearer <token>')")
        for name, value in (("port", port), ("grpc port", grpc_port)):
            if value is not None and not 0 <= value <= 65535:
                raise IngestError(f"the {name} must be between 0 and 65535, not {value}")
        if max_request_bytes < 1 or queue_records < 1:
            raise IngestError("the request size limit and the queue size must be positive")
        self.max_request_bytes = max_request_bytes
        self._port, self._grpc_port_asked, self._grpc_workers = port, grpc_port, grpc_workers
        self._lock = threading.Lock()
        self._stats = IngestStats(queue_capacity=queue_records)
        try:
            self.index = open_index(db)
        except FailureIndexError as exc:
            raise IngestError(str(exc)) from None
        self.limits = self.index.limits
        self._writer: _Writer | None = None
        self._queue_records = queue_records
        self._httpd: ThreadingHTTPServer | None = None
        self._grpc: grpc.Server | None = None
        self.http_port = 0
        self.grpc_port: int | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> IngestServer:
        try:
            self._httpd = _HTTPServer((self.host.strip("[]"), self._port), _Handler, self)
        except OSError as exc:
            self.index.close()
            raise IngestError(f"cannot listen on {self.host}:{self._port} for OTLP/HTTP: {exc.strerror or exc}") \
                from None
        self.http_port = self._httpd.server_address[1]
        if self._grpc_port_asked is not None:
            try:
                self._start_grpc(self._grpc_port_asked)
            except IngestError:
                self._httpd.server_close()
                self.index.close()
                raise
        self._writer = _Writer(self.index, self._count, self._queue_records)
        threading.Thread(target=self._httpd.serve_forever, name="hive-failures-ingest-http", daemon=True).start()
        return self

    def _start_grpc(self, port: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        server = grpc.server(ThreadPoolExecutor(max_workers=self._grpc_workers,
                                                thread_name_prefix="hive-failures-ingest-grpc"),
                             options=[("grpc.max_receive_message_length", self.max_request_bytes),
                                      ("grpc.so_reuseport", 0)])
        handler = grpc.unary_unary_rpc_method_handler(  # raw bytes in: a malformed payload is ours to count
            self._grpc_export, request_deserializer=None,
            response_serializer=ExportTraceServiceResponse.SerializeToString)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, {"Export": handler}),))
        host = self.host if ":" not in self.host or self.host.startswith("[") else f"[{self.host}]"
        try:
            bound = server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as exc:
            raise IngestError(f"cannot listen on {self.host}:{port} for OTLP/gRPC: {exc}") from None
        if not bound:
            raise IngestError(f"cannot listen on {self.host}:{port} for OTLP/gRPC (in use?)")
        server.start()
        self._grpc, self.grpc_port = server, bound

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop listening, commit and answer what was accepted, close the index. False if that took too long."""
        deadline = time.monotonic() + timeout
        drained = True
        if self._writer is not None:
            with self._writer.cond:
                self._writer.closing = True  # from now on: 503, retry (another instance, or this one restarted)
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        stopped = self._grpc.stop(max(0.0, deadline - time.monotonic())) if self._grpc is not None else None
        if self._writer is not None:
            drained = self._writer.close(max(0.0, deadline - time.monotonic()))
        if stopped is not None:
            stopped.wait(max(0.0, deadline - time.monotonic()))
        if drained:
            self.index.close()
        return drained

    def stats(self) -> IngestStats:
        with self._lock:
            snapshot = IngestStats(**asdict(self._stats))
        if self._writer is not None:
            with self._writer.cond:
                snapshot.queued_records = self._writer.queued
        return snapshot

    def healthy(self) -> bool:
        return self._writer is not None and self._writer.thread.is_alive() and not self.closing

    @property
    def closing(self) -> bool:
        return self._writer is not None and self._writer.closing

    # --- shared by both transports ------------------------------------------------------------------
    def _count(self, **increments: int) -> None:
        with self._lock:
            for name, n in increments.items():
                setattr(self._stats, name, getattr(self._stats, name) + n)

    def authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True
        if not header:
            return False
        scheme, _, credentials = header.strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self.token.encode())

    def accept(self, parse: Callable[[], ExportTraceServiceRequest]) -> Answer:
        """Read one authorized export request and have its records committed. Raises (and counts) Malformed."""
        try:
            records = records_from_request(parse(), self.limits)
        except Malformed:
            self._count(malformed=1)
            raise
        self._count(spans=records.spans, failures_received=len(records.failures), runs_received=len(records.runs),
                    invalid_records=records.invalid)
        answer = Answer(OK)
        if len(records):
            assert self._writer is not None
            answer = self._writer.submit(records)
            if answer.outcome == BUSY:
                self._count(busy=1)
            elif answer.outcome == UNAVAILABLE:
                self._count(unavailable=1)
            elif answer.outcome == INVALID:  # refused by the index itself: a retry would not help
                self._count(invalid_records=len(records))
                return Answer(OK, answer.message, rejected_records=len(records) + records.invalid)
        if records.invalid and answer.outcome == OK:
            return Answer(OK, records.first_error or "", rejected_records=records.invalid)
        return answer

    # --- gRPC --------------------------------------------------------------------------------------
    def _grpc_export(self, body: bytes, context: grpc.ServicerContext) -> ExportTraceServiceResponse:
        self._count(requests=1)
        metadata = {key.lower(): value for key, value in context.invocation_metadata()}
        if not self.authorized(metadata.get("authorization")):
            self._count(unauthorized=1)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required (authorization metadata)")
        try:
            answer = self.accept(lambda: parse_protobuf_request(body))
        except Malformed as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if answer.outcome in (BUSY, UNAVAILABLE):
            code = grpc.StatusCode.RESOURCE_EXHAUSTED if answer.outcome == BUSY else grpc.StatusCode.UNAVAILABLE
            info = error_details_pb2.RetryInfo(retry_delay=Duration(seconds=answer.retry_after))
            status = status_pb2.Status(code=code.value[0], message=answer.message)
            status.details.add().Pack(info)
            # The standard place (grpc-status-details-bin), and the one the Python exporter reads.
            context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),
                                           ("google.rpc.retryinfo-bin", info.SerializeToString())))
            context.abort(code, answer.message)
        return _response(answer)


def _response(answer: Answer) -> ExportTraceServiceResponse:
    response = ExportTraceServiceResponse()
    if answer.rejected_records:
        response.partial_success.rejected_spans = answer.rejected_records
        response.partial_success.error_message = answer.message
    return response


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], ingest: IngestServer) -> None:
        self.ingest = ingest
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)


_HTTP_STATUS = {OK: 200, BUSY: 429, UNAVAILABLE: 503}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the exporters' sessions expect
    server_version = "hive-failures-ingest"
    timeout = 120  # an idle keep-alive connection is closed after this
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        _log.debug("%s " + format, self.address_string(), *args)

    @property
    def ingest(self) -> IngestServer:
        return self.server.ingest

    # --- answers --------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str, headers: Mapping[str, str] = {}) -> None:
        if self.ingest.closing:  # a keep-alive connection must not outlive this instance: retries go to the next
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, code: int, *, as_json: bool | None = None,
               headers: Mapping[str, str] = {}) -> None:
        """An OTLP error: a google.rpc.Status, in protobuf if the request was, else JSON; its message for people."""
        if as_json is None:
            as_json = self.headers.get("Content-Type", "").split(";")[0].strip().lower() not in _PROTOBUF_TYPES
        if as_json:
            self._send(status, json.dumps({"code": code, "message": message}).encode(), _JSON_TYPE, headers)
        else:
            body = status_pb2.Status(code=code, message=message).SerializeToString()
            self._send(status, body, "application/x-protobuf", headers)

    def _refuse_unread(self, status: int, message: str, code: int, headers: Mapping[str, str] = {}, *,
                       drain_limit: int | None = None) -> None:
        """Answer before the body was read: read it first if small enough, so the client gets the answer.

        A client that is still sending when the server closes may see a reset instead of the answer.
        """
        length = self.headers.get("Content-Length", "")
        limit = self.ingest.max_request_bytes if drain_limit is None else drain_limit
        if length.isdigit() and int(length) <= limit and "100-continue" not in self.headers.get("Expect", "").lower():
            remaining = int(length)
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                remaining -= len(chunk)
        else:
            self.close_connection = True
        self._error(status, message, code, headers=headers)

    # --- requests -------------------------------------------------------------------------------
    def handle_expect_100(self) -> bool:
        """Refuse a request before its body is sent when its headers already say no."""
        if self.command == "POST" and self.path.split("?")[0] == "/v1/traces":
            if not self.ingest.authorized(self.headers.get("Authorization")):
                self.close_connection = True
                self._unauthorized(drain=False)
                return False
            length = self.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > self.ingest.max_request_bytes:
                self.close_connection = True
                self._too_large(int(length), drain=False)
                return False
        return super().handle_expect_100()

    def _unauthorized(self, drain: bool = True) -> None:
        self.ingest._count(requests=int(self.command == "POST"), unauthorized=1)
        message = "a bearer token is required: Authorization: Bearer <token>"
        headers = {"WWW-Authenticate": 'Bearer realm="hive-failures-ingest"'}
        if drain:
            self._refuse_unread(401, message, code_pb2.UNAUTHENTICATED, headers)
        else:
            self._error(401, message, code_pb2.UNAUTHENTICATED, headers=headers)

    def _too_large(self, size: int | None, drain: bool = True) -> None:
        self.ingest._count(requests=1, too_large=1)
        what = f"of {size} bytes " if size is not None else ""
        message = f"the request body {what}exceeds {self.ingest.max_request_bytes} bytes"
        if drain:
            self._refuse_unread(413, message, code_pb2.INVALID_ARGUMENT, drain_limit=_DRAIN_LIMIT)
        else:
            self._error(413, message, code_pb2.INVALID_ARGUMENT)

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        if path == "/healthz":
            ok = self.ingest.healthy()
            body = json.dumps({"status": "ok" if ok else "unavailable"}).encode()
            return self._send(200 if ok else 503, body, _JSON_TYPE)
        if path in ("/stats", "/metrics"):
            if not self.ingest.authorized(self.headers.get("Authorization")):
                return self._unauthorized()
            stats = self.ingest.stats()
            if path == "/stats":
                return self._send(200, json.dumps(stats.as_json(), indent=2).encode(), _JSON_TYPE)
            return self._send(200, stats.prometheus().encode(), "text/plain; version=0.0.4; charset=utf-8")
        if path == "/v1/traces":
            return self._error(405, "use POST", code_pb2.INVALID_ARGUMENT, headers={"Allow": "POST"})
        return self._error(404, f"no such path: {path} (OTLP traces go to POST /v1/traces)", code_pb2.NOT_FOUND)

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        try:
            self._post()
        except (ConnectionError, TimeoutError):  # the client went away: nothing to answer
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - a bug of ours must not cost the producer its records
            _log.exception("hive-failures ingest: cannot handle a request")
            self.close_connection = True
            self._error(503, f"internal error: {exc!r}; retry later", code_pb2.UNAVAILABLE,
                        headers={"Retry-After": "5"})

    def _post(self) -> None:
        if self.path.split("?")[0] != "/v1/traces":
            return self._refuse_unread(404, f"no such path: {self.path} (OTLP traces go to /v1/traces)",
                                       code_pb2.NOT_FOUND)
        ingest = self.ingest
        if not ingest.authorized(self.headers.get("Authorization")):
            return self._unauthorized()
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        as_json = content_type == _JSON_TYPE
        if content_type not in _PROTOBUF_TYPES and not as_json:
            ingest._count(requests=1, unsupported=1)
            return self._refuse_unread(415, f"Content-Type {content_type or '(none)'!r} is not OTLP's: use "
                                       "application/x-protobuf or application/json", code_pb2.INVALID_ARGUMENT)
        try:
            body = self._read_body()
        except _TooLarge:
            return self._too_large(None, drain=False)
        except Malformed as exc:
            ingest._count(requests=1, malformed=1)
            self.close_connection = True
            return self._error(400, str(exc), code_pb2.INVALID_ARGUMENT, as_json=as_json)
        if body is None:
            return self._too_large(int(self.headers["Content-Length"]))
        ingest._count(requests=1)
        try:
            body = _decompress(body, self.headers.get("Content-Encoding", "").strip().lower(),
                               ingest.max_request_bytes)
        except _Unsupported as exc:
            ingest._count(unsupported=1)
            return self._error(415, str(exc), code_pb2.INVALID_ARGUMENT, as_json=as_json)
        except _TooLarge as exc:
            ingest._count(too_large=1)
            return self._error(413, str(exc), code_pb2.INVALID_ARGUMENT, as_json=as_json)
        except Malformed as exc:
            ingest._count(malformed=1)
            return self._error(400, str(exc), code_pb2.INVALID_ARGUMENT, as_json=as_json)
        try:
            answer = ingest.accept(lambda: parse_json_request(body) if as_json else parse_protobuf_request(body))
        except Malformed as exc:  # counted by accept
            return self._error(400, str(exc), code_pb2.INVALID_ARGUMENT, as_json=as_json)
        if answer.outcome in (BUSY, UNAVAILABLE):
            code = code_pb2.RESOURCE_EXHAUSTED if answer.outcome == BUSY else code_pb2.UNAVAILABLE
            return self._error(_HTTP_STATUS[answer.outcome], answer.message, code, as_json=as_json,
                               headers={"Retry-After": str(answer.retry_after)})
        response = _response(answer)
        if as_json:
            return self._send(200, json_format.MessageToJson(response, indent=None).encode(), _JSON_TYPE)
        return self._send(200, response.SerializeToString(), "application/x-protobuf")

    def _read_body(self) -> bytes | None:
        """The body, or None when its Content-Length is over the limit (not read). Raises _TooLarge, Malformed."""
        limit = self.ingest.max_request_bytes
        length = self.headers.get("Content-Length")
        if length is not None:
            if not length.strip().isdigit():
                raise Malformed(f"Content-Length {length!r} is not a number")
            if int(length) > limit:
                return None
            body = self.rfile.read(int(length))
            if len(body) < int(length):
                raise Malformed("the body ended before its Content-Length")
            return body
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        return b""

    def _read_chunked(self, limit: int) -> bytes:
        parts, size = [], 0
        while True:
            line = self.rfile.readline(1024)
            try:
                chunk = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise Malformed("a chunk size is not hex") from None
            if chunk == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(parts)
            size += chunk
            if size > limit:
                self.close_connection = True
                raise _TooLarge()
            parts.append(self.rfile.read(chunk))
            self.rfile.readline(1024)


# --- the command ----------------------------------------------------------------------------------
def serve(db: str | None = None, *, host: str = DEFAULT_HOST, port: int = DEFAULT_HTTP_PORT,
          grpc_port: int | None = DEFAULT_GRPC_PORT, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
          queue_records: int = DEFAULT_QUEUE_RECORDS, out: Any = None) -> IngestStats:
    """Run the ingest until SIGINT or SIGTERM, then commit what was accepted and return the counters."""
    out = out or sys.stderr
    server = IngestServer(db, host=host, port=port, grpc_port=grpc_port, max_request_bytes=max_request_bytes,
                          queue_records=queue_records).start()
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    shown = f"[{host}]" if ":" in host else host
    print(f"hive-failures ingest: writing to {server.index.path}", file=out)
    print(f"  OTLP/HTTP  http://{shown}:{server.http_port}/v1/traces  (health /healthz, counters /stats, /metrics)",
          file=out)
    if server.grpc_port is not None:
        print(f"  OTLP/gRPC  {shown}:{server.grpc_port}", file=out)
    token = "required" if server.token else f"none (loopback only; set {semconv.ENV_INGEST_TOKEN} to require one)"
    print(f"  token: {token}", file=out, flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        drained = server.stop()
    stats = server.stats()
    print(f"hive-failures ingest: stopped; {json.dumps(stats.as_json())}", file=out, flush=True)
    if not drained:
        print("hive-failures ingest: some accepted requests were not committed in time (they were not acknowledged)",
              file=out, flush=True)
    return stats
