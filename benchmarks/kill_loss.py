"""What a kill -9 under sustained load loses: records older than the writer's bound, missing.

A child process runs ``hof.configure(db=...)`` and records failures (1-4 KB of input
context each) on spans of a tracer at a steady rate, logging each record's id and the time
its span ended. The parent kills it and its index writer process with SIGKILL after
``--seconds`` (the application alone would lose nothing it handed over: its writer writes on)
and counts, in the index, the records that ended more than the bound before the kill and are
missing.

The bound is the flush interval (200 ms) plus one batch, and a batch is bounded by the
flush interval too: 400 ms. The child also logs every transaction of the writer, so the run
prints the longest transaction; a package whose writer ran in the application's process also
logs each transaction's oldest record, for the writer's lag (commit time minus that record's end).

    python benchmarks/kill_loss.py [--rates 2000,5000,7000] [--seconds 4] [--repeats 2] [--before REV]
                                   [--tree LABEL=DIR ...]

``--before REV`` runs the package as it was at git revision REV beside the working tree,
alternating, in the same run; ``--tree`` adds a package directory of your own (a prototype).
Prints figures; asserts nothing (the machine is shared and noisy). The test suite checks the
bound with wide margins (tests/test_processor.py).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLUSH_INTERVAL = 0.2  # FailureIndexProcessor's default schedule_delay_millis
BOUND = 2 * FLUSH_INTERVAL  # one flush interval plus one batch (itself bounded by one flush interval)
_WORDS = ("order", "customer", "total", "row", "invoice", "ACME", "currency", "EUR", "parse", "column",
          "missing", "value", "the", "of", "shipment", "42", "pending", "refund", "address", "line")


# --- child: the application under load -------------------------------------------------------
def _context(rng: random.Random, i: int) -> dict[str, object]:
    size = rng.randint(1024, 4096)
    words = []
    n = 0
    while n < size:
        word = rng.choice(_WORDS)
        words.append(word)
        n += len(word) + 1
    return {"row": i, "file": "orders.csv", "text": " ".join(words)}


def child(db: str, emit_log: str, writer_log: str, rate: float, seconds: float) -> None:
    import hive_otel_failures as hof
    from hive_otel_failures.index.store import FailureIndex

    key = "hive.failure.failure_id"
    wlog = open(writer_log, "a", buffering=1)  # a few lines a second: one write each
    # One line per writer transaction. The processor's writer prepares a batch on one thread and
    # writes it on another (a package from before that calls add_prepared, both in turn).
    prepare, write = getattr(FailureIndex, "prepare_batch", None), getattr(FailureIndex, "write_batch", None)
    add_prepared = FailureIndex.add_prepared
    ids_of: dict[int, list[int]] = {}

    def ids(failures):
        return [int(f[key].split("-")[1]) for f in failures if str(f.get(key, "")).startswith("k-")]

    def log(t0, t1, found):
        wlog.write(f"T {t0:.6f} {t1:.6f} {len(found)} {min(found, default=-1)} {max(found, default=-1)}\n")

    def prepared(self, failures, runs=()):
        failures = list(failures)
        batch = prepare(self, failures, runs)
        ids_of[id(batch)] = ids(failures)
        return batch

    def written(self, batch):
        t0 = time.monotonic()
        write(self, batch)
        log(t0, time.monotonic(), ids_of.pop(id(batch), []))

    def added(self, failures, runs=()):
        failures = list(failures)
        t0 = time.monotonic()
        count = add_prepared(self, failures, runs)
        if prepare is None:
            log(t0, time.monotonic(), ids(failures))
        return count

    if prepare is not None:
        FailureIndex.prepare_batch, FailureIndex.write_batch = prepared, written  # type: ignore[method-assign]
    FailureIndex.add_prepared = added  # type: ignore[method-assign]
    handle = hof.configure(db=db)
    assert handle.processor is not None and handle.processor.force_flush(30_000)
    processor = handle.processor

    def monitor() -> None:
        while True:
            s = processor.stats()
            wlog.write(f"S {time.monotonic():.6f} {s.queued} {s.dropped} {s.written}\n")
            time.sleep(0.05)

    threading.Thread(target=monitor, daemon=True).start()
    writer = getattr(processor, "_process", None)
    if writer is not None:  # a writer process of its own: its transactions as the processor hears of them
        learn = processor._learn

        def learned(size: int, seconds: float) -> None:
            now = time.monotonic()
            log(now - seconds, now, [-1] * size)  # one failure a span; which ones is not reported: no lag
            learn(size, seconds)

        processor._learn = learned  # type: ignore[method-assign]
    tracer = handle.tracer_provider.get_tracer("kill-loss")
    rng = random.Random(1)
    graphs = [{"id": f"agent-{a}", "nodes": [f"n{k}" for k in range(12)], "edges": [[k, k + 1] for k in range(11)]}
              for a in range(10)]
    fd = os.open(emit_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    print("ready", writer.popen.pid if writer is not None else 0, flush=True)
    t0 = time.monotonic()
    i = 0
    while True:
        due = min(int((time.monotonic() - t0) * rate), i + 200)  # steady rate; never a burst to catch up
        lines = []
        while i < due:
            with tracer.start_as_current_span(f"node n{i % 12}"):
                hof.record_failure(hof.FailureRecord(
                    failure_id=f"k-{i}", agent_id=f"agent-{i % 10}", node_id=f"n{i % 12}",
                    session_id=f"s-{i // 5}", error_type="builtins.ValueError",
                    error_message=f"could not parse row {i} of 'orders.csv'", attempts=1 + i % 3,
                    input_context=_context(rng, i), memory_snapshot={"step": i % 7, "buffer": ["a", "b"]},
                    graph_snapshot=graphs[i % 10]))
            lines.append(f"{i} {time.monotonic():.6f}\n")  # the span has ended: on_end has run
            i += 1
        if lines:
            os.write(fd, "".join(lines).encode())
        time.sleep(0.001)


# --- parent: kill and count ------------------------------------------------------------------
@dataclass
class Result:
    side: str
    rate: float
    emitted: int
    achieved: float
    missing: int
    lost_beyond_bound: int
    oldest_missing_ms: float
    max_txn_ms: float
    max_txn_records: int
    max_lag_ms: float
    p99_lag_ms: float
    queued_at_kill: int
    dropped: int


def run_once(side: str, pythonpath: Path, rate: float, seconds: float, tmp: Path) -> Result:
    n = len(list(tmp.iterdir()))
    db, emit_log, writer_log = (tmp / f"{side}-{n}.db"), tmp / f"{side}-{n}.emit", tmp / f"{side}-{n}.writer"
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER",
                "HIVE_FAILURES_QUEUE_SIZE"):
        env.pop(var, None)
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(db), str(emit_log), str(writer_log),
                             str(rate), str(seconds)], env=env, stdout=subprocess.PIPE, cwd=tmp)
    assert proc.stdout is not None
    ready, writer = proc.stdout.readline().split()
    assert ready == b"ready"
    time.sleep(seconds)
    if int(writer):  # the application and its writer process die together, as in a crash of the machine
        os.kill(int(writer), signal.SIGKILL)
    os.kill(proc.pid, signal.SIGKILL)
    kill_at = time.monotonic()
    proc.wait()
    emitted = {}
    for line in emit_log.read_text().splitlines():
        i, t = line.split()
        emitted[int(i)] = float(t)
    conn = sqlite3.connect(db)
    stored = {int(fid.split("-")[1]) for (fid,) in conn.execute("SELECT failure_id FROM failures")
              if fid.startswith("k-")}
    conn.close()
    missing = [kill_at - t for i, t in emitted.items() if i not in stored]
    txns, samples = [], []
    for line in writer_log.read_text().splitlines():
        parts = line.split()
        if parts[0] == "T" and len(parts) == 6:
            txns.append((float(parts[1]), float(parts[2]), int(parts[3]), int(parts[4])))
        elif parts[0] == "S" and len(parts) == 5:
            samples.append((int(parts[2]), int(parts[3])))
    lags = sorted(end - emitted[oldest] for _, end, _, oldest in txns if oldest in emitted)
    span = max(emitted.values()) - min(emitted.values()) if len(emitted) > 1 else 1.0
    return Result(side, rate, len(emitted), len(emitted) / span, len(missing),
                  sum(age > BOUND for age in missing), 1000 * max(missing, default=0.0),
                  1000 * max((end - start for start, end, _, _ in txns), default=0.0),
                  max((k for _, _, k, _ in txns), default=0),
                  1000 * (lags[-1] if lags else 0.0), 1000 * (lags[int(0.99 * (len(lags) - 1))] if lags else 0.0),
                  samples[-1][0] if samples else -1, samples[-1][1] if samples else -1)


def checkout(rev: str, into: Path) -> Path:
    """The package as it was at ``rev`` (git archive), importable from the returned directory."""
    archive = into / "before.tar"
    with open(archive, "wb") as f:
        subprocess.run(["git", "archive", rev, "hive_otel_failures"], cwd=ROOT, stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "before", filter="data")
    return into / "before"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="2000,5000,7000", help="failures per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=4.0, help="load before the kill")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--before", metavar="REV", help="also run the package at this git revision, alternating")
    parser.add_argument("--tree", metavar="LABEL=DIR", action="append", default=[],
                        help="also run the package found in DIR (a prototype, say), alternating")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        db, emit_log, writer_log, rate, seconds = args.child
        child(db, emit_log, writer_log, float(rate), float(seconds))
        return
    print(f"bound = flush interval {FLUSH_INTERVAL * 1000:.0f} ms + one batch {FLUSH_INTERVAL * 1000:.0f} ms "
          f"= {BOUND * 1000:.0f} ms; kill -9 after {args.seconds:g} s of load")
    print(f"{'side':6} {'rate/s':>7} {'got/s':>6} {'emitted':>7} {'missing':>7} {'>bound':>6} {'oldest ms':>9} "
          f"{'max txn ms':>10} {'max txn n':>9} {'lag p99':>7} {'lag max':>7} {'queued':>6} {'dropped':>7}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sides = {"after": ROOT}
        if args.before:
            sides = {"before": checkout(args.before, tmp), **sides}
        for tree in args.tree:
            label, _, path = tree.partition("=")
            sides[label] = Path(path).resolve()
        runs = tmp / "runs"
        runs.mkdir()
        results: list[Result] = []
        for rate in (float(r) for r in args.rates.split(",")):
            for r in range(args.repeats):
                order = list(sides) if r % 2 == 0 else list(reversed(sides))
                for side in order:
                    res = run_once(side, sides[side], rate, args.seconds, runs)
                    results.append(res)
                    print(f"{res.side:6} {res.rate:7.0f} {res.achieved:6.0f} {res.emitted:7d} {res.missing:7d} "
                          f"{res.lost_beyond_bound:6d} {res.oldest_missing_ms:9.0f} {res.max_txn_ms:10.0f} "
                          f"{res.max_txn_records:9d} {res.p99_lag_ms:7.0f} {res.max_lag_ms:7.0f} "
                          f"{res.queued_at_kill:6d} {res.dropped:7d}", flush=True)
        print("summary (worst of the repeats):")
        for side in sides:
            for rate in sorted({r.rate for r in results}):
                mine = [r for r in results if r.side == side and r.rate == rate]
                print(f"  {side:6} {rate:5.0f}/s: lost beyond {BOUND * 1000:.0f} ms "
                      f"{max(r.lost_beyond_bound for r in mine)}, oldest missing "
                      f"{max(r.oldest_missing_ms for r in mine):.0f} ms, longest transaction "
                      f"{max(r.max_txn_ms for r in mine):.0f} ms, writer lag max "
                      f"{max(r.max_lag_ms for r in mine):.0f} ms (median of maxima "
                      f"{statistics.median(r.max_lag_ms for r in mine):.0f} ms)")


if __name__ == "__main__":
    main()
