"""The failure index on both backends (SQLite, PostgreSQL): schema, migrations, queries, resolutions, advice."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import hive_otel_failures as hof
from hive_otel_failures.index.sqlite import _BEHIND_GAP
from hive_otel_failures.index import index_path
from hive_otel_failures.index.schema import LATEST_VERSION
from hive_otel_failures.record import prepare, to_attributes

from .raw_index import raw


def failure(i: int, **kw) -> hof.FailureRecord:
    base = dict(agent_id="report-agent", node_id="parse", session_id=f"s{i}", error_type="builtins.ValueError",
                error_message=f"could not parse row {i}")
    base.update(kw)
    return hof.FailureRecord(**base)


def test_file_mode_wal_and_schema_version(db_path: Path) -> None:
    with hof.open_index(db_path) as index:
        assert index.schema_version == LATEST_VERSION
        (mode,) = index._db.fetchone("PRAGMA journal_mode")
    assert mode == "wal"
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600


def test_default_location_env_and_hive_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with hof.open_index() as index:
        assert index.path == tmp_path / "hive_home" / "failures.db"
    monkeypatch.setenv("HIVE_FAILURES_DB", f"sqlite:///{tmp_path}/env.db")
    with hof.open_index() as index:
        assert index.path == tmp_path / "env.db"


def test_older_schema_is_migrated_without_losing_rows(db_location: str) -> None:
    with raw(db_location) as old:
        old.migrate_to(1)
        old.insert("failures", "failure_id, session_id, agent_id, node_id, ts, kind, error_type, error_message, "
                   "attempts, judge_feedback, constraints_violated, criteria_unmet, tool_calls, fingerprint, transient",
                   [("old1", "s-old", "a", "n", 1700000000.0, "exception", "E", "old failure", 2, "[]", "[]", "[]",
                     "[]", "v1:old", False)])
        old.insert("patterns", "fingerprint, agent_id, node_id, error_type, kind, sample_message, transient, count, "
                   "sessions, first_seen, last_seen",
                   [("v1:old", "a", "n", "E", "exception", "old failure", False, 1, 1, 1700000000.0, 1700000000.0)])
    with hof.open_index(db_location) as index:
        assert index.schema_version == LATEST_VERSION
        old = index.get("old1")
        assert old is not None and old.error_message == "old failure" and old.attempts == 2
        assert [p.fingerprint for p in index.patterns()] == ["v1:old"]
        index.add([failure(1)], [hof.RunOutcome(session_id="s1", agent_id="report-agent", success=False)])
        assert index.stats().runs == 1 and len(index.recent()) == 2
        index.add([failure(2)])  # the migrated schema keeps counting patterns
        assert sorted((p.count, p.sessions) for p in index.patterns()) == [(1, 1), (2, 2)]


def test_newer_schema_is_refused_clearly(db_location: str) -> None:
    with raw(db_location) as newer:
        newer.set_version(LATEST_VERSION + 1)
    for create in (True, False):
        with pytest.raises(hof.FailureIndexError, match="newer"):
            hof.open_index(db_location, create=create)


def test_missing_and_corrupt_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(hof.FailureIndexError, match="no failure index"):
        hof.open_index(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(hof.FailureIndexError, match="not a usable failure index"):
        hof.open_index(corrupt)


def test_patterns_group_count_sessions_and_window(db_location: str) -> None:
    old = datetime.now(timezone.utc) - timedelta(days=10)
    with hof.open_index(db_location) as index:
        index.add([failure(i) for i in range(3)] + [failure(0, failure_id="again")])  # s0 twice
        index.add([failure(9, timestamp=old)])
        index.add([failure(5, node_id="render", error_type="builtins.KeyError", error_message="'title'")])
        top, other = index.patterns()
        assert (top.count, top.sessions, top.node_id) == (5, 4, "parse")
        assert (other.count, other.sessions) == (1, 1)
        recent_top = index.patterns(since="7d")[0]
        assert (recent_top.count, recent_top.sessions) == (4, 3)
        assert index.patterns(agent_id="nobody") == []


def test_failures_without_a_session_count_as_one_session(db_location: str) -> None:
    with hof.open_index(db_location) as index:
        index.add([failure(1, session_id=None), failure(2, session_id=None)])
        index.add([failure(3, session_id=None), failure(4)])
        assert [(p.count, p.sessions) for p in index.patterns()] == [(4, 2)]


def test_sessions_count_once_across_handles_sharing_the_file(db_location: str) -> None:
    """Two writers (say, two Hive processes) on one file: each counts what the file holds."""
    with hof.open_index(db_location) as first, hof.open_index(db_location) as second:
        first.add([failure(1), failure(2)])
        second.add([failure(1, failure_id="b1"), failure(3)])  # s1 is stored already, through the other handle
        first.add([failure(3, failure_id="a3"), failure(4)])  # s3 likewise
        second.add([failure(1, failure_id="b1-again", timestamp=datetime(2020, 1, 1, tzinfo=timezone.utc))])
        pattern = first.patterns()[0]
        assert (pattern.count, pattern.sessions) == (7, 4)
        assert pattern.first_seen == datetime(2020, 1, 1, tzinfo=timezone.utc)
        assert pattern.sample_message == "could not parse row 4"  # from the latest failure, not the last written


def test_the_same_failure_delivered_twice_is_stored_once(db_location: str) -> None:
    record = failure(1)
    with hof.open_index(db_location) as index:
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
def test_prepared_attributes_from_elsewhere_are_checked_and_read_as_utc(db_location: str) -> None:
    attributes = to_attributes(prepare(failure(1)))
    with hof.open_index(db_location) as index:
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


def test_recent_filters_are_parameterised(db_location: str) -> None:
    with hof.open_index(db_location) as index:
        index.add([failure(1), failure(2, node_id="render"), failure(3, agent_id="other")])
        assert [r.session_id for r in index.recent(node_id="render")] == ["s2"]
        assert [r.session_id for r in index.recent(agent_id="other")] == ["s3"]
        assert [r.session_id for r in index.recent(session_id="s1")] == ["s1"]
        assert index.recent(node_id="x' OR '1'='1") == []
        assert len(index.recent(error_type="builtins.ValueError", limit=2)) == 2
        with pytest.raises(hof.FailureIndexError, match="since"):
            index.recent(since="yesterday-ish")


def test_snapshots_are_content_addressed_and_stored_once(db_location: str) -> None:
    """A graph once for good; a failure's own context and memory once within the hour of the failure."""
    graph = {"id": "report-agent", "nodes": [{"id": "parse", "system_prompt": "p" * 2000}]}
    at = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)
    with hof.open_index(db_location) as index:
        index.add([failure(i, graph_snapshot=graph, input_context={"row": i % 10}, memory_snapshot={"m": 1},
                           timestamp=at + timedelta(minutes=40 + 30 * (i // 10))) for i in range(20)])
        (blobs,) = index._db.fetchone("SELECT COUNT(*) FROM blobs")
        # one graph; ten contexts at 9:40, again at 10:10 (the next hour); one memory an hour
        assert blobs == 1 + 10 + 10 + 2
        assert index.recent(limit=1)[0].graph_snapshot == graph
        assert [r.input_context for r in index.recent(session_id="s13")] == [{"row": 3}]
        # The keys: the first 168 bits of the content's SHA-256, in base64 (28 characters, not 64);
        # a failure's own snapshots, the hour in 6 hex digits and 128 bits.
        hour = int(at.timestamp() // 3600)
        for key, content in index._db.fetchall("SELECT sha256, content FROM blobs"):
            digest = hashlib.sha256(content.encode()).digest()
            if "report-agent" in content:
                assert key == base64.b64encode(digest[:21]).decode()
            else:
                assert key in (f"{h:06x}{base64.b64encode(digest[:16]).decode()[:22]}" for h in (hour, hour + 1))


@pytest.mark.parametrize("parameter_limit", [None, 999])  # 999: SQLite's smallest build, 32 rows a statement
def test_a_batch_larger_than_one_statement_is_written_whole(db_path: Path, parameter_limit: int | None) -> None:
    with hof.open_index(db_path) as index:
        if parameter_limit:
            index._db._conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, parameter_limit)
        runs = [hof.RunOutcome(session_id=f"s{i}", agent_id="report-agent", success=False) for i in range(1500)]
        assert index.add([failure(i, error_message=f"could not parse row {i % 3}") for i in range(1500)], runs) == 1500
        assert index.stats().failures == 1500 and index.stats().runs == 1500
        assert sorted(p.count for p in index.patterns()) == [1500]
        assert index._db.fetchone("SELECT count(*) FROM temp.batch_in") == (0,)


@pytest.mark.parametrize("runs", [1, 2, 3, 4, 701])
def test_runs_in_one_batch_are_stored_and_counted_as_in_batches_of_one(tmp_path: Path, runs: int) -> None:
    """Whatever their number, and a run recorded again within the batch merges as it would later."""
    start = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)
    outcomes = [hof.RunOutcome(session_id=f"s{i % max(1, runs - 1)}", agent_id="report-agent",
                               agent_version="v-last" if i == runs - 1 else f"v{i % 3}",
                               quality="degraded" if i == runs - 1 else "good" if i % 2 else None,
                               success=i % 4 != 1, failures=i % 3, started_at=start + timedelta(minutes=i),
                               ended_at=start + timedelta(minutes=i, seconds=30)) for i in range(runs)]
    stored = {}
    for name, batches in (("one", [outcomes]), ("each", [[o] for o in outcomes])):
        with hof.open_index(tmp_path / f"{name}.db") as index:
            for batch in batches:
                index.add([], batch)
            stored[name] = [index._db.fetchall(f"SELECT * FROM {table} ORDER BY 1, 2, 3, 4")
                            for table in ("runs", "run_counts")]
    assert stored["one"] == stored["each"]
    assert len(stored["one"][0]) == max(1, runs - 1) and stored["one"][1]


def test_a_prepared_batch_is_written_only_by_write_batch(db_path: Path) -> None:
    """add_prepared's two halves, as the processor's two threads call them: preparing writes nothing."""
    with hof.open_index(db_path) as index:
        runs = [hof.RunOutcome(session_id=f"s{i}", agent_id="report-agent", success=False) for i in range(3)]
        first = index.prepare_batch([to_attributes(prepare(failure(i))) for i in range(3)], runs)
        second = index.prepare_batch([to_attributes(prepare(failure(i))) for i in range(3, 5)])
        assert index.stats().failures == 0 and index.stats().runs == 0
        index.write_batch(second)
        index.write_batch(first)
        assert index.stats().failures == 5 and index.stats().runs == 3
        assert sorted(r.session_id for r in index.recent(limit=10)) == [f"s{i}" for i in range(5)]


def test_a_batch_that_fails_in_its_last_statement_leaves_nothing_behind(db_path: Path) -> None:
    with hof.open_index(db_path) as index:
        bad_run = (None, "", None, 0.0, 0.0, 0, None, 0)  # no session: the runs row cannot be written
        with pytest.raises(sqlite3.IntegrityError, match="runs.session_id"):  # 700 rows: two statements
            index.add_prepared([to_attributes(prepare(failure(i))) for i in range(700)], [bad_run])
        assert index._db.fetchone("SELECT count(*) FROM temp.batch_in") == (0,)
        assert index.stats().failures == 0
        assert index.add([failure(i) for i in range(700)]) == 700
        assert index.stats().failures == 700


def test_sqlite_snapshots_are_deflated_and_read_back_through_the_blobs_view(db_path: Path) -> None:
    """Stored deflated in blob_z, with the file's dictionary once a batch has enough snapshot text."""
    contexts = [{"row": i, "text": f"order {i} of customer {i * 7} awaits a refund " * 20} for i in range(40)]
    with hof.open_index(db_path, create=True) as writer, hof.open_index(db_path, create=False) as early_reader:
        writer.add([failure(i, input_context={"row": i}) for i in range(2)])  # too little text for a dictionary
        assert writer._db.fetchall("SELECT count(*) FROM blob_dicts") == [(0,)]
        time.sleep(2 * _BEHIND_GAP)  # a writer that keeps up (one behind stores snapshots as they are: below)
        writer.add([failure(i, input_context=contexts[i]) for i in range(2, 40)])
        assert writer._db.fetchall("SELECT id FROM blob_dicts") == [(1,)]
        stored, text = writer._db.fetchone("SELECT sum(length(z)), sum(length(CAST(content AS BLOB))) FROM blobs "
                                           "JOIN blob_z USING (sha256)")
        assert stored < text / 4
        assert {z[0] for (z,) in writer._db.fetchall("SELECT z FROM blob_z")} == {0, 1}
        # a reader opened before the dictionary existed finds it when it meets it
        assert sorted(r.input_context["row"] for r in early_reader.recent(limit=100)) == list(range(40))
        assert early_reader.get(early_reader.recent(limit=1)[0].failure_id).input_context == contexts[39]
        # plain SQL: the view reads as the table did, and takes inserts (deflated without a dictionary)
        writer._db.transaction([("INSERT INTO blobs (sha256, content, size) VALUES ('x', '{\"a\": 1}', 8)", ())])
        assert writer._db.fetchall("SELECT content, size FROM blobs WHERE sha256 = 'x'") == [('{"a": 1}', 8)]
    conn = sqlite3.connect(db_path)  # without the package's functions: the deflated rows are still counted
    assert conn.execute("SELECT count(*) FROM blob_z").fetchone() == (41,)
    conn.close()


def test_a_writer_behind_stores_snapshots_as_they_are_and_deflates_them_once_it_keeps_up(db_path: Path) -> None:
    """Back-to-back batches (a backlog) skip deflating; the next batch after a pause deflates what they left."""
    contexts = [{"row": i, "text": f"order {i} of customer {i * 7} awaits a refund " * 20} for i in range(60)]
    with hof.open_index(db_path, create=True) as writer:
        writer.add([failure(i, input_context=contexts[i]) for i in range(20)])
        for start in (20, 30, 40):  # behind: each batch starts right after the previous one
            writer.add([failure(i, input_context=contexts[i]) for i in range(start, start + 10)])
        heads = [z[0] for (z,) in writer._db.fetchall("SELECT z FROM blob_z")]
        assert heads.count(0xFF) == 30 and len(heads) == 50  # stored as their text, and read as before
        assert sorted(r.input_context["row"] for r in writer.recent(limit=100)) == list(range(50))
        time.sleep(2 * _BEHIND_GAP)
        writer.add([failure(i, input_context=contexts[i]) for i in range(50, 60)])  # keeps up: catches up
        heads = [z[0] for (z,) in writer._db.fetchall("SELECT z FROM blob_z")]
        assert 0xFF not in heads and len(heads) == 60
        assert {r.session_id: r.input_context for r in writer.recent(limit=100)} == {
            f"s{i}": contexts[i] for i in range(60)}


def test_a_writer_behind_for_long_deflates_once_its_backlog_is_full(db_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind for good, a writer would never catch up: past _RAW_BACKLOG text snapshots it deflates."""
    from hive_otel_failures.index import sqlite as sqlite_backend

    monkeypatch.setattr(sqlite_backend, "_RAW_BACKLOG", 15)
    contexts = [{"row": i, "text": f"order {i} of customer {i * 7} awaits a refund " * 20} for i in range(50)]

    def as_text(rows: range) -> list[int]:
        return [z[0] == 0xFF for (z,) in writer._db.fetchall(
            "SELECT b.z FROM failures f JOIN blob_z b ON b.sha256 = f.input_context_sha WHERE f.session_id IN (%s) "
            "ORDER BY f.rowid" % ", ".join(f"'s{i}'" for i in rows))]

    with hof.open_index(db_path, create=True) as writer:
        writer.add([failure(i, input_context=contexts[i]) for i in range(20)])
        for start in (20, 30, 40):  # behind: each batch right after the one before
            writer.add([failure(i, input_context=contexts[i]) for i in range(start, start + 10)])
        assert as_text(range(20, 40)) == [True] * 20 and as_text(range(40, 50)) == [False] * 10
        time.sleep(2 * _BEHIND_GAP)
        writer.add([])  # keeps up: catches up
        assert as_text(range(50)) == [False] * 50
        assert {r.session_id: r.input_context for r in writer.recent(limit=100)} == {
            f"s{i}": contexts[i] for i in range(50)}


def test_a_long_backlog_is_deflated_a_part_at_a_time(db_path: Path) -> None:
    """Up to 512 snapshots per batch that keeps up, the rest of the backlog's range with the next ones."""
    def raw_snapshots(index) -> int:
        return index._db.fetchone("SELECT count(*) FROM blob_z WHERE substr(z, 1, 1) = x'ff'")[0]

    prepared = [to_attributes(prepare(failure(i, input_context={"row": i, "text": "refund pending " * 30})))
                for i in range(720)]
    with hof.open_index(db_path, create=True) as writer:
        writer.add_prepared(prepared[:20])
        writer.add_prepared(prepared[20:])  # right after: behind, stored as they are
        assert raw_snapshots(writer) == 700
        for left in (700 - 512, 0):
            time.sleep(2 * _BEHIND_GAP)
            writer.add_prepared([])  # keeps up: deflates the next part
            assert raw_snapshots(writer) == left
        assert len(writer.recent(limit=1000)) == 720


def test_a_catch_up_that_fails_leaves_the_snapshots_readable_and_the_writes_going(db_path: Path) -> None:
    prepared = [to_attributes(prepare(failure(i, input_context={"row": i, "text": "refund pending " * 30})))
                for i in range(40)]
    with hof.open_index(db_path, create=True) as writer:
        writer.add_prepared(prepared[:20])
        writer.add_prepared(prepared[20:30])  # right after: behind, stored as they are

        snapshots = ("input_context", "memory_snapshot", "graph_snapshot")
        stored_raw = {f.get(f"hive.failure.{name}") for f in prepared[:30] for name in snapshots}
        compress = writer._db._blobs.compress

        def broken_for_the_backlog(sha: str, text: str) -> bytes:
            if text in stored_raw:
                raise RuntimeError("no deflate for these")
            return compress(sha, text)

        writer._db._blobs.compress = broken_for_the_backlog  # type: ignore[method-assign]
        for part in (prepared[30:35], prepared[35:]):  # keeping up: the catch-up fails, once, and is given up
            time.sleep(2 * _BEHIND_GAP)
            assert writer.add_prepared(part) == len(part)
            assert writer._db.fetchone("SELECT count(*) FROM temp.raw_blobs") == (0,)
        assert {r.input_context["row"] for r in writer.recent(limit=100)} == set(range(40))  # raw ones as they are


def test_the_writer_checkpoints_in_the_background(db_path: Path) -> None:
    """The WAL's pages reach the file soon after a write, well below the writer's own checkpoint."""
    def checkpointers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "hive-failures-checkpoint"]

    before = checkpointers()
    with hof.open_index(db_path) as index:
        size = db_path.stat().st_size
        index.add([failure(i, input_context={"row": i, "text": "refund pending " * 30}) for i in range(200)])
        deadline = time.monotonic() + 5
        while db_path.stat().st_size <= size and time.monotonic() < deadline:
            time.sleep(0.02)
        assert db_path.stat().st_size > size  # copied from the WAL into the file, while still open
        assert len(checkpointers()) == len(before) + 1
    assert checkpointers() == before  # closing the index stops it


def test_snapshots_deflated_with_a_dictionary_before_zstd_stay_readable_beside_zstd_ones(db_path: Path) -> None:
    """A file from schema 4: its deflate dictionary and snapshots are read; new ones get a zstd dictionary."""
    import zlib

    contexts = [{"row": i, "text": f"order {i} of customer {i * 7} awaits a refund " * 20} for i in range(40)]
    zdict = json.dumps(contexts[:3]).encode()
    packer = zlib.compressobj(3, zlib.DEFLATED, -15, 8, zdict=zdict)
    old_text = json.dumps(contexts[0])
    with raw(str(db_path)) as old:  # as a writer of schema 4 left it: z = dictionary 1, then raw deflate
        old.migrate_to(4)
        old.insert("blob_dicts", "id, dict", [(1, zdict)])
        old.insert("blob_z", "sha256, size, z", [("old", len(old_text), b"\x01" + packer.compress(
            old_text.encode()) + packer.flush())])
        old.insert("failures", "failure_id, session_id, agent_id, node_id, ts, kind, error_type, error_message, "
                   "attempts, judge_feedback, constraints_violated, criteria_unmet, tool_calls, input_context_sha, "
                   "fingerprint, transient", [("old1", "s", "a", "n", 1700000000.0, "exception", "E", "m", 1, "[]",
                                               "[]", "[]", "[]", "old", "v1:old", 0)])
    with hof.open_index(db_path) as index:
        assert index.schema_version == LATEST_VERSION
        time.sleep(2 * _BEHIND_GAP)  # a writer that keeps up compresses as it writes
        index.add([failure(i, input_context=contexts[i]) for i in range(1, 40)])
        (trained,) = index._db.fetchall("SELECT dict FROM blob_dicts WHERE id = 2")
        assert trained[0].startswith(b"\x37\xa4\x30\xec")  # a zstd dictionary, trained on the batch
        assert {z[0] for (z,) in index._db.fetchall("SELECT z FROM blob_z")} == {1, 2}
        assert index.get("old1").input_context == contexts[0]
        assert sorted(r.input_context["row"] for r in index.recent(limit=100)) == list(range(40))


def test_sqlite_snapshots_of_an_older_file_are_deflated_by_the_migration(db_path: Path) -> None:
    with raw(str(db_path)) as old:
        old.migrate_to(3)
        old.insert("blobs", "sha256, content, size", [("abc", '{"row": 1}', 10)])
        old.insert("failures", "failure_id, session_id, agent_id, node_id, ts, kind, error_type, error_message, "
                   "attempts, judge_feedback, constraints_violated, criteria_unmet, tool_calls, input_context_sha, "
                   "fingerprint, transient", [("old1", "s", "a", "n", 1700000000.0, "exception", "E", "m", 1, "[]",
                                               "[]", "[]", "[]", "abc", "v1:old", 0)])
        old.insert("runs", "session_id, agent_id, started_at, ended_at, success", [("s", "a", 1.0, 2.0, 0)])
    with hof.open_index(db_path) as index:
        assert index.get("old1").input_context == {"row": 1}
        assert index._db.fetchall("SELECT sha256, size, length(z) > 0 FROM blob_z") == [("abc", 10, 1)]
        assert index._db.fetchall("PRAGMA foreign_key_check") == []
        assert index.stats().runs == 1
        index.add([], [hof.RunOutcome(session_id="s2", agent_id="a", success=True)])  # runs still counted
        assert index.stats().runs == 2


def test_get_by_prefix(db_location: str) -> None:
    with hof.open_index(db_location) as index:
        index.add([failure(1, failure_id="abcdef0123"), failure(2, failure_id="abcdef9999")])
        assert index.get("abcdef0123").session_id == "s1"
        assert index.get("abcdef01").session_id == "s1"
        assert index.get("nothere") is None
        with pytest.raises(hof.FailureIndexError, match="ambiguous"):
            index.get("abcdef")


def test_stats_by_node_and_kind(db_location: str) -> None:
    with hof.open_index(db_location) as index:
        index.add([failure(1), failure(2), failure(3, node_id="render", kind="stalled")],
                  [hof.RunOutcome(session_id=f"s{i}", agent_id="report-agent", success=i > 3) for i in range(1, 11)])
        stats = index.stats(agent_id="report-agent")
    assert (stats.runs, stats.failed_runs, stats.failures, stats.patterns) == (10, 3, 3, 2)
    assert stats.failure_rate == pytest.approx(0.3)
    assert [(n.node_id, n.failures) for n in stats.by_node] == [("parse", 2), ("render", 1)]
    assert stats.by_kind == {"exception": 2, "stalled": 1}


def test_resolve_history_and_advice(db_location: str) -> None:
    with hof.open_index(db_location) as index:
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


# --- the same index, on either backend ----------------------------------------------------------

def test_concurrent_writers_count_each_session_once(new_location) -> None:
    """Several processes write one index (PostgreSQL: several hosts): batches count against each other's rows."""
    location = new_location()
    handles = [hof.open_index(location) for _ in range(4)]
    start = threading.Barrier(len(handles))

    def write(n: int, index: hof.FailureIndex) -> None:
        start.wait()
        for batch in range(10):  # every writer fails the same 20 sessions, with failures of its own
            index.add([failure(s, failure_id=f"w{n}-b{batch}-s{s}") for s in range(batch * 2, batch * 2 + 2)],
                      [hof.RunOutcome(session_id=f"s{s}", agent_id="report-agent", success=False)
                       for s in range(batch * 2, batch * 2 + 2)])

    threads = [threading.Thread(target=write, args=(n, index)) for n, index in enumerate(handles)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for index in handles:
        index.close()
    with hof.open_index(location, create=False) as index:
        (pattern,) = index.patterns()
        assert (pattern.count, pattern.sessions) == (80, 20)
        (recent,) = index.patterns(since="1h")
        assert (recent.count, recent.sessions) == (80, 20)
        stats = index.stats()
        assert (stats.runs, stats.failed_runs, stats.failures, stats.sessions_with_failures) == (20, 20, 80, 20)


def test_text_with_a_nul_character_is_stored(db_location: str, backend: str) -> None:
    """PostgreSQL's text cannot hold a NUL: it becomes U+FFFD rather than the whole batch being refused.

    (SQLite's batch reads the text out of JSON, which ends it at the NUL.)
    """
    with hof.open_index(db_location) as index:
        assert index.add([failure(1, failure_id="nul", error_message="bad byte \x00 here")]) == 1
        stored = index.get("nul")
    assert stored is not None and stored.error_message.startswith("bad byte ")
    if backend == "postgresql":
        assert stored.error_message == "bad byte \ufffd here"


# --- PostgreSQL -------------------------------------------------------------------------------------

@pytest.fixture
def pg_url(postgres_server) -> Iterator[str]:
    url = postgres_server.database()
    yield url
    postgres_server.drop(url)


def test_postgresql_from_the_environment_and_what_is_not_a_file(pg_url: str, monkeypatch) -> None:
    monkeypatch.setenv("HIVE_FAILURES_DB", pg_url)
    with hof.open_index() as index:
        assert index.backend == "postgresql" and index.path == pg_url and index.schema_version == LATEST_VERSION
    with pytest.raises(hof.FailureIndexError, match="is a PostgreSQL index, not a file"):
        index_path()


def test_postgresql_errors_are_clear_and_keep_the_password_out(postgres_server, pg_url: str) -> None:
    host = pg_url.split("@", 1)[1].rsplit("/", 1)[0]
    missing = f"postgresql://postgres:s3cret-pw@{host}/no_such_database"
    with pytest.raises(hof.FailureIndexError, match="cannot use the PostgreSQL index") as refused:
        hof.open_index(missing)
    assert "s3cret-pw" not in str(refused.value) and "postgres:***@" in str(refused.value)
    with pytest.raises(hof.FailureIndexError, match="no_such_database"):
        hof.open_index(missing, create=False)
    with pytest.raises(hof.FailureIndexError, match="not a failure index"):
        hof.open_index(pg_url, create=False)  # an empty database: a reader creates nothing in it
    with raw(pg_url) as empty:
        assert empty.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


def test_postgresql_readers_are_read_only_but_may_record_a_resolution(pg_url: str) -> None:
    with hof.open_index(pg_url) as writer:
        writer.add([failure(i) for i in range(3)])
    import psycopg

    with hof.open_index(pg_url, create=False) as reader:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            reader._db.fetchall("INSERT INTO grains VALUES (60) RETURNING grain")
        fp = reader.patterns()[0].fingerprint
        reader.resolve(fp, "validate rows first")
        assert reader.patterns()[0].resolution == "validate rows first"
        assert reader.add([failure(9)]) == 1  # as a SQLite reader may: the processor never opens one


def test_postgresql_a_lost_connection_is_a_clear_error_and_the_index_recovers(postgres_server, pg_url: str) -> None:
    with hof.open_index(pg_url) as index:
        index.add([failure(1)])
        with raw(postgres_server.url) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = ? "
                          "AND pid <> pg_backend_pid()", (pg_url.rsplit("/", 1)[1],))
        with pytest.raises(hof.FailureIndexError, match="cannot be read as a failure index"):
            for _ in range(5):  # the pool holds at most a few connections, each now cut
                index.patterns()
        assert index.add([failure(2)]) == 1  # a new connection
        assert index.patterns()[0].count == 2


def test_postgresql_a_batch_of_500_is_written_whole_and_a_retry_adds_nothing(pg_url: str) -> None:
    records = [failure(i, graph_snapshot={"graph": "g" * 100}, input_context={"row": i}) for i in range(500)]
    at = datetime.now(timezone.utc).replace(minute=30)
    outcomes = [hof.RunOutcome(session_id=f"s{i}", agent_id="report-agent", success=i % 2 == 0, started_at=at,
                               ended_at=at) for i in range(500)]
    with hof.open_index(pg_url) as index:
        assert index.add(records, outcomes) == 500
        assert index.add(records, outcomes) == 0  # the writer retried: nothing twice
        (pattern,) = index.patterns()
        assert (pattern.count, pattern.sessions) == (500, 500)
        stats = index.stats()
        assert (stats.runs, stats.failed_runs) == (500, 250)  # a run recorded again is still one run
        assert index._db.fetchall("SELECT count(*) FROM blobs") == [(501,)]  # one graph, 500 contexts
        assert index._db.fetchall("SELECT count(*), sum(runs) FROM run_counts") == [(2, 1000)]  # its hour and day


def test_the_sqlite_index_needs_no_postgresql_package(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import sys
        sys.modules["psycopg"] = None  # as if the [postgres] extra were not installed
        sys.modules["psycopg_pool"] = None
        import hive_otel_failures as hof
        with hof.open_index({str(tmp_path / "plain.db")!r}) as index:
            index.add([hof.FailureRecord(agent_id="a", node_id="n", session_id="s", error_type="E",
                                         error_message="m")])
            assert index.patterns()[0].count == 1
        try:
            hof.open_index("postgresql://hive@127.0.0.1:1/hive")
        except hof.FailureIndexError as exc:
            print(exc)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "pip install 'hive-otel-failures[postgres]'" in done.stdout


def test_the_cli_reads_either_backend_the_same_way(db_location: str) -> None:
    """``hive-failures --db`` takes a path or a postgresql:// URL; agents get the same JSON from both."""
    with hof.open_index(db_location) as index:
        index.add([failure(i) for i in range(4)], [hof.RunOutcome(session_id=f"s{i}", agent_id="report-agent",
                                                                  success=False) for i in range(4)])
        fingerprint = index.patterns()[0].fingerprint
    answers = {}
    for command in ("patterns", "stats", "advise"):
        done = subprocess.run([sys.executable, "-m", "hive_otel_failures", command, "--db", db_location, "--json"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        answers[command] = json.loads(done.stdout)
    assert fingerprint in json.dumps(answers["patterns"]) and fingerprint in json.dumps(answers["advise"])
    assert (answers["stats"]["runs"], answers["stats"]["failed_runs"], answers["stats"]["failures"]) == (4, 4, 4)
