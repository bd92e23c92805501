"""Issue 13's reliability figures, each beside the same run without our processor, in one run.

    python benchmarks/reliability.py [--quick] [--protocols grpc,http/protobuf] [--calls 20000]
                                     [--storm-seconds 10] [--kill-rate 7000] [--rev REV]

1. Shutdown with OTLP export on and the collector down (a closed loopback port): the time
   ``Handle.shutdown()`` takes after 600 failure spans (tests/test_export_down.py's app), and
   what was counted as not exported. Target <= 5 s, everything counted.
2. The app thread's block per failure (start a span, ``record_failure`` with 1-4 KB of
   context and memory, end it), collector down: perf_counter_ns per call over many calls in a
   tight loop, once the index is open; max, p99, calls over 5 ms, each slow call put down to a
   gen-2 garbage collection (timed with gc.callbacks), the GIL (the thread slept: voluntary
   context switches, RUSAGE_THREAD), the OS (only involuntary switches: the machine's other
   load) or its own CPU. Target: max <= 5 ms on our account.
3. Storm: 4 threads recording such failures for 10 s, starting right after ``configure()``
   (no export), then ``Handle.shutdown()``: emitted, indexed (rows in the index), dropped,
   indexed share (target >= 80%), what was written while the threads ran, peak RSS.
4. kill -9 at 7k failures/s (benchmarks/kill_loss.py): records that ended more than one flush
   interval plus one batch before the kill and are missing (the rate reached is printed). Target 0.
5. ``record_failure`` with one 10 MB field (prose, one random token, JSON key-value lines,
   a traceback), collector down. Target <= 20 ms per call.

"Without our processor" is the plain OTel SDK: a TracerProvider with the SDK's
BatchSpanProcessor and the OTLP exporter built from the same OTEL_* settings (no index, no
content policy, no bounded shutdown), running the same application code. Its exporter is
wrapped to count outcomes (the SDK itself counts nothing). Each run is a fresh interpreter
with the environment the tests use. Wall-clock figures on a shared machine are noisy: run
twice before believing a difference. ``--quick`` takes under a minute, the default about two.
``--rev REV`` measures the package as committed at REV (kill_loss.checkout) instead of the working tree.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from array import array
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests
sys.path.insert(0, str(Path(__file__).resolve().parent))  # kill_loss
import kill_loss

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import hive_otel_failures as hof
from hive_otel_failures.bootstrap import HandleStats
from hive_otel_failures.export import BatchSettings, _Ledger, otlp_exporter_from_env
from tests.test_bootstrap import run_app
from tests.test_export_down import APP as SHUTDOWN_APP
from tests.test_export_down import down

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OURS, PLAIN = "ours", "plain"
PACKAGE = ROOT  # where the children import hive_otel_failures from (--rev: an export of that revision)
BLOCK_MS = 5.0
CAUSES = ("gc2", "slept", "preempted", "ran")  # why a call was slow: see block()
MB10 = 10 * 1024 * 1024


class PlainHandle:
    """What configure() sets up, minus this package: the SDK's batch processor and the same OTLP exporter.

    Shaped like a Handle (tracer_provider, exporting, shutdown, stats) so that the same app code runs on it.
    """

    processor = None
    index_location = None

    def __init__(self) -> None:
        settings = BatchSettings.from_env()
        exporter = otlp_exporter_from_env(settings)
        self.tracer_provider = TracerProvider()
        self.exporting = exporter is not None
        self.ledger = None if exporter is None else _Ledger(exporter)  # passes every call through, counting
        if self.ledger is not None:
            self.tracer_provider.add_span_processor(BatchSpanProcessor(self.ledger, **asdict(settings)))
        trace.set_tracer_provider(self.tracer_provider)

    def shutdown(self, timeout: float | None = None) -> None:  # the SDK's shutdown takes no timeout
        self.tracer_provider.shutdown()

    def stats(self) -> HandleStats:
        ledger = self.ledger
        done = 0 if ledger is None else ledger.exported + ledger.failed
        return HandleStats(queued=0, written=0, runs_written=0, dropped=0, errors=0,
                           spans_exported=0 if ledger is None else ledger.exported,
                           spans_unexported=0 if ledger is None else ledger.failed,
                           spans_pending_export=0 if ledger is None else ledger.handed - done)


def run_child(code: str, side: str, env: dict[str, str], tmp: Path, timeout: float = 120) -> dict:
    """Run app code (which calls ``hof.configure()``) in a fresh interpreter on one side; its last line, as JSON."""
    if side == PLAIN:
        assert "hof.configure()" in code
        code = "from reliability import PlainHandle\n" + code.replace("hof.configure()", "PlainHandle()")
    code = f"import sys; sys.path[:0] = {[str(PACKAGE), str(HERE), str(ROOT)]!r}\n" + code
    home = Path(tempfile.mkdtemp(prefix=f"{side}-", dir=tmp))
    proc = run_app(env, home, code, timeout)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"{side} child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measured(function: str, **kwargs: object) -> str:
    """App code calling one of this module's measurements on ``hof.configure()``'s handle."""
    return (f"import hive_otel_failures as hof\nimport reliability\n"
            f"reliability.{function}(hof.configure(), **{kwargs!r})\n")


def report(result: dict) -> None:
    """The child's answer to the parent; no atexit shutdown after it (the SDK's takes 15 s with the collector down)."""
    print(json.dumps(result), flush=True)
    os._exit(0)


# --- the app's failures ----------------------------------------------------------------------------

def payload_texts(n: int = 256) -> list[str]:
    rng = random.Random(1)
    return [kill_loss._context(rng, i)["text"] for i in range(n)]  # 1-4 KB of words each


def realistic_record(texts: list[str], i: int, thread: int = 0) -> hof.FailureRecord:
    """A failure with 1-4 KB of content split between input context and memory, distinct for each i."""
    text = texts[(7 * i + thread) % len(texts)]
    cut = len(text) * 3 // 4
    return hof.FailureRecord(
        agent_id=f"agent-{i % 10}", node_id=f"n{i % 12}", session_id=f"s-{thread}-{i // 5}",
        error_type="builtins.ValueError", error_message=f"could not parse row {i} of 'orders.csv'",
        attempts=1 + i % 3, input_context={"row": i, "file": "orders.csv", "text": text[:cut]},
        memory_snapshot={"step": i % 7, "thread": thread, "notes": text[cut:]})


class Gen2Pauses:
    """Gen-2 collections (perf_counter_ns start, end), from gc.callbacks, on any thread."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, int]] = []
        self._start = 0

    def __enter__(self) -> Gen2Pauses:
        gc.callbacks.append(self._on_gc)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if info.get("generation") == 2:
            if phase == "start":
                self._start = time.perf_counter_ns()
            else:
                self.pauses.append((self._start, time.perf_counter_ns()))

    def overlaps(self, t0: int, t1: int) -> bool:
        return any(a < t1 and b > t0 for a, b in self.pauses)


# --- measurements, each run in a child on one side -------------------------------------------------

def block(handle: object, calls: int) -> None:
    """Figure 2: wall time of each failure span on the app thread, and why a slow one was slow.

    A slow call (> 5 ms) overlapped a gen-2 collection, or the thread slept in it (voluntary context
    switches: waiting for the GIL, held by another thread of the process), or it was only preempted
    by the OS (involuntary switches: the machine's other load), or it ran that long on its own CPU.
    """
    tracer = handle.tracer_provider.get_tracer("reliability")  # type: ignore[attr-defined]
    texts = payload_texts()
    if handle.processor is not None:  # type: ignore[attr-defined]
        handle.processor.force_flush(30_000)  # type: ignore[attr-defined]  # the index open: a running app
    for i in range(200):  # warm-up: imports, first export attempts
        with tracer.start_as_current_span("node"):
            hof.record_failure(realistic_record(texts, i))
    starts, walls, cpus, slept, preempted = array("q"), array("q"), array("q"), array("q"), array("q")
    clock, cpu_clock, usage, me = time.perf_counter_ns, time.thread_time_ns, resource.getrusage, resource.RUSAGE_THREAD
    with Gen2Pauses() as gc2:
        for i in range(calls):
            record = realistic_record(texts, i)
            u0 = usage(me)
            c0, t0 = cpu_clock(), clock()
            with tracer.start_as_current_span("node"):
                hof.record_failure(record)
            t1, c1 = clock(), cpu_clock()
            u1 = usage(me)
            starts.append(t0)
            walls.append(t1 - t0)
            cpus.append(c1 - c0)
            slept.append(u1.ru_nvcsw - u0.ru_nvcsw)
            preempted.append(u1.ru_nivcsw - u0.ru_nivcsw)
    limit = int(BLOCK_MS * 1e6)

    def why(k: int) -> str:
        if gc2.overlaps(starts[k], starts[k] + walls[k]):
            return "gc2"
        return "slept" if slept[k] else "preempted" if preempted[k] else "ran"

    slow = {k: why(k) for k, w in enumerate(walls) if w > limit}
    ordered = sorted(walls)
    slowest = sorted(range(calls), key=walls.__getitem__)[-5:][::-1]
    report({"calls": calls, "p50_ms": ordered[len(ordered) // 2] / 1e6,
            "p99_ms": ordered[int(0.99 * (calls - 1))] / 1e6, "max_ms": ordered[-1] / 1e6, "over": len(slow),
            **{f"over_{cause}": sum(c == cause for c in slow.values()) for cause in CAUSES},
            "max_slept_ms": max((walls[k] for k, c in slow.items() if c == "slept"), default=0) / 1e6,
            "max_outside_gc2_ms": max((w for k, w in enumerate(walls) if why(k) != "gc2"), default=0) / 1e6,
            "gc2": len(gc2.pauses), "gc2_max_ms": max((b - a for a, b in gc2.pauses), default=0) / 1e6,
            "slowest": [(walls[k] / 1e6, cpus[k] / 1e6, why(k)) for k in slowest],
            **asdict(handle.stats())})  # type: ignore[attr-defined]


def storm(handle: object, seconds: float, threads: int) -> None:
    """Figure 3: ``threads`` threads record failures as fast as they can for ``seconds``, then shutdown."""
    tracer = handle.tracer_provider.get_tracer("reliability")  # type: ignore[attr-defined]
    texts = payload_texts()
    stop = threading.Event()
    emitted = [0] * threads

    def emit(t: int) -> None:
        i = 0
        while not stop.is_set():
            record = realistic_record(texts, i, t)
            with tracer.start_as_current_span("node"):
                hof.record_failure(record)
            i += 1
        emitted[t] = i

    first_write: list[float] = []

    def monitor(t0: float) -> None:  # when the writer first wrote (it opens the index as the storm starts)
        while not stop.is_set() and not first_write:
            if handle.stats().written:  # type: ignore[attr-defined]
                first_write.append(time.perf_counter() - t0)
            time.sleep(0.02)

    workers = [threading.Thread(target=emit, args=(t,)) for t in range(threads)]
    started = time.perf_counter()
    for w in workers + [threading.Thread(target=monitor, args=(started,), daemon=True)]:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    at_stop = handle.stats()  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    handle.shutdown()  # type: ignore[attr-defined]
    shutdown_s = time.perf_counter() - t0
    after = handle.stats()  # type: ignore[attr-defined]
    rows = 0
    if handle.index_location:  # type: ignore[attr-defined]
        conn = sqlite3.connect(f"file:{handle.index_location}?mode=ro", uri=True)  # type: ignore[attr-defined]
        rows = conn.execute("SELECT count(*) FROM failures").fetchone()[0]
        conn.close()
    report({"emitted": sum(emitted), "queued_at_stop": at_stop.queued, "written_at_stop": at_stop.written,
            "first_write_s": first_write[0] if first_write else None, "shutdown_s": shutdown_s,
            "rows": rows, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **asdict(after)})


def big_values() -> dict[str, object]:
    """Ten MB in one field, four shapes a real failure can carry."""
    rng = random.Random(2)
    prose = " ".join(rng.choice(kill_loss._WORDS) for _ in range(MB10 // 5))[:MB10]
    token = rng.randbytes(MB10 * 3 // 4).hex()[:MB10]
    line = '{"user_id": 1234, "api_key": "sk-%s", "max_tokens": 1024}\n' % ("a1B2" * 8)
    pairs = line * (MB10 // len(line))
    frames = "".join(f'  File "/app/agent/node_{i}.py", line {i}, in run\n    {prose[i:i + 60]}\n'
                     for i in range(2000))
    trace_text = (frames * (MB10 // len(frames) + 1))[:MB10]
    return {"error_message: prose": dict(error_message=prose),
            "input_context: one token": dict(input_context={"doc": token}),
            "memory_snapshot: JSON lines": dict(memory_snapshot={"log": pairs}),
            "traceback": dict(traceback=trace_text)}


def big_field(handle: object, repeats: int) -> None:
    """Figure 5: one span and record_failure with a 10 MB field, per shape; and bare OTel's add_event of it."""
    tracer = handle.tracer_provider.get_tracer("reliability")  # type: ignore[attr-defined]
    times: dict[str, list[float]] = {}
    bare: list[float] = []
    for name, fields in big_values().items():
        for _ in range(repeats):
            record = hof.FailureRecord(error_type="builtins.MemoryError", **fields)
            gc.collect()
            t0 = time.perf_counter()
            with tracer.start_as_current_span("node"):
                hof.record_failure(record)
            times.setdefault(name, []).append(1000 * (time.perf_counter() - t0))
        value = next(iter(fields.values()))
        value = json.dumps(value) if isinstance(value, dict) else value
        t0 = time.perf_counter()
        with tracer.start_as_current_span("node") as span:
            span.add_event("raw", {"value": value})
        bare.append(1000 * (time.perf_counter() - t0))
    report({"times_ms": times, "bare_ms": max(bare)})


# --- the parent ----------------------------------------------------------------------------------

def both(code_for: object, env: dict[str, str], tmp: Path, timeout: float = 120) -> dict[str, dict]:
    return {side: run_child(code_for, side, env, tmp, timeout) for side in (OURS, PLAIN)}  # type: ignore[arg-type]


def fig_shutdown(protocol: str, tmp: Path) -> dict[str, dict]:
    code = SHUTDOWN_APP.replace("sys.argv[1]", "600").replace("sys.argv[2]", "-1")  # handle.shutdown() as is
    return both(code, down(protocol), tmp)


def fig_kill(rate: float, seconds: float, repeats: int, tmp: Path) -> list[kill_loss.Result]:
    runs = tmp / "kill"
    runs.mkdir()
    return [kill_loss.run_once(OURS, PACKAGE, rate, seconds, runs) for _ in range(repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about a minute: fewer calls, shorter storm and kill")
    parser.add_argument("--protocols", help="OTLP protocols for the shutdown figure (default grpc,http/protobuf)")
    parser.add_argument("--protocol", default="grpc", help="OTLP protocol for the block and 10 MB figures")
    parser.add_argument("--calls", type=int, help="failure spans timed per side (default 20000; quick 5000)")
    parser.add_argument("--storm-seconds", type=float, help="default 10 (quick 3)")
    parser.add_argument("--kill-rate", type=float, default=7000.0, help="failures per second before the kill -9")
    parser.add_argument("--rev", help="measure the package as it was at this git revision (default: the working tree)")
    args = parser.parse_args()
    global PACKAGE
    q = args.quick
    protocols = (args.protocols or ("grpc" if q else "grpc,http/protobuf")).split(",")
    calls = args.calls or (5000 if q else 20000)
    storm_s = args.storm_seconds or (3.0 if q else 10.0)
    kill_s, kill_repeats, big_repeats = (2.0, 1, 1) if q else (4.0, 2, 3)
    rows: list[tuple[str, str, str, str]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.rev:
            PACKAGE = kill_loss.checkout(args.rev, tmp)
        print(f"package: {args.rev or 'working tree'}; {os.cpu_count()} CPUs, load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
        for protocol in protocols:
            r = fig_shutdown(protocol, tmp)
            o, p = r[OURS], r[PLAIN]
            print(f"[1] shutdown, collector down ({protocol}), 600 failure spans: ours {o['shutdown_s']:.2f} s "
                  f"(exported {o['spans_exported']}, unexported {o['spans_unexported']}, pending "
                  f"{o['spans_pending_export']}, indexed {o['written']}, slowest span end "
                  f"{1000 * o['slowest_end_s']:.1f} ms); plain {p['shutdown_s']:.2f} s (exporter calls: exported "
                  f"{p['spans_exported']}, failed {p['spans_unexported']}; slowest span end "
                  f"{1000 * p['slowest_end_s']:.1f} ms)", flush=True)
            rows.append((f"1 shutdown, collector down, {protocol}", f"{o['shutdown_s']:.2f} s",
                         f"{p['shutdown_s']:.2f} s", "<= 5 s"))
            rows.append(("  counted as not exported (of 600)", f"{o['spans_unexported']} counted",
                         f"0 counted ({600 - p['spans_exported']} lost)", "all counted"))

        r = both(measured("block", calls=calls), down(args.protocol), tmp)
        for side in (OURS, PLAIN):
            b = r[side]
            print(f"[2] app-thread block, collector down ({args.protocol}), {b['calls']} failure spans, {side}: "
                  f"p50 {b['p50_ms']:.3f} ms, p99 {b['p99_ms']:.2f} ms, max {b['max_ms']:.1f} ms; {b['over']} over "
                  f"{BLOCK_MS:g} ms: {b['over_gc2']} in a gen-2 GC, {b['over_slept']} slept (GIL; longest "
                  f"{b['max_slept_ms']:.1f} ms), {b['over_preempted']} only preempted by the OS, {b['over_ran']} on "
                  f"their own CPU; {b['gc2']} gen-2 GCs, longest {b['gc2_max_ms']:.1f} ms"
                  + (f"; indexed meanwhile {b['written']}, dropped {b['dropped']}, spans refused or failed by the "
                     f"export {b['spans_unexported']}" if side == OURS else "")
                  + "; slowest calls (wall/thread CPU ms, why): " + ", ".join(
                      f"{w:.1f}/{c:.1f} {cause}" for w, c, cause in b["slowest"]), flush=True)
        o, p = r[OURS], r[PLAIN]
        rows += [("2 app-thread block per call: max", f"{o['max_ms']:.1f} ms", f"{p['max_ms']:.1f} ms", "<= 5 ms"),
                 ("  p99", f"{o['p99_ms']:.2f} ms", f"{p['p99_ms']:.2f} ms", ""),
                 (f"  calls > {BLOCK_MS:g} ms (of {calls})", str(o["over"]), str(p["over"]), "0"),
                 ("  max outside gen-2 GC pauses", f"{o['max_outside_gc2_ms']:.1f} ms",
                  f"{p['max_outside_gc2_ms']:.1f} ms", "<= 5 ms"),
                 ("  > 5 ms, waiting for the GIL: count, max", f"{o['over_slept']}, {o['max_slept_ms']:.1f} ms",
                  f"{p['over_slept']}, {p['max_slept_ms']:.1f} ms", "0"),
                 ("  gen-2 GC pauses: count, longest", f"{o['gc2']}, {o['gc2_max_ms']:.1f} ms",
                  f"{p['gc2']}, {p['gc2_max_ms']:.1f} ms", "")]

        r = both(measured("storm", seconds=storm_s, threads=4), {}, tmp)
        o, p = r[OURS], r[PLAIN]
        unaccounted = o["emitted"] - o["written"] - o["dropped"] - o["errors"] - o["queued"]
        first = "never" if o["first_write_s"] is None else f"after {o['first_write_s']:.2f} s"
        print(f"[3] storm, 4 threads x {storm_s:g} s from configure(), no export: ours emitted {o['emitted']}, "
              f"indexed {o['rows']} (stats: written {o['written']}, dropped {o['dropped']}, errors {o['errors']}, "
              f"still queued after shutdown {o['queued']}, unaccounted {unaccounted}); during the storm: first write "
              f"{first}, written {o['written_at_stop']}, queued at the end {o['queued_at_stop']}; shutdown "
              f"{o['shutdown_s']:.2f} s, peak RSS {o['rss_mb']:.0f} MB; plain emitted {p['emitted']}, peak RSS "
              f"{p['rss_mb']:.0f} MB", flush=True)
        share = o["rows"] / o["emitted"] if o["emitted"] else 0.0
        rows += [(f"3 storm 4 x {storm_s:g} s: emitted", str(o["emitted"]), str(p["emitted"]), ""),
                 ("  indexed / dropped", f"{o['rows']} / {o['dropped']}", "- (no index)", ""),
                 ("  written while the threads ran", str(o["written_at_stop"]), "-", ""),
                 ("  indexed share", f"{100 * share:.0f} %", "-", ">= 80 %"),
                 ("  peak RSS", f"{o['rss_mb']:.0f} MB", f"{p['rss_mb']:.0f} MB", "bounded")]

        results = fig_kill(args.kill_rate, kill_s, kill_repeats, tmp)
        for k in results:
            print(f"[4] kill -9 after {kill_s:g} s at {k.rate:.0f}/s (got {k.achieved:.0f}/s): emitted {k.emitted}, "
                  f"missing {k.missing}, lost beyond {kill_loss.BOUND * 1000:.0f} ms {k.lost_beyond_bound}, oldest "
                  f"missing {k.oldest_missing_ms:.0f} ms, longest transaction {k.max_txn_ms:.0f} ms "
                  f"({k.max_txn_records} records), writer lag max {k.max_lag_ms:.0f} ms, dropped {k.dropped}",
                  flush=True)
        worst = max(results, key=lambda k: k.lost_beyond_bound)
        rows.append((f"4 kill -9 at {args.kill_rate:.0f}/s: lost older than {kill_loss.BOUND * 1000:.0f} ms",
                     f"{worst.lost_beyond_bound} of {worst.emitted}", "all (no index)", "0"))

        r = both(measured("big_field", repeats=big_repeats), down(args.protocol), tmp)
        for side in (OURS, PLAIN):
            times = r[side]["times_ms"]
            print(f"[5] 10 MB field, {side}: " + "; ".join(
                f"{name} {statistics.median(t):.1f} ms (max {max(t):.1f})" for name, t in times.items())
                + f"; bare span.add_event of the raw field {r[side]['bare_ms']:.1f} ms", flush=True)
        o, p = (max(max(t) for t in r[side]["times_ms"].values()) for side in (OURS, PLAIN))
        rows.append(("5 10 MB field: record_failure, max", f"{o:.1f} ms", f"{p:.1f} ms", "<= 20 ms"))

    width = [max(len(row[c]) for row in rows + [("figure", "ours", "without our processor", "target")])
             for c in range(4)]
    print()
    for row in [("figure", "ours", "without our processor", "target")] + rows:
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, width)).rstrip())
    print(f"({time.monotonic() - started:.0f} s; wall-clock figures on a shared machine: noisy)")


if __name__ == "__main__":
    main()
