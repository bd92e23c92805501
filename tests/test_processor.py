"""FailureIndexProcessor on a real TracerProvider and a real SQLite file."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.trace import StatusCode

import hive_otel_failures as hof
from hive_otel_failures import FailureIndexProcessor, semconv
from hive_otel_failures.index.backend import RUN_COLUMNS
from hive_otel_failures.index.store import run_row
from hive_otel_failures.processor import _FRAMES
from hive_otel_failures.record import from_time_ns, prepare, run_from_attributes, to_attributes
from hive_otel_failures.writer import IndexWriter

from .conftest import Pipeline


def test_thousand_spans_hundred_failures_exactly_hundred_rows(pipeline: Pipeline) -> None:
    for i in range(1000):
        with pipeline.tracer.start_as_current_span(f"span-{i}") as span:
            span.set_attribute("i", i)
            span.add_event("ordinary event")
            if i % 10 == 0:
                hof.record_failure(hof.FailureRecord(agent_id="a", node_id=f"n{i % 3}", session_id=f"s{i}",
                                                     error_type="builtins.ValueError", error_message=f"bad {i}",
                                                     input_context={"row": i}, graph_snapshot={"id": "a"}))
    pipeline.flush()
    assert pipeline.processor.stats().written == 100
    with pipeline.index() as index:
        rows = index.recent(limit=10_000)
        assert len(rows) == 100
        assert {int(r.session_id[1:]) for r in rows} == set(range(0, 1000, 10))
        assert all(r.input_context == {"row": int(r.session_id[1:])} for r in rows)
        assert sorted((p.count, p.sessions) for p in index.patterns()) == [(33, 33), (33, 33), (34, 34)]
        assert index.stats().runs == 0  # plain spans wrote nothing, not even runs
    with sqlite3.connect(pipeline.db_path) as conn:  # every snapshot a failure points to is stored, once
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("SELECT count(*) FROM blob_z").fetchone() == (101,)  # deflated; `blobs` is its view
    assert len(pipeline.exporter.get_finished_spans()) == 1000


def test_spans_without_failures_write_nothing(pipeline: Pipeline) -> None:
    for _i in range(50):
        with pipeline.tracer.start_as_current_span("plain"):
            pass
    pipeline.flush()
    stats = pipeline.processor.stats()
    assert stats.written == stats.runs_written == 0
    with pipeline.index() as index:
        assert index.recent() == [] and index.patterns() == []


def test_run_outcomes_become_rows_and_rates(pipeline: Pipeline) -> None:
    for i in range(4):
        with pipeline.tracer.start_as_current_span("run"):
            failed = i == 0
            if failed:
                hof.record_failure(hof.FailureRecord(agent_id="a", session_id="s0", error_message="x"))
            hof.record_run(hof.RunOutcome(session_id=f"s{i}", agent_id="a", success=not failed, quality="degraded",
                                          failures=int(failed)))
    pipeline.flush()
    with pipeline.index() as index:
        stats = index.stats(agent_id="a")
    assert (stats.runs, stats.failed_runs, stats.failure_rate) == (4, 1, 0.25)
    # On spans of another tracer the outcome sets the status, so the processor finds it cheaply.
    statuses = [s.status.status_code for s in pipeline.exporter.get_finished_spans()]
    assert statuses == [StatusCode.ERROR, StatusCode.OK, StatusCode.OK, StatusCode.OK]


def test_a_run_events_row_is_the_one_its_model_makes(pipeline: Pipeline) -> None:
    """The processor reads record_run's events without pydantic; odd events still go through the model."""
    outcomes = [hof.RunOutcome(session_id="r1", agent_id="a", success=True),
                hof.RunOutcome(session_id="r2", agent_id=None, agent_version="v3", success=False, quality="degraded",
                               failures=3)]
    for outcome in outcomes:
        with pipeline.tracer.start_as_current_span("run"):
            hof.record_run(outcome)
    with pipeline.tracer.start_as_current_span("odd run") as span:  # an event another producer made
        span.add_event(semconv.RUN_EVENT, {semconv.RUN_SESSION_ID: "r3", semconv.RUN_FAILURES: "2",
                                            semconv.RUN_OUTCOME: "failure"})
        span.set_status(StatusCode.ERROR)
    pipeline.flush()
    expected = []
    for span in pipeline.exporter.get_finished_spans():
        event = span.events[0]
        session, agent, version, started_ns, ended_ns, *rest = run_row(run_from_attributes(
            dict(event.attributes), from_time_ns(span.start_time), from_time_ns(span.end_time)))
        expected.append((session, agent, version, from_time_ns(started_ns), from_time_ns(ended_ns), *rest))
    with pipeline.index() as index:
        rows = index._db.fetchall(f"SELECT {RUN_COLUMNS} FROM runs ORDER BY session_id")
    def read(ts: float) -> datetime:  # as readers read a time: the same microsecond
        return datetime.fromtimestamp(ts, timezone.utc)

    read_rows = [(*row[:3], read(row[3]), read(row[4]), *row[5:]) for row in rows]
    assert read_rows == sorted(expected) and [row[0] for row in read_rows] == ["r1", "r2", "r3"]


def test_a_successful_run_on_an_instrumentation_span_is_indexed_with_status_unset(pipeline: Pipeline) -> None:
    tracer = pipeline.provider.get_tracer(semconv.INSTRUMENTATION_SCOPE)
    with tracer.start_as_current_span("invoke_agent a"):
        hof.record_run(hof.RunOutcome(session_id="s1", agent_id="a", success=True))
    pipeline.flush()
    (span,) = pipeline.exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.UNSET  # instrumentation leaves success unset (OTel spec)
    with pipeline.index() as index:
        assert index.stats(agent_id="a").runs == 1


def test_a_failure_event_is_read_from_spans_with_status_set_only(pipeline: Pipeline) -> None:
    """record_failure sets status ERROR; a bare event on an unset span is not read (no per-span copy)."""
    with pipeline.tracer.start_as_current_span("not a failure"):
        trace.get_current_span().add_event("hive.failure", {"hive.failure.error_message": "status unset"})
    with pipeline.tracer.start_as_current_span("a failure") as span:
        span.add_event("hive.failure", {"hive.failure.error_message": "status set"})
        span.set_status(StatusCode.ERROR)
    pipeline.flush()
    with pipeline.index() as index:
        assert [r.error_message for r in index.recent()] == ["status set"]


def test_trace_and_span_ids_come_from_the_span(pipeline: Pipeline) -> None:
    """And the time from the event, for an event another producer made without one."""
    with pipeline.tracer.start_as_current_span("node") as span:
        span.add_event("hive.failure", {"hive.failure.error_message": "raw event from another producer",
                                        "hive.failure.agent_id": "a"}, timestamp=1_767_225_600_123_456_000)
        span.set_status(StatusCode.ERROR)
        ctx = span.get_span_context()
    pipeline.flush()
    with pipeline.index() as index:
        (record,) = index.recent()
    assert record.trace_id == f"{ctx.trace_id:032x}" and record.span_id == f"{ctx.span_id:016x}"
    assert record.timestamp == datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=timezone.utc)
    assert record.fingerprint and record.fingerprint.startswith("v1:")  # prepared on the writer side too


def _writer_pid(p: Pipeline) -> int:
    process = p.processor._process
    assert process is not None, "no writer process"
    return process.popen.pid


def _sent_to_the_writer(p: Pipeline) -> None:
    p.processor.force_flush(0)  # wakes the sender
    deadline = time.monotonic() + 5
    while p.processor._queue and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not p.processor._queue, "the sender did not send"


@pytest.mark.skipif(sys.platform == "win32", reason="SIGSTOP is POSIX")
def test_full_queue_drops_counted_instead_of_blocking(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = Pipeline(db_path, max_queue_size=5)
    writer = _writer_pid(p)
    os.kill(writer, signal.SIGSTOP)  # the writer process holds what it has, so the queue fills up
    try:
        with caplog.at_level(logging.WARNING, logger="hive_otel_failures.processor"):
            t0 = time.monotonic()
            for i in range(50):
                with p.tracer.start_as_current_span("f"):
                    hof.record_failure(hof.FailureRecord(session_id=f"s{i}", error_message="x"))
            elapsed = time.monotonic() - t0
        stats = p.processor.stats()
    finally:
        os.kill(writer, signal.SIGCONT)
    # room for the queue (5), and the few batches (<= 5 each) the writer process may hold
    assert stats.dropped >= 50 - 5 - _FRAMES * 5
    assert elapsed < 5, "on_end blocked on a full queue"
    assert sum("dropping failure records" in r.getMessage() for r in caplog.records) == 1  # logged once
    p.flush()
    accepted = 50 - stats.dropped
    assert p.processor.stats().written == accepted
    p.provider.shutdown()
    with hof.open_index(db_path) as index:
        assert len(index.recent(limit=100)) == accepted


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_writer_process_that_dies_is_counted_and_started_again(db_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    p = Pipeline(db_path)
    writer = _writer_pid(p)
    os.kill(writer, signal.SIGSTOP)
    for i in range(3):
        with p.tracer.start_as_current_span("f"):
            hof.record_failure(hof.FailureRecord(session_id=f"lost{i}", error_message="x"))
    _sent_to_the_writer(p)
    with caplog.at_level(logging.WARNING, logger="hive_otel_failures.processor"):
        os.kill(writer, signal.SIGKILL)  # as the OOM killer would
        deadline = time.monotonic() + 5
        while p.processor.stats().errors < 3 and time.monotonic() < deadline:  # what it held: counted
            time.sleep(0.01)
        for i in range(2):
            with p.tracer.start_as_current_span("f"):
                hof.record_failure(hof.FailureRecord(session_id=f"kept{i}", error_message="x"))
        p.flush()
    stats = p.processor.stats()
    assert (stats.written, stats.errors, stats.queued) == (2, 3, 0)
    assert _writer_pid(p) != writer
    assert sum("index writer process exited" in r.getMessage() and "3 records" in r.getMessage()
               for r in caplog.records) == 1
    p.provider.shutdown()
    with hof.open_index(db_path) as index:
        assert sorted(r.session_id for r in index.recent()) == ["kept0", "kept1"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_process_records_on_its_own_and_does_not_hold_the_parents_writer(db_path: Path) -> None:
    p = Pipeline(db_path)
    parent_writer = p.processor._process
    assert parent_writer is not None
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the forked process: records through its own writer, then lingers
        code = 1
        try:
            time.sleep(0.3)
            assert p.processor._process is None  # none until there is something to write
            with p.tracer.start_as_current_span("f"):
                hof.record_failure(hof.FailureRecord(session_id="from-the-fork", error_message="x"))
            code = 0 if p.processor.force_flush(10_000) and p.processor.stats().written == 1 else 1
        finally:
            os.write(write_end, bytes([code]))
            time.sleep(10)
            os._exit(code)
    try:
        assert os.read(read_end, 1) == b"\0", "the forked process did not index its failure"
        with p.tracer.start_as_current_span("f"):
            hof.record_failure(hof.FailureRecord(session_id="from-the-parent", error_message="x"))
        p.flush()
        assert p.processor.stats().written == 1
        t0 = time.monotonic()
        p.provider.shutdown()
        assert parent_writer.popen.wait(5) == 0  # the lingering fork does not keep it waiting
        assert time.monotonic() - t0 < 5
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(read_end)
        os.close(write_end)
    with hof.open_index(db_path) as index:
        assert sorted(r.session_id for r in index.recent()) == ["from-the-fork", "from-the-parent"]


def test_a_writer_process_that_cannot_start_is_logged_and_nothing_raises(db_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sys, "executable", str(db_path.parent / "no-such-python"))
    with caplog.at_level(logging.WARNING, logger="hive_otel_failures.processor"):
        p = Pipeline(db_path, max_queue_size=2)
        for i in range(3):
            with p.tracer.start_as_current_span("f"):
                hof.record_failure(hof.FailureRecord(session_id=f"s{i}", error_message="x"))
        assert not p.processor.force_flush(500)
    stats = p.processor.stats()
    assert (stats.written, stats.queued, stats.dropped) == (0, 2, 1)  # kept while the queue has room, then counted
    assert sum("cannot start the index writer process" in r.getMessage() for r in caplog.records) == 1
    t0 = time.monotonic()
    p.provider.shutdown()
    assert time.monotonic() - t0 < 5, "shutdown waited for a writer that cannot start"
    stats = p.processor.stats()
    assert (stats.written, stats.queued, stats.dropped, stats.errors) == (0, 0, 1, 2)


def _queued(*records: hof.FailureRecord) -> list[tuple[object, ...]]:
    """Spans as the processor queues them (see processor.py): no run, one failure event each."""
    spans = []
    for record in records:
        attributes = to_attributes(prepare(record))
        spans.append((None, None, 0, 0, None, None, 0, tuple(attributes), tuple(attributes.values())))
    return spans


class _Reports(list):
    """What an IndexWriter reports, and a wait for the n-th batch done."""

    def done(self, n: int) -> list[tuple[object, ...]]:
        deadline = time.monotonic() + 10
        while sum(r[0] == "done" for r in self) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return [r[1:4] for r in self if r[0] == "done"]


def test_the_next_batch_is_prepared_while_one_is_being_written(db_path: Path) -> None:
    """The writer's two threads: rows are built on one while the database writes on the other."""
    reports = _Reports()
    writer = IndexWriter(str(db_path), delay=0.2, report=lambda *r: reports.append(r))
    deadline = time.monotonic() + 10
    while ("opened",) not in reports and time.monotonic() < deadline:
        time.sleep(0.01)
    index = writer._index
    assert index is not None
    gate, writing, prepared = threading.Event(), threading.Event(), []
    write_batch, prepare_batch = index.write_batch, index.prepare_batch

    def held_write(batch):
        writing.set()
        gate.wait(10)
        return write_batch(batch)

    def counted_prepare(failures, runs=()):
        prepared.append(len(failures))
        return prepare_batch(failures, runs)

    index.write_batch, index.prepare_batch = held_write, counted_prepare  # type: ignore[method-assign]
    for start in (0, 8, 16):
        writer.take(_queued(*(hof.FailureRecord(session_id=f"s{i}", error_message="x")
                              for i in range(start, start + 8))))
    assert writing.wait(5)
    deadline = time.monotonic() + 5
    while len(prepared) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(prepared) >= 2  # the next batch was prepared while the first was held in the database
    assert reports.done(0) == []
    gate.set()
    assert reports.done(3) == [(8, 0, 0)] * 3
    writer.close(10)
    with hof.open_index(db_path) as reader:
        assert len(reader.recent(limit=100)) == 24


def test_a_batch_that_breaks_the_writer_is_counted_and_the_next_ones_are_written(db_path: Path) -> None:
    reports = _Reports()
    writer = IndexWriter(str(db_path), delay=0.2, report=lambda *r: reports.append(r))
    write, broken = writer._write, []

    def write_once_broken(*batch):
        if not broken:
            broken.append(True)
            raise RuntimeError("a bug in the writer")
        return write(*batch)

    writer._write = write_once_broken  # type: ignore[method-assign]
    writer.take(_queued(*(hof.FailureRecord(session_id=f"lost{i}", error_message="x") for i in range(3))))
    assert reports.done(1) == [(0, 0, 3)]
    writer.take(_queued(*(hof.FailureRecord(session_id=f"kept{i}", error_message="x") for i in range(2))))
    assert reports.done(2) == [(0, 0, 3), (2, 0, 0)]
    assert sum(r[0] == "warn" and "a bug in the writer" in r[2] for r in reports) == 1
    writer.close(10)
    with hof.open_index(db_path) as index:
        assert sorted(r.session_id for r in index.recent()) == ["kept0", "kept1"]


def test_shutdown_with_a_full_queue_returns_in_bound_and_keeps_what_was_accepted(db_path: Path) -> None:
    p = Pipeline(db_path, max_queue_size=2000)
    for i in range(2000):
        with p.tracer.start_as_current_span("f"):
            hof.record_failure(hof.FailureRecord(session_id=f"s{i}", error_message=f"x {i}"))
    accepted = 2000 - p.processor.stats().dropped
    t0 = time.monotonic()
    p.processor.shutdown(timeout_millis=20_000)
    assert time.monotonic() - t0 < 20
    with hof.open_index(db_path) as index:
        assert len(index.recent(limit=5000)) == accepted
    with p.tracer.start_as_current_span("after shutdown"):
        hof.record_failure(hof.FailureRecord(error_message="late"))  # does not raise
    assert p.processor.stats().dropped == 2000 - accepted + 1


def test_unwritable_index_never_raises_into_the_caller(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where a directory should be")
    p = Pipeline(blocker / "failures.db")
    with p.tracer.start_as_current_span("f"):
        hof.record_failure(hof.FailureRecord(error_message="x"))
    p.flush()
    stats = p.processor.stats()
    assert stats.written == 0 and stats.errors == 1
    p.provider.shutdown()


def test_a_malformed_failure_event_is_counted_and_the_rest_of_the_batch_kept(pipeline: Pipeline) -> None:
    with pipeline.tracer.start_as_current_span("bad") as span:
        span.add_event("hive.failure", {"hive.failure.attempts": "not a number"})
        span.set_status(StatusCode.ERROR)
    with pipeline.tracer.start_as_current_span("good"):
        hof.record_failure(hof.FailureRecord(error_message="fine"))
    pipeline.flush()
    stats = pipeline.processor.stats()
    assert stats.errors == 1 and stats.written == 1


def test_the_index_is_open_when_the_processor_is_made(db_path: Path) -> None:
    """Opened while the application is not busy yet: beside busy threads each SQLite call waits for the GIL."""
    processor = FailureIndexProcessor(db_path)
    try:
        with closing(sqlite3.connect(db_path)) as conn:  # no flush: the constructor waited for the writer
            assert conn.execute("PRAGMA user_version").fetchone()[0] > 0
    finally:
        processor.shutdown()


def test_a_flush_means_the_index_exists_even_before_any_failure(db_path: Path) -> None:
    p = Pipeline(db_path)
    p.flush()  # at once: the writer may not have opened the index yet
    with sqlite3.connect(db_path) as conn:  # a reader right after finds the schema, not an empty file
        assert conn.execute("PRAGMA user_version").fetchone()[0] > 0
    p.provider.shutdown()


def test_one_malformed_event_loses_neither_its_span_nor_the_batch(pipeline: Pipeline,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    with pipeline.tracer.start_as_current_span("three events") as span:
        span.add_event("hive.failure", {"hive.failure.error_message": "before"})
        span.add_event("hive.failure", {"hive.failure.attempts": "not a number"})
        span.add_event("hive.failure", {"hive.failure.error_message": "after"})
        span.set_status(StatusCode.ERROR)
    with caplog.at_level(logging.WARNING, logger="hive_otel_failures.processor"):
        pipeline.flush()
    stats = pipeline.processor.stats()
    assert (stats.written, stats.errors) == (2, 1)
    with pipeline.index() as index:
        assert sorted(r.error_message for r in index.recent()) == ["after", "before"]
    assert sum("malformed failure event" in r.getMessage() for r in caplog.records) == 1


KILLED_UNDER_LOAD = textwrap.dedent("""
    import os, random, sys, time
    from opentelemetry.sdk.trace import TracerProvider
    import hive_otel_failures as hof

    db, log, rate = sys.argv[1], sys.argv[2], float(sys.argv[3])
    provider = TracerProvider()
    handle = hof.configure(db=db, tracer_provider=provider)
    assert handle.force_flush(30_000)
    tracer = provider.get_tracer("app")
    rng = random.Random(7)
    words = "order customer total row invoice ACME currency EUR parse column missing value shipment".split()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    print("ready", handle.processor._process.popen.pid, flush=True)
    t0, i = time.monotonic(), 0
    while True:  # a steady rate until SIGKILL
        due, lines = int((time.monotonic() - t0) * rate), []
        while i < due:
            text = " ".join(rng.choice(words) for _ in range(rng.randint(150, 600)))  # 1-4 KB of context
            with tracer.start_as_current_span("node"):
                hof.record_failure(hof.FailureRecord(
                    failure_id=f"k{i}", agent_id="a", node_id=f"n{i % 7}", session_id=f"s{i // 5}",
                    error_type="builtins.ValueError", error_message=f"row {i} failed",
                    input_context={"row": i, "text": text}))
            lines.append(f"{i} {time.monotonic()}\\n")  # the span has ended: on_end has run
            i += 1
        os.write(fd, "".join(lines).encode())
        time.sleep(0.002)
""")


def _killed_under_load(tmp_path: Path, seconds: float, rate: float,
                       also_the_writer: bool) -> tuple[dict[str, float], float, int]:
    """Run KILLED_UNDER_LOAD, then SIGKILL it (and its writer process).

    Returns what it emitted (id: when its span ended), when it was killed, its writer's pid.
    """
    db, log = tmp_path / "failures.db", tmp_path / "emitted.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "HIVE_FAILURES"))}
    with open(tmp_path / "stderr", "w+b") as err:
        proc = subprocess.Popen([sys.executable, "-c", KILLED_UNDER_LOAD, str(db), str(log), str(rate)], env=env,
                                stdout=subprocess.PIPE, stderr=err)
        writer = 0
        try:
            assert proc.stdout is not None
            ready, _, pid = proc.stdout.readline().strip().partition(b" ")
            if ready == b"ready":
                writer = int(pid)
                time.sleep(seconds)
                if also_the_writer:
                    os.kill(writer, signal.SIGKILL)
                os.kill(proc.pid, signal.SIGKILL)
            killed_at = time.monotonic()
        finally:
            proc.kill()
            proc.wait()
        err.seek(0)
        assert writer, err.read().decode(errors="replace")
    emitted = {f"k{i}": float(t) for i, t in (line.split() for line in log.read_text().splitlines())}
    assert len(emitted) >= 0.8 * rate * seconds, f"the child emitted {len(emitted)}: too loaded a machine to test"
    return emitted, killed_at, writer


def _stored(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return {failure_id for (failure_id,) in conn.execute("SELECT failure_id FROM failures")}


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_kill_9_under_load_loses_nothing_older_than_the_bound(tmp_path: Path) -> None:
    """While the writer keeps up, what ended more than a flush interval plus one transaction ago is on disk.

    The application and its writer process are killed together, as a crash of the machine
    would. The bound is 400 ms (200 ms interval, transactions sized to about one interval); the
    assertion allows 3x that for a noisy machine. benchmarks/kill_loss.py prints the figures.
    """
    bound = 2 * 0.2
    emitted, killed_at, _ = _killed_under_load(tmp_path, 3.0, 1000, also_the_writer=True)
    stored = _stored(tmp_path / "failures.db")
    lost = sorted((killed_at - t for failure_id, t in emitted.items() if failure_id not in stored), reverse=True)
    assert not [age for age in lost if age > 3 * bound], (
        f"{len(lost)} of {len(emitted)} lost, the oldest ended {lost[0]:.2f} s before the kill")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_the_writer_process_writes_what_it_was_handed_after_the_application_dies(tmp_path: Path) -> None:
    """A kill -9 of the application alone: its writer writes what it holds, then exits; only what
    had not been picked up yet (at most one flush interval's worth, 3x for a noisy machine) is lost."""
    emitted, killed_at, writer = _killed_under_load(tmp_path, 2.0, 1000, also_the_writer=False)
    deadline = time.monotonic() + 20
    while Path(f"/proc/{writer}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{writer}").exists() or "Z" in Path(f"/proc/{writer}/stat").read_text().split()[2], (
        "the writer process outlived the application by 20 s")
    stored = _stored(tmp_path / "failures.db")
    lost = [killed_at - t for failure_id, t in emitted.items() if failure_id not in stored]
    assert not [age for age in lost if age > 3 * 0.2], f"{len(lost)} of {len(emitted)} lost"
