"""Failure spans per second through ``hive-failures ingest``, into SQLite and into PostgreSQL.

    python benchmarks/ingest.py [--failures 100000] [--producers 4] [--protocol http/protobuf]

Producers are separate processes. Each first records its failures (reliability.realistic_record:
1-4 KB of context and memory) on the plain OpenTelemetry SDK, untimed: that is the
application's cost, on the application's hosts. Then, all together, each hands its spans in
batches of 512 (as the SDK's batch processor does) to the SDK's own ``OTLPSpanExporter``
(http/protobuf or grpc), which sends them to the ingest on loopback, retrying when the ingest
answers 429/503. The figure is failures indexed per second, from "go" to the last row
committed (the ingest's /stats), checked against the rows in the index.

Side by side, in the same run: the local path, the same producers each handing the same spans
to a ``FailureIndexProcessor`` that writes a SQLite file of its own (what each host does
without a central index). PostgreSQL is a throwaway server started here (tests/pg_server.py:
initdb and pg_ctl in a temp dir; as ``nobody`` under root). Target (issue 10): >= 5,000
failure spans/s into PostgreSQL. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

from tests.pg_server import PostgresServer, find_bindir, free_port  # noqa: E402

EXPORTED = "exported"  # the producer's mode: plain SDK + OTLP exporter
LOCAL = "local"  # the producer's mode: hof.configure(), its own SQLite index

PRODUCER = """
import os, sys
sys.path[:0] = {paths!r}
import reliability
import hive_otel_failures as hof
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
mode, first, count, thread = {mode!r}, {first}, {count}, {thread}
# Untimed: the application's part, recording the failures (spans kept in memory).
memory = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(memory))
tracer = provider.get_tracer("producer")
texts = reliability.payload_texts()
for i in range(first, first + count):
    with tracer.start_as_current_span("node"):
        hof.record_failure(reliability.realistic_record(texts, i, thread))
spans = memory.get_finished_spans()
if mode == "exported":
    if os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    exporter = OTLPSpanExporter()
else:
    processor = hof.FailureIndexProcessor(max_queue_size=len(spans))
    assert processor.force_flush(60_000)
print("ready", flush=True)
sys.stdin.readline()
# Timed: the exporter's batches (as the SDK's batch processor hands them over), or the local processor.
if mode == "exported":
    for start in range(0, len(spans), 512):
        assert exporter.export(spans[start:start + 512]).name == "SUCCESS", "an export failed"
else:
    for span in spans:
        processor.on_end(span)
    assert processor.force_flush(600_000) and processor.stats().dropped == 0
print("done", flush=True)
os._exit(0)
"""


def ingest_stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as response:
        return json.load(response)


def start_ingest(db: str, tmp: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    port, grpc_port = free_port(), free_port()
    log = open(tmp / f"ingest-{port}.log", "wb")  # noqa: SIM115 - the server's lifetime
    server = subprocess.Popen([shutil.which("hive-failures") or "hive-failures", "ingest", "--db", db, "--port",
                               str(port), "--grpc-port", str(grpc_port)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ingest_stats(port)
            return server, port, grpc_port
        except OSError:
            if server.poll() is not None:
                raise RuntimeError((tmp / f"ingest-{port}.log").read_text()) from None
            time.sleep(0.1)
    raise RuntimeError("the ingest did not start")


def run_producers(mode: str, failures: int, producers: int, env: dict[str, str], tmp: Path) -> float:
    """Producers record their failures, then go together; seconds from "go" until all are done."""
    each = failures // producers
    procs = []
    for n in range(producers):
        home = tmp / f"{mode}-{n}"
        home.mkdir(exist_ok=True)
        code = PRODUCER.format(paths=[str(ROOT), str(HERE)], mode=mode, first=n * each, count=each, thread=n)
        procs.append(subprocess.Popen([sys.executable, "-c", code], env={**env, "HIVE_HOME": str(home)},
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    for proc in procs:
        if proc.stdout.readline().strip() != "ready":  # type: ignore[union-attr]
            raise RuntimeError(f"a producer failed:\n{proc.communicate()[1][-3000:]}")
    started = time.monotonic()
    for proc in procs:
        proc.stdin.write("go\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
    for proc in procs:
        out, err = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"a producer failed ({proc.returncode}):\n{err[-3000:]}")
    return time.monotonic() - started


def through_ingest(db: str, failures: int, producers: int, protocol: str, tmp: Path) -> dict:
    server, port, grpc_port = start_ingest(db, tmp)
    try:
        endpoint = f"http://127.0.0.1:{grpc_port if protocol == 'grpc' else port}"
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
               "OTEL_SDK_DISABLED": "false"}
        sent = run_producers(EXPORTED, failures, producers, env, tmp)
        started = time.monotonic() - sent
        while True:  # acknowledged means committed; the last batches may still be in flight
            stats = ingest_stats(port)
            if stats["indexed"]["failures"] + stats["duplicates"]["failures"] >= failures or \
                    time.monotonic() - started > 3600:
                break
            time.sleep(0.05)
        seconds = time.monotonic() - started
    finally:
        server.terminate()
        server.wait(60)
    return {"seconds": seconds, "indexed": stats["indexed"]["failures"],
            "duplicates": stats["duplicates"]["failures"], "rejected": stats.get("rejected")}


def rows(db: str) -> int:
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db) as conn:
            return conn.execute("SELECT count(*) FROM failures").fetchone()[0]
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM failures").fetchone()[0]


def local_path(failures: int, producers: int, tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_EXPORTER_OTLP")}
    env.pop("HIVE_FAILURES_DB", None)
    seconds = run_producers(LOCAL, failures, producers, env, tmp)
    indexed = sum(rows(str(tmp / f"{LOCAL}-{n}" / "failures.db")) for n in range(producers))
    return {"seconds": seconds, "indexed": indexed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--failures", type=int, default=100_000)
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--protocol", default="http/protobuf", choices=("http/protobuf", "grpc"))
    args = parser.parse_args()
    failures = args.failures - args.failures % args.producers
    bindir = find_bindir()
    if bindir is None:
        sys.exit("no PostgreSQL binaries (initdb, pg_ctl): install postgresql")
    print(f"{failures} failures of 1-4 KB from {args.producers} producer processes ({args.protocol}); "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    results: dict[str, dict] = {}
    server = PostgresServer(bindir).start()
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            targets = {"ingest -> SQLite": str(tmp / "central.db"), "ingest -> PostgreSQL": server.database()}
            for name, db in targets.items():
                result = through_ingest(db, failures, args.producers, args.protocol, tmp)
                result["rows"] = rows(db)
                results[name] = result
                print(f"{name}: {result}", flush=True)
            results["local processors -> own SQLite files"] = local_path(failures, args.producers, tmp)
    finally:
        server.stop()
    print(f"\n{'path':<40} {'failures/s':>11} {'rows':>9} {'seconds':>8}")
    for name, r in results.items():
        print(f"{name:<40} {r['indexed'] / r['seconds']:>11.0f} {r.get('rows', r['indexed']):>9} {r['seconds']:>8.1f}")
    print("target: ingest -> PostgreSQL >= 5,000 failure spans/s")


if __name__ == "__main__":
    main()
