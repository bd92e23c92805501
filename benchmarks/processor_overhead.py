"""Cost of FailureIndexProcessor on the application thread, and its writer throughput.

Prints figures; asserts nothing (the machines are shared and noisy). Ratios are measured
side by side in one run, rounds interleaved, medians reported.

    python benchmarks/processor_overhead.py [--spans 100000] [--rounds 50] [--records 20000]

Targets: plain spans <= 1.05x, failure spans <= 1.10x, writer >= 0.7x of raw executemany of
the same rows (the failures, their content blobs and pattern rows the writer leaves behind).
"""

from __future__ import annotations

import argparse
import gc
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import hive_otel_failures as hof
from hive_otel_failures.index.schema import MIGRATIONS
try:
    from hive_otel_failures.index.sqlite import register
except ImportError:  # a package from before schema 4 (a baseline measured beside this one)
    def register(conn: sqlite3.Connection, target: str) -> None:
        return None
from hive_otel_failures.record import prepare


class DiscardExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def make_pipeline(with_index: bool, db: Path, delay_millis: int | None = None,
                  ) -> tuple[TracerProvider, hof.FailureIndexProcessor | None]:
    """A BatchSpanProcessor pipeline, with or without the index processor (default delays unless given)."""
    delay = {} if delay_millis is None else {"schedule_delay_millis": delay_millis}
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DiscardExporter(), max_queue_size=100_000, **delay))
    processor = None
    if with_index:
        processor = hof.FailureIndexProcessor(str(db), max_queue_size=100_000, **delay)
        provider.add_span_processor(processor)
    return provider, processor


def make_spans(tracer, records: list[hof.FailureRecord] | None, n: int) -> None:
    """The measured work: ``n`` plain spans, or one failure span per record."""
    if records is not None:
        for record in records:
            with tracer.start_as_current_span("node") as span:
                hof.record_failure(record, span)
    else:
        for _ in range(n):
            with tracer.start_as_current_span("node") as span:
                span.set_attribute("k", 1)


def sample_record(i: int) -> hof.FailureRecord:
    return hof.FailureRecord(
        agent_id="report-agent", node_id=f"node{i % 5}", session_id=f"session_{i % 200}",
        error_type="builtins.ValueError", error_message=f"could not parse row {i} of 'orders.csv'", attempts=3,
        input_context={"customer": "ACME", "row": i}, graph_snapshot={"id": "report-agent", "nodes": ["a", "b"]},
        judge_feedback=[hof.JudgeFeedback(attempt=1, action="RETRY", feedback="total missing")],
    )


def time_block(tracer, records: list[hof.FailureRecord] | None, n: int) -> float:
    """CPU seconds per span on the calling thread (the application's) for one block of spans.

    Thread CPU time, not wall time: on a shared host, time the thread spends descheduled
    belongs to neither side and swamps a few percent of difference.
    """
    gc.collect()
    gc.disable()  # as timeit does: a collection would land on whichever side happens to run then
    t0 = time.thread_time()
    make_spans(tracer, records, n)
    elapsed = time.thread_time() - t0
    gc.enable()
    return elapsed / n


def app_thread_overhead(spans: int, rounds: int, tmp: Path) -> dict[str, float]:
    """Both pipelines live side by side; short blocks alternate between them, medians compared."""
    results: dict[str, float] = {}
    for failing in (False, True):
        pipelines = {with_index: make_pipeline(with_index, tmp / f"app-{failing}.db") for with_index in (False, True)}
        block = max(1, spans // rounds // (10 if failing else 1))
        records = [prepare(sample_record(i)) for i in range(block)] if failing else None
        times: dict[bool, list[float]] = {False: [], True: []}
        for r in range(rounds + 1):
            order = (False, True) if r % 2 == 0 else (True, False)
            for with_index in order:
                cost = time_block(pipelines[with_index][0].get_tracer("bench"), records, block)
                if r:  # round 0 warms both up
                    times[with_index].append(cost)
        for provider, _ in pipelines.values():
            provider.shutdown()
        label = "failure" if failing else "plain"
        base, ours = statistics.median(times[False]), statistics.median(times[True])
        results[f"{label}_base_us"], results[f"{label}_with_index_us"] = base * 1e6, ours * 1e6
        results[f"{label}_ratio"] = ours / base
    return results


def _stored_columns(conn: sqlite3.Connection, table: str) -> str:
    """The columns a table stores (a generated column such as blobs.content is computed, not written)."""
    return ", ".join(name for _, name, *_, hidden in conn.execute(f"PRAGMA table_xinfo({table})") if hidden == 0)


def stored_rows(db: Path, tables: Sequence[str] = ("failures", "blobs", "patterns")) -> dict[str, list[tuple]]:
    """Exactly the rows our writer left in the database, table by table, as stored (blobs compressed)."""
    conn = sqlite3.connect(db)
    rows = {t: conn.execute(f"SELECT {_stored_columns(conn, t)} FROM {t}").fetchall() for t in tables}
    conn.close()
    return rows


def raw_executemany(db: Path, rows: dict[str, list[tuple]], n: int, batch: int) -> float:
    """Seconds to write the same rows with bare sqlite3 executemany, same schema and pragmas.

    Triggers are dropped: the counters they would keep are among the rows written.
    """
    conn = sqlite3.connect(db, isolation_level=None)
    register(conn, str(db))  # the schema's functions (blobs.content); the rows come compressed
    conn.execute("PRAGMA page_size = 8192")  # as the index makes a new file
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    for migration in MIGRATIONS:
        conn.executescript(migration)
    for (trigger,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {trigger}")
    conn.execute("DELETE FROM run_counts")
    columns = {t: _stored_columns(conn, t) for t in rows}
    per_batch = {t: max(1, len(r) * batch // n) for t, r in rows.items()}
    t0 = time.perf_counter()
    for i in range(0, n // batch + 1):
        conn.execute("BEGIN")
        for table, table_rows in rows.items():
            chunk = table_rows[i * per_batch[table] : (i + 1) * per_batch[table]]
            if chunk:
                conn.executemany(f"INSERT INTO {table} ({columns[table]}) VALUES ({', '.join('?' * len(chunk[0]))})",
                                 chunk)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed


def writer_cpu(processor: hof.FailureIndexProcessor) -> Callable[[], float]:
    """The CPU seconds so far of the processor's writer: its sender thread here and its writer process (Linux)."""
    (sender,) = [t for t in threading.enumerate() if t.name == "hive-failures-sender" and t.is_alive()]
    clock = time.pthread_getcpuclockid(sender.ident)  # type: ignore[arg-type]
    process = processor._process
    assert process is not None, "no writer process"
    tasks = Path(f"/proc/{process.popen.pid}/task")

    def seconds() -> float:
        spent = 0
        for task in tasks.iterdir():  # each thread's time on a CPU, in ns (schedstat's first field)
            try:
                spent += int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                pass  # a thread that ended
        return time.clock_gettime(clock) + spent / 1e9

    return seconds


def _ours_once(records: list[hof.FailureRecord], db: Path,
               alone: bool) -> tuple[float, float, float, hof.ProcessorStats]:
    """Failure spans through the processor, timed until everything is on disk.

    ``alone``: this thread keeps the GIL until every record is queued, so the writer then
    drains the queue on its own, as raw executemany runs on its own. Otherwise the writer
    works while this thread is still queueing, as beside a CPU-bound application; sqlite3
    hands the GIL over around every statement step.

    Returns (wall s, process CPU s, writer-thread CPU s, stats): the process CPU includes
    ``on_end`` on this thread, already counted in the application-thread figures above.
    """
    provider, processor = make_pipeline(True, db)
    assert processor is not None
    processor.force_flush()
    writer_clock = writer_cpu(processor)
    tracer = provider.get_tracer("bench")
    spans = []
    for record in records:
        span = tracer.start_span("node")
        hof.record_failure(record, span)
        spans.append(span)
    gc.collect()
    gc.disable()
    interval = sys.getswitchinterval()
    if alone:
        sys.setswitchinterval(1000)
    w0, c0, t0 = time.perf_counter(), time.process_time(), writer_clock()
    for span in spans:
        processor.on_end(span)  # the span's own end() would also feed the batch exporter; keep it out
    sys.setswitchinterval(interval)
    processor.force_flush(120_000)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    writer_seconds = writer_clock() - t0
    gc.enable()
    stats = processor.stats()
    provider.shutdown()
    return wall, cpu, writer_seconds, stats


def _raw_once(db: Path, rows: dict[str, list[tuple]], n: int, batch: int) -> tuple[float, float]:
    gc.collect()
    gc.disable()
    c0 = time.process_time()
    wall = raw_executemany(db, rows, n, batch)
    cpu = time.process_time() - c0
    gc.enable()
    return wall, cpu


def writer_throughput(n: int, tmp: Path, batch: int = 512, repeats: int = 5) -> dict[str, float]:
    """Ours and raw executemany of the same rows, alternated ``repeats`` times; medians, in records/s."""
    records = [prepare(sample_record(i)) for i in range(n)]
    runs: dict[str, list[tuple[float, ...]]] = {"ours": [], "ours_busy": [], "raw": [], "raw_failures_only": []}
    stats = None
    for r in range(repeats):
        *clocks, _ = _ours_once(records, tmp / f"writer-busy-{r}.db", alone=False)
        runs["ours_busy"].append(tuple(clocks))
        *clocks, stats = _ours_once(records, tmp / f"writer-{r}.db", alone=True)
        runs["ours"].append(tuple(clocks))
        rows = stored_rows(tmp / f"writer-{r}.db")  # exactly the rows our writer left behind
        runs["raw"].append(_raw_once(tmp / f"raw-{r}.db", rows, n, batch))
        runs["raw_failures_only"].append(_raw_once(tmp / f"raw-f-{r}.db", {"failures": rows["failures"]}, n, batch))
    assert stats is not None
    rate = {name: [n / statistics.median(clock) for clock in zip(*results)] for name, results in runs.items()}
    return {"ours_wall": rate["ours"][0], "ours_cpu": rate["ours"][1], "ours_writer_cpu": rate["ours"][2],
            "ours_busy_writer_cpu": rate["ours_busy"][2],
            "raw_wall": rate["raw"][0], "raw_cpu": rate["raw"][1],
            "raw_failures_only_wall": rate["raw_failures_only"][0],
            "written": stats.written, "dropped": stats.dropped, "blob_rows": len(rows["blobs"]),
            "pattern_rows": len(rows["patterns"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=100_000, help="plain spans per side (failure spans: a tenth)")
    parser.add_argument("--rounds", type=int, default=50, help="alternating blocks per side")
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--writer-only", action="store_true", help="skip the application-thread figures")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        app = None if args.writer_only else app_thread_overhead(args.spans, args.rounds, tmp)
        writer = writer_throughput(args.records, tmp)
    if app is not None:
        print(f"plain span   : {app['plain_base_us']:.2f} us -> {app['plain_with_index_us']:.2f} us with the "
              f"processor  ratio {app['plain_ratio']:.3f}  (target <= 1.05)")
        print(f"failure span : {app['failure_base_us']:.2f} us -> {app['failure_with_index_us']:.2f} us with the "
              f"processor  ratio {app['failure_ratio']:.3f}  (target <= 1.10)")
    ours, raw = writer["ours_writer_cpu"], writer["raw_cpu"]
    print(f"writer       : {ours:.0f} records/s of writer-thread CPU vs raw executemany {raw:.0f} rows/s of CPU"
          f"  ratio {ours / raw:.3f}  (target >= 0.70)")
    busy = writer["ours_busy_writer_cpu"]
    print(f"  beside a busy app thread: {busy:.0f} records/s of writer-thread CPU  ratio {busy / raw:.3f}")
    for clock in ("wall", "cpu"):
        ours, raw = writer[f"ours_{clock}"], writer[f"raw_{clock}"]
        print(f"end to end {clock:>4}: {ours:.0f} records/s (on_end + writer, until on disk) vs raw {raw:.0f} rows/s"
              f"  ratio {ours / raw:.3f}")
    print(f"               same rows = {writer['written']} failures + {writer['blob_rows']} content blobs + "
          f"{writer['pattern_rows']} patterns, {writer['dropped']} dropped; raw executemany of the failures rows "
          f"alone: {writer['raw_failures_only_wall']:.0f} rows/s (wall)")


if __name__ == "__main__":
    main()
