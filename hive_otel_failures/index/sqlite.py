"""The failure index in a SQLite file: one connection, guarded by a lock.

A writer's two threads (in the index writer process) and readers in the same process share it;
other processes read concurrently thanks to WAL.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any

from .backend import FAILURE_COLUMNS, RUN_COLUMNS, Backend, FailureIndexError, Params, WireRows
from .schema import MIGRATIONS

# The writer hands SQLite a batch in as few statements as it can (one, up to _ROWS failures), and a
# trigger writes it: the batch's failures rows go in as bound parameters, rows of the temporary
# table batch_in, and the last statement's last row carries the rest as JSON (blobs, runs), one
# BLOB (the snapshots' bytes) and how many are stored as their text (raw); inserting that row
# writes blobs, failures (an id already stored is skipped), their patterns and hourly/daily
# counters, run outcomes, and notes the rowids of raw snapshots. Each SQLite call gives up the
# GIL, and getting it back from a busy thread costs a switch interval: 5 ms in a process with
# busy application threads (the ingest server, ``add`` through the API), 0.5 ms in the writer
# process beside its reading and preparing threads; one statement per batch keeps it writing.
# Parameters, not JSON, for the failures: SQLite binds them as executemany does, where encoding
# ~1 KB rows to JSON and extracting 24 values from each cost twice the insert.
# A session counts for a pattern on its first failure of that pattern in the file (in the hour
# and day of that failure); the pattern shows its newest failure.
_BATCH_SCHEMA = (
    # The last row: blobs is [sha256, offset, length, size] of each snapshot's compressed bytes within zs.
    f"CREATE TEMP TABLE IF NOT EXISTS batch_in ({FAILURE_COLUMNS}, blobs TEXT, runs TEXT, zs BLOB, raw INTEGER)",
    "CREATE TEMP TABLE IF NOT EXISTS batch_mark (stored_before INTEGER NOT NULL, added INTEGER, blobs_before INTEGER)",
    # Rowid ranges of blob_z where this connection stored snapshots as they are, to compress later:
    # a range per batch that was behind, not a key per snapshot (200k keys held ~15 MB in Python).
    "CREATE TEMP TABLE IF NOT EXISTS raw_blobs (low INTEGER NOT NULL, high INTEGER NOT NULL)",
    # The failures this batch added: whether each is its session's first of its pattern, and what
    # the counters group by, so that nothing below reads the failures table twice.
    """CREATE TEMP TABLE IF NOT EXISTS batch_fresh (
        id INTEGER PRIMARY KEY, first INTEGER NOT NULL, fingerprint TEXT NOT NULL, ts REAL NOT NULL,
        version TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS temp.batch_fresh_latest ON batch_fresh (fingerprint, ts DESC, id)",
    f"""
    CREATE TEMP TRIGGER IF NOT EXISTS batch_written AFTER INSERT ON batch_in WHEN new.runs IS NOT NULL BEGIN
        DELETE FROM batch_mark;
        DELETE FROM batch_fresh;
        INSERT INTO batch_mark (stored_before, blobs_before)
            SELECT coalesce(max(rowid), 0), (SELECT coalesce(max(rowid), 0) FROM blob_z) FROM failures;
        INSERT OR IGNORE INTO blob_z (sha256, size, z)
            SELECT value ->> 0, value ->> 3, substr(new.zs, value ->> 1, value ->> 2) FROM json_each(new.blobs);
        INSERT INTO raw_blobs (low, high)
            SELECT m.blobs_before + 1, z.high FROM batch_mark m, (SELECT max(rowid) AS high FROM blob_z) z
            WHERE new.raw AND z.high > m.blobs_before;
        INSERT INTO failures ({FAILURE_COLUMNS})
            SELECT {FAILURE_COLUMNS} FROM batch_in WHERE failure_id IS NOT NULL ORDER BY rowid
            ON CONFLICT (failure_id) DO NOTHING;
        INSERT INTO batch_fresh (id, first, fingerprint, ts, version)
            SELECT f.rowid, NOT EXISTS (
                SELECT 1 FROM failures p INDEXED BY failures_session
                WHERE p.session_id IS f.session_id AND p.fingerprint = f.fingerprint AND p.rowid < f.rowid),
                f.fingerprint, f.ts, coalesce(f.agent_version, '')
            FROM failures f WHERE f.rowid > (SELECT stored_before FROM batch_mark);
        UPDATE batch_mark SET added = (SELECT count(*) FROM batch_fresh);
        INSERT INTO patterns (fingerprint, agent_id, node_id, error_type, kind, sample_message, transient,
                              count, sessions, first_seen, last_seen)
            SELECT g.fingerprint, l.agent_id, l.node_id, l.error_type, l.kind, l.error_message, l.transient,
                   g.n, g.sessions, g.first_ts, l.ts
            FROM (SELECT fingerprint, count(*) AS n, sum(first) AS sessions, min(ts) AS first_ts,
                         (SELECT latest.id FROM batch_fresh latest WHERE latest.fingerprint = b.fingerprint
                          ORDER BY latest.ts DESC, latest.id LIMIT 1) AS latest_id
                  FROM batch_fresh b GROUP BY fingerprint) g
            CROSS JOIN failures l ON l.rowid = g.latest_id
            WHERE true
            ON CONFLICT (fingerprint) DO UPDATE SET
                count = count + excluded.count,
                sessions = sessions + excluded.sessions,
                first_seen = min(first_seen, excluded.first_seen),
                last_seen = max(last_seen, excluded.last_seen),
                sample_message = CASE WHEN excluded.last_seen >= last_seen THEN excluded.sample_message
                                      ELSE sample_message END;
        INSERT INTO failure_counts (grain, bucket, fingerprint, agent_version, failures, sessions, first_ts,
                                    last_ts)
            SELECT g.grain, CAST(b.ts / g.grain AS INTEGER), b.fingerprint, b.version, count(*), sum(b.first),
                   min(b.ts), max(b.ts)
            FROM batch_fresh b, grains g
            WHERE true GROUP BY 1, 2, 3, 4
            ON CONFLICT DO UPDATE SET
                failures = failures + excluded.failures, sessions = sessions + excluded.sessions,
                first_ts = min(first_ts, excluded.first_ts), last_ts = max(last_ts, excluded.last_ts);
        INSERT INTO runs ({RUN_COLUMNS})
            SELECT value ->> 0, value ->> 1, value ->> 2, (value ->> 3) / 1e9, (value ->> 4) / 1e9, value ->> 5,
                   value ->> 6, value ->> 7
            FROM json_each(new.runs) WHERE true  -- in order: a run twice in a batch merges as in two batches
            ON CONFLICT (session_id, agent_id) DO UPDATE SET
                agent_version = coalesce(excluded.agent_version, agent_version),
                started_at = min(started_at, excluded.started_at),
                ended_at = max(ended_at, excluded.ended_at),
                success = min(success, excluded.success),
                quality = coalesce(excluded.quality, quality),
                failures = failures + excluded.failures;
        DELETE FROM batch_in;
    END""",
)
_json_rows = json.JSONEncoder(ensure_ascii=False, check_circular=False, allow_nan=False).encode
_WIDTH = len(FAILURE_COLUMNS.split(","))
# A batch's failures rows go in statements of at most _ROWS, the last one padded with rows of NULLs
# to a power of two from _PAD up, so that every statement is one of six the connection's statement
# cache keeps (preparing 512 rows' worth costs 1.4 ms; a prepared statement holds ~2.4 KB a row, so
# the six hold ~3.5 MB, where padding to multiples of 32 made up to 17 of them, 19 MB).
_PAD = 32
_ROWS = 512


def _padded(rows: int, most: int) -> int:
    """The rows of the statement that takes ``rows`` (<= ``most``): a power of two from _PAD, or ``most``."""
    return min(most, max(_PAD, 1 << (rows - 1).bit_length()))


@functools.lru_cache(maxsize=None)
def _insert_batch(rows: int, last: bool) -> str:
    """Put ``rows`` failures rows into batch_in, and if ``last`` the row that writes the batch."""
    values = [f"({', '.join('?' * _WIDTH)}, NULL, NULL, NULL, NULL)"] * rows
    if last:
        values.append(f"({'NULL, ' * _WIDTH}?, ?, ?, ?)")
    return f"INSERT INTO batch_in VALUES {', '.join(values)}"


# Snapshots are stored compressed (schema migrations 4 and 5): z is one byte naming how, then the
# bytes. 0: raw deflate without a dictionary (what the migration and plain SQL inserts write);
# a row of blob_dicts: zstd (frames without their magic number) with that dictionary, or raw deflate
# with it where the row is not a zstd dictionary (files from before migration 5); 0xFF: the text.
# JSON text of 1-4 KB compresses to about 40% alone and to under 20% with a dictionary trained on
# text like it, so the writer trains one per file (32 KB) from the first batch with enough snapshot
# text. zstd level 3 with it, against deflate level 3 with the file's text as its dictionary:
# 2.8 µs a snapshot instead of 16, and 0.176 of the text instead of 0.187 (the benchmark's records).
_LEVEL = 3
_DICT_BYTES = 32 * 1024
_DICT_FROM = 16 * 1024  # snapshot text a batch needs for the file's dictionary to be trained on it,
_DICT_SAMPLES = 8  # in at least this many snapshots (zstd trains on no fewer)
_ZSTD_DICT = b"\x37\xa4\x30\xec"  # how a zstd dictionary begins (its magic number, little-endian)
_RECENT = 4096  # compressed snapshots kept by key: an agent's graph snapshot recurs in every batch
# A writer that is behind stores its snapshots as they are and compresses them once it keeps up.
# Compressing costs CPU a writer that is behind lacks: with zstd, draining 10k queued failures
# (writer_throughput.py, 3) cost the writer process 95-100 µs of CPU a failure this way and
# 110-112 compressing every batch (with deflate, on a writer thread, it cost a storm of failure
# spans a quarter of what the writer indexed). "Behind" is a batch prepared while another is
# being written, or within _BEHIND_GAP of the last write's end (a writer that keeps up waits
# about a flush interval, 200 ms, between batches); a batch that is not behind first compresses
# up to _CATCH_UP snapshots this connection stored as they were. A writer behind for long
# compresses anyway once _RAW_BACKLOG snapshots wait for it: behind for good, it never catches
# up, and a file of text snapshots (4.5 KB a failure) writes more pages a failure: draining
# 500k, 8.8k failures/s in the first 100k fell to 2.9k in the fifth.
_RAW = 0xFF  # z's first byte for a snapshot stored as its UTF-8 text (dictionary ids are small)
_RAW_HEAD = bytes((_RAW,))
_BEHIND_GAP = 0.05
_CATCH_UP = 512
_RAW_BACKLOG = 50_000  # ~110 MB of text snapshots at most


def deflate(text: str, level: int = _LEVEL) -> bytes:
    """``hof_deflate``: a snapshot's z without a dictionary (migrations, inserts into the blobs view)."""
    packer = zlib.compressobj(level, zlib.DEFLATED, -15)
    return b"\0" + packer.compress(text.encode("utf-8")) + packer.flush()


class _Blobs:
    """The compressing and decompressing of one file's snapshots, with its dictionaries."""

    def __init__(self, target: str) -> None:
        self._target = target  # read again for a dictionary another process made after we opened
        self.dicts: dict[int, bytes] = {}
        self.dict_id = 0  # the newest zstd dictionary's id: what this writer compresses with (0: none yet)
        self._compress: Any = None  # made on first use: readers never compress
        self._decompressors: dict[int, Any] = {}
        self._recent: dict[str, bytes] = {}
        # One compressor, and batches prepared on one thread while one-by-one retries run on another.
        self._lock = threading.Lock()

    def use(self, rows: Iterable[tuple[int, bytes]]) -> None:
        """Know these dictionaries; compress with the newest zstd one from now on."""
        with self._lock:
            for dict_id, data in rows:
                self.dicts[dict_id] = data
            newest = max((i for i, data in self.dicts.items() if data.startswith(_ZSTD_DICT)), default=0)
            if newest != self.dict_id:
                self.dict_id = newest
                self._compress = None
                self._recent.clear()

    def compressed(self, sha: str) -> bytes | None:
        """The z this writer compressed for ``sha`` lately, if any."""
        return self._recent.get(sha)

    def compress(self, sha: str, text: str) -> bytes:
        with self._lock:
            recent = self._recent
            z = recent.pop(sha, None)
            if z is None:
                if not self.dict_id:  # a file's first snapshots, before it has a dictionary
                    z = deflate(text)
                else:
                    if self._compress is None:
                        import zstandard  # a writer and readers of its snapshots load it, not the application

                        self._compress = zstandard.ZstdCompressor(
                            dict_data=zstandard.ZstdCompressionDict(self.dicts[self.dict_id]),
                            compression_params=zstandard.ZstdCompressionParameters.from_level(
                                _LEVEL, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_content_size=True,
                                write_checksum=False, write_dict_id=False)).compress
                    z = bytes((self.dict_id,)) + self._compress(text.encode("utf-8"))
                if len(recent) >= _RECENT:
                    del recent[next(iter(recent))]
            recent[sha] = z  # newest last: the least recently used goes first
            return z

    def inflate(self, z: bytes | None) -> str | None:
        """``hof_inflate``: the JSON text of a z."""
        if z is None:
            return None
        if z[0] == _RAW:
            return z[1:].decode("utf-8")
        if not z[0]:
            return zlib.decompress(z[1:], -15).decode("utf-8")
        zdict = self.dicts.get(z[0])
        if zdict is None:
            conn = sqlite3.connect(self._target, uri=self._target.startswith("file:"))
            try:
                self.dicts.update(conn.execute("SELECT id, dict FROM blob_dicts"))
            finally:
                conn.close()
            zdict = self.dicts[z[0]]
        if zdict.startswith(_ZSTD_DICT):
            decompressor = self._decompressors.get(z[0])
            if decompressor is None:
                import zstandard

                decompressor = self._decompressors[z[0]] = zstandard.ZstdDecompressor(
                    dict_data=zstandard.ZstdCompressionDict(zdict), format=zstandard.FORMAT_ZSTD1_MAGICLESS)
            return decompressor.decompress(z[1:]).decode("utf-8")
        unpacker = zlib.decompressobj(-15, zdict=zdict)
        return (unpacker.decompress(z[1:]) + unpacker.flush()).decode("utf-8")


class _Checkpointer:
    """Checkpoints a writer's WAL on a thread and connection of its own, never waiting for a reader (PASSIVE).

    SQLite's automatic checkpoint runs inside the commit that crosses 1,000 pages of WAL: the
    writer copied pages into the file and waited for fsync there. Here they are copied beside
    the writer, at most every _CHECKPOINT_EVERY after a write, giving the GIL up while SQLite
    works; the writer's own checkpoint stays, at _WAL_PAGES, to bound the WAL (a checkpoint
    beside a writer that never pauses cannot finish, and only a finished one lets the WAL
    start over). Draining 40k queued failures: 10.9-11.3k -> 12.6-13.0k failures/s, the WAL
    at most 43-52 MB instead of 15-16 (without the writer's own checkpoint: 13.0-13.7k/s, but
    587 MB of WAL).
    """

    def __init__(self, target: str) -> None:
        self._wrote = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(target,), name="hive-failures-checkpoint",
                                        daemon=True)
        self._thread.start()

    def wrote(self) -> None:
        self._wrote.set()

    def _run(self, target: str) -> None:
        try:
            conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        except sqlite3.Error:
            return
        try:
            while not self._stop.is_set():
                self._wrote.wait()
                self._wrote.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:
                    pass  # busy or failing: the next write asks again, and closing checkpoints too
                self._stop.wait(_CHECKPOINT_EVERY)
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._wrote.set()
        self._thread.join(5)


_CHECKPOINT_EVERY = 0.1  # seconds between checkpoints while writes come: ~8 MB of WAL at 15k failures/s
_WAL_PAGES = 4000  # the writer's own checkpoint (SQLite's default: 1,000 pages): 32 MB of 8 KiB pages


def register(conn: sqlite3.Connection, blobs: _Blobs | str) -> None:
    """The functions the schema's blobs view and migrations call, on a connection to this file.

    Any connection that reads ``blobs.content`` (or inserts into ``blobs``) needs them: pass it
    and the file's path, e.g. ``register(sqlite3.connect(path), path)``.
    """
    blobs = _Blobs(blobs) if isinstance(blobs, str) else blobs
    conn.create_function("hof_inflate", 1, blobs.inflate, deterministic=True)
    conn.create_function("hof_deflate", 1, deflate, deterministic=True)


def _open_sqlite(target: str, busy_timeout: float) -> tuple[sqlite3.Connection, _Blobs]:
    """A connection that has read the file once (SQLite opens lazily), or the error that stopped it."""
    conn = sqlite3.connect(target, timeout=busy_timeout, isolation_level=None, check_same_thread=False,
                           uri=target.startswith("file:"))
    blobs = _Blobs(target)
    try:
        register(conn, blobs)
        conn.execute("PRAGMA trusted_schema = ON")  # our functions in our schema (blobs.content), whatever the build
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        conn.execute("PRAGMA user_version").fetchone()
    except sqlite3.Error:
        conn.close()
        raise
    return conn, blobs


def _statements(script: str) -> Iterable[str]:
    """The statements of a migration, triggers' bodies kept whole."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""
    if statement.strip():
        raise FailureIndexError(f"incomplete statement in a migration: {statement.strip()[:80]!r}")


class SQLiteBackend(Backend):
    errors = (sqlite3.DatabaseError,)

    def __init__(self, path: Path, *, create: bool, busy_timeout: float) -> None:
        self.path = path
        self.location = str(path)
        self._lock = threading.RLock()
        self._batch_ready = False  # the temp objects write_batch writes through exist on this connection
        self._writing = False  # is the writer behind? while a batch is written,
        self._batch_end = 0.0  # and shortly after the last one's end (monotonic)
        self._raw_backlog = 0  # snapshots stored as they are, to compress once not behind
        self._checkpointer: _Checkpointer | None = None  # started by the first write
        if not self.path.exists():
            if not create:
                raise FailureIndexError(f"no failure index at {self.path} (set HIVE_FAILURES_DB or pass --db)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        # A reader (create=False) changes nothing in the file: no journal mode, no migration, no
        # checkpoint on close. Only resolve() writes through it.
        self._reader = not create
        try:
            self._conn, self._blobs = self._connect(busy_timeout)
            if create:
                if self.path.stat().st_size == 0:  # ~1 KB failures rows leave 8% of an 8 KiB page unused, 14% of 4
                    self._conn.execute("PRAGMA page_size = 8192")
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = NORMAL")
            # Foreign keys stay declared but unenforced (SQLite's default): the only writer puts a
            # failure's blobs in the same transaction, before it, and only prune deletes blobs.
            # Enforcing them re-checked that guarantee at ~10% of the write cost.
            self.migrate(allowed=create)
            self._blobs.use(self._conn.execute("SELECT id, dict FROM blob_dicts").fetchall())
        except sqlite3.DatabaseError as exc:
            raise FailureIndexError(f"{self.path} is not a usable failure index: {exc}") from exc

    def _connect(self, busy_timeout: float) -> tuple[sqlite3.Connection, _Blobs]:
        """Read-write; a reader that may not write here (a read-only directory) reads the file as it is."""
        targets = [str(self.path)]
        if self._reader:
            uri = self.path.resolve().as_uri()
            targets += [f"{uri}?mode=ro", f"{uri}?immutable=1"]
        *fallbacks, last = targets
        for target in fallbacks:
            try:
                return _open_sqlite(target, busy_timeout)
            except sqlite3.OperationalError:
                continue
        return _open_sqlite(last, busy_timeout)

    # --- the schema -------------------------------------------------------------------------------
    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._conn.execute("PRAGMA user_version").fetchone()[0]

    @contextmanager
    def _migrating(self) -> Iterator[int]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn.execute("PRAGMA user_version").fetchone()[0]
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def _apply(self, number: int) -> None:
        for statement in _statements(MIGRATIONS[number - 1]):
            self._conn.execute(statement)
        self._conn.execute(f"PRAGMA user_version = {number}")

    def _rollback(self) -> None:
        """Roll back the open transaction unless SQLite already did (it may on FULL, IOERR, NOMEM, BUSY).

        A ROLLBACK that fails with "no transaction is active" would hide the real error.
        """
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    # --- statements -------------------------------------------------------------------------------
    def session(self) -> threading.RLock:
        return self._lock

    def fetchall(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def transaction(self, statements: Iterable[tuple[str, Params]]) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    self._conn.execute(sql, params)
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def _batch_schema(self) -> None:
        """The temporary tables and trigger a batch is written through, once per connection (under the lock)."""
        if not self._batch_ready:
            self._conn.execute("PRAGMA temp_store = MEMORY")
            for statement in _BATCH_SCHEMA:
                self._conn.execute(statement)
            self._batch_ready = True

    def prepare_batch(self, rows: WireRows, runs: list[tuple[Any, ...]]) -> list[tuple[str, list[Any]]]:
        """The batch's statements and their parameters: snapshots compressed (or stored as they are).

        Python work, but for the file's dictionary (once) and catching up on raw snapshots,
        which only a writer that keeps up does.
        """
        behind = self._writing or time.monotonic() - self._batch_end < _BEHIND_GAP
        codec = self._blobs
        if not behind and self._raw_backlog:
            self._catch_up()
        if not codec.dict_id and len(rows.blobs) >= _DICT_SAMPLES \
                and sum(len(text) for _, text, _ in rows.blobs) >= _DICT_FROM:
            self._make_dict(rows.blobs)
        as_text = behind and self._raw_backlog < _RAW_BACKLOG
        blobs, zs, at, texts = [], [], 1, 0
        for sha, text, size in rows.blobs:
            if not as_text:
                z = codec.compress(sha, text)
            elif (z := codec.compressed(sha)) is None:  # an agent's graph recurs: compressed already
                z = _RAW_HEAD + text.encode("utf-8")
                texts += 1
            blobs.append((sha, at, len(z), size))
            zs.append(z)
            at += len(z)
        # whole _PAD rows, and the last row's 4 (SQLite's minimum limit, 999, allows 32 rows)
        limit = self._conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        most = max(_PAD, min(_ROWS, (limit - 4) // _WIDTH // _PAD * _PAD))
        *chunks, last = [rows.failures[i:i + most] for i in range(0, len(rows.failures), most)] or [[]]
        padding = _padded(len(last), most) - len(last)
        return [*((_insert_batch(len(chunk), False), [*chain.from_iterable(chunk)]) for chunk in chunks),
                (_insert_batch(len(last) + padding, True), [
                    *chain.from_iterable(last), *(None,) * (padding * _WIDTH), _json_rows(blobs), _json_rows(runs),
                    b"".join(zs), texts])]

    def write_batch(self, batch: list[tuple[str, list[Any]]], *, count: bool = True) -> int:
        with self._lock:
            self._writing = True
            try:
                self._batch_schema()
                *chunks, (last, params) = batch
                try:
                    for sql, chunk in chunks:  # more rows than one statement takes (_ROWS, or SQLite's limit)
                        self._conn.execute(sql, chunk)
                    # One statement, so its own transaction: it takes the write lock before it reads (the
                    # busy timeout applies) and commits or rolls back whole.
                    self._conn.execute(last, params)
                    self._raw_backlog += params[-1]
                except BaseException:
                    if chunks:
                        self._conn.execute("DELETE FROM batch_in")
                    raise
                if self._checkpointer is None:
                    self._conn.execute(f"PRAGMA wal_autocheckpoint = {_WAL_PAGES}")
                    self._checkpointer = _Checkpointer(str(self.path))
                self._checkpointer.wrote()
                # Another statement gives the GIL up once more: only when asked.
                return self._conn.execute("SELECT added FROM batch_mark").fetchone()[0] if count else 0
            finally:
                self._writing = False
                self._batch_end = time.monotonic()

    def _catch_up(self) -> None:
        """Compress up to _CATCH_UP snapshots this connection stored as they were; on an error they stay so.

        Each in one statement: sqlite3 gives the GIL up for each row a statement steps through
        (executemany's too), and beside a busy thread each time cost up to 5 ms, 2.5 s in all.
        Ranges are read in order (newest last), so the oldest part of the backlog is read, not all of it.
        """
        with self._lock:
            try:
                self._batch_schema()
                (stored,) = self._conn.execute(
                    "SELECT json_group_array(json_array(rowid, sha256, CAST(substr(z, 2) AS TEXT))) FROM ("
                    "  SELECT b.rowid, b.sha256, b.z FROM raw_blobs r JOIN blob_z b ON b.rowid BETWEEN r.low AND r.high"
                    "  WHERE substr(b.z, 1, 1) = ? ORDER BY r.rowid, b.rowid LIMIT ?)",
                    (_RAW_HEAD, _CATCH_UP)).fetchone()
                stored = json.loads(stored)
                if not stored:
                    self._conn.execute("DELETE FROM raw_blobs")
                    self._raw_backlog = 0
                    return
                places, zs, at = [], [], 1
                for rowid, sha, text in stored:
                    z = self._blobs.compress(sha, text)
                    places.append((rowid, at, len(z), sha))
                    zs.append(z)
                    at += len(z)
                done = stored[-1][0] if len(stored) == _CATCH_UP else None  # None: the ranges are all done
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.execute("UPDATE blob_z SET z = substr(?, p.value ->> 1, p.value ->> 2) "
                                       "FROM json_each(?) p WHERE blob_z.rowid = p.value ->> 0 "
                                       "AND blob_z.sha256 = p.value ->> 3",
                                       (b"".join(zs), _json_rows(places)))
                    if done is None:
                        self._conn.execute("DELETE FROM raw_blobs")
                    else:
                        self._conn.execute("DELETE FROM raw_blobs WHERE high <= ?", (done,))
                        self._conn.execute("UPDATE raw_blobs SET low = ? WHERE low <= ?", (done + 1, done))
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
                # an estimate (a text snapshot another batch stored first is counted): at least 1 while ranges remain
                self._raw_backlog = 0 if done is None else max(1, self._raw_backlog - len(stored))
            except Exception:  # noqa: BLE001 - readable as they are: compressing them is only a saving,
                try:  # and one that fails would fail again, before every batch
                    self._conn.execute("DELETE FROM raw_blobs")
                except sqlite3.Error:
                    pass
                self._raw_backlog = 0

    def _make_dict(self, blobs: list[tuple[str, str, int]]) -> None:
        """The file's zstd dictionary, trained on this batch's snapshots (or the one another writer made first).

        Too few samples to train on: no dictionary yet, and a later batch tries again.
        """
        import zstandard

        try:
            trained = zstandard.train_dictionary(_DICT_BYTES, [text.encode("utf-8") for _, text, _ in blobs])
        except zstandard.ZstdError:
            return
        with self._lock:
            self._conn.execute("INSERT INTO blob_dicts (id, dict) SELECT coalesce(max(id), 0) + 1, ? FROM blob_dicts "
                               "WHERE NOT EXISTS (SELECT 1 FROM blob_dicts WHERE substr(dict, 1, 4) = ?)",
                               (trained.as_bytes(), _ZSTD_DICT))
            self._blobs.use(self._conn.execute("SELECT id, dict FROM blob_dicts").fetchall())

    def close(self) -> None:
        """Close; the writer checkpoints without waiting for readers (PASSIVE), readers never do."""
        with self._lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
            if not self._reader:
                try:
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    pass
            self._conn.close()
