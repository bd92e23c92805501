"""The failure index: plain SQL, explicit migrations, parameterised queries only.

One API on two backends (backend.py): a SQLite file (sqlite.py), or a PostgreSQL database for
a team (postgres.py, imported only for a ``postgresql://`` location). The queries are written
once here, in SQL both run; what differs between them is the backend's.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from .. import semconv
from ..fingerprint import with_version
from ..record import FailureRecord, RunOutcome, load_json_field, prepare, to_attributes
from ..scrub import TRUNCATED_KEY, Limits, safe_text
from .advice import (FIX_MIN_RUNS, HARD_CONSTRAINT_KINDS, HUMAN_KINDS, NON_BLOCKING_KINDS, VersionCounts, fix_verdict,
                     lower_p_value, split_versions, total)
from .diagnosis import MIN_DIAGNOSIS_CHARS, Definitions, build_diagnosis
from .models import (Advice, Diagnosis, Evidence, FixEffect, NodeStats, Pattern, Resolution, ResolutionEffect, RunRate,
                     Stats, VersionStats)
from .backend import FAILURE_COLUMNS, Backend, FailureIndexError, _ns, _ts, is_server, wire_rows

if TYPE_CHECKING:  # portability imports this module
    from .portability import ExportReport, ImportReport, PruneReport


_T = TypeVar("_T")


def _reading(method: Callable[..., _T]) -> Callable[..., _T]:
    """A query's database errors (a corrupt page, an I/O error, a lost server) come out as FailureIndexError."""
    @functools.wraps(method)
    def query(self: "FailureIndex", *args: Any, **kwargs: Any) -> _T:
        try:
            return method(self, *args, **kwargs)
        except self._db.errors as exc:
            raise FailureIndexError(f"{self._db.location} cannot be read as a failure index: {exc}") from exc
    return query


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _as_duration(text: str) -> timedelta | None:
    """``"30m"``, ``"24h"``, ``"7d"``, ``"2w"`` as a timedelta; None for anything else."""
    match = _DURATION.match(text)
    return timedelta(**{_UNITS[match[2]]: float(match[1])}) if match else None


def parse_since(since: datetime | timedelta | str | None) -> datetime | None:
    """``since`` as an aware datetime: a datetime, a timedelta ago, ``"24h"``/``"7d"``, or ISO 8601."""
    if since is None or isinstance(since, datetime):
        if isinstance(since, datetime) and since.tzinfo is None:
            return since.replace(tzinfo=timezone.utc)
        return since
    if isinstance(since, timedelta):
        return datetime.now(timezone.utc) - since
    length = _as_duration(since)
    if length is not None:
        return datetime.now(timezone.utc) - length
    try:
        return parse_since(datetime.fromisoformat(since))
    except ValueError:
        raise FailureIndexError(f"cannot read since={since!r}: use 30m, 24h, 7d, 2w or an ISO 8601 time") from None


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc)


DAY, HOUR = 86400, 3600
_PATTERN_COLUMNS = ("p.fingerprint, p.agent_id, p.node_id, p.error_type, p.kind, p.sample_message, p.transient, "
                    "p.count, p.sessions, p.first_seen, p.last_seen")  # as _pattern reads them
_RESOLUTION_CHARS = 2000  # what was done, in a few sentences: advice and tools quote it whole
_SELECT_FAILURE = f"""
    SELECT {", ".join("f." + c.strip() for c in FAILURE_COLUMNS.split(","))},
           ic.content, ms.content, gs.content
    FROM failures f
    LEFT JOIN blobs ic ON ic.sha256 = f.input_context_sha
    LEFT JOIN blobs ms ON ms.sha256 = f.memory_snapshot_sha
    LEFT JOIN blobs gs ON gs.sha256 = f.graph_snapshot_sha
"""


def run_row(outcome: RunOutcome) -> tuple[Any, ...]:
    """A run outcome as a batch takes it (RUN_COLUMNS' order: no agent is '', success 0/1, times in ns)."""
    return (outcome.session_id, outcome.agent_id or "", outcome.agent_version, _ns(outcome.started_at),
            _ns(outcome.ended_at), int(outcome.success), outcome.quality, outcome.failures)


class FailureIndex:
    """A queryable index of Hive failures and run outcomes: a SQLite file, or a PostgreSQL database."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True, limits: Limits | None = None,
                 busy_timeout: float = 10.0) -> None:
        """``path``: a SQLite file, or a ``postgresql://`` URL (its database must exist; the schema is made).

        ``create=False`` (readers) neither makes nor migrates anything. ``self.path`` is the file,
        or the URL without its password. ``busy_timeout`` is also PostgreSQL's connect timeout.
        """
        self.limits = limits or Limits.from_env()
        self._db: Backend
        if is_server(str(path)):
            from .postgres import PostgresBackend  # psycopg only for a server

            self._db = PostgresBackend(str(path), create=create, connect_timeout=busy_timeout)
            self.path: Path | str = self._db.location
        else:
            from .sqlite import SQLiteBackend

            self.path = Path(path).expanduser()
            self._db = SQLiteBackend(self.path, create=create, busy_timeout=busy_timeout)

    # --- lifecycle ------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return "sqlite" if isinstance(self.path, Path) else "postgresql"

    @property
    def schema_version(self) -> int:
        return self._db.schema_version

    def close(self) -> None:
        """Close; a SQLite writer checkpoints without waiting for readers (PASSIVE), readers never do."""
        self._db.close()

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

    def add_prepared(self, failures: Iterable[Mapping[str, Any]],
                     runs: Iterable[RunOutcome | tuple[Any, ...]] = ()) -> int:
        """Store failures in their ``hive.failure`` attribute form, already prepared (record_failure).

        This is how the span processor writes: no second scrub, no model round trip. A
        malformed entry raises FailureIndexError, a row the database refuses raises the
        database's error; either way nothing of the call is written. A run is a RunOutcome or
        its row as ``run_row`` makes it (the processor's, from run events).
        """
        return self._db.write_batch(self.prepare_batch(failures, runs))

    def prepare_batch(self, failures: Iterable[Mapping[str, Any]],
                      runs: Iterable[RunOutcome | tuple[Any, ...]] = ()) -> Any:
        """add_prepared's first half: the batch's Python work, for ``write_batch``.

        A writer that prepares the next batch while this one is in the database (the span
        processor, on two threads) writes more: the database's work gives the GIL up.
        Raises as add_prepared does for a malformed entry.
        """
        return self._db.prepare_batch(wire_rows(failures),
                                      [run if type(run) is tuple else run_row(run) for run in runs])

    def write_batch(self, batch: Any) -> None:
        """add_prepared's second half: write a prepared batch in one transaction, all or nothing."""
        self._db.write_batch(batch, count=False)

    @_reading
    def resolve(self, fingerprint: str, resolution: str, evolution_triggered: bool = True,
                agent_version: str | None = None) -> Resolution:
        """Record what was done about a pattern (e.g. the Queen evolved the agent)."""
        if not resolution.strip():
            raise FailureIndexError("a resolution needs a description of what was done")
        resolution = safe_text(resolution, self.limits)  # scrubbed like any stored text
        if len(resolution) > _RESOLUTION_CHARS:
            resolution = resolution[:_RESOLUTION_CHARS - 1] + "…"
        now = datetime.now(timezone.utc)
        evolved = bool(evolution_triggered)
        with self._db.session():
            fp = self._resolve_fingerprint(fingerprint)
            self._db.transaction([
                ("INSERT INTO resolutions (fingerprint, ts, resolution, evolution_triggered, agent_version) "
                 "VALUES (?, ?, ?, ?, ?)", (fp, _ts(now), resolution, evolved, agent_version)),
                ("UPDATE failures SET resolution = ?, evolution_triggered = ? WHERE fingerprint = ? AND ts <= ?",
                 (resolution, evolved, fp, _ts(now)))])
        return Resolution(fingerprint=fp, resolved_at=now, resolution=resolution,
                          evolution_triggered=evolution_triggered, agent_version=agent_version)

    def _resolve_fingerprint(self, fingerprint: str) -> str:
        """The one pattern a fingerprint names: whole, a unique prefix, or either without its ``v1:`` version."""
        fingerprint = fingerprint.strip()
        prefix = with_version(fingerprint)
        rows = self._db.fetchall(
            "SELECT fingerprint FROM patterns WHERE fingerprint = ? OR fingerprint LIKE ? ESCAPE '\\' LIMIT 2",
            (prefix, _like_prefix(prefix)))
        exact = [r[0] for r in rows if r[0] == prefix]
        if exact:
            return exact[0]
        if len(rows) != 1:
            raise FailureIndexError(f"no single pattern matches {fingerprint!r}")
        return rows[0][0]

    # --- retention and portability (portability.py) ----------------------------------------
    def prune(self, older_than: datetime | timedelta | str, *, dry_run: bool = False) -> PruneReport:
        """Delete failures older than ``older_than`` ("90d", a timedelta or a time), the snapshots no failure
        uses any more and runs that ended before it; patterns, counters and resolutions stay, so every
        answer stays the same."""
        from .portability import prune

        return prune(self, older_than, dry_run=dry_run)

    def export_jsonl(self, out: IO[str]) -> ExportReport:
        """The whole index as JSON lines, from one snapshot of it (see portability.py for the format)."""
        from .portability import export_jsonl

        return export_jsonl(self, out)

    def import_jsonl(self, lines: Iterable[str], *, batch_size: int = 1000) -> ImportReport:
        """Read an export into this index; what it holds already is skipped, so importing twice is once."""
        from .portability import import_jsonl

        return import_jsonl(self, lines, batch_size=batch_size)

    # --- reading --------------------------------------------------------------------------
    @_reading
    def recent(self, agent_id: str | None = None, node_id: str | None = None, error_type: str | None = None,
               session_id: str | None = None, since: datetime | timedelta | str | None = None,
               limit: int = 20, fingerprint: str | None = None) -> list[FailureRecord]:
        """The newest failures first, filtered by any combination of fields."""
        clauses, params = self._filters(agent_id=agent_id, node_id=node_id, error_type=error_type,
                                        session_id=session_id, since=since, fingerprint=fingerprint)
        rows = self._db.fetchall(f"{_SELECT_FAILURE} {clauses} ORDER BY f.ts DESC, f.{self._db.rowid} DESC LIMIT ?",
                                 (*params, max(0, int(limit))))
        return [_record_from_row(row) for row in rows]

    @_reading
    def get(self, failure_id: str) -> FailureRecord | None:
        """One failure by id, or by a unique id prefix of at least 6 characters."""
        with self._db.session():
            rows = self._db.fetchall(f"{_SELECT_FAILURE} WHERE f.failure_id = ?", (failure_id,))
            if not rows and len(failure_id) >= 6:
                rows = self._db.fetchall(f"{_SELECT_FAILURE} WHERE f.failure_id LIKE ? ESCAPE '\\' LIMIT 2",
                                         (_like_prefix(failure_id),))
        if len(rows) > 1:
            raise FailureIndexError(f"failure id prefix {failure_id!r} is ambiguous")
        return _record_from_row(rows[0]) if rows else None

    @_reading
    def patterns(self, agent_id: str | None = None, since: datetime | timedelta | str | None = None,
                 limit: int = 50) -> list[Pattern]:
        """Failures grouped by fingerprint, most frequent first, with their latest resolution.

        A window (``since``) is read from the hourly and daily counters, so it starts at the
        top of the hour; a session counts in the window if its first failure of the pattern does.
        """
        start = parse_since(since)
        if start is None:  # all time: the maintained counters
            source = "SELECT fingerprint, count, sessions, first_seen, last_seen FROM patterns"
            params: list[Any] = []
        else:
            window, params = _window_sql(_bucket_ranges(_ts(start), None))
            source = (f"SELECT fingerprint, SUM(failures) AS count, {self._db.greatest}(SUM(sessions), 1) AS sessions, "
                      "MIN(first_ts) AS first_seen, MAX(last_ts) AS last_seen "
                      f"FROM failure_counts c WHERE {window} GROUP BY fingerprint")
        agent, agent_params = _only("p.agent_id", agent_id)
        sql = f"""
            SELECT p.fingerprint, p.agent_id, p.node_id, p.error_type, p.kind, p.sample_message, p.transient,
                   w.count, w.sessions, w.first_seen, w.last_seen,
                   r.resolution, r.ts, r.evolution_triggered, r.agent_version
            FROM ({source}) w
            JOIN patterns p ON p.fingerprint = w.fingerprint
            LEFT JOIN resolutions r ON r.id = (SELECT max(id) FROM resolutions WHERE fingerprint = p.fingerprint)
            WHERE {agent}
            ORDER BY w.count DESC, w.last_seen DESC, p.fingerprint
            LIMIT ?"""
        rows = self._db.fetchall(sql, (*params, *agent_params, max(0, int(limit))))
        return [_pattern(r, resolution=r[11], resolved_at=_dt(r[12]), evolution_triggered=bool(r[13]),
                         resolved_in_version=r[14], recurred_after_resolution=r[12] is not None and r[10] > r[12])
                for r in rows]

    @_reading
    def stats(self, agent_id: str | None = None, since: datetime | timedelta | str | None = None) -> Stats:
        """Runs, failed runs, failure rate, and where failures happen: by node, kind and agent version.

        Read from the hourly and daily counters (a window starts at the top of the hour).
        ``sessions_with_failures`` and node sessions add up each pattern's sessions, so a
        session that failed in two ways counts twice.
        """
        start = parse_since(since)
        window, params = _window_sql(_bucket_ranges(_ts(start) if start else None, None))
        (run_agent, run_params), (agent, agent_params) = _only("c.agent_id", agent_id), _only("p.agent_id", agent_id)
        with self._db.session():
            runs = self._db.fetchall(
                "SELECT agent_id, agent_version, SUM(runs), SUM(failed), MIN(first_ts) FROM run_counts c "
                f"WHERE {window} AND {run_agent} GROUP BY 1, 2", (*params, *run_params))
            failures = self._db.fetchall(
                "SELECT p.agent_id, c.agent_version, p.node_id, p.kind, SUM(c.failures), SUM(c.sessions), "
                "MIN(c.first_ts) FROM failure_counts c JOIN patterns p ON p.fingerprint = c.fingerprint "
                f"WHERE {window} AND {agent} GROUP BY p.fingerprint, c.agent_version", (*params, *agent_params))
            (patterns,) = self._db.fetchone(
                f"SELECT COUNT(DISTINCT c.fingerprint) FROM failure_counts c JOIN patterns p USING (fingerprint) "
                f"WHERE {window} AND {agent}", (*params, *agent_params))
        nodes: dict[str | None, list[int]] = {}
        kinds: dict[str, int] = {}
        versions: dict[tuple[str, str], list[Any]] = {}  # (agent, version) -> runs, failed, failures, first seen
        for agent, version, runs_n, failed, first in runs:
            versions[(agent, version)] = [runs_n, failed, 0, first]
        for agent, version, node, kind, count, sessions, first in failures:
            node_counts = nodes.setdefault(node, [0, 0])
            node_counts[0] += count
            node_counts[1] += max(sessions, 1)
            kinds[kind] = kinds.get(kind, 0) + count
            entry = versions.setdefault((agent or "", version), [0, 0, 0, first])
            entry[2] += count
            entry[3] = min(entry[3], first)
        total_runs = sum(v[0] for v in versions.values())
        total_failed = sum(v[1] for v in versions.values())
        return Stats(
            agent_id=agent_id, since=start, runs=total_runs, failed_runs=total_failed,
            failure_rate=(total_failed / total_runs) if total_runs else None,
            failures=sum(n[0] for n in nodes.values()), sessions_with_failures=sum(n[1] for n in nodes.values()),
            patterns=patterns,
            by_node=[NodeStats(node_id=n, failures=c, sessions=s)
                     for n, (c, s) in sorted(nodes.items(), key=lambda item: -item[1][0])],
            by_kind=dict(sorted(kinds.items(), key=lambda item: -item[1])),
            by_version=[VersionStats(agent_id=agent or None, agent_version=version or None, first_seen=_dt(first),
                                     runs=r, failed_runs=f, failure_rate=(f / r) if r else None, failures=n)
                        for (agent, version), (r, f, n, first) in sorted(versions.items(),
                                                                           key=lambda item: (item[0][0], item[1][3]))],
        )

    @_reading
    def advise(self, agent_id: str | None = None, window: timedelta | str = "7d", *, min_sessions: int = 3,
               blocking_share: float = 0.2, alpha: float = 0.05, min_runs: int = 20,
               fingerprints: Sequence[str] | None = None) -> list[Advice]:
        """Patterns of the window that warrant changing the agent (``evolve``) or a human, with evidence.

        Triggers, as Hive's evolution guide names them: ``recurring`` (in >= ``min_sessions``
        sessions), ``blocking`` (its sessions are more than ``blocking_share`` of the agent's
        runs; never a soft constraint, whose runs succeeded), ``hard_constraint`` (any
        hard-constraint violation), ``declining_success`` (the agent's success rate in this
        window is below the previous window's, one-sided two-proportion z-test at ``alpha``,
        each window with >= ``min_runs`` runs), ``regressed`` (recurred in the version a
        resolution named, or later). No evolve advice for a pattern that is transient, seen in
        one session only (unless a hard constraint), or resolved and not back; escalations to a
        human come back with ``action="human"``.
        """
        end = datetime.now(timezone.utc)
        length = _duration(window)
        start, previous_start = end - length, end - 2 * length
        recent = _window_sql(_bucket_ranges(_ts(start), None))
        previous = _window_sql(_bucket_ranges(_ts(previous_start), _ts(start)))
        only = "" if fingerprints is None else f" AND c.fingerprint IN ({', '.join('?' * len(fingerprints))})"
        only_params = list(fingerprints or ())
        agent_only, agent_params = _only("p.agent_id", agent_id)
        with self._db.session():
            counts = self._db.fetchall(
                f"SELECT {_PATTERN_COLUMNS}, c.agent_version, SUM(c.failures), SUM(c.sessions), MIN(c.first_ts), "
                f"MAX(c.last_ts) FROM failure_counts c JOIN patterns p ON p.fingerprint = c.fingerprint "
                f"WHERE {recent[0]}{only} AND {agent_only} GROUP BY p.fingerprint, c.agent_version",
                (*recent[1], *only_params, *agent_params))
            by_pattern: dict[str, dict[str, VersionCounts]] = {}
            patterns: dict[str, Pattern] = {}
            for row in counts:
                fp, (version, failures, sessions, first, last) = row[0], row[11:]
                by_pattern.setdefault(fp, {})[version] = VersionCounts(failures, sessions, first, last)
                if fp not in patterns:
                    patterns[fp] = _pattern(row)
            if not by_pattern:
                return []
            # Every agent's runs in each window (a row per agent): a list of the agents wanted would
            # cost more to match than the rows it leaves out, and keep PostgreSQL off the window's index.
            runs_now, runs_before = (
                {a: (r, f) for a, r, f in self._db.fetchall(
                    f"SELECT agent_id, SUM(runs), SUM(failed) FROM run_counts c WHERE {where} GROUP BY 1", params)}
                for where, params in (recent, previous))
            last_resolutions = self._last_resolutions(list(by_pattern))
        found: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # advice, its examples asked for after
        for fp, per_version in by_pattern.items():
            p = patterns[fp]
            agent = p.agent_id or ""
            in_window = total(per_version.values())
            sessions = max(in_window.sessions, 1)
            runs, failed = runs_now.get(agent, (0, 0))
            prev_runs, prev_failed = runs_before.get(agent, (0, 0))
            human = p.kind in HUMAN_KINDS
            hard = p.kind in HARD_CONSTRAINT_KINDS
            if not human and (p.transient or (sessions < 2 and not hard)):
                continue  # rate limits and outages, or a one-off from bad input: changing the agent won't help
            triggers: list[str] = []
            if sessions >= min_sessions:
                triggers.append("recurring")
            if runs and sessions / runs > blocking_share and p.kind not in NON_BLOCKING_KINDS:
                triggers.append("blocking")
            if hard:
                triggers.append("hard_constraint")
            p_decline = None
            if min(runs, prev_runs) >= min_runs:
                p_decline = lower_p_value(prev_runs - prev_failed, prev_runs, runs - failed, runs)
                if p_decline is not None and p_decline < alpha:
                    triggers.append("declining_success")
            resolution = last_resolutions.get(fp)
            verdict = None
            if resolution is not None:
                effect = self._resolution_effect(p, resolution, min_runs=FIX_MIN_RUNS, alpha=alpha)
                verdict = effect.verdict
                if not _recurred_after(per_version, resolution, effect.after.versions, effect.basis):
                    continue  # a fix is recorded and nothing since has failed this way
                triggers.append("regressed")
            if not triggers and not human:
                continue
            found.append((fp, {
                "fingerprint": fp, "agent_id": p.agent_id, "node_id": p.node_id, "kind": p.kind,
                "error_type": p.error_type, "sample_message": p.sample_message,
                "action": "human" if human else "evolve", "triggers": triggers,
                "reason": _reason(p, triggers, sessions, runs, human)}, {
                "window_start": start, "window_end": end, "failures": in_window.failures, "sessions": sessions,
                "agent_runs": runs, "session_share": (sessions / runs) if runs else None,
                "first_seen": _dt(in_window.first_ts), "last_seen": _dt(in_window.last_ts),
                "success_rate_recent": (1 - failed / runs) if runs else None,
                "success_rate_previous": (1 - prev_failed / prev_runs) if prev_runs else None,
                "success_p_value": p_decline, "last_resolution": resolution, "last_fix_verdict": verdict}))
        examples = self._examples([fp for fp, _, _ in found])
        advice = [Advice(**fields, evidence=Evidence(
            **evidence, example_failure_ids=[e[0] for e in examples.get(fp, ())],
            example_trace_ids=[e[1] for e in examples.get(fp, ()) if e[1]],
            judge_feedback=_feedback_excerpts(e[2] for e in examples.get(fp, ()))))
            for fp, fields, evidence in found]
        advice.sort(key=lambda a: (a.action == "evolve", len(a.triggers), a.evidence.sessions, a.evidence.failures),
                    reverse=True)
        return advice

    @_reading
    def fix_effect(self, fingerprint: str, *, min_runs: int = FIX_MIN_RUNS, alpha: float = 0.05) -> FixEffect:
        """Did each resolution of a pattern work: its rate per run before and from the fix's version on.

        The verdict is ``fixed`` when the rate from the fix on is lower beyond chance (one-sided
        two-proportion z-test at ``alpha``), ``too_early`` with fewer than ``min_runs`` runs since
        (or no recurrence yet that chance could explain), ``not_fixed`` otherwise.
        """
        with self._db.session():
            fp = self._resolve_fingerprint(fingerprint)
            (pattern,) = self._patterns_by_fingerprint([fp])
            resolutions = self.resolutions(fp)
            effects = [self._resolution_effect(pattern, r, min_runs=min_runs, alpha=alpha) for r in resolutions]
        return FixEffect(fingerprint=fp, agent_id=pattern.agent_id, effects=effects)

    @_reading
    def diagnose(self, fingerprint: str, budget_chars: int = 12_000) -> Diagnosis:
        """What a coding agent needs to change the agent for a pattern, within ``budget_chars``.

        The node's spec and the goal from the stored definition, attempts and judge feedback,
        tools tried, the memory and input at the time, the advice's evidence, the resolutions
        and whether they worked, the definition's diff to the newest version, trace links.
        The least useful parts are cut first, and the result says what was cut.
        """
        if budget_chars < MIN_DIAGNOSIS_CHARS:
            raise FailureIndexError(f"budget_chars must be at least {MIN_DIAGNOSIS_CHARS}, got {budget_chars}")
        with self._db.session():
            fp = self._resolve_fingerprint(fingerprint)
            (pattern,) = self._patterns_by_fingerprint([fp])
            latest = self.recent(fingerprint=fp, limit=3)
            advice = self.advise(fingerprints=[fp])
            effect = self.fix_effect(fp)
            definitions = self._definitions(fp, pattern.agent_id)
        return build_diagnosis(pattern, latest, advice[0] if advice else None, effect, definitions,
                               budget_chars=budget_chars, trace_url=os.environ.get(semconv.ENV_TRACE_URL))

    # --- the counters behind the answers ---------------------------------------------------------
    def _patterns_by_fingerprint(self, fingerprints: Sequence[str]) -> list[Pattern]:
        rows = self._db.fetchall(
            f"SELECT {_PATTERN_COLUMNS} FROM patterns p WHERE fingerprint IN ({', '.join('?' * len(fingerprints))})",
            list(fingerprints))
        return [_pattern(r) for r in rows]

    def _last_resolutions(self, fingerprints: Sequence[str]) -> dict[str, Resolution]:
        rows = self._db.fetchall(
            "SELECT fingerprint, ts, resolution, evolution_triggered, agent_version FROM resolutions WHERE id IN "
            f"(SELECT max(id) FROM resolutions WHERE fingerprint IN ({', '.join('?' * len(fingerprints))}) "
            "GROUP BY fingerprint)", list(fingerprints))
        return {fp: Resolution(fingerprint=fp, resolved_at=_dt(ts), resolution=text, evolution_triggered=bool(e),
                               agent_version=v) for fp, ts, text, e, v in rows}

    def _resolution_effect(self, pattern: Pattern, resolution: Resolution, *, min_runs: int,
                           alpha: float) -> ResolutionEffect:
        fp, agent = pattern.fingerprint, pattern.agent_id or ""
        resolved_ts = _ts(resolution.resolved_at)
        runs = {v: (r, first) for v, r, first in self._db.fetchall(
            "SELECT agent_version, SUM(runs), MIN(first_ts) FROM run_counts WHERE grain = ? AND agent_id = ? "
            "GROUP BY 1", (DAY, agent))}
        hits = {v: (s, first) for v, s, first in self._db.fetchall(
            f"SELECT agent_version, {self._db.greatest}(SUM(sessions), 1), MIN(first_ts) FROM failure_counts "
            "WHERE fingerprint = ? AND grain = ? GROUP BY 1", (fp, DAY))}
        first_seen = {v: first for v, (_, first) in runs.items()}
        for v, (_, first) in hits.items():
            first_seen[v] = min(first, first_seen.get(v, first))
        split = split_versions(first_seen, resolved_ts, resolution.agent_version,
                               by_time=not resolution.evolution_triggered)
        if split.basis == "version":
            def side(versions: Sequence[str]) -> tuple[int, int]:  # (runs, sessions hit) over these versions
                return (sum(runs.get(v, (0, 0))[0] for v in versions), sum(hits.get(v, (0, 0))[0] for v in versions))
            before, after = side(split.before), side(split.after)
        else:  # no versions known: split by the hour of the resolution
            hour = int(resolved_ts / HOUR)
            before_runs, after_runs = self._db.fetchone(
                "SELECT coalesce(SUM(runs) FILTER (WHERE bucket < ?), 0), "
                "coalesce(SUM(runs) FILTER (WHERE bucket > ?), 0) FROM run_counts WHERE grain = ? AND agent_id = ?",
                (hour, hour, HOUR, agent))
            before_hits, after_hits = self._db.fetchone(
                "SELECT coalesce(SUM(sessions) FILTER (WHERE bucket < ?), 0), "
                "coalesce(SUM(sessions) FILTER (WHERE bucket > ?), 0) "
                "FROM failure_counts WHERE fingerprint = ? AND grain = ?", (hour, hour, fp, HOUR))
            before, after = (before_runs, before_hits), (after_runs, after_hits)
        verdict, p, why = fix_verdict(before[1], before[0], after[1], after[0], min_runs=min_runs, alpha=alpha)
        return ResolutionEffect(
            resolution=resolution, basis=split.basis,
            before=RunRate(versions=split.before, runs=before[0], sessions=before[1],
                           rate=(before[1] / before[0]) if before[0] else None),
            after=RunRate(versions=split.after, runs=after[0], sessions=after[1],
                          rate=(after[1] / after[0]) if after[0] else None),
            verdict=verdict, p_value=p, reason=why)

    def _examples(self, fingerprints: Sequence[str], limit: int = 3) -> dict[str, list[tuple[str, str | None, str]]]:
        """Each pattern's newest failures: id, trace id and judge feedback (JSON).

        One query per pattern in SQLite (in process, each a short index walk); one for them all
        where the backend has LATERAL joins, so that a server is asked once.
        """
        newest = f"SELECT failure_id, trace_id, judge_feedback FROM failures WHERE fingerprint = {{}} " \
                 f"ORDER BY ts DESC, {self._db.rowid} DESC LIMIT ?"
        found: dict[str, list[tuple[str, str | None, str]]] = {}
        if self._db.lateral and fingerprints:
            values = ", ".join("(?)" for _ in fingerprints)
            for fp, *example in self._db.fetchall(
                    f"SELECT p.fp, e.* FROM (VALUES {values}) AS p (fp) "
                    f"CROSS JOIN LATERAL ({newest.format('p.fp')}) e", (*fingerprints, limit)):
                found.setdefault(fp, []).append(tuple(example))  # type: ignore[arg-type]
            return found
        for fp in fingerprints:
            found[fp] = self._db.fetchall(newest.format("?"), (fp, limit))  # type: ignore[assignment]
        return found

    def _definitions(self, fingerprint: str, agent_id: str | None) -> Definitions | None:
        """The definition the pattern first failed in, the newest one stored for its agent, the newest version."""
        snapshot = ("SELECT f.agent_version, b.content FROM failures f JOIN blobs b ON b.sha256 = f.graph_snapshot_sha "
                    "WHERE {} ORDER BY f.ts {}, f.{} {} LIMIT 1")
        agent, agent_params = _same("f.agent_id", agent_id)
        first = self._db.fetchone(snapshot.format("f.fingerprint = ?", "ASC", self._db.rowid, "ASC"), (fingerprint,))
        newest = self._db.fetchone(snapshot.format(agent, "DESC", self._db.rowid, "DESC"), agent_params)
        newest_run = self._db.fetchone(
            "SELECT agent_version FROM run_counts WHERE grain = ? AND agent_id = ? AND agent_version != '' "
            "GROUP BY agent_version ORDER BY MIN(first_ts) DESC LIMIT 1", (DAY, agent_id or ""))
        if first is None or newest is None:
            return None
        return Definitions(first_failing_version=first[0], first_failing=load_json_field("graph_snapshot", first[1]),
                           newest_stored_version=newest[0], newest_stored=load_json_field("graph_snapshot", newest[1]),
                           newest_version=newest_run[0] if newest_run else newest[0])

    @_reading
    def resolutions(self, fingerprint: str) -> list[Resolution]:
        """What was done about a pattern, oldest first."""
        with self._db.session():
            fp = self._resolve_fingerprint(fingerprint)
            rows = self._db.fetchall(
                "SELECT ts, resolution, evolution_triggered, agent_version FROM resolutions "
                "WHERE fingerprint = ? ORDER BY ts, id", (fp,))
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


def _only(column: str, value: str | None) -> tuple[str, list[str]]:
    """An optional filter on ``column``: every row when ``value`` is None."""
    return ("TRUE", []) if value is None else (f"{column} = ?", [value])


def _same(column: str, value: str | None) -> tuple[str, list[str]]:
    """``column`` equal to ``value``, None to NULL (SQLite's IS, PostgreSQL's IS NOT DISTINCT FROM), as an index
    lookup both can make."""
    return (f"{column} IS NULL", []) if value is None else (f"{column} = ?", [value])


_FAR = 1 << 40  # a bucket beyond any real time


def _bucket_ranges(start: float | None, end: float | None) -> list[tuple[int, int, int]]:
    """(grain, first bucket, bucket after the last) that cover [start, end): whole days, hours at the edges.

    Both ends are taken at the top of their hour, so adjacent windows share no hour; None is open.
    """
    if start is None and end is None:
        return [(DAY, -_FAR, _FAR)]
    h_lo = -_FAR * 24 if start is None else math.floor(start / HOUR)
    h_hi = _FAR * 24 if end is None else math.floor(end / HOUR)
    d_lo, d_hi = -(-h_lo // 24), h_hi // 24
    if d_lo >= d_hi:
        return [(HOUR, h_lo, h_hi)]
    ranges = [(DAY, d_lo, d_hi)]
    if h_lo < d_lo * 24:
        ranges.append((HOUR, h_lo, d_lo * 24))
    if d_hi * 24 < h_hi:
        ranges.append((HOUR, d_hi * 24, h_hi))
    return ranges


def _window_sql(ranges: Sequence[tuple[int, int, int]]) -> tuple[str, list[int]]:
    """A WHERE condition on a counters table (alias ``c``) for these bucket ranges."""
    sql = " OR ".join("(c.grain = ? AND c.bucket >= ? AND c.bucket < ?)" for _ in ranges)
    return f"({sql})", [value for bucket_range in ranges for value in bucket_range]


def _duration(window: timedelta | str) -> timedelta:
    length = window if isinstance(window, timedelta) else _as_duration(window)
    if length is None:
        raise FailureIndexError(f"cannot read window={window!r}: use 24h, 7d or 2w")
    if length <= timedelta(0):
        raise FailureIndexError(f"the window must be positive, got {window!r}")
    return length


def _recurred_after(per_version: Mapping[str, VersionCounts], resolution: Resolution, after_versions: Sequence[str],
                    basis: str) -> bool:
    """Did the pattern fail (in the window) in a version from the fix on, or after it where versions are unknown?"""
    resolved_ts = _ts(resolution.resolved_at)
    for version, counts in per_version.items():
        if basis == "version" and version:
            if version in after_versions and counts.failures:
                return True
        elif counts.last_ts > resolved_ts:
            return True
    return False


_TRIGGER_TEXT = {
    "recurring": "recurs across sessions",
    "blocking": "blocks more than its share of runs",
    "hard_constraint": "violates a hard constraint",
    "declining_success": "the agent's success rate is falling",
    "regressed": "came back after a fix",
}


def _reason(pattern: Pattern, triggers: Sequence[str], sessions: int, runs: int, human: bool) -> str:
    share = f", {sessions / runs:.0%} of {runs} runs" if runs else ""
    seen = f"{pattern.kind} in {sessions} sessions{share}"
    if human:
        return f"the agent asked for a human ({seen}): a person should handle these, not an agent change"
    return f"{'; '.join(_TRIGGER_TEXT[t] for t in triggers)} ({seen})"


def _feedback_excerpts(texts: Iterable[str], limit: int = 3, width: int = 200) -> list[str]:
    """The judge's words on the newest failures, newest first, refusals only."""
    excerpts: list[str] = []
    for text in texts:
        for verdict in reversed(load_json_field("judge_feedback", text) or []):
            feedback = str(verdict.get("feedback") or "").strip() if isinstance(verdict, dict) else ""
            if feedback and verdict.get("action") not in ("ACCEPT", TRUNCATED_KEY) and feedback[:width] not in excerpts:
                excerpts.append(feedback[:width])
            if len(excerpts) >= limit:
                return excerpts
    return excerpts


def _pattern(row: Sequence[Any], **resolution: Any) -> Pattern:
    """A Pattern from the first eleven columns patterns() and its helpers select, in that order."""
    return Pattern(fingerprint=row[0], agent_id=row[1], node_id=row[2], error_type=row[3], kind=row[4],
                   sample_message=row[5], transient=bool(row[6]), count=row[7], sessions=row[8],
                   first_seen=_dt(row[9]), last_seen=_dt(row[10]), **resolution)


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
