"""The SQLite failure index: schema, migrations, queries, resolutions and advice."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import hive_otel_failures as hof
from hive_otel_failures.index.schema import LATEST_VERSION, MIGRATIONS
from hive_otel_failures.record import prepare, to_attributes


def failure(i: int, **kw) -> hof.FailureRecord:
    base = dict(agent_id="report-agent", node_id="parse", session_id=f"s{i}", error_type="builtins.ValueError",
                error_message=f"could not parse row {i}")
    base.update(kw)
    return hof.FailureRecord(**base)


def test_file_mode_wal_and_schema_version(db_path: Path) -> None:
    with hof.open_index(db_path) as index:
        assert index.schema_version == LATEST_VERSION
        mode = index._conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600


def test_default_location_env_and_hive_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with hof.open_index() as index:
        assert index.path == tmp_path / "hive_home" / "failures.db"
    monkeypatch.setenv("HIVE_FAILURES_DB", f"sqlite:///{tmp_path}/env.db")
    with hof.open_index() as index:
        assert index.path == tmp_path / "env.db"


def test_older_schema_is_migrated_without_losing_rows(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    conn.executescript(MIGRATIONS[0])
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO failures (failure_id, session_id, agent_id, node_id, ts, kind, error_type, error_message, "
        "attempts, judge_feedback, constraints_violated, criteria_unmet, tool_calls, fingerprint, transient) "
        "VALUES ('old1', 's-old', 'a', 'n', 1700000000.0, 'exception', 'E', 'old failure', 2, '[]', '[]', '[]', "
        "'[]', 'v1:old', 0)")
    conn.execute("INSERT INTO patterns VALUES ('v1:old', 'a', 'n', 'E', 'exception', 'old failure', 0, 1, 1, "
                 "1700000000.0, 1700000000.0)")
    conn.commit()
    conn.close()
    with hof.open_index(db_path) as index:
        assert index.schema_version == LATEST_VERSION
        old = index.get("old1")
        assert old is not None and old.error_message == "old failure" and old.attempts == 2
        assert [p.fingerprint for p in index.patterns()] == ["v1:old"]
        index.add([failure(1)], [hof.RunOutcome(session_id="s1", agent_id="report-agent", success=False)])
        assert index.stats().runs == 1 and len(index.recent()) == 2
        index.add([failure(2)])  # the migrated schema keeps counting patterns
        assert sorted((p.count, p.sessions) for p in index.patterns()) == [(1, 1), (2, 2)]


def test_newer_schema_is_refused_clearly(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    conn.close()
    with pytest.raises(hof.FailureIndexError, match="newer"):
        hof.open_index(db_path)


def test_missing_and_corrupt_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(hof.FailureIndexError, match="no failure index"):
        hof.open_index(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(hof.FailureIndexError, match="not a usable failure index"):
        hof.open_index(corrupt)
    with pytest.raises(hof.FailureIndexError, match="PostgreSQL"):
        hof.open_index("postgresql://localhost/x")


def test_patterns_group_count_sessions_and_window(db_path: Path) -> None:
    old = datetime.now(timezone.utc) - timedelta(days=10)
    with hof.open_index(db_path) as index:
        index.add([failure(i) for i in range(3)] + [failure(0, failure_id="again")])  # s0 twice
        index.add([failure(9, timestamp=old)])
        index.add([failure(5, node_id="render", error_type="builtins.KeyError", error_message="'title'")])
        top, other = index.patterns()
        assert (top.count, top.sessions, top.node_id) == (5, 4, "parse")
        assert (other.count, other.sessions) == (1, 1)
        recent_top = index.patterns(since="7d")[0]
        assert (recent_top.count, recent_top.sessions) == (4, 3)
        assert index.patterns(agent_id="nobody") == []


def test_failures_without_a_session_count_as_one_session(db_path: Path) -> None:
    with hof.open_index(db_path) as index:
        index.add([failure(1, session_id=None), failure(2, session_id=None)])
        index.add([failure(3, session_id=None), failure(4)])
        assert [(p.count, p.sessions) for p in index.patterns()] == [(4, 2)]


def test_sessions_count_once_across_handles_sharing_the_file(db_path: Path) -> None:
    """Two writers (say, two Hive processes) on one file: each counts what the file holds."""
    with hof.open_index(db_path) as first, hof.open_index(db_path) as second:
        first.add([failure(1), failure(2)])
        second.add([failure(1, failure_id="b1"), failure(3)])  # s1 is stored already, through the other handle
        first.add([failure(3, failure_id="a3"), failure(4)])  # s3 likewise
        second.add([failure(1, failure_id="b1-again", timestamp=datetime(2020, 1, 1, tzinfo=timezone.utc))])
        pattern = first.patterns()[0]
        assert (pattern.count, pattern.sessions) == (7, 4)
        assert pattern.first_seen == datetime(2020, 1, 1, tzinfo=timezone.utc)
        assert pattern.sample_message == "could not parse row 4"  # from the latest failure, not the last written


def test_the_same_failure_delivered_twice_is_stored_once(db_path: Path) -> None:
    record = failure(1)
    with hof.open_index(db_path) as index:
        assert index.add([record, record]) == 1
        assert index.add([record]) == 0
        assert index.patterns()[0].count == 1


@pytest.fixture
def new_york_local_time() -> Iterator[None]:
    """The process's local time zone is not UTC for the test; restored even when the test fails."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TZ", "America/New_York")
        time.tzset()
        yield
    time.tzset()


@pytest.mark.usefixtures("new_york_local_time")  # a naive time must not be read as local time
def test_prepared_attributes_from_elsewhere_are_checked_and_read_as_utc(db_path: Path) -> None:
    attributes = to_attributes(prepare(failure(1)))
    with hof.open_index(db_path) as index:
        naive = {**attributes, "hive.failure.timestamp": "2026-03-01T12:00:00"}  # no offset: taken as UTC
        assert index.add_prepared([naive]) == 1
        stored = index.get(attributes["hive.failure.failure_id"])
        assert stored is not None and stored.timestamp == datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
        bad_time = {**attributes, "hive.failure.failure_id": "f2", "hive.failure.timestamp": "yesterday"}
        no_id = {k: v for k, v in attributes.items() if k != "hive.failure.failure_id"}
        for bad, message in ((bad_time, "ISO 8601"), (no_id, "failure_id")):
            with pytest.raises(hof.FailureIndexError, match=message):
                index.add_prepared([bad])
        assert len(index.recent()) == 1  # a rejected call writes nothing


def test_recent_filters_are_parameterised(db_path: Path) -> None:
    with hof.open_index(db_path) as index:
        index.add([failure(1), failure(2, node_id="render"), failure(3, agent_id="other")])
        assert [r.session_id for r in index.recent(node_id="render")] == ["s2"]
        assert [r.session_id for r in index.recent(agent_id="other")] == ["s3"]
        assert [r.session_id for r in index.recent(session_id="s1")] == ["s1"]
        assert index.recent(node_id="x' OR '1'='1") == []
        assert len(index.recent(error_type="builtins.ValueError", limit=2)) == 2
        with pytest.raises(hof.FailureIndexError, match="since"):
            index.recent(since="yesterday-ish")


def test_snapshots_are_content_addressed_and_stored_once(db_path: Path) -> None:
    graph = {"id": "report-agent", "nodes": [{"id": "parse", "system_prompt": "p" * 2000}]}
    with hof.open_index(db_path) as index:
        index.add([failure(i, graph_snapshot=graph, input_context={"row": i}) for i in range(20)])
        blobs = index._conn.execute("SELECT COUNT(*) FROM blobs").fetchone()[0]
        assert blobs == 1 + 20  # one graph snapshot, twenty distinct contexts
        assert index.recent(limit=1)[0].graph_snapshot == graph


def test_get_by_prefix(db_path: Path) -> None:
    with hof.open_index(db_path) as index:
        index.add([failure(1, failure_id="abcdef0123"), failure(2, failure_id="abcdef9999")])
        assert index.get("abcdef0123").session_id == "s1"
        assert index.get("abcdef01").session_id == "s1"
        assert index.get("nothere") is None
        with pytest.raises(hof.FailureIndexError, match="ambiguous"):
            index.get("abcdef")


def test_stats_by_node_and_kind(db_path: Path) -> None:
    with hof.open_index(db_path) as index:
        index.add([failure(1), failure(2), failure(3, node_id="render", kind="stalled")],
                  [hof.RunOutcome(session_id=f"s{i}", agent_id="report-agent", success=i > 3) for i in range(1, 11)])
        stats = index.stats(agent_id="report-agent")
    assert (stats.runs, stats.failed_runs, stats.failures, stats.patterns) == (10, 3, 3, 2)
    assert stats.failure_rate == pytest.approx(0.3)
    assert [(n.node_id, n.failures) for n in stats.by_node] == [("parse", 2), ("render", 1)]
    assert stats.by_kind == {"exception": 2, "stalled": 1}


def test_resolve_history_and_advice(db_path: Path) -> None:
    with hof.open_index(db_path) as index:
        index.add([failure(i) for i in range(3)] + [failure(7, error_type="litellm.RateLimitError",
                                                            error_message="rate limit", session_id=f"t{i}")
                                                    for i in range(3)],
                  [hof.RunOutcome(session_id=f"s{i}", agent_id="report-agent", success=False) for i in range(3)]
                  + [hof.RunOutcome(session_id=f"ok{i}", agent_id="report-agent", success=True) for i in range(3)])
        (advice,) = index.advise()  # the transient pattern is not advice
        assert advice.node_id == "parse" and advice.evidence.session_share == pytest.approx(0.5)
        assert len(advice.evidence.example_failure_ids) == 3
        fp = advice.fingerprint
        resolution = index.resolve(fp[:8], "validate rows before parsing", agent_version="v2")
        assert resolution.fingerprint == fp
        assert index.advise() == []
        assert index.get(advice.evidence.example_failure_ids[0]).resolution == "validate rows before parsing"
        index.add([failure(i) for i in range(10, 12)])  # it comes back
        (again,) = index.advise()
        assert "regressed" in again.triggers and "came back after a fix" in again.reason
        assert index.patterns()[0].recurred_after_resolution
        assert [r.agent_version for r in index.resolutions(fp)] == ["v2"]
        with pytest.raises(hof.FailureIndexError):
            index.resolve("v9:nothing", "x")


def test_a_reader_changes_nothing_in_a_foreign_file(tmp_path: Path) -> None:
    foreign = tmp_path / "app.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    before = foreign.read_bytes()
    with pytest.raises(hof.FailureIndexError, match="not a failure index"):
        hof.open_index(foreign, create=False)
    assert foreign.read_bytes() == before  # still in its own journal mode, no tables added
    assert sqlite3.connect(foreign).execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_a_corrupt_page_is_a_clear_error_from_every_query(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    with hof.open_index(path) as index:
        index.add([failure(i, input_context={"rows": ["x" * 200] * 50}) for i in range(200)],
                  [hof.RunOutcome(session_id=f"s{i}", agent_id="report-agent", success=False) for i in range(200)])
        fp = index.patterns()[0].fingerprint
    data = bytearray(path.read_bytes())
    data[len(data) // 3: len(data) // 3 + 40_000] = b"\xff" * 40_000  # mangled pages, the header intact
    path.write_bytes(bytes(data))
    try:
        index = hof.open_index(path, create=False)
    except hof.FailureIndexError:
        return  # the damage reached the schema: refused at open, as clearly
    with index:
        calls = [index.recent, index.patterns, index.stats, index.advise, lambda: index.diagnose(fp),
                 lambda: index.recent(limit=1000), lambda: index.patterns(since="7d")]
        errors = 0
        for call in calls:
            try:
                call()
            except hof.FailureIndexError as exc:
                assert "cannot be read as a failure index" in str(exc)
                errors += 1
        assert errors  # some query met the mangled pages, and said so as a FailureIndexError
