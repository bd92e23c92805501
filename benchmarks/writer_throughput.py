"""The index writer on realistic records: alone, against raw executemany, as the file grows,
beside a busy application thread, and at a steady load.

The records are those of benchmarks/queries.py (``_query_data``): 50 agents, 300 patterns,
1-4 KB of context and memory per failure, ~5 runs per failure. Prints figures; asserts nothing.

    python benchmarks/writer_throughput.py [--failures 100000] [--seconds 60] [--growth 1M]

1. Writer alone: the processor's writer draining the records queued as spans, and ``add_prepared``
   in batches of 512 failures and their runs on one thread, against bare ``executemany`` of
   exactly the rows add_prepared left behind (every table, counters included, triggers
   dropped), alternated ``--repeats`` times.
2. Growth (``--growth``): the processor's writer draining the stream in chunks as the file grows:
   failures/s per 100k from an empty file, bytes per failure, resident memory.
3. Beside a busy app thread, through a real TracerProvider and FailureIndexProcessor: the
   writer drains a full queue of failure spans and run outcomes (record_failure + 4 more runs
   per failure) with the app thread idle, then beside a thread that keeps making such spans
   (CPU-bound); and the app emitting through the processor as fast as it can for ``--seconds``.
4. Steady: 1,000 failures/s + 5,000 runs/s for ``--steady`` seconds: dropped, deepest queue.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import itertools
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import StatusCode

import hive_otel_failures as hof
from _query_data import BATCH, World, generate
from hive_otel_failures.record import from_attributes
from processor_overhead import raw_executemany, stored_rows, writer_cpu
from memory import rss_mb  # resident memory now, not the peak

TABLES = ("blob_z", "failures", "patterns", "failure_counts", "runs", "run_counts")
RUNS_PER_FAILURE_SPAN = 4  # successful runs emitted beside each failing one


def _outcome(run: Any) -> hof.RunOutcome:
    return hof.RunOutcome(session_id=run.session_id, agent_id=run.agent_id, agent_version=run.agent_version,
                          started_at=datetime.fromtimestamp(run.started, UTC),
                          ended_at=datetime.fromtimestamp(run.ended, UTC), success=run.success,
                          quality=run.quality, failures=len(run.failures))


def batches(n: int, seed: int = 11) -> Iterator[tuple[list[dict[str, Any]], list[hof.RunOutcome]]]:
    """The realistic stream in the writer's batches: 512 failures and the runs around them."""
    failures: list[dict[str, Any]] = []
    runs: list[hof.RunOutcome] = []
    for run in generate(World(time.time()), n, seed):
        runs.append(_outcome(run))
        failures.extend(run.failures)
        if len(failures) >= BATCH:
            yield failures, runs
            failures, runs = [], []
    if failures or runs:
        yield failures, runs


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _db_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())


_GROUPS = (("blobs (snapshots)", ("blob_z", "blobs", "sqlite_autoindex_blobs_1", "sqlite_autoindex_blob_z_1",
                                  "blob_dicts")),
           ("failures rows", ("failures",)),
           ("failures indexes", ("sqlite_autoindex_failures_1", "failures_ts", "failures_agent_ts", "failures_session",
                                 "failures_fp_ts")),
           ("runs rows + indexes", ("runs", "sqlite_autoindex_runs_1", "runs_agent_started")),
           ("counters, patterns, rest", None))


def size_breakdown(db: Path, n: int, indent: str = "   ") -> None:
    """Bytes per failure of the file (checkpointed), by what holds them: SQLite's dbstat pages."""
    import sqlite3

    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    try:
        pages = dict(conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall())
    except sqlite3.OperationalError:  # a SQLite built without dbstat: the total only
        pages = {}
    total = db.stat().st_size
    free = conn.execute("PRAGMA freelist_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]
    try:  # snapshots a writer that was behind stored as text, not compressed yet (it catches up once it keeps up)
        as_text, text_bytes = conn.execute("SELECT count(*), coalesce(sum(length(z)), 0) FROM blob_z "
                                           "WHERE substr(z, 1, 1) = x'ff'").fetchone()
    except sqlite3.OperationalError:  # a file from before blob_z
        as_text = text_bytes = 0
    conn.close()
    parts, seen = [], set()
    for label, names in _GROUPS:
        names = names or [k for k in pages if k not in seen]
        seen.update(names)
        parts.append(f"{label} {sum(pages.get(k, 0) for k in names) / n:,.0f}")
    print(f"{indent}file {total / n:,.0f} bytes per failure = " + " + ".join(parts)
          + (f" + free pages {free / n:,.0f}" if free else "")
          + (f"; of the snapshots, {as_text:,} ({text_bytes / n:,.0f} bytes per failure) are stored as text, "
             "not compressed yet" if as_text else ""))


# --- 1. alone vs raw executemany ------------------------------------------------------------------
def writer_vs_raw(n: int, repeats: int, tmp: Path) -> None:
    """Wall time, and this thread's CPU time (the writer's own work, whatever else the host runs)."""
    data = list(batches(n))
    n_runs = sum(len(r) for _, r in data)
    ours, raw, ours_cpu, raw_cpu, drained = [], [], [], [], []
    for r in range(repeats):
        db = tmp / f"ours-{r}.db"
        with hof.FailureIndex(db) as idx:
            gc.collect()
            t0, c0 = time.perf_counter(), time.thread_time()
            for failures, runs in data:
                idx.add_prepared(failures, runs)
            ours.append(time.perf_counter() - t0)
            ours_cpu.append(time.thread_time() - c0)
        rows = stored_rows(db, [t for t in TABLES if t != "blob_z"] + [_blob_table(db)])
        gc.collect()
        c0 = time.thread_time()
        raw.append(raw_executemany(tmp / f"raw-{r}.db", rows, n, BATCH))
        raw_cpu.append(time.thread_time() - c0)
        size = _db_bytes(db)
        if r == 0:
            with contextlib.redirect_stdout(io.StringIO()) as breakdown:
                size_breakdown(db, n)
        drained.append(processor_drain(data, tmp / f"drain-{r}.db"))
        for p in tmp.glob("*.db*"):
            p.unlink()
    o, w = statistics.median(ours), statistics.median(raw)
    oc, wc = statistics.median(ours_cpu), statistics.median(raw_cpu)
    d, dc = statistics.median(t for t, _ in drained), statistics.median(c for _, c in drained)
    print(f"1. writer alone, {n:,} failures + {n_runs:,} runs, batches of {BATCH} ({repeats} runs alternated, medians)")
    print(f"   the processor's writer    : {n / d:9,.0f} failures/s  ({n_runs / d:,.0f} runs/s)   target >= 15,000")
    print(f"   raw executemany, same rows: {n / w:9,.0f} failures/s  ratio writer/raw {w / d:.2f}   target >= 0.90")
    print(f"   add_prepared, one thread  : {n / o:9,.0f} failures/s  ratio {w / o:.2f}")
    print(f"   per CPU-second: the writer's two threads {n / dc:,.0f} failures/s (ratio {wc / dc:.2f}), add_prepared "
          f"{n / oc:,.0f} (ratio {wc / oc:.2f}), raw {n / wc:,.0f}")
    print("   (raw writes the rows as stored: snapshots already compressed, no trigger, no JSON)")
    print(f"   file: {size / n:,.0f} bytes per failure (runs and counters included, WAL as left)")
    print(breakdown.getvalue(), end="")


def queue_while_the_writer_waits(processor: hof.FailureIndexProcessor, spans: Iterable[Any]) -> None:
    """Hand ``spans`` to the processor while this thread keeps the GIL: a full queue, for its writer to drain."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1000)
    try:
        for span in spans:
            processor.on_end(span)
    finally:
        sys.setswitchinterval(interval)


def _as_spans(data: list[tuple[list[dict[str, Any]], list[hof.RunOutcome]]]) -> Iterator[Any]:
    """A failure as a span with its prepared hive.failure event, as record_failure leaves it; a run as a
    span with its hive.run event, timed as the run (the processor takes a run's times from its span)."""
    tracer = TracerProvider().get_tracer("bench")  # no processor: spans are made here, then handed over
    for failures, runs in data:
        for failure in failures:
            span = tracer.start_span("hive.node")
            span.add_event(hof.semconv.FAILURE_EVENT, {**failure, hof.semconv.FAILURE_PREPARED: True})
            span.set_status(StatusCode.ERROR)  # as record_failure leaves it: the processor looks in
            span.end()
            yield span
        for run in runs:
            span = tracer.start_span("hive.run", start_time=int(run.started_at.timestamp() * 1e9))
            hof.record_run(run, span)
            span.end(end_time=int(run.ended_at.timestamp() * 1e9))
            yield span


def processor_drain(data: list[tuple[list[dict[str, Any]], list[hof.RunOutcome]]], db: Path) -> tuple[float, float]:
    """The same records as spans, queued while the writer waits, then drained: (wall s, writer CPU s)."""
    provider, processor = _processor(db, queue=sum(len(f) + len(r) for f, r in data))
    queue_while_the_writer_waits(processor, _as_spans(data))
    gc.collect()
    clock = writer_cpu(processor)
    t0, c0 = time.perf_counter(), clock()
    processor.force_flush(600_000)
    elapsed, cpu = time.perf_counter() - t0, clock() - c0
    stats = processor.stats()
    assert stats.dropped == stats.errors == 0 and stats.written == sum(len(f) for f, _ in data), stats
    provider.shutdown()
    return elapsed, cpu


def _blob_table(db: Path) -> str:
    """blob_z (snapshots compressed, schema 4 on) or blobs (before): where the snapshots' rows are."""
    import sqlite3

    conn = sqlite3.connect(db)
    found = conn.execute("SELECT name FROM sqlite_master WHERE name = 'blob_z'").fetchone()
    conn.close()
    return "blob_z" if found else "blobs"


# --- 2. growth --------------------------------------------------------------------------------------
def _written_bytes(processor: hof.FailureIndexProcessor) -> int:
    """Bytes the writer process has handed to write() so far: the WAL's pages and the checkpoints' copies."""
    process = processor._process
    assert process is not None, "no writer process"
    with open(f"/proc/{process.popen.pid}/io") as io_counters:
        return next(int(line.split()[1]) for line in io_counters if line.startswith("wchar:"))


def growth(n: int, tmp: Path, step: int = 100_000, chunk: int = 20) -> None:
    """The processor's writer as the file grows, per ``step`` failures: failures/s, bytes, memory.

    The stream comes as spans, ``chunk`` batches (~10k failures) at a time, each queued while
    the writer waits and then drained (as in section 1), so the writer always has a backlog;
    only the drains are timed. Memory is read after each drain, with the chunk's spans freed:
    what the process keeps as the file grows. And the bytes written per failure: a batch's
    inserts into indexes on random keys (failure ids, snapshot keys) dirty a page each, so
    those grow with the file until each insert lands on a page of its own.
    """
    db = tmp / "growth.db"
    print(f"2. growth to {n:,} failures through the processor's writer: per {step:,}")
    print("   failures | failures/s in the step (per writer CPU-s) | bytes/failure | written/failure | "
          "RSS MB here (writer process)")
    provider, processor = _processor(db, queue=chunk * BATCH * 8)
    clock = writer_cpu(processor)
    done, spent, cpu, mark, written = 0, 0.0, 0.0, step, _written_bytes(processor)
    stream = batches(n, seed=5)
    while data := list(itertools.islice(stream, chunk)):
        queue_while_the_writer_waits(processor, _as_spans(data))
        gc.collect()
        t0, c0 = time.perf_counter(), clock()
        processor.force_flush(600_000)
        spent += time.perf_counter() - t0
        cpu += clock() - c0
        done += sum(len(failures) for failures, _ in data)
        if done >= mark or len(data) < chunk:
            gc.collect()
            in_step, now_written = done - mark + step, _written_bytes(processor)
            print(f"   {done:>8,} | {in_step / spent:>22,.0f} ({in_step / cpu:>7,.0f}) | "
                  f"{_db_bytes(db) / done:>13,.0f} | {(now_written - written) / in_step:>15,.0f} | "
                  f"{rss_mb():>6,.0f} ({rss_mb(processor._process.popen.pid):,.0f})", flush=True)
            spent, cpu, mark, written = 0.0, 0.0, mark + step, now_written
    stats = processor.stats()
    assert stats.dropped == stats.errors == 0 and stats.written == done, stats
    provider.shutdown()
    size_breakdown(db, done)
    for p in tmp.glob("growth.db*"):
        p.unlink()


# --- 3. beside a busy application thread ----------------------------------------------------------
class Emitter:
    """Failure spans and run outcomes as an application would make them, from a pool of records."""

    def __init__(self, provider: TracerProvider, pool: list[tuple[hof.FailureRecord, hof.RunOutcome]]) -> None:
        self.tracer = provider.get_tracer("bench")
        self.pool = pool
        self.i = 0

    def one(self) -> list[Any]:
        """One failing run and 4 successful ones; returns the 5 ended spans."""
        record, outcome = self.pool[self.i % len(self.pool)]
        self.i += 1
        tag = f"{self.i:016x}"
        spans = []
        span = self.tracer.start_span("hive.node")
        hof.record_failure(record.model_copy(update={"failure_id": f"{tag}{record.failure_id[16:]}",
                                                     "session_id": f"{outcome.session_id}-{tag}"}), span)
        hof.record_run(outcome.model_copy(update={"session_id": f"{outcome.session_id}-{tag}"}), span)
        span.end()
        spans.append(span)
        for k in range(RUNS_PER_FAILURE_SPAN):
            span = self.tracer.start_span("hive.run")
            hof.record_run(outcome.model_copy(update={"session_id": f"ok-{tag}-{k}", "success": True,
                                                      "failures": 0}), span)
            span.end()
            spans.append(span)
        return spans


def _pool(size: int = 4096) -> list[tuple[hof.FailureRecord, hof.RunOutcome]]:
    pool = []
    for failures, runs in batches(size, seed=3):
        by_session = {r.session_id: r for r in runs}
        pool += [(from_attributes(f), by_session[f[hof.semconv.FAILURE_PREFIX + "session_id"]]) for f in failures]
    return pool


def _processor(db: Path, queue: int) -> tuple[TracerProvider, hof.FailureIndexProcessor]:
    provider = TracerProvider()
    processor = hof.FailureIndexProcessor(str(db), max_queue_size=queue)
    provider.add_span_processor(processor)
    processor.force_flush()
    return provider, processor


def drain(pool: list[tuple[hof.FailureRecord, hof.RunOutcome]], tmp: Path, failures: int, rounds: int,
          busy: bool) -> tuple[float, float, float]:
    """Failures/s the writer indexes from a full queue, with the app thread idle or busy; and the
    writer thread's CPU per failure (µs) and its CPU-seconds per second of the drain (medians).

    The spans are made first (on a provider without the processor) and queued while the
    writer waits; busy, a thread keeps making such spans, CPU-bound, until the queue is drained.
    The writer's CPU tells its own cost (which the host's load hardly changes) from its waiting
    (for the GIL, or for a core on a shared host).
    """
    rates, costs, shares = [], [], []
    maker = TracerProvider()  # no processor: spans are made and ended here, then handed over
    emitter = Emitter(maker, pool)
    for r in range(rounds):
        spans = [s for _ in range(failures) for s in emitter.one()]
        provider, processor = _processor(tmp / f"drain-{busy}-{r}.db", queue=len(spans))
        queue_while_the_writer_waits(processor, spans)
        stop = threading.Event()
        app = threading.Thread(target=lambda: [emitter.one() for _ in iter(stop.is_set, True)], daemon=True)
        clock = writer_cpu(processor)
        t0, c0 = time.perf_counter(), clock()
        if busy:
            app.start()
        processor.force_flush(600_000)
        elapsed, cpu = time.perf_counter() - t0, clock() - c0
        rates.append(processor.stats().written / elapsed)
        costs.append(cpu / processor.stats().written * 1e6)
        shares.append(cpu / elapsed)
        stop.set()
        if busy:
            app.join()
        assert processor.stats().dropped == 0
        provider.shutdown()
    return statistics.median(rates), statistics.median(costs), statistics.median(shares)


def flat_out(pool: list[tuple[hof.FailureRecord, hof.RunOutcome]], tmp: Path, seconds: float) -> dict[str, float]:
    """The app thread emits through the processor as fast as it can: made, indexed, dropped."""
    provider, processor = _processor(tmp / "flat-out.db", queue=10_000)
    emitter = Emitter(provider, pool)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        emitter.one()
    elapsed = time.perf_counter() - t0
    stats = processor.stats()
    processor.force_flush(600_000)
    provider.shutdown()
    return {"made": emitter.i / elapsed, "written": stats.written / elapsed,
            "runs_written": stats.runs_written / elapsed, "dropped": stats.dropped}


def steady(pool: list[tuple[hof.FailureRecord, hof.RunOutcome]], tmp: Path, seconds: float,
           failures_per_s: int = 1000) -> dict[str, float]:
    """Failures (with 5 runs each) paced at ``failures_per_s``, in 10 ms ticks."""
    provider, processor = _processor(tmp / "steady.db", queue=10_000)
    emitter = Emitter(provider, pool)
    deepest, tick = 0, 0.01
    per_tick = failures_per_s * tick
    t0 = time.perf_counter()
    due = 0.0
    while (now := time.perf_counter()) - t0 < seconds:
        due = (now - t0) * failures_per_s
        while emitter.i < due:
            emitter.one()
        deepest = max(deepest, processor.stats().queued)
        time.sleep(max(0.0, t0 + (emitter.i + per_tick) / failures_per_s - time.perf_counter()))
    elapsed = time.perf_counter() - t0
    processor.force_flush(600_000)
    stats = processor.stats()
    provider.shutdown()
    return {"failures_per_s": emitter.i / elapsed, "dropped": stats.dropped, "deepest": deepest,
            "written": stats.written, "runs_written": stats.runs_written}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--failures", type=int, default=100_000, help="failures in section 1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--growth", default="", help="e.g. 1M: section 2 up to that many failures")
    parser.add_argument("--drain", type=int, default=10_000, help="section 3: failures queued per drain")
    parser.add_argument("--seconds", type=float, default=60, help="section 3: the app emitting flat out")
    parser.add_argument("--steady", type=float, default=30, help="section 4: seconds at 1k failures/s")
    parser.add_argument("--only", default="1234", help="sections to run, e.g. 34")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "1" in args.only:
            writer_vs_raw(args.failures, args.repeats, tmp)
        if "2" in args.only and args.growth:
            growth(int(float(args.growth.rstrip("kKmM")) * {"k": 1e3, "m": 1e6}.get(args.growth[-1].lower(), 1)), tmp)
        pool = _pool() if set(args.only) & {"3", "4"} else []
        if "3" in args.only:
            quiet = drain(pool, tmp, failures=args.drain, rounds=3, busy=False)
            busy = drain(pool, tmp, failures=args.drain, rounds=3, busy=True)
            flat = flat_out(pool, tmp, args.seconds)
            print(f"3. the writer draining {args.drain:,} queued failures (+{RUNS_PER_FAILURE_SPAN + 1} runs each), "
                  "medians of 3")
            ratio = f"   ratio {busy[0] / quiet[0]:.2f}   target >= 0.80"
            for label, (rate, cost, share), tail in (("app thread idle         ", quiet, ""),
                                                     ("beside a busy app thread", busy, ratio)):
                print(f"   {label} : {rate:9,.0f} failures/s   writer {cost:5.0f} us CPU a failure, ran {share:.2f} "
                      f"CPU-s/s{tail}")
            print(f"   app emitting through the processor as fast as it can for {args.seconds:.0f} s: made "
                  f"{flat['made']:,.0f} failures/s, indexed {flat['written']:,.0f}/s ({flat['runs_written']:,.0f} "
                  f"runs/s), {flat['dropped']:,} spans dropped")
        if "4" in args.only:
            s = steady(pool, tmp, args.steady)
            print(f"4. steady {s['failures_per_s']:,.0f} failures/s + {5 * s['failures_per_s']:,.0f} runs/s for "
                  f"{args.steady:.0f} s: {s['dropped']:,} dropped (target 0), deepest queue {s['deepest']:,} spans; "
                  f"{s['written']:,} failures and {s['runs_written']:,} runs written")
        print(f"max RSS {_rss_mb():,.0f} MB")


if __name__ == "__main__":
    main()
