"""Retention and portability on both backends: prune keeps the answers, export/import round trips are lossless.

The answers compared are the API's (patterns, stats, advise, fix_effect, resolutions, the records)
and the counters' raw rows, before and after: SQLite -> PostgreSQL -> SQLite gives the same.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import hive_otel_failures as hof
from hive_otel_failures.index import (ExportReport, FailureIndexError, ImportReport, PruneReport)

NOW = datetime.now(timezone.utc).replace(minute=30)  # mid-hour: a test's failures never straddle an hour
OLD = NOW - timedelta(days=120)
GRAPH = {"goal": "write the report", "nodes": [{"id": "parse", "system_prompt": "parse the rows"}]}


def failure(i: int, when: datetime, **kw: Any) -> hof.FailureRecord:
    base = dict(failure_id=f"f{i:04d}", agent_id="report-agent", node_id="parse", session_id=f"s{i % 7}",
                error_type="builtins.ValueError", error_message=f"could not parse row {i}", timestamp=when,
                agent_version="1.0" if when < NOW - timedelta(days=30) else "1.1", graph_snapshot=GRAPH,
                input_context={"row": i, "when": when.isoformat()},
                judge_feedback=[hof.JudgeFeedback(attempt=1, action="RETRY", feedback=f"row {i} lacks a total")])
    base.update(kw)
    return hof.FailureRecord(**base)


def run(i: int, when: datetime, success: bool, version: str) -> hof.RunOutcome:
    return hof.RunOutcome(session_id=f"s{i}", agent_id="report-agent", agent_version=version, started_at=when,
                          ended_at=when + timedelta(minutes=5), success=success, failures=0 if success else 2)


def populate(index: hof.FailureIndex) -> None:
    """Old and new failures of three patterns, sessions on both sides of a 90-day cut, runs, resolutions."""
    old = [failure(i, OLD + timedelta(hours=i)) for i in range(10)]
    old += [failure(100 + i, OLD + timedelta(days=1, hours=i), node_id="render", error_type="builtins.KeyError",
                    error_message="'title'", session_id=f"gone{i}") for i in range(4)]  # all pruned later
    index.add(old, [run(i, OLD + timedelta(hours=i), i % 3 != 0, "1.0") for i in range(30)])
    # resolved long ago (raw: resolve() stamps now), then failing again in the new version
    index._db.transaction([("INSERT INTO resolutions (fingerprint, ts, resolution, evolution_triggered, "
                            "agent_version) VALUES (?, ?, ?, ?, ?)",
                            (index.patterns()[0].fingerprint, (OLD + timedelta(days=2)).timestamp(),
                             "validated the rows", True, "1.1"))])
    new = [failure(10 + i, NOW - timedelta(days=2, hours=i)) for i in range(12)]  # s0..s6 again: shifted sessions
    new += [failure(200 + i, NOW - timedelta(hours=3 + i), node_id="fetch", error_type="hive.timeout",
                    kind="timeout", error_message="timed out", session_id=f"t{i}", agent_version="1.1",
                    input_context=None) for i in range(5)]
    index.add(new, [run(100 + i, NOW - timedelta(days=3, hours=i), i % 2 == 0, "1.1") for i in range(40)])
    index.resolve(index.patterns()[0].fingerprint, "retry the fetch with backoff", agent_version="1.2")


def _strip(value: Any, drop: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v, drop) for k, v in value.items() if k not in drop}
    if isinstance(value, list):
        return [_strip(v, drop) for v in value]
    return value


def dump(value: Any) -> Any:
    if isinstance(value, list):
        return [v.model_dump(mode="json") for v in value]
    return value.model_dump(mode="json")


def answers(index: hof.FailureIndex, *, examples: bool = True) -> dict[str, Any]:
    """What the API answers, and the counters' rows, in a form to compare; advice's window moves with the clock."""
    examples_of = {"example_failure_ids", "example_trace_ids", "judge_feedback"}
    drop = frozenset({"window_start", "window_end"} | (set() if examples else examples_of))
    patterns = index.patterns()
    db = index._db
    return {
        "patterns": dump(patterns),
        "patterns_7d": dump(index.patterns(since=NOW - timedelta(days=7))),
        "stats": dump(index.stats()),
        "stats_by_agent": dump(index.stats(agent_id="report-agent", since=NOW - timedelta(days=200))),
        "advise": _strip(dump(index.advise(window="200d", min_sessions=2)), drop),
        "advise_7d": _strip(dump(index.advise(min_sessions=2)), drop),
        "fix_effect": [dump(index.fix_effect(p.fingerprint)) for p in patterns],
        "resolutions": [dump(index.resolutions(p.fingerprint)) for p in patterns],
        "records": dump(index.recent(limit=100_000)) if examples else None,
        "failure_counts": sorted(db.fetchall("SELECT grain, bucket, fingerprint, agent_version, failures, sessions, "
                                             "first_ts, last_ts FROM failure_counts")),
        "run_counts": sorted(db.fetchall("SELECT grain, bucket, agent_id, agent_version, runs, failed, first_ts "
                                         "FROM run_counts")),
        "runs": sorted((s, a, v, t0, t1, bool(ok), q, n) for s, a, v, t0, t1, ok, q, n in db.fetchall(
            "SELECT session_id, agent_id, agent_version, started_at, ended_at, success, quality, failures FROM runs")),
        "blobs": sorted(db.fetchall("SELECT sha256, size FROM blobs")),
    }


def export_text(index: hof.FailureIndex) -> str:
    out = io.StringIO()
    index.export_jsonl(out)
    return out.getvalue()


def body(text: str) -> list[dict[str, Any]]:
    """An export's lines but its meta line (which names the time and source)."""
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["type"] == "meta"
    return lines[1:]


# --- prune --------------------------------------------------------------------------------------------
def test_prune_removes_old_rows_and_keeps_every_answer(db_location: str) -> None:
    with hof.open_index(db_location) as index:
        populate(index)
        before = answers(index, examples=False)
        blobs_before = len(before["blobs"])
        dry = index.prune("90d", dry_run=True)
        assert isinstance(dry, PruneReport) and dry.dry_run
        assert answers(index, examples=False) == before  # a dry run changes nothing
        report = index.prune("90d")
        assert (report.failures_removed, report.runs_removed) == (14, 30)
        assert (report.failures_kept, report.runs_kept, report.patterns_kept, report.resolutions_kept) == (17, 40, 3, 2)
        assert report.patterns_without_failures == 1  # the KeyError pattern: counted, no failure left
        # 14 input contexts went; the graph snapshot is still used by the new failures, so it stays
        assert report.blobs_removed == 14 and report.blob_bytes_removed > 0
        assert dry.model_dump(exclude={"dry_run", "cut"}) == report.model_dump(exclude={"dry_run", "cut"})
        after = answers(index, examples=False)
        assert len(after["blobs"]) == blobs_before - 14
        assert {k: v for k, v in after.items() if k not in ("runs", "blobs")} == \
               {k: v for k, v in before.items() if k not in ("runs", "blobs")}
        kept = index.recent(limit=1000)
        assert len(kept) == 17 and all(r.timestamp >= NOW - timedelta(days=90) for r in kept)
        (remaining,) = index._db.fetchone("SELECT count(*) FROM failures f WHERE NOT EXISTS "
                                          "(SELECT 1 FROM blobs b WHERE b.sha256 = f.graph_snapshot_sha)")
        assert remaining == 0  # no failure lost its snapshot
        again = index.prune("90d")
        assert (again.failures_removed, again.blobs_removed, again.runs_removed) == (0, 0, 0)
        if index.backend == "postgresql":  # the sweep's indexes for the foreign keys' checks are gone with it
            assert index._db.fetchall("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'prune%'") == []


def test_readers_of_a_pattern_whose_failures_are_all_pruned(db_location: str) -> None:
    with hof.open_index(db_location) as index:
        populate(index)
        index.prune("90d")
        (bare,) = [p for p in index.patterns() if p.node_id == "render"]
        assert (bare.count, bare.sessions) == (4, 4)
        diagnosis = index.diagnose(bare.fingerprint)
        assert bare.fingerprint in diagnosis.markdown
        assert index.fix_effect(bare.fingerprint).effects == []
        assert index.recent(fingerprint=bare.fingerprint) == []
        advice = [a for a in index.advise(window="200d", min_sessions=2) if a.fingerprint == bare.fingerprint]
        assert advice and advice[0].evidence.example_failure_ids == [] and advice[0].evidence.sessions == 4


def test_prune_refuses_what_it_cannot_read(db_location: str) -> None:
    with hof.open_index(db_location) as index:
        for bad in ("soon", "", (datetime.now(timezone.utc) + timedelta(days=1)).isoformat(), timedelta(days=-1)):
            with pytest.raises(FailureIndexError):
                index.prune(bad)
        assert index.prune(timedelta(days=1)).failures_removed == 0


# --- export / import ------------------------------------------------------------------------------------
@pytest.mark.parametrize("pruned", [False, True], ids=["whole", "pruned"])
def test_export_import_gives_the_same_answers_and_twice_changes_nothing(
        new_location: Callable[[], str], pruned: bool) -> None:
    source_location, target_location = new_location(), new_location()
    with hof.open_index(source_location) as source:
        populate(source)
        if pruned:
            source.prune("90d")
        expected = answers(source)
        text = export_text(source)
    lines = body(text)
    assert [line["type"] for line in lines] == sorted((line["type"] for line in lines), key=[
        "failure", "run", "resolution", "pattern", "run_counts"].index)
    assert any("pruned" in line for line in lines if line["type"] == "pattern") == pruned
    with hof.open_index(target_location) as target:
        first = target.import_jsonl(io.StringIO(text), batch_size=5)  # many batches
        assert isinstance(first, ImportReport)
        assert (first.failures_added, first.runs_added, first.resolutions_added) == \
               (len(expected["records"]), len(expected["runs"]), 2)
        assert first.patterns_copied == 3 and first.agents_copied == 1
        assert answers(target) == expected
        second = target.import_jsonl(text.splitlines(keepends=True))
        assert (second.failures_added, second.runs_added, second.resolutions_added, second.patterns_copied,
                second.patterns_merged, second.agents_copied, second.agents_merged) == (0, 0, 0, 0, 0, 0, 0)
        assert (second.failures_skipped, second.runs_skipped, second.resolutions_skipped) == \
               (first.failures_added, first.runs_added, 2)
        assert answers(target) == expected
        assert body(export_text(target)) == lines


@pytest.mark.parametrize("pruned", [False, True], ids=["whole", "pruned"])
def test_sqlite_to_postgresql_to_sqlite(tmp_path: Path, postgres_server: Any, pruned: bool) -> None:
    url = postgres_server.database()
    try:
        with hof.open_index(tmp_path / "laptop.db") as laptop:
            populate(laptop)
            if pruned:
                laptop.prune("90d")
            expected = answers(laptop)
            text = export_text(laptop)
        with hof.open_index(url) as central:
            assert central.backend == "postgresql"
            central.import_jsonl(io.StringIO(text))
            assert answers(central) == expected
            back = export_text(central)
        assert body(back) == body(text)
        with hof.open_index(tmp_path / "again.db") as again:
            again.import_jsonl(io.StringIO(back))
            assert answers(again) == expected
    finally:
        postgres_server.drop(url)


def test_merge_into_an_index_with_its_own_failures(new_location: Callable[[], str]) -> None:
    """A laptop's pruned history joins the central index's: counts add up, once, and the newest fix stays newest."""
    laptop_location, central_location = new_location(), new_location()
    with hof.open_index(laptop_location) as laptop:
        populate(laptop)
        laptop.prune("90d")
        laptop_patterns = {p.fingerprint: p for p in laptop.patterns()}
        laptop_runs = laptop.stats().runs
        text = export_text(laptop)
    with hof.open_index(central_location) as central:
        others = [failure(500 + i, NOW - timedelta(hours=1, minutes=i), session_id=f"host2-{i}") for i in range(3)]
        central.add(others, [run(900 + i, NOW - timedelta(days=1), False, "1.1") for i in range(5)])
        (shared,) = central.patterns()
        assert shared.fingerprint in laptop_patterns  # the same pattern, seen on another host
        central.resolve(shared.fingerprint, "a fix made later, on the central index")
        report = central.import_jsonl(io.StringIO(text))
        assert (report.patterns_merged, report.patterns_copied, report.agents_merged) == (1, 2, 1)
        merged = {p.fingerprint: p for p in central.patterns()}
        lp = laptop_patterns[shared.fingerprint]
        assert (merged[shared.fingerprint].count, merged[shared.fingerprint].sessions) == \
               (lp.count + 3, lp.sessions + 3)
        assert merged[shared.fingerprint].resolution == "a fix made later, on the central index"
        assert [r.resolution for r in central.resolutions(shared.fingerprint)] == [
            "validated the rows", "retry the fetch with backoff", "a fix made later, on the central index"]
        assert central.stats().runs == laptop_runs + 5
        for fp, p in laptop_patterns.items():
            if fp != shared.fingerprint:
                assert (merged[fp].count, merged[fp].sessions) == (p.count, p.sessions)
        settled = answers(central)
        again = central.import_jsonl(io.StringIO(text))
        assert (again.failures_added, again.patterns_merged, again.agents_merged,
                again.resolutions_added) == (0, 0, 0, 0)
        assert answers(central) == settled


def test_import_streams_in_batches(db_location: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with hof.open_index(db_location) as index:
        lines = [json.dumps({"type": "meta", "format": "hive-failures-export", "format_version": 1})]
        lines += [json.dumps({"type": "failure", **hof.FailureRecord(
            failure_id=f"x{i}", fingerprint="v1:stream", timestamp=NOW, session_id=f"s{i}").model_dump(mode="json")})
            for i in range(25)]
        sizes: list[int] = []
        add_prepared = type(index).add_prepared
        monkeypatch.setattr(type(index), "add_prepared",
                            lambda self, failures, runs=(): sizes.append(len(failures)) or add_prepared(self, failures))
        report = index.import_jsonl(iter(lines), batch_size=10)
        assert sizes == [10, 10, 5] and report.failures_added == 25
        assert index.patterns()[0].sessions == 25


@pytest.mark.parametrize(("lines", "message"), [
    ([], "no lines"),
    (['{"type": "failure"}'], "line 1: the first line must be the meta line"),
    (['{"type": "meta", "format": "other", "format_version": 1}'], "line 1: not a hive-failures-export"),
    (['{"type": "meta", "format": "hive-failures-export", "format_version": 99}'], "upgrade"),
    (['{"type": "meta", "format": "hive-failures-export", "format_version": 1}', "not json"], "line 2"),
    (['{"type": "meta", "format": "hive-failures-export", "format_version": 1}', '{"type": "blob"}'],
     "line 2: unknown line type 'blob'"),
    (['{"type": "meta", "format": "hive-failures-export", "format_version": 1}',
      '{"type": "failure", "failure_id": "a", "fingerprint": "v1:x", "attempts": "many"}'], "line 2: not a valid"),
    (['{"type": "meta", "format": "hive-failures-export", "format_version": 1}',
      '{"type": "run_counts", "agent_id": "a", "counts": []}', '{"type": "run", "session_id": "s", "success": true}'],
     "line 3: a run line after run_counts lines"),
])
def test_import_refuses_bad_input_naming_the_line(db_location: str, lines: list[str], message: str) -> None:
    with hof.open_index(db_location) as index:
        with pytest.raises(FailureIndexError, match=message):
            index.import_jsonl(lines)
        assert index.patterns() == [] and index.stats().runs == 0


def test_export_of_an_empty_index_is_its_meta_line(db_location: str) -> None:
    with hof.open_index(db_location) as index:
        out = io.StringIO()
        report = index.export_jsonl(out)
    assert report == ExportReport()
    (meta,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert meta["type"] == "meta" and meta["format"] == "hive-failures-export" and meta["schema_version"] >= 3


# --- the CLI, as a subprocess ------------------------------------------------------------------------------
def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "140"}
    return subprocess.run([sys.executable, "-m", "hive_otel_failures", *args], capture_output=True, text=True,
                          input=stdin, env=env, timeout=120)


def test_cli_export_import_prune_round_trip(new_location: Callable[[], str], tmp_path: Path) -> None:
    source_location, target_location = new_location(), new_location()
    with hof.open_index(source_location) as source:
        populate(source)
        expected_before_prune = answers(source, examples=False)
    dry = cli("prune", "--older-than", "90d", "--dry-run", "--db", source_location)
    assert dry.returncode == 0, dry.stderr
    assert "would remove 14 failures" in dry.stdout and "30 runs" in dry.stdout
    done = cli("prune", "--older-than", "90d", "--db", source_location, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["failures_removed"], report["runs_removed"], report["patterns_without_failures"]) == (14, 30, 1)
    with hof.open_index(source_location) as source:
        pruned_answers = answers(source)
        assert {k: v for k, v in answers(source, examples=False).items() if k not in ("runs", "blobs")} == \
               {k: v for k, v in expected_before_prune.items() if k not in ("runs", "blobs")}
    exported = cli("export", "--db", source_location)  # to stdout
    assert exported.returncode == 0, exported.stderr
    assert "exported 17 failures, 40 runs, 2 resolutions, 3 patterns" in exported.stderr
    dump_file = tmp_path / "export.jsonl.gz"
    to_file = cli("export", str(dump_file), "--db", source_location, "--json")
    assert to_file.returncode == 0 and json.loads(to_file.stdout)["failures"] == 17
    imported = cli("import", "--db", target_location, stdin=exported.stdout)  # from stdin
    assert imported.returncode == 0, imported.stderr
    assert "imported 17 failures (0 already there), 40 runs (0 already there), 2 resolutions" in imported.stdout
    again = cli("import", str(dump_file), "--db", target_location, "--json")
    assert again.returncode == 0, again.stderr
    assert (json.loads(again.stdout)["failures_added"], json.loads(again.stdout)["failures_skipped"]) == (0, 17)
    with hof.open_index(target_location) as target:
        assert answers(target) == pruned_answers


def test_cli_errors_are_clear_and_coded(tmp_path: Path, db_path: Path) -> None:
    with hof.open_index(db_path) as index:
        populate(index)
    bad_duration = cli("prune", "--older-than", "soon", "--db", str(db_path))
    assert bad_duration.returncode == 2 and "error:" in bad_duration.stderr and "Traceback" not in bad_duration.stderr
    as_json = cli("prune", "--older-than", "soon", "--db", str(db_path), "--json")
    assert as_json.returncode == 2 and json.loads(as_json.stdout)["code"] == 2
    missing_index = cli("export", "--db", str(tmp_path / "missing.db"))
    assert missing_index.returncode == 2 and "no failure index" in missing_index.stderr
    missing_file = cli("import", str(tmp_path / "missing.jsonl"), "--db", str(db_path))
    assert missing_file.returncode == 2 and "cannot read" in missing_file.stderr
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text('{"type": "meta", "format": "hive-failures-export", "format_version": 1}\n{"type": "x"}\n')
    refused = cli("import", str(garbage), "--db", str(db_path), "--json")
    assert refused.returncode == 2 and "line 2" in json.loads(refused.stdout)["error"]
    unwritable = cli("export", str(tmp_path / "no" / "such" / "dir.jsonl"), "--db", str(db_path))
    assert unwritable.returncode == 2 and "cannot write" in unwritable.stderr
    assert not list(tmp_path.glob("**/*.part"))


def test_cli_migrate_takes_a_postgresql_url(postgres_server: Any) -> None:
    url = postgres_server.database()
    try:
        result = cli("migrate", "--db", url)
        assert result.returncode == 0, result.stderr
        assert "schema version" in result.stdout and "postgresql://" in result.stdout
    finally:
        postgres_server.drop(url)


def test_queen_server_keeps_a_postgresql_url(tmp_path: Path) -> None:
    from hive_otel_failures.faces.queen import _absolute_db, server_args

    url = "postgresql://hive@db.example/failures"
    assert _absolute_db(url) == url
    assert server_args(url)[-1] == url
    assert _absolute_db(str(tmp_path / "x.db")) == (tmp_path / "x.db").resolve()
