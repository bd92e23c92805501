"""Retention and portability of a failure index: prune old rows, export and import as JSON lines.

Why these three live together: pruning deletes failures and runs but keeps the counters they
were counted into (patterns, ``failure_counts``, ``run_counts``) and every resolution, so that
rates, advice history and fix effects stay what they were. An export of a pruned index must
then carry the counters its failures no longer explain, or an import would answer differently
from the index it came from. Everything here is plain SQL on the backend both index backends
share (``index._db``), and the index's own batch write (``add_prepared``, ``add``) for the rows
whose counters it keeps.

The export format, JSON lines in this order (an import refuses any other)::

    {"type": "meta", "format": "hive-failures-export", "format_version": 1, "schema_version": 3, ...}
    {"type": "failure", ...a FailureRecord, content included...}      in the order they were stored
    {"type": "run", ...a RunOutcome...}
    {"type": "resolution", "fingerprint": ..., "resolved_at": ..., ...}  the original times, oldest first
    {"type": "pattern", ...the patterns row..., "counts": [...], "pruned": {...}}
    {"type": "run_counts", "agent_id": ..., "counts": [...], "pruned": [...]}

Records are the FailureRecord and RunOutcome models (what a reader of the file already knows);
the counters are the index's own rows, epoch seconds included, so nothing is rounded. A
pattern's ``counts`` are its hourly and daily counters as stored; ``pruned`` is what of them the
file's failures do not account for (the failures pruned at the source): zero for an index
that was never pruned.

How an import writes them, and why:

- Failures go through ``add_prepared`` in batches, as the writer stores them: an id already
  stored is skipped, and the counters count each new failure once. The records are taken as the
  source index stored them (already scrubbed and capped there): no second ``prepare``, whose
  limits on this machine could cut what the source kept.
- Runs already stored (same session and agent) are skipped: recording one again would add its
  failures twice. The others go through ``add``; the backends' triggers count them.
- A resolution equal to one stored (pattern, time, text, flag, version) is skipped. The newest
  resolution of a pattern is the one with the highest id, so when an imported one is older than
  one stored, the pattern's resolutions are written again in time order.
- A pattern the index did not have before the import gets the source's row and counters as they
  were, whatever the failures recounted: the same patterns, rates and advice as the source, pruned
  history included. A pattern it had gets only the ``pruned`` part added, and only if the import
  added some of its failures (otherwise this file, or the same history, was imported already).
  Run counters per agent likewise.

So importing a file twice changes nothing, and SQLite -> PostgreSQL -> SQLite gives the same
records, patterns, runs, resolutions and answers. The memory an import needs is one batch and
the set of fingerprints and agents seen. An import that stops part way (a bad line, a lost
server) keeps the batches it wrote; running it again completes it, except the pruned counters of
patterns whose failures were all written before the stop (the import no longer knows those
patterns were new).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import IO, Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..record import FailureRecord, RunOutcome, to_attributes
from .backend import FailureIndexError, _ts
from .store import _SELECT_FAILURE, FailureIndex, _record_from_row, parse_since

FORMAT = "hive-failures-export"
FORMAT_VERSION = 1
# The order of an export's lines: an import counts a pattern's failures before it reads the pattern.
LINE_TYPES = ("meta", "failure", "run", "resolution", "pattern", "run_counts")
_RANK = {name: i for i, name in enumerate(LINE_TYPES)}
_PAGE = 500  # rows per read, and the most values in one IN (...) list: both backends take it
_PATTERN_COLUMNS = ("fingerprint", "agent_id", "node_id", "error_type", "kind", "sample_message", "transient",
                    "count", "sessions", "first_seen", "last_seen")
_T = TypeVar("_T")


def _database_errors(function: Callable[..., _T]) -> Callable[..., _T]:
    """A database error (a lost server, a full disk, a locked file) comes out as FailureIndexError."""
    @functools.wraps(function)
    def call(index: FailureIndex, *args: Any, **kwargs: Any) -> _T:
        try:
            return function(index, *args, **kwargs)
        except index._db.errors as exc:
            raise FailureIndexError(f"{index._db.location}: {exc}") from exc
    return call


_COUNT_COLUMNS = "grain, bucket, agent_version, failures, sessions, first_ts, last_ts"
_RUN_COUNT_COLUMNS = "grain, bucket, agent_version, runs, failed, first_ts"


# --- answers ----------------------------------------------------------------------------------------
class PruneReport(BaseModel):
    """What a prune removed (or, with ``dry_run``, would remove) and what it kept."""

    cut: datetime  # failures before this time, and runs that ended before it, go
    dry_run: bool
    failures_removed: int
    blobs_removed: int  # snapshots no remaining failure refers to
    blob_bytes_removed: int  # their content's size, as given to the index (a SQLite file stores it deflated)
    runs_removed: int
    failures_kept: int
    runs_kept: int
    patterns_kept: int  # every pattern, with its counters
    patterns_without_failures: int  # patterns whose failures are all gone: their counts and history stay
    resolutions_kept: int


class ExportReport(BaseModel):
    """How many lines of each kind an export wrote."""

    failures: int = 0
    runs: int = 0
    resolutions: int = 0
    patterns: int = 0
    patterns_with_pruned_counts: int = 0
    agents: int = 0  # run_counts lines, one per agent


class ImportReport(BaseModel):
    """What an import added and what it found stored already."""

    failures_added: int = 0
    failures_skipped: int = 0  # their ids were stored
    runs_added: int = 0
    runs_skipped: int = 0  # the same session and agent was stored
    resolutions_added: int = 0
    resolutions_skipped: int = 0
    patterns_copied: int = 0  # new to this index: the source's row and counters
    patterns_merged: int = 0  # known here: their pruned counts added
    patterns_unchanged: int = 0
    agents_copied: int = 0
    agents_merged: int = 0
    agents_unchanged: int = 0


# --- prune ------------------------------------------------------------------------------------------
def _cut(older_than: datetime | timedelta | str) -> datetime:
    if isinstance(older_than, timedelta) and older_than < timedelta(0):
        raise FailureIndexError(f"older_than must not be negative, got {older_than}")
    if isinstance(older_than, str) and not older_than.strip():
        raise FailureIndexError("older_than needs a duration (90d, 12w) or an ISO 8601 time")
    cut = parse_since(older_than)
    assert cut is not None
    if cut > datetime.now(timezone.utc):
        raise FailureIndexError(f"the cut {cut.isoformat()} is in the future: nothing would be kept")
    return cut


def _unreferenced_blobs(index: FailureIndex, since: str) -> str:
    """Blobs no failure (``since``: a condition on f.ts, or TRUE) refers to.

    SQLite builds one transient index for ``NOT IN (subquery)``; PostgreSQL would not hash a
    subquery that exceeds work_mem and then rescans it per blob, but plans ``NOT EXISTS`` as
    anti-joins. The snapshot columns have no index: either way it is one scan of the failures.
    """
    if index.backend == "postgresql":
        return " AND ".join(
            f"NOT EXISTS (SELECT 1 FROM failures f WHERE {since} AND f.{column} = b.sha256)"
            for column in ("input_context_sha", "memory_snapshot_sha", "graph_snapshot_sha"))
    refs = " UNION ALL ".join(f"SELECT f.{column} FROM failures f WHERE {since} AND f.{column} IS NOT NULL"
                              for column in ("input_context_sha", "memory_snapshot_sha", "graph_snapshot_sha"))
    return f"b.sha256 NOT IN ({refs})"


# PostgreSQL checks each deleted blob against the failures' three foreign keys, and the snapshot
# columns have no index: a seq scan of the failures per blob and key (86k blobs: hours). The sweep
# builds these indexes in its transaction (a few seconds at 1M failures; writers wait, readers do
# not) and drops them before it commits. A permanent partial index per column in the schema
# would make them unnecessary.
_SWEEP_INDEXES = (("prune_sweep_input_context", "input_context_sha"),
                  ("prune_sweep_memory_snapshot", "memory_snapshot_sha"),
                  ("prune_sweep_graph_snapshot", "graph_snapshot_sha"))


@contextmanager
def _hash_joins(index: FailureIndex, conn: Any) -> Iterator[None]:
    """On PostgreSQL, the blob sweep's anti-joins hashed, whatever the statistics say.

    Right after an import (autovacuum has not analysed yet) the planner took them for small and
    looped: 100k failures took minutes. One scan of the failures per snapshot column it must be.
    """
    if index.backend != "postgresql":
        yield
        return
    conn.execute("SET enable_nestloop = off")
    conn.execute("SET work_mem = '64MB'")
    try:
        yield
    finally:
        conn.execute("RESET enable_nestloop")
        conn.execute("RESET work_mem")


@_database_errors
def prune(index: FailureIndex, older_than: datetime | timedelta | str, *, dry_run: bool = False) -> PruneReport:
    """Delete failures older than ``older_than`` (``"90d"``, a timedelta, or a time), their orphaned snapshots,
    and runs that ended before it, in one transaction; keep patterns, counters and resolutions.

    Rates, advice and fix effects read the counters, so they answer as before; readers of a
    pattern whose failures are all gone (diagnose, fix-effect, advise) still work, without
    examples. A session that fails again in a pattern after its earlier failures of it were
    pruned counts once more for that pattern. The counts reported are taken just before the
    deletes. On PostgreSQL the prune takes the writers' lock, so no batch stores a failure whose
    snapshot the prune is deleting.
    """
    cut = _cut(older_than)
    t = _ts(cut)
    db = index._db
    with db.session() as conn, _hash_joins(index, conn):
        (failures_removed, failures_total) = db.fetchone(
            "SELECT count(*) FILTER (WHERE ts < ?), count(*) FROM failures", (t,))
        (runs_removed, runs_total) = db.fetchone(
            "SELECT count(*) FILTER (WHERE ended_at < ?), count(*) FROM runs", (t,))
        blobs_removed, blob_bytes = db.fetchone(
            f"SELECT count(*), coalesce(sum(b.size), 0) FROM blobs b WHERE {_unreferenced_blobs(index, 'f.ts >= ?')}",
            (t,) * 3)
        (patterns,) = db.fetchone("SELECT count(*) FROM patterns")
        (bare,) = db.fetchone(
            "SELECT count(*) FROM patterns p WHERE NOT EXISTS "
            "(SELECT 1 FROM failures f WHERE f.fingerprint = p.fingerprint AND f.ts >= ?)", (t,))
        (resolutions,) = db.fetchone("SELECT count(*) FROM resolutions")
        if not dry_run and (failures_removed or runs_removed or blobs_removed):
            sweep = (f"DELETE FROM blobs WHERE sha256 IN (SELECT b.sha256 FROM blobs b "
                     f"WHERE {_unreferenced_blobs(index, 'TRUE')})", ())
            statements: list[tuple[str, Sequence[Any]]] = [("DELETE FROM failures WHERE ts < ?", (t,))]
            if index.backend == "postgresql":
                from .postgres import _WRITER_LOCK

                statements.insert(0, ("SELECT pg_advisory_xact_lock(?)", (_WRITER_LOCK,)))
                statements += [(f"CREATE INDEX {name} ON failures ({column}) WHERE {column} IS NOT NULL", ())
                               for name, column in _SWEEP_INDEXES]
                statements.append(sweep)
                statements += [(f"DROP INDEX {name}", ()) for name, _ in _SWEEP_INDEXES]
            else:
                statements.append(sweep)
            statements.append(("DELETE FROM runs WHERE ended_at < ?", (t,)))
            db.transaction(statements)
    return PruneReport(cut=cut, dry_run=dry_run, failures_removed=failures_removed, blobs_removed=blobs_removed,
                       blob_bytes_removed=blob_bytes, runs_removed=runs_removed,
                       failures_kept=failures_total - failures_removed, runs_kept=runs_total - runs_removed,
                       patterns_kept=patterns, patterns_without_failures=bare, resolutions_kept=resolutions)


# --- export -----------------------------------------------------------------------------------------
def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hive-otel-failures")
    except PackageNotFoundError:
        return "unknown"


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


@contextmanager
def _snapshot(index: FailureIndex) -> Iterator[None]:
    """One read transaction for the whole export, so that its counters match its failures.

    SQLite (WAL) reads one snapshot from BEGIN to COMMIT; PostgreSQL's REPEATABLE READ does the
    same. Writers go on meanwhile; SQLite's handle is held, so export with a handle of its own.
    """
    db = index._db
    with db.session() as conn:
        server = index.backend == "postgresql"
        if server:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        else:
            db.fetchall("BEGIN")
        try:
            yield
        finally:
            if server:
                conn.execute("COMMIT")
            else:
                db.fetchall("COMMIT")


def _bucket(index: FailureIndex, ts: str) -> str:
    """The counters' bucket of a time, as each backend's writer computes it (truncated toward zero)."""
    return f"trunc({ts} / g.grain)::bigint" if index.backend == "postgresql" else f"CAST({ts} / g.grain AS INTEGER)"


def _in(values: Sequence[Any]) -> str:
    return f"({', '.join('?' * len(values))})"


@_database_errors
def export_jsonl(index: FailureIndex, out: IO[str]) -> ExportReport:
    """Write the whole index to ``out`` as JSON lines (see the module's docstring), from one snapshot.

    Reads a page at a time: memory stays flat whatever the index holds.
    """
    db, report = index._db, ExportReport()
    write = out.write
    with _snapshot(index):
        write(_dumps({"type": "meta", "format": FORMAT, "format_version": FORMAT_VERSION,
                      "schema_version": index.schema_version, "package_version": _package_version(),
                      "exported_at": datetime.now(timezone.utc).isoformat(), "source": index.backend}) + "\n")
        rowid, last = db.rowid, -1
        while True:  # in the order stored: a session counts for a pattern at its first failure of it
            page = db.fetchall(f"SELECT {rowid} FROM failures WHERE {rowid} > ? ORDER BY {rowid} LIMIT ?",
                               (last, _PAGE))
            if not page:
                break
            rows = db.fetchall(f"{_SELECT_FAILURE} WHERE f.{rowid} > ? AND f.{rowid} <= ? ORDER BY f.{rowid}",
                               (last, page[-1][0]))
            for row in rows:
                write(_dumps({"type": "failure", **_record_from_row(row).model_dump(mode="json")}) + "\n")
            report.failures += len(rows)
            last = page[-1][0]
        key: tuple[str, str] = ("", "")
        first = True
        while True:
            rows = db.fetchall(
                "SELECT session_id, agent_id, agent_version, started_at, ended_at, success, quality, failures "
                f"FROM runs {'' if first else 'WHERE session_id > ? OR (session_id = ? AND agent_id > ?)'} "
                "ORDER BY session_id, agent_id LIMIT ?", (_PAGE,) if first else (key[0], key[0], key[1], _PAGE))
            if not rows:
                break
            for session, agent, version, started, ended, success, quality, failures in rows:
                run = RunOutcome(session_id=session, agent_id=agent, agent_version=version, started_at=_dt(started),
                                 ended_at=_dt(ended), success=bool(success), quality=quality, failures=failures)
                write(_dumps({"type": "run", **run.model_dump(mode="json")}) + "\n")
            report.runs += len(rows)
            key, first = (rows[-1][0], rows[-1][1]), False
        last = -1
        while True:
            rows = db.fetchall("SELECT id, fingerprint, ts, resolution, evolution_triggered, agent_version "
                               "FROM resolutions WHERE id > ? ORDER BY id LIMIT ?", (last, _PAGE))
            if not rows:
                break
            for _, fp, ts, text, evolved, version in rows:
                write(_dumps({"type": "resolution", "fingerprint": fp, "resolved_at": _dt(ts).isoformat(),
                              "resolution": text, "evolution_triggered": bool(evolved),
                              "agent_version": version}) + "\n")
            report.resolutions += len(rows)
            last = rows[-1][0]
        _export_patterns(index, write, report)
        _export_run_counts(index, write, report)
    return report


def _export_patterns(index: FailureIndex, write: Any, report: ExportReport) -> None:
    db, rowid = index._db, index._db.rowid
    last = ""
    first_page = True
    while True:
        patterns = db.fetchall(
            f"SELECT {', '.join(_PATTERN_COLUMNS)} FROM patterns "
            f"{'' if first_page else 'WHERE fingerprint > ?'} ORDER BY fingerprint LIMIT ?",
            (_PAGE,) if first_page else (last, _PAGE))
        if not patterns:
            return
        fps = [p[0] for p in patterns]
        stored: dict[str, dict[tuple[int, int, str], tuple[Any, ...]]] = {fp: {} for fp in fps}
        for fp, grain, bucket, version, *values in db.fetchall(
                f"SELECT fingerprint, {_COUNT_COLUMNS} FROM failure_counts WHERE fingerprint IN {_in(fps)} "
                "ORDER BY fingerprint, grain DESC, bucket, agent_version", fps):
            stored[fp][(grain, bucket, version)] = tuple(values)
        # What the failures still stored account for, counted as the writers count them.
        explained: dict[str, dict[tuple[int, int, str], tuple[int, int]]] = {fp: {} for fp in fps}
        for fp, grain, bucket, version, failures, sessions in db.fetchall(
                f"SELECT f.fingerprint, g.grain, {_bucket(index, 'f.ts')}, f.version, count(*), sum(f.first) "
                "FROM (SELECT fingerprint, ts, coalesce(agent_version, '') AS version, "
                f"CASE WHEN row_number() OVER (PARTITION BY fingerprint, session_id ORDER BY {rowid}) = 1 "
                f"THEN 1 ELSE 0 END AS first FROM failures WHERE fingerprint IN {_in(fps)}) f CROSS JOIN grains g "
                "GROUP BY 1, 2, 3, 4", fps):
            explained[fp][(grain, bucket, version)] = (failures, int(sessions))
        for pattern in patterns:
            fp = pattern[0]
            line: dict[str, Any] = {"type": "pattern", **dict(zip(_PATTERN_COLUMNS, pattern))}
            line["transient"] = bool(line["transient"])
            line["counts"] = [[g, b, v, *values] for (g, b, v), values in stored[fp].items()]
            pruned_counts = []
            for (g, b, v), (failures, sessions, first_ts, last_ts) in stored[fp].items():
                have = explained[fp].pop((g, b, v), (0, 0))
                if (failures - have[0], sessions - have[1]) != (0, 0):
                    pruned_counts.append([g, b, v, failures - have[0], sessions - have[1], first_ts, last_ts])
            # Stored failures counted nowhere (a counter lost, or rows written around the API): taken as
            # they are counted, so that the pruned part never counts them twice.
            for (g, b, v), (failures, sessions) in explained[fp].items():
                pruned_counts.append([g, b, v, -failures, -sessions, None, None])
            day = [c for c in pruned_counts if c[0] == 86400]
            pruned_count = sum(c[3] for c in day)
            pruned_sessions = sum(c[4] for c in day)
            if pruned_counts:
                line["pruned"] = {"count": pruned_count, "sessions": pruned_sessions, "counts": pruned_counts}
                report.patterns_with_pruned_counts += 1
            write(_dumps(line) + "\n")
        report.patterns += len(patterns)
        last, first_page = fps[-1], False


def _export_run_counts(index: FailureIndex, write: Any, report: ExportReport) -> None:
    db = index._db
    agents = [a for (a,) in db.fetchall("SELECT DISTINCT agent_id FROM run_counts ORDER BY agent_id")]
    for agent in agents:  # a few per index: one line each
        stored = {(g, b, v): (r, f, first) for g, b, v, r, f, first in db.fetchall(
            f"SELECT {_RUN_COUNT_COLUMNS} FROM run_counts WHERE agent_id = ? ORDER BY grain DESC, bucket, "
            "agent_version", (agent,))}
        explained = {(g, b, v): (r, f) for g, b, v, r, f in db.fetchall(
            f"SELECT g.grain, {_bucket(index, 'r.started_at')}, coalesce(r.agent_version, ''), count(*), "
            "sum(CASE WHEN r.success THEN 0 ELSE 1 END) FROM runs r CROSS JOIN grains g WHERE r.agent_id = ? "
            "GROUP BY 1, 2, 3", (agent,))}
        pruned = []
        for (g, b, v), (runs, failed, first) in stored.items():
            have = explained.pop((g, b, v), (0, 0))
            if (runs - have[0], failed - int(have[1])) != (0, 0):
                pruned.append([g, b, v, runs - have[0], failed - int(have[1]), first])
        for (g, b, v), (runs, failed) in explained.items():
            pruned.append([g, b, v, -runs, -int(failed), None])
        line: dict[str, Any] = {"type": "run_counts", "agent_id": agent,
                                "counts": [[g, b, v, *values] for (g, b, v), values in stored.items()]}
        if pruned:
            line["pruned"] = pruned
        write(_dumps(line) + "\n")
        report.agents += 1


# --- import -----------------------------------------------------------------------------------------
class _Importer:
    """One import's state: the batch being read and what the index had before it."""

    def __init__(self, index: FailureIndex, batch_size: int) -> None:
        self.index, self.db, self.batch_size = index, index._db, max(1, batch_size)
        self.report = ImportReport()
        self.server = index.backend == "postgresql"
        self.least, self.greatest = ("LEAST", "GREATEST") if self.server else ("min", "max")
        self.patterns_before: dict[str, bool] = {}  # fingerprint -> had the index a pattern row before
        self.patterns_added_to: set[str] = set()  # patterns this import added failures of
        self.agents_before: dict[str, bool] = {}  # agent id -> had the index run counters before
        self.agents_added_to: set[str] = set()
        self.pending: list[Any] = []
        self.pending_type = ""

    def _known(self, table: str, column: str, keys: Iterable[str], into: dict[str, bool]) -> None:
        """Remember which of ``keys`` the index has (before this import writes any of them)."""
        unknown = sorted({k for k in keys if k not in into})
        for start in range(0, len(unknown), _PAGE):
            chunk = unknown[start:start + _PAGE]
            found = {k for (k,) in self.db.fetchall(
                f"SELECT DISTINCT {column} FROM {table} WHERE {column} IN {_in(chunk)}", chunk)}
            into.update({k: k in found for k in chunk})

    # --- lines ----------------------------------------------------------------------------------
    def add(self, kind: str, item: Any) -> None:
        if kind != self.pending_type:
            self.flush()
            self.pending_type = kind
        self.pending.append(item)
        if len(self.pending) >= (self.batch_size if kind == "failure" else _PAGE):
            self.flush()

    def flush(self) -> None:
        items, self.pending = self.pending, []
        if items:
            getattr(self, f"_write_{self.pending_type}")(items)

    def _write_failure(self, records: list[FailureRecord]) -> None:
        ids = list({r.failure_id for r in records})
        stored = set()
        for start in range(0, len(ids), _PAGE):
            chunk = ids[start:start + _PAGE]
            stored.update(i for (i,) in self.db.fetchall(
                f"SELECT failure_id FROM failures WHERE failure_id IN {_in(chunk)}", chunk))
        self._known("patterns", "fingerprint", (r.fingerprint for r in records), self.patterns_before)  # type: ignore
        added = self.index.add_prepared([to_attributes(r) for r in records])
        self.patterns_added_to.update(r.fingerprint for r in records if r.failure_id not in stored)  # type: ignore
        self.report.failures_added += added
        self.report.failures_skipped += len(records) - added

    def _write_run(self, runs: list[RunOutcome]) -> None:
        sessions = sorted({r.session_id for r in runs})
        stored = {(s, a) for s, a in self.db.fetchall(
            f"SELECT session_id, agent_id FROM runs WHERE session_id IN {_in(sessions)}", sessions)}
        new = []
        for run in runs:
            key = (run.session_id, run.agent_id or "")
            if key in stored:
                self.report.runs_skipped += 1
            else:
                stored.add(key)
                new.append(run)
        self._known("run_counts", "agent_id", (r.agent_id or "" for r in new), self.agents_before)
        if new:
            self.index.add(runs=new)
        self.agents_added_to.update(r.agent_id or "" for r in new)
        self.report.runs_added += len(new)

    def _write_resolution(self, resolutions: list[tuple[str, float, str, bool, str | None]]) -> None:
        fps = sorted({r[0] for r in resolutions})
        stored: dict[str, list[tuple[str, float, str, bool, str | None]]] = {fp: [] for fp in fps}
        for fp, ts, text, evolved, version in self.db.fetchall(
                "SELECT fingerprint, ts, resolution, evolution_triggered, agent_version FROM resolutions "
                f"WHERE fingerprint IN {_in(fps)} ORDER BY id", fps):
            stored[fp].append((fp, ts, text, bool(evolved), version))
        statements: list[tuple[str, Sequence[Any]]] = []
        insert = ("INSERT INTO resolutions (fingerprint, ts, resolution, evolution_triggered, agent_version) "
                  "VALUES (?, ?, ?, ?, ?)")
        for fp in fps:
            known = set(stored[fp])
            new = []
            for r in resolutions:
                if r[0] == fp and r not in known:
                    known.add(r)
                    new.append(r)
            self.report.resolutions_skipped += sum(1 for r in resolutions if r[0] == fp) - len(new)
            if not new:
                continue
            self.report.resolutions_added += len(new)
            new.sort(key=lambda r: r[1])
            if stored[fp] and new[0][1] < max(r[1] for r in stored[fp]):  # the newest must keep the highest id
                statements.append(("DELETE FROM resolutions WHERE fingerprint = ?", (fp,)))
                new = sorted(stored[fp] + new, key=lambda r: r[1])
            statements += [(insert, r) for r in new]
        if statements:
            self.db.transaction(statements)

    def _write_pattern(self, lines: list[dict[str, Any]]) -> None:
        self._known("patterns", "fingerprint", (p["fingerprint"] for p in lines), self.patterns_before)
        statements: list[tuple[str, Sequence[Any]]] = []
        for p in lines:
            fp = p["fingerprint"]
            if not self.patterns_before[fp]:
                statements += [("DELETE FROM failure_counts WHERE fingerprint = ?", (fp,)),
                               ("DELETE FROM patterns WHERE fingerprint = ?", (fp,)),
                               (f"INSERT INTO patterns ({', '.join(_PATTERN_COLUMNS)}) VALUES "
                                f"{_in(_PATTERN_COLUMNS)}", [p[c] for c in _PATTERN_COLUMNS])]
                statements += _rows_insert("failure_counts", f"fingerprint, {_COUNT_COLUMNS}",
                                           [(fp, *c) for c in p["counts"]])
                self.report.patterns_copied += 1
            elif fp in self.patterns_added_to and p.get("pruned"):
                pruned = p["pruned"]
                statements.append((
                    f"UPDATE patterns SET count = count + ?, sessions = {self.greatest}(sessions + ?, 0), "
                    f"first_seen = {self.least}(first_seen, ?), last_seen = {self.greatest}(last_seen, ?) "
                    "WHERE fingerprint = ?",
                    (pruned["count"], pruned["sessions"], p["first_seen"], p["last_seen"], fp)))
                statements += self._merge_counts(
                    "failure_counts", "fingerprint", fp, ("failures", "sessions"),
                    [(g, b, v, f, s, first, last) for g, b, v, f, s, first, last in pruned["counts"]])
                self.report.patterns_merged += 1
            else:
                self.report.patterns_unchanged += 1
        if statements:
            self.db.transaction(statements)

    def _write_run_counts(self, lines: list[dict[str, Any]]) -> None:
        self._known("run_counts", "agent_id", (a["agent_id"] for a in lines), self.agents_before)
        statements: list[tuple[str, Sequence[Any]]] = []
        for a in lines:
            agent = a["agent_id"]
            if not self.agents_before[agent]:
                statements.append(("DELETE FROM run_counts WHERE agent_id = ?", (agent,)))
                statements += _rows_insert("run_counts", f"agent_id, {_RUN_COUNT_COLUMNS}",
                                           [(agent, *c) for c in a["counts"]])
                self.report.agents_copied += 1
            elif agent in self.agents_added_to and a.get("pruned"):
                statements += self._merge_counts("run_counts", "agent_id", agent, ("runs", "failed"),
                                                  [tuple(c) for c in a["pruned"]])
                self.report.agents_merged += 1
            else:
                self.report.agents_unchanged += 1
        if statements:
            self.db.transaction(statements)

    def _merge_counts(self, table: str, key: str, value: str, counted: tuple[str, str],
                      rows: list[tuple[Any, ...]]) -> list[tuple[str, Sequence[Any]]]:
        """Add counter deltas (the source's pruned part) to ``table``'s rows; a count never goes below zero."""
        a, b = counted
        times = ["first_ts", "last_ts"] if table == "failure_counts" else ["first_ts"]
        sets = [f"{a} = {table}.{a} + excluded.{a}", f"{b} = {self.greatest}({table}.{b} + excluded.{b}, 0)"]
        sets += [f"{t} = {(self.least if t == 'first_ts' else self.greatest)}({table}.{t}, excluded.{t})"
                 for t in times]
        statements: list[tuple[str, Sequence[Any]]] = []
        columns = f"{key}, grain, bucket, agent_version, {a}, {b}, {', '.join(times)}"
        for g, bucket, version, da, db_, *stamps in rows:
            if da >= 0 and db_ >= 0 and None not in stamps:  # history the source pruned: added
                statements.append((
                    f"INSERT INTO {table} ({columns}) VALUES {_in(columns.split(','))} "
                    f"ON CONFLICT (grain, bucket, {key}, agent_version) DO UPDATE SET {', '.join(sets)}",
                    (value, g, bucket, version, da, db_, *stamps)))
            else:  # a session the source counted in an earlier bucket than its failures left here would
                statements.append((
                    f"UPDATE {table} SET {a} = {self.greatest}({a} + ?, 0), {b} = {self.greatest}({b} + ?, 0) "
                    f"WHERE grain = ? AND bucket = ? AND {key} = ? AND agent_version = ?",
                    (da, db_, g, bucket, value, version)))
        statements.append((f"DELETE FROM {table} WHERE {key} = ? AND {a} <= 0", (value,)))
        return statements


def _rows_insert(table: str, columns: str, rows: Sequence[Sequence[Any]]) -> list[tuple[str, Sequence[Any]]]:
    """Multi-row inserts of at most 100 rows each (the parameters stay far below both backends' limits)."""
    width = len(columns.split(","))
    statements = []
    for start in range(0, len(rows), 100):
        chunk = rows[start:start + 100]
        values = ", ".join(f"({', '.join('?' * width)})" for _ in chunk)
        statements.append((f"INSERT INTO {table} ({columns}) VALUES {values}", [v for row in chunk for v in row]))
    return statements


_NUMBER = (int, float)


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(what)


def _pattern_line(obj: dict[str, Any]) -> dict[str, Any]:
    for column in _PATTERN_COLUMNS:
        _check(column in obj, f"a pattern line needs {column}")
    _check(isinstance(obj["fingerprint"], str) and isinstance(obj["count"], int)
           and isinstance(obj["sessions"], int) and isinstance(obj["first_seen"], _NUMBER)
           and isinstance(obj["last_seen"], _NUMBER), "a pattern's fingerprint, counts and times have wrong types")
    obj["transient"] = bool(obj["transient"])
    _check(isinstance(obj.get("counts"), list) and all(
        isinstance(c, list) and len(c) == 7 and all(isinstance(x, _NUMBER) for x in (*c[:2], *c[3:]))
        and isinstance(c[2], str) for c in obj["counts"]), "a pattern's counts are [grain, bucket, version, "
           "failures, sessions, first_ts, last_ts] rows")
    pruned = obj.get("pruned")
    if pruned is not None:
        _check(isinstance(pruned, dict) and isinstance(pruned.get("count"), int)
               and isinstance(pruned.get("sessions"), int) and isinstance(pruned.get("counts"), list)
               and all(isinstance(c, list) and len(c) == 7 for c in pruned["counts"]),
               "a pattern's pruned part is {count, sessions, counts}")
    return obj


def _run_counts_line(obj: dict[str, Any]) -> dict[str, Any]:
    _check(isinstance(obj.get("agent_id"), str), "a run_counts line needs its agent_id")
    _check(isinstance(obj.get("counts"), list) and all(
        isinstance(c, list) and len(c) == 6 and isinstance(c[2], str) for c in obj["counts"]),
        "run counts are [grain, bucket, version, runs, failed, first_ts] rows")
    _check(obj.get("pruned") is None or (isinstance(obj["pruned"], list)
                                         and all(isinstance(c, list) and len(c) == 6 for c in obj["pruned"])),
           "pruned run counts are [grain, bucket, version, runs, failed, first_ts] rows")
    return obj


def _resolution_line(obj: dict[str, Any]) -> tuple[str, float, str, bool, str | None]:
    fp, text, evolved, version = (obj.get(k) for k in ("fingerprint", "resolution", "evolution_triggered",
                                                       "agent_version"))
    _check(isinstance(fp, str) and isinstance(text, str) and isinstance(evolved, bool)
           and (version is None or isinstance(version, str)),
           "a resolution needs fingerprint, resolution, evolution_triggered and agent_version")
    resolved_at = datetime.fromisoformat(str(obj.get("resolved_at")))
    if resolved_at.tzinfo is None:
        resolved_at = resolved_at.replace(tzinfo=timezone.utc)
    return fp, _ts(resolved_at), text, evolved, version  # type: ignore[return-value]


@_database_errors
def import_jsonl(index: FailureIndex, lines: Iterable[str], *, batch_size: int = 1000) -> ImportReport:
    """Read an export (any iterable of its lines: an open file, stdin) into ``index``; see the module's docstring.

    Idempotent: what is stored already is skipped, counters are not counted twice. Streams: a
    batch of ``batch_size`` failures at a time. A line that cannot be used raises
    FailureIndexError naming its number; the batches before it stay written.
    """
    importer = _Importer(index, batch_size)
    rank = -1
    number = 0
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
            _check(isinstance(obj, dict) and isinstance(obj.get("type"), str), "each line is a JSON object with a type")
            kind = obj.pop("type")
            if kind not in _RANK:
                raise ValueError(f"unknown line type {kind!r} (known: {', '.join(LINE_TYPES)})")
            if rank == -1 and kind != "meta":
                raise ValueError(f"the first line must be the meta line of a {FORMAT} file")
            if _RANK[kind] < rank or (kind == "meta" and rank != -1):
                raise ValueError(f"a {kind} line after {LINE_TYPES[rank]} lines: an export's lines come in the "
                                 f"order {', '.join(LINE_TYPES)}")
            rank = _RANK[kind]
            if kind == "meta":
                _check(obj.get("format") == FORMAT, f"not a {FORMAT} file (format {obj.get('format')!r})")
                version = obj.get("format_version")
                _check(isinstance(version, int) and 1 <= version <= FORMAT_VERSION,
                       f"format version {version!r}; this package reads up to {FORMAT_VERSION}: upgrade it")
            elif kind == "failure":
                record = FailureRecord.model_validate(obj)
                _check(bool(record.fingerprint), "an exported failure has its fingerprint")
                importer.add(kind, record)
            elif kind == "run":
                importer.add(kind, RunOutcome.model_validate(obj))
            elif kind == "resolution":
                importer.add(kind, _resolution_line(obj))
            elif kind == "pattern":
                importer.add(kind, _pattern_line(obj))
            else:
                importer.add(kind, _run_counts_line(obj))
        except FailureIndexError as exc:  # the index refused a batch read so far
            raise FailureIndexError(f"the batch that ends at line {number}: {exc}") from None
        except ValidationError as exc:
            raise FailureIndexError(f"line {number}: not a valid {kind} line: "
                                    f"{exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
        except (ValueError, TypeError, KeyError) as exc:
            raise FailureIndexError(f"line {number}: {exc}") from None
    if rank == -1:
        raise FailureIndexError(f"no lines to import: an export starts with the meta line of a {FORMAT} file")
    try:
        importer.flush()
    except FailureIndexError as exc:
        raise FailureIndexError(f"the batch that ends at line {number}: {exc}") from None
    return importer.report


__all__ = ["FORMAT", "FORMAT_VERSION", "ExportReport", "ImportReport", "PruneReport", "export_jsonl",
           "import_jsonl", "prune"]
