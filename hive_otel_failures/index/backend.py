"""What the failure index's two backends share: the rows a batch is made of, and what each must do.

``FailureIndex`` (store.py) writes its queries once, in SQL both SQLite and PostgreSQL run, with
``?`` placeholders; a backend runs them on its connection(s) and does the few things that differ:
opening (and read-only opening), the schema's version and migrations, the batch write, a
transaction, and a few SQL fragments (scalar ``max`` vs ``GREATEST``, SQLite's ``rowid`` vs
``failures.seq``).
"""

from __future__ import annotations

import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from typing import Any, NamedTuple

from .. import semconv
from ..record import FailureKind, time_ns
from .schema import LATEST_VERSION


class FailureIndexError(Exception):
    """The index cannot be opened or used (missing, corrupt, newer schema, bad argument)."""


def is_server(location: str) -> bool:
    """Whether an index location is a PostgreSQL server, ``postgresql://...`` (else a SQLite file)."""
    return location.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """A location without its password, for messages."""
    return re.sub(r"(?i)(password=)[^&\s]*", r"\1***", re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", url))


def _snapshot_key(text: str, hour: int | None = None) -> str:
    """A snapshot's key in the ``sha256`` columns: its SHA-256 in base64, or the hour and its SHA-256.

    28 characters where the hex of all 256 bits took 64: a key is in each failure's row three
    times and twice per snapshot (its row and the index on it), so at 1M failures that was a
    tenth of a SQLite file (280 bytes a failure). 168 bits keep collisions out of reach (git's
    ids have 160), and 128 within an hour. Keys are only ever compared whole: those written before
    (64 hex digits, or 168 bits) stay valid. Fed in pieces, which hashlib hashes without giving
    up the GIL (it does above 2 KiB).

    ``hour`` (hours since the epoch, in 6 hex digits first): a failure's own snapshots, its input
    context and memory, are keyed within the hour of the failure, so that the index on keys
    grows in one region at a time. Keyed by their hash alone, each insert landed on a page of
    its own, which the writer then wrote out whole. The same snapshot is stored once an hour.
    """
    data, digest = text.encode("utf-8"), hashlib.sha256()
    for start in range(0, len(data), 2000):
        digest.update(data[start:start + 2000])
    if hour is None:
        return binascii.b2a_base64(digest.digest()[:21], newline=False).decode("ascii")
    return f"{hour:06x}{binascii.b2a_base64(digest.digest()[:16], newline=False)[:22].decode('ascii')}"


def _aware(value: datetime) -> datetime:
    """``value``, a naive one as UTC."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _ts(value: datetime) -> float:
    return _aware(value).timestamp()


def _ns(value: datetime) -> int:
    """A run's time as a batch's run rows carry it: integer nanoseconds, as a span's own times are.

    The database divides; JSON writes an integer at a fifth of what a float's shortest repr costs.
    """
    return time_ns(_aware(value))


FAILURE_COLUMNS = (
    "failure_id, session_id, agent_id, node_id, ts, kind, error_type, error_message, traceback, "
    "attempts, judge_feedback, constraints_violated, criteria_unmet, tool_calls, input_context_sha, "
    "memory_snapshot_sha, graph_snapshot_sha, trace_id, span_id, agent_version, fingerprint, transient, "
    "evolution_triggered, resolution"
)
RUN_COLUMNS = "session_id, agent_id, agent_version, started_at, ended_at, success, quality, failures"
_P = semconv.FAILURE_PREFIX
_KINDS = frozenset(k.value for k in FailureKind)

# The hive.failure attributes a failures row is made of, in the order wire_rows unpacks them.
_WIRE_KEYS = tuple(_P + name for name in (
    "failure_id", "session_id", "agent_id", "node_id", "timestamp", "kind", "error_type", "error_message",
    "traceback", "attempts", "judge_feedback", "constraints_violated", "criteria_unmet", "tool_calls",
    "input_context", "memory_snapshot", "graph_snapshot", "trace_id", "span_id", "agent_version", "fingerprint",
    "transient", "evolution_triggered", "resolution"))


class WireRows(NamedTuple):
    failures: list[tuple[Any, ...]]  # in FAILURE_COLUMNS order; flags as 0/1
    blobs: list[tuple[str, str, int]]  # (sha256, content, size), each snapshot once


# One encoder: json.dumps with options other than the defaults builds a new one per call.
_dumps = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode


def _dumps_list(value: Any) -> str:
    return _dumps(list(value)) if value else "[]"


def wire_rows(failures: Iterable[Mapping[str, Any]]) -> WireRows:
    """Failures rows and their snapshot blobs from prepared ``hive.failure`` attributes.

    Prepared attributes come from ``to_attributes`` of a validated FailureRecord, so only
    what a row cannot do without is checked here: this loop is the writer's hot path, one
    pass per batch. JSON text that span limits may have cut is tolerated when read back.
    """
    rows: list[tuple[Any, ...]] = []
    hashes: dict[tuple[str, int | None], str] = {}  # (text, hour) -> its key: an agent's graph repeats
    fromisoformat = datetime.fromisoformat
    for attrs in failures:
        (failure_id, session_id, agent_id, node_id, stamp, kind, error_type, error_message, traceback, attempts,
         judge_feedback, constraints, criteria, tool_calls, input_context, memory, graph, trace_id, span_id,
         agent_version, fingerprint, transient, evolved, resolution) = map(attrs.get, _WIRE_KEYS)
        kind = kind or "exception"
        attempts = 1 if attempts is None else attempts
        if not (isinstance(failure_id, str) and isinstance(fingerprint, str) and isinstance(stamp, str)
                and kind in _KINDS and type(attempts) is int):
            raise FailureIndexError("a prepared failure needs failure_id, fingerprint, timestamp, a known kind and "
                                    f"integer attempts; got {dict(attrs)!r:.200}")
        try:
            ts = _ts(fromisoformat(stamp))
        except ValueError:
            raise FailureIndexError(f"hive.failure.timestamp is not ISO 8601: {stamp!r:.40}") from None
        hour, shas = int(ts // 3600), []
        for text, scope in ((input_context, hour), (memory, hour), (graph, None)):
            if text is None:
                shas.append(None)
                continue
            if (known := hashes.get((text, scope))) is None:
                known = hashes[text, scope] = _snapshot_key(text, scope)
            shas.append(known)
        rows.append((
            failure_id, session_id, agent_id, node_id, ts, kind, error_type or "unknown", error_message or "",
            traceback, attempts, judge_feedback or "[]", _dumps_list(constraints), _dumps_list(criteria),
            tool_calls or "[]", *shas, trace_id, span_id, agent_version, fingerprint, 1 if transient else 0,
            1 if evolved else 0, resolution,
        ))
    return WireRows(rows, [(sha, text, len(text)) for (text, _), sha in hashes.items()])


Params = Sequence[Any]


class Backend:
    """One backend's connection(s) to an index; FailureIndex's queries run through it.

    Subclasses set the class attributes and implement the methods that raise here.
    """

    location: str  # what messages name: the file, or the server URL without its password
    errors: tuple[type[BaseException], ...]  # a query's database errors, reported as FailureIndexError
    greatest = "max"  # the scalar max of two values (SQLite's max(a, b), PostgreSQL's GREATEST)
    rowid = "rowid"  # the order failures were stored in
    lateral = False  # a subquery in FROM may read the columns before it (one query for many patterns)

    def session(self) -> AbstractContextManager[Any]:
        """One connection for the statements of a query (reentrant in a thread)."""
        raise NotImplementedError

    def fetchall(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def fetchone(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        rows = self.fetchall(sql, params)
        return rows[0] if rows else None

    def transaction(self, statements: Sequence[tuple[str, Params]]) -> None:
        """Run these statements in one transaction (a reader may write through it: resolve)."""
        raise NotImplementedError

    def prepare_batch(self, rows: WireRows, runs: list[tuple[Any, ...]]) -> Any:
        """A batch (runs in RUN_COLUMNS order, success as 0/1, times in integer ns) as write_batch takes it.

        The Python work of a write, so that a writer can do it while the previous batch is in
        the database (the span processor does, on another thread).
        """
        return rows, runs

    def write_batch(self, batch: Any, *, count: bool = True) -> int:
        """Write a prepared batch in one transaction; the new failures, if ``count``, else 0."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # --- the schema -------------------------------------------------------------------------------
    @property
    def schema_version(self) -> int:
        raise NotImplementedError

    def _migrating(self) -> AbstractContextManager[int]:
        """A transaction that no other process migrates in at once; yields the version it found."""
        raise NotImplementedError

    def _apply(self, number: int) -> None:
        """Run migration ``number`` (1-based) and record it as the schema's version."""
        raise NotImplementedError

    def migrate(self, *, allowed: bool) -> None:
        """Bring the schema up to date; a reader (``allowed=False``) never does, it may take long at 1M."""
        version = self.schema_version
        if version > LATEST_VERSION:
            raise FailureIndexError(
                f"{self.location} has schema version {version}, newer than this package knows "
                f"({LATEST_VERSION}); upgrade hive-otel-failures")
        if version == LATEST_VERSION:
            return
        if not allowed:
            if version == 0:
                raise FailureIndexError(f"{self.location} is not a failure index")
            raise FailureIndexError(
                f"{self.location} has schema version {version} and this package reads {LATEST_VERSION}: "
                "run `hive-failures migrate` (or start an instrumented Hive process) to upgrade it once")
        with self._migrating() as version:  # another process may have won
            for number in range(version + 1, LATEST_VERSION + 1):
                self._apply(number)

