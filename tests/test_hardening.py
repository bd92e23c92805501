"""Issue 13: nothing lost silently, no unbounded list on the app thread, no record poisons an OTLP batch.

Everything goes through the public API (record_failure, FailureRecord, configure, open_index)
on a real SDK pipeline, a real SQLite file and, where the issue is OTLP encoding, a real
OTLP/HTTP exporter talking to a receiver on loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import hive_otel_failures as hof
from hive_otel_failures import semconv
from hive_otel_failures.scrub import TRUNCATED_KEY, Limits

from .test_bootstrap import OTLPReceiver

UTC = timezone.utc


class App:
    """What a user builds: configure() on their own provider, with an in-memory exporter beside it."""

    def __init__(self, db: Path, *exporters: object) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        for processor in exporters:
            self.provider.add_span_processor(processor)  # type: ignore[arg-type]
        self.handle = hof.configure(db=db, tracer_provider=self.provider)
        self.tracer = self.provider.get_tracer("app")
        self.db = db

    def fail(self, record: object, name: str = "node") -> object:
        with self.tracer.start_as_current_span(name):
            return hof.record_failure(record)  # type: ignore[arg-type]

    def flush(self) -> hof.ProcessorStats:
        assert self.handle.force_flush(10_000)
        stats = self.handle.stats()
        assert stats is not None
        return stats

    def rows(self) -> list[hof.FailureRecord]:
        with hof.open_index(self.db, create=False) as index:
            return index.recent(limit=100_000)


@pytest.fixture
def app(db_path: Path) -> Iterator[App]:
    a = App(db_path)
    yield a
    a.provider.shutdown()


def accounted(stats: hof.ProcessorStats) -> int:
    return stats.written + stats.errors + stats.dropped


# --- item caps on the list fields ----------------------------------------------------------------

def test_twenty_thousand_constraints_are_capped_in_count_and_size_with_a_marker(app: App) -> None:
    big = ["c%05d " % i + "x" * 993 for i in range(20_000)]  # 20k constraints of 1,000 chars
    t0 = time.perf_counter()
    prepared = app.fail(hof.FailureRecord(error_message="m", constraints_violated=big, criteria_unmet=big))
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5, f"record_failure took {elapsed:.2f}s on 20k constraints"
    limits = Limits.from_env()
    assert app.flush().written == 1
    (row,) = app.rows()
    for stored in (row.constraints_violated, row.criteria_unmet, prepared.constraints_violated):  # type: ignore[union-attr]
        assert len(stored) <= limits.max_items
        assert len(json.dumps(stored, ensure_ascii=False).encode()) <= limits.max_field_bytes
        assert stored[0] == big[0]  # the first ones are kept, in order
        assert stored[-1].startswith(TRUNCATED_KEY) and str(20_000 - (len(stored) - 1)) in stored[-1]
    (span,) = app.exporter.get_finished_spans()  # the span event carries the capped list too
    (event,) = span.events
    assert len(event.attributes[semconv.FAILURE_PREFIX + "constraints_violated"]) == len(row.constraints_violated)


def test_many_short_constraints_stop_at_the_item_cap(app: App) -> None:
    limits = Limits.from_env()
    prepared = app.fail(hof.FailureRecord(constraints_violated=[f"c{i}" for i in range(5_000)]))
    stored = prepared.constraints_violated  # type: ignore[union-attr]
    assert len(stored) == limits.max_items
    assert stored[:-1] == [f"c{i}" for i in range(limits.max_items - 1)]
    assert stored[-1].startswith(TRUNCATED_KEY) and str(5_000 - limits.max_items + 1) in stored[-1]


def test_tool_calls_and_judge_feedback_keep_the_newest_within_caps(app: App) -> None:
    limits = Limits.from_env()
    calls = [hof.ToolCallAttempt(tool_name=f"tool{i}", arguments={"q": "a" * 1000}, result="r" * 1000)
             for i in range(20_000)]
    verdicts = [hof.JudgeFeedback(attempt=i, action="RETRY", feedback="f" * 1000) for i in range(20_000)]
    t0 = time.perf_counter()
    app.fail(hof.FailureRecord(tool_calls=calls, judge_feedback=verdicts))
    assert time.perf_counter() - t0 < 1.0
    app.flush()
    (row,) = app.rows()
    assert 1 < len(row.tool_calls) <= limits.max_items and 1 < len(row.judge_feedback) <= limits.max_items
    # The calls and verdicts that led to the failure are the newest: they are kept; a marker says what went.
    assert row.tool_calls[-1].tool_name == "tool19999" and row.judge_feedback[-1].attempt == 19_999
    assert row.tool_calls[0].tool_name == TRUNCATED_KEY and str(20_000 - len(row.tool_calls) + 1) in str(
        row.tool_calls[0].result)
    assert row.judge_feedback[0].action == TRUNCATED_KEY
    assert str(20_000 - len(row.judge_feedback) + 1) in row.judge_feedback[0].feedback
    tools_json = json.dumps([t.model_dump(mode="json") for t in row.tool_calls])
    judge_json = json.dumps([j.model_dump(mode="json") for j in row.judge_feedback])
    assert len(tools_json) <= 4 * limits.max_field_bytes and len(judge_json) <= limits.max_field_bytes


def test_lists_within_caps_are_kept_whole_and_capping_twice_changes_nothing(app: App) -> None:
    record = hof.FailureRecord(constraints_violated=["a", "b"], tool_calls=[hof.ToolCallAttempt(tool_name="t")],
                               judge_feedback=[hof.JudgeFeedback(attempt=1, action="RETRY")])
    prepared = app.fail(record)
    assert prepared.constraints_violated == ["a", "b"] and len(prepared.tool_calls) == 1  # type: ignore[union-attr]
    capped = app.fail(hof.FailureRecord(constraints_violated=["x" * 1000] * 5000,
                                        tool_calls=[hof.ToolCallAttempt(tool_name="t", result="r" * 9000)] * 500))
    assert app.fail(capped) == capped  # record_failure returns prepared records; preparing again is a no-op


# --- records that cannot be indexed are counted ----------------------------------------------------

def test_record_failure_of_none_is_counted_and_never_raises(app: App) -> None:
    app.fail(None)
    app.fail("not a record")
    stats = app.flush()
    assert stats.written == 0 and stats.errors == 2
    (span, _) = app.exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR  # the caller said this span failed


@pytest.mark.parametrize("field", ["failure_id", "timestamp", "kind", "error_type", "error_message", "attempts",
                                   "judge_feedback", "constraints_violated", "criteria_unmet", "tool_calls",
                                   "evolution_triggered"])
def test_model_construct_with_a_none_field_is_indexed_with_the_default(app: App, field: str) -> None:
    record = hof.FailureRecord.model_construct(session_id="s1", agent_id="a", **{field: None})
    app.fail(record)
    stats = app.flush()
    assert (stats.written, stats.errors) == (1, 0)
    (row,) = app.rows()
    assert row.session_id == "s1" and getattr(row, field) is not None


def test_a_model_construct_record_that_cannot_be_indexed_is_counted(app: App) -> None:
    app.fail(hof.FailureRecord.model_construct(kind="no such kind"))
    app.fail(hof.FailureRecord.model_construct(tool_calls=[{"tool_name": "a dict, not a ToolCallAttempt"}]))
    app.fail(hof.FailureRecord(error_message="fine"))
    stats = app.flush()
    assert stats.written == 1 and accounted(stats) == 3


# --- timestamps --------------------------------------------------------------------------------------

BAD_TIMES = [datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, tzinfo=UTC),
             datetime(1, 1, 1, 3, tzinfo=timezone(timedelta(hours=5))), datetime(9999, 12, 31, 23, 59),
             datetime(1969, 12, 31, tzinfo=UTC), datetime(2300, 1, 1, tzinfo=UTC)]


@pytest.fixture
def otlp() -> Iterator[OTLPReceiver]:
    r = OTLPReceiver()
    yield r
    r.server.shutdown()


def _otlp_app(db: Path, receiver: OTLPReceiver) -> App:
    exporter = OTLPSpanExporter(endpoint=receiver.endpoint + "/v1/traces", timeout=5)
    return App(db, BatchSpanProcessor(exporter, max_export_batch_size=512, schedule_delay_millis=60_000))


def test_no_record_poisons_an_otlp_batch(db_path: Path, otlp: OTLPReceiver) -> None:
    """Out-of-range times, lone surrogates and huge attempts ride in the same batch as 20 good spans."""
    app = _otlp_app(db_path, otlp)
    bad = [hof.FailureRecord(timestamp=t) for t in BAD_TIMES] + [
        hof.FailureRecord(agent_id="agent\udc80", session_id="s\ud800", node_id="n\udfff", trace_id="t\udc00",
                          span_id="x\udc00", agent_version="v\udcff", fingerprint="fp\udc00", failure_id="id\udc00",
                          tool_calls=[hof.ToolCallAttempt(tool_name="tool\udc80")],
                          judge_feedback=[hof.JudgeFeedback(attempt=1, action="RETRY\udc80", judge_type="j\udc80")]),
        hof.FailureRecord(attempts=2**64), hof.FailureRecord(attempts=-(2**70)),
    ]
    for i in range(20):
        app.fail(hof.FailureRecord(session_id=f"good{i}"), name=f"good{i}")
    for i, record in enumerate(bad):
        app.fail(record, name=f"bad{i}")
    app.provider.shutdown()  # flushes the one batch
    exported = {s.name for s in otlp.spans()}
    assert exported == {f"good{i}" for i in range(20)} | {f"bad{i}" for i in range(len(bad))}
    stats = app.handle.stats()
    assert stats is not None and (stats.written, stats.errors) == (20 + len(bad), 0)


def test_out_of_range_timestamps_are_clamped_to_the_documented_range(app: App) -> None:
    low, high = datetime(1970, 1, 1, tzinfo=UTC), datetime(2262, 4, 11, 23, 47, 16, tzinfo=UTC)
    for t in BAD_TIMES:
        app.fail(hof.FailureRecord(session_id=t.isoformat(), timestamp=t))
    app.flush()
    by_session = {r.session_id: r.timestamp for r in app.rows()}
    expected = [low, high, low, high, low, high]
    assert [by_session[t.isoformat()] for t in BAD_TIMES] == expected
    events = [e for s in app.exporter.get_finished_spans() for e in s.events]
    assert [e.timestamp for e in events] == [int(t.timestamp()) * 10**9 for t in expected]
    assert "1970" in (hof.FailureRecord.__doc__ or "") + (hof.record_failure.__doc__ or "")


@pytest.fixture
def new_york() -> Iterator[None]:
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset is POSIX only")
    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


def test_a_naive_timestamp_is_utc_in_the_index_and_in_the_export(app: App, new_york: None) -> None:
    app.fail(hof.FailureRecord(timestamp=datetime(2024, 5, 1, 12, 0)))
    app.flush()
    noon_utc = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    (row,) = app.rows()
    assert row.timestamp == noon_utc
    (span,) = app.exporter.get_finished_spans()
    (event,) = span.events
    assert event.timestamp == int(noon_utc.timestamp()) * 10**9
    assert datetime.fromisoformat(event.attributes[semconv.FAILURE_PREFIX + "timestamp"]) == noon_utc


# --- text and numbers ----------------------------------------------------------------------------

def test_lone_surrogates_in_ids_tool_names_and_versions_are_replaced_and_stored(app: App) -> None:
    app.fail(hof.FailureRecord(agent_id="agent\udc80", session_id="s\ud800", node_id="n", agent_version="v\udcff",
                               tool_calls=[hof.ToolCallAttempt(tool_name="tool\udc80")],
                               judge_feedback=[hof.JudgeFeedback(attempt=1, action="RETRY", judge_type="j\ud800")]))
    stats = app.flush()
    assert (stats.written, stats.errors) == (1, 0)
    (row,) = app.rows()
    assert (row.agent_id, row.session_id, row.agent_version) == ("agent?", "s?", "v?")
    assert row.tool_calls[0].tool_name == "tool?" and row.judge_feedback[0].judge_type == "j?"
    assert row.node_id == "n"  # valid ids are kept verbatim


def test_nul_characters_are_replaced_not_where_the_stored_text_ends(app: App) -> None:
    app.fail(hof.FailureRecord(agent_id="agent\x00one", error_message="bad byte \x00 here", node_id="n",
                               traceback="line 1\x00line 2", constraints_violated=["no \x00 allowed"]))
    with app.tracer.start_as_current_span("run"):
        hof.record_run(hof.RunOutcome(session_id="s\x00", agent_id="agent\x00one", success=False))
    stats = app.flush()
    assert (stats.written, stats.runs_written, stats.errors) == (1, 1, 0)
    (row,) = app.rows()
    assert (row.agent_id, row.error_message) == ("agent\ufffdone", "bad byte \ufffd here")
    assert (row.traceback, row.constraints_violated) == ("line 1\ufffdline 2", ["no \ufffd allowed"])
    with hof.open_index(app.db, create=False) as index:
        assert index.stats(agent_id="agent\ufffdone").runs == 1


@pytest.mark.parametrize(("given", "kept"), [(-5, 0), (-(2**70), 0), (2**63, 2**31 - 1), (2**64 + 1, 2**31 - 1),
                                             (7, 7)])
def test_attempts_are_bounded(app: App, given: int, kept: int) -> None:
    app.fail(hof.FailureRecord(attempts=given))
    stats = app.flush()
    assert (stats.written, stats.errors) == (1, 0)
    (row,) = app.rows()
    assert row.attempts == kept


def test_run_outcomes_with_lone_surrogates_and_huge_counts_are_indexed(app: App) -> None:
    with app.tracer.start_as_current_span("run"):
        hof.record_run(hof.RunOutcome(session_id="s\udc80", agent_id="a\udc80", agent_version="v\ud800",
                                      success=False, failures=2**64))
    stats = app.flush()
    assert (stats.runs_written, stats.errors) == (1, 0)
    with hof.open_index(app.db, create=False) as index:
        assert index.stats(agent_id="a?").runs == 1


# --- disk full ---------------------------------------------------------------------------------------

DISK_FULL = textwrap.dedent("""
    import logging, os, resource, signal, sys
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    from opentelemetry.sdk.trace import TracerProvider
    import hive_otel_failures as hof

    db = sys.argv[1]
    provider = TracerProvider()
    handle = hof.configure(db=db, tracer_provider=provider)
    tracer = provider.get_tracer("app")

    def fail(i, size):
        with tracer.start_as_current_span("node"):
            hof.record_failure(hof.FailureRecord(session_id=f"s{i}", input_context={"doc": str(i) * size}))

    fail(0, 1)
    assert handle.force_flush(10_000)
    # No more room on the "disk" for the writer process: its writes past this size fail (EFBIG).
    largest = max(os.path.getsize(db + suffix) for suffix in ("", "-wal") if os.path.exists(db + suffix))
    writer = handle.processor._process.popen.pid
    resource.prlimit(writer, resource.RLIMIT_FSIZE, (largest + 50_000, resource.RLIM_INFINITY))
    for i in range(1, 21):
        fail(i, 30_000)
        handle.force_flush(10_000)
    s = handle.stats()
    print(s.written, s.errors, s.dropped)
""")


def _disk_full(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "HIVE_FAILURES"))}
    return subprocess.run([sys.executable, "-c", script, str(tmp_path / "failures.db")], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prlimit of another process is Linux's")
def test_a_full_disk_is_logged_as_itself_and_every_record_counted(tmp_path: Path) -> None:
    proc = _disk_full(DISK_FULL, tmp_path)
    assert proc.returncode == 0, proc.stderr
    written, errors, dropped = map(int, proc.stdout.split())
    assert errors > 0 and written + errors + dropped == 21
    assert "disk I/O error" in proc.stderr or "database or disk is full" in proc.stderr, proc.stderr


INDEX_FULL = textwrap.dedent("""
    import os, resource, signal, sys
    import hive_otel_failures as hof

    db = sys.argv[1]
    index = hof.open_index(db)
    index.add([hof.FailureRecord(session_id="s0")])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    largest = max(os.path.getsize(db + suffix) for suffix in ("", "-wal") if os.path.exists(db + suffix))
    resource.setrlimit(resource.RLIMIT_FSIZE, (largest + 50_000, resource.RLIM_INFINITY))
    for i in range(1, 21):
        try:
            index.add([hof.FailureRecord(session_id=f"s{i}", input_context={"doc": str(i) * 30_000})])
        except Exception as exc:
            print(type(exc).__name__, exc)
            break
""")


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_full_disk_raises_the_real_error_from_the_index(tmp_path: Path) -> None:
    proc = _disk_full(INDEX_FULL, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "disk I/O error" in proc.stdout and "cannot rollback" not in proc.stdout, proc.stdout
