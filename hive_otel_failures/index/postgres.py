"""The failure index in a PostgreSQL database, for a team: psycopg 3 and a connection pool.

Imported only for a ``postgresql://`` location, so the SQLite index needs no PostgreSQL package.
Readers (``create=False``) never migrate and their sessions are read-only, but for resolve().
A batch is one transaction sent in one pipeline: the writers' lock, then one statement that
writes the blobs, the failures (an id already stored is skipped), their patterns and counters,
then the runs (their counters kept by statement triggers, see schema.py).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .backend import FAILURE_COLUMNS, RUN_COLUMNS, Backend, FailureIndexError, Params, WireRows, redact
from .schema import POSTGRESQL_MIGRATIONS

try:
    import psycopg
    from psycopg_pool import ConnectionPool
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise FailureIndexError(
        "a PostgreSQL index needs psycopg 3 and psycopg-pool: pip install 'hive-otel-failures[postgres]' "
        f"({exc})") from None

# Writers of one database take this transaction lock, so each batch counts sessions and runs
# against what the batches before it stored, as SQLite's single writer does. Readers never wait.
_WRITER_LOCK = 0x68697665_66_6169  # "hive" "f" "ai"
_MIGRATION_LOCK = _WRITER_LOCK + 1

_TYPES = {"ts": "float8", "attempts": "int4", "transient": "bool", "evolution_triggered": "bool",
          "started_at": "float8", "ended_at": "float8", "success": "bool", "failures": "int4", "size": "int4"}


def _unnest(columns: str, *, ordinality: bool = False) -> str:
    """``unnest`` of one typed array parameter per column: a batch's rows in one statement, however many."""
    names = [c.strip() for c in columns.split(",")]
    arrays = ", ".join(f"?::{_TYPES.get(name, 'text')}[]" for name in names)
    return f"unnest({arrays}){' WITH ORDINALITY' if ordinality else ''}"


_FAILURE_NAMES = [c.strip() for c in FAILURE_COLUMNS.split(",")]
_BOOL_COLUMNS = frozenset(i for i, name in enumerate(_FAILURE_NAMES) if _TYPES.get(name) == "bool")

# The batch: failures already stored (and the batch's own repeats) are skipped; a failure is its
# session's first of its pattern if no stored failure and no earlier one of the batch is; the
# pattern shows the newest failure of the batch (the first given of equal times). Sibling
# statements of a WITH all see the tables as they were before it, so `failures p` is what was stored.
_BATCH = f"""
WITH blobs_added AS (
    INSERT INTO blobs (sha256, content, size) SELECT * FROM {_unnest("sha256, content, size")}
    ON CONFLICT (sha256) DO NOTHING
), given AS (
    SELECT DISTINCT ON (failure_id) *
    FROM {_unnest(FAILURE_COLUMNS, ordinality=True)} AS g ({FAILURE_COLUMNS}, pos)
    ORDER BY failure_id, pos
), added AS (
    INSERT INTO failures ({FAILURE_COLUMNS}) SELECT {FAILURE_COLUMNS} FROM given ORDER BY pos
    ON CONFLICT (failure_id) DO NOTHING
    RETURNING failure_id
), fresh AS (
    SELECT g.*, coalesce(g.agent_version, '') AS version,
           row_number() OVER (PARTITION BY g.fingerprint, g.session_id ORDER BY g.pos) = 1
           AND NOT EXISTS (SELECT 1 FROM failures p WHERE p.session_id = g.session_id
                                                      AND p.fingerprint = g.fingerprint)
           AND NOT (g.session_id IS NULL AND EXISTS (
               SELECT 1 FROM failures p WHERE p.session_id IS NULL AND p.fingerprint = g.fingerprint)) AS first
    FROM given g JOIN added USING (failure_id)
), patterns_added AS (
    INSERT INTO patterns AS p (fingerprint, agent_id, node_id, error_type, kind, sample_message, transient,
                               count, sessions, first_seen, last_seen)
    SELECT l.fingerprint, l.agent_id, l.node_id, l.error_type, l.kind, l.error_message, l.transient,
           s.n, s.sessions, s.first_ts, l.ts
    FROM (SELECT fingerprint, count(*) AS n, count(*) FILTER (WHERE first) AS sessions, min(ts) AS first_ts
          FROM fresh GROUP BY fingerprint) s
    JOIN (SELECT DISTINCT ON (fingerprint) * FROM fresh ORDER BY fingerprint, ts DESC, pos) l USING (fingerprint)
    ON CONFLICT (fingerprint) DO UPDATE SET
        count = p.count + excluded.count,
        sessions = p.sessions + excluded.sessions,
        first_seen = LEAST(p.first_seen, excluded.first_seen),
        last_seen = GREATEST(p.last_seen, excluded.last_seen),
        sample_message = CASE WHEN excluded.last_seen >= p.last_seen THEN excluded.sample_message
                              ELSE p.sample_message END
), counted AS (
    INSERT INTO failure_counts AS c (grain, bucket, fingerprint, agent_version, failures, sessions, first_ts,
                                     last_ts)
    SELECT g.grain, trunc(f.ts / g.grain)::bigint, f.fingerprint, f.version, count(*),
           count(*) FILTER (WHERE f.first), min(f.ts), max(f.ts)
    FROM fresh f CROSS JOIN grains g GROUP BY 1, 2, 3, 4
    ON CONFLICT (grain, bucket, fingerprint, agent_version) DO UPDATE SET
        failures = c.failures + excluded.failures, sessions = c.sessions + excluded.sessions,
        first_ts = LEAST(c.first_ts, excluded.first_ts), last_ts = GREATEST(c.last_ts, excluded.last_ts)
)
SELECT count(*) FROM added
"""

# One round of runs, each (session, agent) once: an upsert may change a row once per statement.
_RUNS = f"""
INSERT INTO runs AS r ({RUN_COLUMNS}) SELECT * FROM {_unnest(RUN_COLUMNS)}
ON CONFLICT (session_id, agent_id) DO UPDATE SET
    agent_version = coalesce(excluded.agent_version, r.agent_version),
    started_at = LEAST(r.started_at, excluded.started_at),
    ended_at = GREATEST(r.ended_at, excluded.ended_at),
    success = r.success AND excluded.success,
    quality = coalesce(excluded.quality, r.quality),
    failures = r.failures + excluded.failures
"""


@functools.lru_cache(maxsize=512)
def _pg(sql: str, placeholder: str = "%s") -> str:
    """The index's ``?`` placeholders as psycopg's (a literal ``%`` doubled).

    A batch's arrays go as ``%b``, binary: each text a length and its bytes, where the text
    format quotes and escapes every character of a megabyte of snapshots (ten times slower).
    """
    return sql.replace("%", "%%").replace("?", placeholder)


def _text(value: Any) -> Any:
    """PostgreSQL's text holds no NUL character (SQLite's does): it becomes U+FFFD, as an undecodable byte would."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) and "\x00" in value else value


def _columns(rows: Sequence[tuple[Any, ...]], flags: frozenset[int] = frozenset()) -> list[list[Any]]:
    """Rows as one list per column, for ``unnest``; 0/1 flags as booleans, NUL characters replaced."""
    columns = [list(column) for column in zip(*rows, strict=True)]
    for i, column in enumerate(columns):
        if i in flags:
            columns[i] = [bool(v) for v in column]
        elif any(isinstance(v, str) and "\x00" in v for v in column):
            columns[i] = [_text(v) for v in column]
    return columns


def _rounds(runs: Sequence[tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
    """Runs in rounds where each (session, agent) appears once, in order, so they merge as one after the other."""
    seen: dict[tuple[Any, Any], int] = {}
    rounds: list[list[tuple[Any, ...]]] = []
    for run in runs:
        n = seen.get((run[0], run[1]), 0)
        seen[(run[0], run[1])] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(run)
    return rounds


class PostgresBackend(Backend):
    errors = (psycopg.Error,)
    greatest = "GREATEST"
    rowid = "seq"
    lateral = True

    def __init__(self, url: str, *, create: bool, connect_timeout: float = 10.0, max_connections: int = 4) -> None:
        self.location = redact(url)
        self._reader = not create
        self._local = threading.local()
        extra = {} if "connect_timeout" in url else {"connect_timeout": max(1, round(connect_timeout))}
        try:  # one connection first: a clear error when the server or database is not there, and the schema
            with psycopg.connect(url, autocommit=True, **extra) as conn:
                self._local.conn = conn
                self.migrate(allowed=create)
        except psycopg.Error as exc:
            raise FailureIndexError(f"cannot use the PostgreSQL index at {self.location}: {exc}") from exc
        finally:
            self._local.conn = None
        self._pool = ConnectionPool(url, kwargs={"autocommit": True, **extra}, min_size=1, max_size=max_connections,
                                    configure=self._configure, open=False, name="hive-failures",
                                    timeout=connect_timeout)
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except psycopg.Error as exc:
            self._pool.close()
            raise FailureIndexError(f"cannot use the PostgreSQL index at {self.location}: {exc}") from exc

    def _configure(self, conn: psycopg.Connection) -> None:
        # The index's statements take milliseconds; JIT compiling them would take a hundred.
        conn.execute("SET jit = off")
        if self._reader:  # resolve() asks for a read-write transaction
            conn.execute("SET default_transaction_read_only = on")

    # --- the schema -------------------------------------------------------------------------------
    @property
    def schema_version(self) -> int:
        with self.session() as conn:
            return self._version(conn)

    @staticmethod
    def _version(conn: psycopg.Connection) -> int:
        if conn.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:
            return 0
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        return row[0] or 0

    @contextmanager
    def _migrating(self) -> Iterator[int]:
        conn = self._local.conn
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
            yield self._version(conn)

    def _apply(self, number: int) -> None:
        conn = self._local.conn
        conn.execute(POSTGRESQL_MIGRATIONS[number - 1])  # no parameters: the whole script in one go
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))

    # --- statements -------------------------------------------------------------------------------
    @contextmanager
    def session(self) -> Iterator[psycopg.Connection]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        with self._pool.connection() as conn:
            self._local.conn = conn
            try:
                yield conn
            finally:
                self._local.conn = None

    def fetchall(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        with self.session() as conn:
            return conn.execute(_pg(sql), params).fetchall()

    def transaction(self, statements: Sequence[tuple[str, Params]]) -> None:
        with self.session() as conn, conn.transaction():
            if self._reader:
                conn.execute("SET TRANSACTION READ WRITE")
            for sql, params in statements:
                conn.execute(_pg(sql), [_text(p) for p in params])

    def write_batch(self, batch: tuple[WireRows, list[tuple[Any, ...]]], *, count: bool = True) -> int:
        rows, runs = batch
        added = None
        with self.session() as conn, conn.pipeline():
            with conn.transaction():
                if self._reader:
                    conn.execute("SET TRANSACTION READ WRITE")
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITER_LOCK,))
                if rows.failures:
                    blobs = _columns(rows.blobs) if rows.blobs else [[], [], []]
                    added = conn.execute(_pg(_BATCH, "%b"), [*blobs, *_columns(rows.failures, _BOOL_COLUMNS)])
                for round_ in _rounds(runs):
                    columns = _columns(round_, frozenset({5}))
                    columns[3:5] = [[ns / 1e9 for ns in column] for column in columns[3:5]]  # seconds, as stored
                    conn.execute(_pg(_RUNS, "%b"), columns)
        return added.fetchone()[0] if added is not None and count else 0

    def close(self) -> None:
        self._pool.close()
