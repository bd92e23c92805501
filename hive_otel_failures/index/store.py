"""The failure index on SQLite: plain SQL, explicit migrations, parameterised queries only.

One connection, guarded by a lock, so the processor's writer thread and readers in the same
process can share an index; other processes read concurrently thanks to WAL.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

from .. import semconv
from ..record import FailureKind, FailureRecord, RunOutcome, load_json_field, prepare, to_attributes
from ..scrub import Limits
from .models import Advice, NodeStats, Pattern, Resolution, Stats
from .schema import LATEST_VERSION, MIGRATIONS


class FailureIndexError(Exception):
    """The index cannot be opened or used (missing, corrupt, newer schema, bad argument)."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(since: datetime | timedelta | str | None) -> datetime | None:
    """``since`` as an aware datetime: a datetime, a timedelta ago, ``"24h"``/``"7d"``, or ISO 8601."""
    if since is None or isinstance(since, datetime):
        if isinstance(since, datetime) and since.tzinfo is None:
            return since.replace(tzinfo=timezone.utc)
        return since
    if isinstance(since, timedelta):
        return datetime.now(timezone.utc) - since
    match = _DURATION.match(since)
    if match:
        return datetime.now(timezone.utc) - timedelta(**{_UNITS[match[2]]: float(match[1])})
    try:
        return parse_since(datetime.fromisoformat(since))
    except ValueError:
        raise FailureIndexError(f"cannot read since={since!r}: use 30m, 24h, 7d, 2w or an ISO 8601 time") from None


def _ts(value: datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _dumps_list(value: Any) -> str:
    return _dumps(list(value)) if value else "[]"


_FAILURE_COLUMNS = (
    "failure_id, session_id, agent_id, node_id, ts, kind, error_type, error_message, traceback, "
    "attempts, judge_feedback, constraints_violated, criteria_unmet, tool_calls, input_context_sha, "
    "memory_snapshot_sha, graph_snapshot_sha, trace_id, span_id, agent_version, fingerprint, transient, "
    "evolution_triggered, resolution"
)
_UPSERT_PATTERN = """
    INSERT INTO patterns (fingerprint, agent_id, node_id, error_type, kind, sample_message, transient,
                          count, sessions, first_seen, last_seen)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (fingerprint) DO UPDATE SET
        count = count + excluded.count,
        sessions = sessions + excluded.sessions,
        first_seen = min(first_seen, excluded.first_seen),
        last_seen = max(last_seen, excluded.last_seen),
        sample_message = CASE WHEN excluded.last_seen >= last_seen THEN excluded.sample_message ELSE sample_message END
"""
_PAIR_STORED_BEFORE = "SELECT 1 FROM failures WHERE fingerprint = ? AND session_id IS ? AND rowid <= ? LIMIT 1"
_KNOWN_PAIRS_MAX = 10_000
_PATTERN_FROM_LATEST = ("agent_id", "node_id", "error_type", "kind", "error_message", "transient")
_SELECT_FAILURE = f"""
    SELECT {", ".join("f." + c.strip() for c in _FAILURE_COLUMNS.split(","))},
           ic.content, ms.content, gs.content
    FROM failures f
    LEFT JOIN blobs ic ON ic.sha256 = f.input_context_sha
    LEFT JOIN blobs ms ON ms.sha256 = f.memory_snapshot_sha
    LEFT JOIN blobs gs ON gs.sha256 = f.graph_snapshot_sha
"""
_AT = {name.strip(): i for i, name in enumerate(_FAILURE_COLUMNS.split(","))}
_INSERT_FAILURE = (f"INSERT INTO failures ({_FAILURE_COLUMNS}) "
                   f"VALUES ({', '.join('?' * (_FAILURE_COLUMNS.count(',') + 1))}) ON CONFLICT (failure_id) DO NOTHING")
_P = semconv.FAILURE_PREFIX
_KINDS = frozenset(k.value for k in FailureKind)


# The hive.failure attributes a failures row is made of, in the order _wire_rows unpacks them.
_WIRE_KEYS = tuple(_P + name for name in (
    "failure_id", "session_id", "agent_id", "node_id", "timestamp", "kind", "error_type", "error_message",
    "traceback", "attempts", "judge_feedback", "constraints_violated", "criteria_unmet", "tool_calls",
    "input_context", "memory_snapshot", "graph_snapshot", "trace_id", "span_id", "agent_version", "fingerprint",
    "transient", "evolution_triggered", "resolution"))


class _WireRows(NamedTuple):
    failures: list[tuple[Any, ...]]  # in _FAILURE_COLUMNS order
    blobs: list[tuple[str, str, int]]  # (sha256, content, size), each snapshot once


def _wire_rows(failures: Iterable[Mapping[str, Any]]) -> _WireRows:
    """Failures rows and their snapshot blobs from prepared ``hive.failure`` attributes.

    Prepared attributes come from ``to_attributes`` of a validated FailureRecord, so only
    what a row cannot do without is checked here: this loop is the writer's hot path, one
    pass per batch. JSON text that span limits may have cut is tolerated when read back.
    """
    rows: list[tuple[Any, ...]] = []
    hashes: dict[str, str] = {}  # snapshot text -> sha256: an agent's graph repeats in each of its failures
    sha256, fromisoformat = hashlib.sha256, datetime.fromisoformat
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
        shas = []
        for text in (input_context, memory, graph):
            if text is not None and text not in hashes:
                hashes[text] = sha256(text.encode("utf-8")).hexdigest()
            shas.append(None if text is None else hashes[text])
        rows.append((
            failure_id, session_id, agent_id, node_id, ts, kind, error_type or "unknown", error_message or "",
            traceback, attempts, judge_feedback or "[]", _dumps_list(constraints), _dumps_list(criteria),
            tool_calls or "[]", *shas, trace_id, span_id, agent_version, fingerprint, 1 if transient else 0,
            1 if evolved else 0, resolution,
        ))
    return _WireRows(rows, [(sha, text, len(text)) for text, sha in hashes.items()])


class FailureIndex:
    """A local, queryable index of Hive failures and run outcomes."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True, limits: Limits | None = None,
                 busy_timeout: float = 10.0) -> None:
        self.path = Path(path).expanduser()
        self.limits = limits or Limits.from_env()
        self._lock = threading.RLock()
        # (fingerprint, session) pairs known to be in the file; rows are never deleted or re-keyed.
        self._known_pairs: set[tuple[str, str | None]] = set()
        if not self.path.exists():
            if not create:
                raise FailureIndexError(f"no failure index at {self.path} (set HIVE_FAILURES_DB or pass --db)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        try:
            self._conn = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            # Foreign keys stay declared but unenforced (SQLite's default): the only writer puts a
            # failure's blobs in the same transaction, before it, and nothing deletes blobs.
            # Enforcing them re-checked that guarantee at ~10% of the write cost.
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise FailureIndexError(f"{self.path} is not a usable failure index: {exc}") from exc

    # --- lifecycle ------------------------------------------------------------------------
    def _migrate(self) -> None:
        with self._lock:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > LATEST_VERSION:
                raise FailureIndexError(
                    f"{self.path} has schema version {version}, newer than this package knows "
                    f"({LATEST_VERSION}); upgrade hive-otel-failures"
                )
            if version == LATEST_VERSION:
                return
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                version = self._conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have won
                for number in range(version + 1, LATEST_VERSION + 1):
                    for statement in MIGRATIONS[number - 1].split(";"):
                        if statement.strip():
                            self._conn.execute(statement)
                    self._conn.execute(f"PRAGMA user_version = {number}")
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._conn.execute("PRAGMA user_version").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._conn.close()

    def __enter__(self) -> "FailureIndex":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing --------------------------------------------------------------------------
    def add(self, failures: Iterable[FailureRecord] = (), runs: Iterable[RunOutcome] = ()) -> int:
        """Store failures and run outcomes in one transaction; records are prepared here first.

        Returns how many failures were new; a failure_id already stored is skipped.
        """
        return self.add_prepared([to_attributes(prepare(r, self.limits)) for r in failures], runs)

    def add_prepared(self, failures: Iterable[Mapping[str, Any]], runs: Iterable[RunOutcome] = ()) -> int:
        """Store failures in their ``hive.failure`` attribute form, already prepared (record_failure).

        This is how the span processor writes: no second scrub, no model round trip. A
        malformed entry raises FailureIndexError and nothing of the call is written.
        """
        rows = _wire_rows(failures)
        outcomes = list(runs)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                added, pairs = self._insert_failures(rows)
                self._upsert_runs(outcomes)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            if len(self._known_pairs) + len(pairs) > _KNOWN_PAIRS_MAX:
                self._known_pairs.clear()
            self._known_pairs |= pairs  # only once committed: the cache never claims what the file lacks
        return added

    def _insert_failures(self, rows: _WireRows) -> tuple[int, set[tuple[str, str | None]]]:
        """Blobs, then failures (a failure_id already stored is skipped), then their patterns.

        Returns how many failures were added and their (fingerprint, session) pairs.
        """
        if not rows.failures:
            return 0, set()
        c = self._conn
        before = c.execute("SELECT coalesce(max(rowid), 0) FROM failures").fetchone()[0]
        c.executemany("INSERT OR IGNORE INTO blobs (sha256, content, size) VALUES (?, ?, ?)", rows.blobs)
        added = c.executemany(_INSERT_FAILURE, rows.failures).rowcount
        fresh = rows.failures
        if added < len(fresh):  # some failure_ids were stored already: count only what this call added
            stored = {failure_id for (failure_id,) in c.execute(
                "SELECT failure_id FROM failures WHERE rowid > ?", (before,))}
            id_at = _AT["failure_id"]
            fresh = list({row[id_at]: row for row in reversed(fresh) if row[id_at] in stored}.values())  # first won
        return added, self._count_patterns(fresh, before)

    def _count_patterns(self, rows: Sequence[tuple[Any, ...]], before: int) -> set[tuple[str, str | None]]:
        """Add freshly stored failures rows to their patterns' counters, in this transaction.

        A session counts for a pattern the first time it fails that way; whether it did
        before this batch is asked of the file, unless already known from an earlier batch.
        """
        fingerprint_at, session_at, ts_at = _AT["fingerprint"], _AT["session_id"], _AT["ts"]
        groups: dict[str, list[tuple[Any, ...]]] = {}
        for row in rows:
            groups.setdefault(row[fingerprint_at], []).append(row)
        updates, pairs = [], set()
        for fingerprint, members in groups.items():
            sessions = {(fingerprint, row[session_at]) for row in members}
            new_sessions = sum(1 for pair in sessions - self._known_pairs
                               if self._conn.execute(_PAIR_STORED_BEFORE, (*pair, before)).fetchone() is None)
            pairs |= sessions
            latest = max(members, key=lambda row: row[ts_at])
            updates.append((fingerprint, *(latest[_AT[c]] for c in _PATTERN_FROM_LATEST), len(members), new_sessions,
                            min(row[ts_at] for row in members), latest[ts_at]))
        self._conn.executemany(_UPSERT_PATTERN, updates)
        return pairs

    def _upsert_runs(self, outcomes: Sequence[RunOutcome]) -> None:
        self._conn.executemany(
            """INSERT INTO runs (session_id, agent_id, agent_version, started_at, ended_at, success, quality, failures)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (session_id, agent_id) DO UPDATE SET
                   agent_version = coalesce(excluded.agent_version, agent_version),
                   started_at = min(started_at, excluded.started_at),
                   ended_at = max(ended_at, excluded.ended_at),
                   success = min(success, excluded.success),
                   quality = coalesce(excluded.quality, quality),
                   failures = failures + excluded.failures""",
            [(o.session_id, o.agent_id or "", o.agent_version, _ts(o.started_at), _ts(o.ended_at), int(o.success),
              o.quality, o.failures) for o in outcomes],
        )

    def resolve(self, fingerprint: str, resolution: str, evolution_triggered: bool = True,
                agent_version: str | None = None) -> Resolution:
        """Record what was done about a pattern (e.g. the Queen evolved the agent)."""
        if not resolution.strip():
            raise FailureIndexError("a resolution needs a description of what was done")
        now = datetime.now(timezone.utc)
        with self._lock:
            fp = self._resolve_fingerprint(fingerprint)
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT INTO resolutions (fingerprint, ts, resolution, evolution_triggered, agent_version) "
                    "VALUES (?, ?, ?, ?, ?)", (fp, _ts(now), resolution, int(evolution_triggered), agent_version))
                self._conn.execute(
                    "UPDATE failures SET resolution = ?, evolution_triggered = ? WHERE fingerprint = ? AND ts <= ?",
                    (resolution, int(evolution_triggered), fp, _ts(now)))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return Resolution(fingerprint=fp, resolved_at=now, resolution=resolution,
                          evolution_triggered=evolution_triggered, agent_version=agent_version)

    def _resolve_fingerprint(self, fingerprint: str) -> str:
        rows = self._conn.execute(
            "SELECT fingerprint FROM patterns WHERE fingerprint = ? OR fingerprint LIKE ? ESCAPE '\\' LIMIT 2",
            (fingerprint, _like_prefix(fingerprint))).fetchall()
        exact = [r[0] for r in rows if r[0] == fingerprint]
        if exact:
            return exact[0]
        if len(rows) != 1:
            raise FailureIndexError(f"no single pattern matches {fingerprint!r}")
        return rows[0][0]

    # --- reading --------------------------------------------------------------------------
    def recent(self, agent_id: str | None = None, node_id: str | None = None, error_type: str | None = None,
               session_id: str | None = None, since: datetime | timedelta | str | None = None,
               limit: int = 20, fingerprint: str | None = None) -> list[FailureRecord]:
        """The newest failures first, filtered by any combination of fields."""
        clauses, params = self._filters(agent_id=agent_id, node_id=node_id, error_type=error_type,
                                        session_id=session_id, since=since, fingerprint=fingerprint)
        with self._lock:
            rows = self._conn.execute(f"{_SELECT_FAILURE} {clauses} ORDER BY f.ts DESC LIMIT ?",
                                      (*params, max(0, int(limit)))).fetchall()
        return [_record_from_row(row) for row in rows]

    def get(self, failure_id: str) -> FailureRecord | None:
        """One failure by id, or by a unique id prefix of at least 6 characters."""
        with self._lock:
            rows = self._conn.execute(f"{_SELECT_FAILURE} WHERE f.failure_id = ?", (failure_id,)).fetchall()
            if not rows and len(failure_id) >= 6:
                rows = self._conn.execute(f"{_SELECT_FAILURE} WHERE f.failure_id LIKE ? ESCAPE '\\' LIMIT 2",
                                          (_like_prefix(failure_id),)).fetchall()
        if len(rows) > 1:
            raise FailureIndexError(f"failure id prefix {failure_id!r} is ambiguous")
        return _record_from_row(rows[0]) if rows else None

    def patterns(self, agent_id: str | None = None, since: datetime | timedelta | str | None = None,
                 limit: int = 50) -> list[Pattern]:
        """Failures grouped by fingerprint, most frequent first, with their latest resolution."""
        start = parse_since(since)
        if start is None:  # all time: the maintained counters
            source = "SELECT fingerprint, count, sessions, first_seen, last_seen FROM patterns"
            params: tuple[Any, ...] = ()
        else:
            source = ("SELECT fingerprint, COUNT(*) AS count, COUNT(DISTINCT session_id) AS sessions, "
                      "MIN(ts) AS first_seen, MAX(ts) AS last_seen FROM failures WHERE ts >= ? GROUP BY fingerprint")
            params = (_ts(start),)
        sql = f"""
            SELECT p.fingerprint, p.agent_id, p.node_id, p.error_type, p.kind, p.sample_message, p.transient,
                   w.count, w.sessions, w.first_seen, w.last_seen,
                   r.resolution, r.ts, r.evolution_triggered, r.agent_version
            FROM ({source}) w
            JOIN patterns p ON p.fingerprint = w.fingerprint
            LEFT JOIN resolutions r ON r.id = (SELECT max(id) FROM resolutions WHERE fingerprint = p.fingerprint)
            WHERE (? IS NULL OR p.agent_id = ?)
            ORDER BY w.count DESC, w.last_seen DESC
            LIMIT ?"""
        with self._lock:
            rows = self._conn.execute(sql, (*params, agent_id, agent_id, max(0, int(limit)))).fetchall()
        return [
            Pattern(fingerprint=r[0], agent_id=r[1], node_id=r[2], error_type=r[3], kind=r[4], sample_message=r[5],
                    transient=bool(r[6]), count=r[7], sessions=r[8], first_seen=_dt(r[9]), last_seen=_dt(r[10]),
                    resolution=r[11], resolved_at=_dt(r[12]), evolution_triggered=bool(r[13]),
                    resolved_in_version=r[14], recurred_after_resolution=r[12] is not None and r[10] > r[12])
            for r in rows
        ]

    def stats(self, agent_id: str | None = None, since: datetime | timedelta | str | None = None) -> Stats:
        """Runs, failed runs, failure rate, and where failures happen."""
        start = parse_since(since)
        start_ts = _ts(start) if start else float("-inf")
        agent = (agent_id, agent_id)
        with self._lock:
            runs, failed = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(success = 0), 0) FROM runs "
                "WHERE started_at >= ? AND (? IS NULL OR agent_id = ?)", (start_ts, *agent)).fetchone()
            failures, sessions, patterns = self._conn.execute(
                "SELECT COUNT(*), COUNT(DISTINCT session_id), COUNT(DISTINCT fingerprint) FROM failures "
                "WHERE ts >= ? AND (? IS NULL OR agent_id = ?)", (start_ts, *agent)).fetchone()
            by_node = self._conn.execute(
                "SELECT node_id, COUNT(*), COUNT(DISTINCT session_id) FROM failures "
                "WHERE ts >= ? AND (? IS NULL OR agent_id = ?) GROUP BY node_id ORDER BY 2 DESC",
                (start_ts, *agent)).fetchall()
            by_kind = self._conn.execute(
                "SELECT kind, COUNT(*) FROM failures WHERE ts >= ? AND (? IS NULL OR agent_id = ?) "
                "GROUP BY kind ORDER BY 2 DESC", (start_ts, *agent)).fetchall()
        return Stats(agent_id=agent_id, since=start, runs=runs, failed_runs=failed,
                     failure_rate=(failed / runs) if runs else None, failures=failures,
                     sessions_with_failures=sessions, patterns=patterns,
                     by_node=[NodeStats(node_id=n, failures=c, sessions=s) for n, c, s in by_node],
                     by_kind={k: c for k, c in by_kind})

    def advise(self, agent_id: str | None = None, min_sessions: int = 2) -> list[Advice]:
        """Systematic patterns worth changing the agent for: recurring, unresolved or back after a fix.

        Transient failures (rate limits, timeouts) are left out: changing the agent won't fix them.
        """
        with self._lock:
            runs_by_agent = dict(self._conn.execute("SELECT agent_id, COUNT(*) FROM runs GROUP BY agent_id"))
        advice = []
        for p in self.patterns(agent_id=agent_id, limit=1000):
            if p.transient or p.sessions < min_sessions:
                continue
            if p.resolution is not None and not p.recurred_after_resolution:
                continue
            runs = runs_by_agent.get(p.agent_id or "")
            share = p.sessions / runs if runs else None
            if p.recurred_after_resolution:
                reason = f"recurred after it was resolved ({p.resolution!r}): the fix did not hold"
            else:
                reason = f"systematic {p.kind} in {p.sessions} sessions ({p.count} failures), unresolved"
            examples = [r.failure_id for r in self.recent(fingerprint=p.fingerprint, limit=3)]
            advice.append(Advice(pattern=p, reason=reason, session_share=share, example_failure_ids=examples))
        advice.sort(key=lambda a: (a.pattern.recurred_after_resolution, a.pattern.sessions, a.pattern.count),
                    reverse=True)
        return advice

    def resolutions(self, fingerprint: str) -> list[Resolution]:
        """What was done about a pattern, oldest first."""
        with self._lock:
            fp = self._resolve_fingerprint(fingerprint)
            rows = self._conn.execute(
                "SELECT ts, resolution, evolution_triggered, agent_version FROM resolutions "
                "WHERE fingerprint = ? ORDER BY ts", (fp,)).fetchall()
        return [Resolution(fingerprint=fp, resolved_at=_dt(t), resolution=r, evolution_triggered=bool(e),
                           agent_version=v) for t, r, e, v in rows]

    def _filters(self, *, since: datetime | timedelta | str | None, **equal: str | None) -> tuple[str, list[Any]]:
        clauses, params = [], []
        for column, value in equal.items():
            if value is not None:
                clauses.append(f"f.{column} = ?")  # column names are ours, never the caller's
                params.append(value)
        start = parse_since(since)
        if start is not None:
            clauses.append("f.ts >= ?")
            params.append(_ts(start))
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _record_from_row(row: tuple[Any, ...]) -> FailureRecord:
    (failure_id, session_id, agent_id, node_id, ts, kind, error_type, error_message, traceback, attempts,
     judge_feedback, constraints, criteria, tool_calls, _ic, _ms, _gs, trace_id, span_id, agent_version,
     fingerprint, transient, evolution_triggered, resolution, input_context, memory, graph) = row
    return FailureRecord.model_validate({
        "failure_id": failure_id, "session_id": session_id, "agent_id": agent_id, "node_id": node_id,
        "timestamp": _dt(ts), "kind": kind, "error_type": error_type, "error_message": error_message,
        "traceback": traceback, "attempts": attempts,
        "judge_feedback": load_json_field("judge_feedback", judge_feedback) or [],
        "tool_calls": load_json_field("tool_calls", tool_calls) or [],
        "constraints_violated": json.loads(constraints), "criteria_unmet": json.loads(criteria),
        "input_context": load_json_field("input_context", input_context),
        "memory_snapshot": load_json_field("memory_snapshot", memory),
        "graph_snapshot": load_json_field("graph_snapshot", graph),
        "trace_id": trace_id, "span_id": span_id, "agent_version": agent_version, "fingerprint": fingerprint,
        "transient": bool(transient), "evolution_triggered": bool(evolution_triggered), "resolution": resolution,
    })
