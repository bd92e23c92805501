"""Query latency of the failure index at 10k/100k/1M failures, beside a scan of the same spans as OTLP JSON lines.

Prints figures; asserts nothing (the machines are shared and noisy).

    python benchmarks/queries.py [--sizes 10k,100k,1M] [--rebuild] [--repeats 20] [--build-only]
                                 [--backend sqlite|postgresql|both]

``--backend postgresql`` (or ``both``, one table with the two side by side) starts a throwaway PostgreSQL
server (tests/pg_server.py; nothing cached), builds the same data (the SQLite cache's, to the same end time,
when both) into a fresh database through the same add_prepared batches, prints its failures/s, runs
VACUUM (ANALYZE) (what autovacuum does to insert-only tables sooner or later), then the same calls. A query
whose p50 misses its target is called once more under auto_explain and its plan printed (--explain-ms).

Targets (issue): on 1M failures and 5M runs, advise() <= 100 ms, patterns(since=...) <= 100 ms,
stats() <= 100 ms, diagnose() <= 50 ms, each MCP tool call <= 150 ms round trip; and keep the
write path's cost (the build's add_prepared throughput: compare it before and after a change,
e.g. ``--sizes 100k --rebuild --build-only`` on each side).

The data (see _query_data.py): 50 agents, 300 patterns (uneven, a long tail), 3-4 versions per
agent, ~5 runs per failure, 30 days ending at build time, 1-4 KB of context per failure. It is
built through ``FailureIndex.add_prepared`` in batches of 512 (as the processor's writer) and
written as OTLP JSON lines (as the Collector's file exporter, content stripped as by default);
both are cached under benchmarks/.cache keyed by size and generator version. A cached index
opened by newer code is migrated in place. Windows such as since="7d" count back from now, so an
old cache has fewer failures in them: --rebuild.

Query timings are wall time of warm calls (the file in the page cache after a warm-up call), p50
and p95 over --repeats calls (fewer when a call takes over a second). The file scans run a few
times at 10k/100k and once at 1M. To measure a commit other than the working tree, run with
PYTHONPATH pointing at an export of it (``git archive <commit> hive_otel_failures | tar -x -C d``,
a ``d/COMMIT`` file naming it); the build figures say which code wrote each cache.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import os
import shutil
import sqlite3
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent))  # tests.pg_server; after PYTHONPATH (an export)
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _query_data as data

from hive_otel_failures import semconv
from hive_otel_failures.index import FailureIndex
from hive_otel_failures.index import open_index as hof_open_index
from hive_otel_failures.index.schema import LATEST_VERSION

TARGET_MS = {"patterns(since=7d)": 100, "stats()": 100, "stats(agent)": 100, "advise()": 100, "advise(agent)": 100,
             "diagnose(fp)": 50}
MCP_TARGET_MS = 150
N_A = "n/a (not in this version)"


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Seconds per call after one warm-up call; fewer repeats for calls over a second."""
    t0 = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t0
    n = repeats if first < 1 else max(3, min(repeats, int(10 / first)))
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - t0)
    return samples, result


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:9.1f}" if ms < 10_000 else f"{ms:9.0f}"


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


# --- the queries ---------------------------------------------------------------------------------------------
def query_plan(idx: FailureIndex, meta: dict[str, Any]) -> list[tuple[str, str, Callable[[], Any] | None]]:
    """(label, method, call) per query; call None when this version of the index lacks the method."""
    agent = meta["agents"][0]  # the busiest agent
    systematic = [p for p in idx.patterns(agent_id=agent, limit=20) if not p.transient]
    frequent = systematic[0].fingerprint if systematic else idx.patterns(limit=1)[0].fingerprint
    resolved = meta["resolved"][0]["fingerprint"] if meta["resolved"] else frequent
    meta["picked"] = {"agent": agent, "frequent_fp": frequent, "resolved_fp": resolved}

    def has(name: str) -> bool:
        return callable(getattr(idx, name, None))

    plan: list[tuple[str, str, Callable[[], Any] | None]] = [
        ("patterns(since=7d)", "patterns", lambda: idx.patterns(since="7d")),
        ("patterns()", "patterns", lambda: idx.patterns()),
        ("stats()", "stats", lambda: idx.stats()),
        ("stats(agent)", "stats", lambda: idx.stats(agent_id=agent)),
        ("advise()", "advise", lambda: idx.advise()),
        ("advise(agent)", "advise", lambda: idx.advise(agent_id=agent)),
        ("diagnose(fp)", "diagnose", lambda: idx.diagnose(frequent)),
        ("fix_effect(fp)", "fix_effect", lambda: idx.fix_effect(resolved)),
        ("recent(limit=20)", "recent", lambda: idx.recent(limit=20)),
    ]
    return [(label, name, call if has(name) else None) for label, name, call in plan]


def run_queries(idx: FailureIndex, meta: dict[str, Any], repeats: int) -> dict[str, tuple[float, float] | str]:
    results: dict[str, tuple[float, float] | str] = {}
    print(f"  {'query':<22}{'p50 ms':>9}{'p95 ms':>9}{'n':>4}  target")
    for label, _, call in query_plan(idx, meta):
        target = f"<= {TARGET_MS[label]} ms" if label in TARGET_MS else ""
        if call is None:
            results[label] = N_A
            print(f"  {label:<22}{N_A:>22}  {target}")
            continue
        try:
            samples, _ = timed(call, repeats)
        except Exception as exc:  # noqa: BLE001 - print what broke and go on with the others
            results[label] = f"error: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"[:100]
            print(f"  {label:<22}  {results[label]}")
            continue
        p50, p95 = results[label] = percentiles(samples)
        print(f"  {label:<22}{fmt_ms(p50)}{fmt_ms(p95)}{len(samples):>4}  {target}")
    return results


# --- the same group-bys by scanning the OTLP file ----------------------------------------------------------------
_FP, _SESSION, _KIND, _NODE = (semconv.FAILURE_PREFIX + k for k in ("fingerprint", "session_id", "kind", "node_id"))


def _value(v: dict[str, Any]) -> Any:
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in v:
            return v[key]
    if "intValue" in v:
        return int(v["intValue"])
    return v


def _events(path: Path):
    """(event name, time in s, attributes) of every span event, one json.loads per line."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            for rs in json.loads(line)["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    for span in ss["spans"]:
                        for ev in span.get("events", ()):
                            yield ev["name"], int(ev["timeUnixNano"]) / 1e9, ev.get("attributes", ())


def scan_patterns(path: Path, since: float) -> dict[float, list[tuple[str, int, int]]]:
    """patterns(since=...): failures and distinct sessions per fingerprint, most frequent first.

    Counted from ``since`` and, to check indexes whose windows start at the top of an hour,
    from the top of since's hour too (one pass, keyed by the start).
    """
    starts = (since, since // 3600 * 3600)
    count: dict[tuple[float, str], int] = defaultdict(int)
    sessions: dict[tuple[float, str], set[str]] = defaultdict(set)
    for name, ts, attrs in _events(path):
        if name != semconv.FAILURE_EVENT or ts < starts[1]:
            continue
        a = {kv["key"]: kv["value"] for kv in attrs}
        fp = a[_FP]["stringValue"]
        for start in starts:
            if ts >= start:
                count[start, fp] += 1
                if _SESSION in a:
                    sessions[start, fp].add(a[_SESSION]["stringValue"])
    return {start: sorted(((fp, n, len(sessions[s, fp])) for (s, fp), n in count.items() if s == start),
                          key=lambda r: -r[1]) for start in starts}


def scan_stats(path: Path) -> dict[str, Any]:
    """stats(): runs, failed runs, failure rate, failures, sessions with failures, patterns, by node, by kind."""
    runs = failed = failures = 0
    sessions, fps = set(), set()
    by_node: dict[Any, int] = defaultdict(int)
    by_kind: dict[Any, int] = defaultdict(int)
    for name, _, attrs in _events(path):
        if name == semconv.RUN_EVENT:
            runs += 1
            for kv in attrs:
                if kv["key"] == semconv.RUN_OUTCOME:
                    failed += kv["value"]["stringValue"] == "failure"
        elif name == semconv.FAILURE_EVENT:
            a = {kv["key"]: _value(kv["value"]) for kv in attrs}
            failures += 1
            sessions.add(a.get(_SESSION))
            fps.add(a[_FP])
            by_node[a.get(_NODE)] += 1
            by_kind[a.get(_KIND)] += 1
    return {"runs": runs, "failed_runs": failed, "failure_rate": failed / runs if runs else None,
            "failures": failures, "sessions": len(sessions), "patterns": len(fps), "by_node": dict(by_node),
            "by_kind": dict(by_kind)}


def compare_scan(idx: FailureIndex, otlp: Path, results: dict[str, Any], scan_repeats: int) -> None:
    since = time.time() - 7 * 86400
    print(f"  {'group-by':<22}{'index p50':>11}{'file scan':>12}{'scan/index':>12}  scans  same answer?")
    for label, scan, index_call in (
        ("patterns(since=7d)", lambda: scan_patterns(otlp, since),
         lambda: idx.patterns(since=datetime.fromtimestamp(since, UTC))),
        ("stats()", lambda: scan_stats(otlp), lambda: idx.stats()),
    ):
        samples = []
        for _ in range(scan_repeats):
            t0 = time.perf_counter()
            scanned = scan()
            samples.append(time.perf_counter() - t0)
        scan_s = statistics.median(samples)
        indexed = results.get(label)
        answer = index_call()
        if isinstance(answer, list):
            exact, hourly = (sum({fp: (n, s) for fp, n, s in rows}.get(p.fingerprint) == (p.count, p.sessions)
                                 for p in answer) for rows in scanned.values())
            check = (f"{exact} of the index's {len(answer)} rows equal the scan's from since, {hourly} from the "
                     f"top of its hour ({len(scanned[since])} fingerprints)")
        else:
            same = (answer.runs, answer.failed_runs, answer.failures, answer.patterns) == (
                scanned["runs"], scanned["failed_runs"], scanned["failures"], scanned["patterns"])
            check = (f"runs/failed/failures/patterns {'equal' if same else 'DIFFER'} "
                     f"({scanned['runs']:,} / {scanned['failed_runs']:,} / {scanned['failures']:,} / "
                     f"{scanned['patterns']})")
        if isinstance(indexed, tuple):
            print(f"  {label:<22}{fmt_ms(indexed[0])} ms{fmt_ms(scan_s)} ms{scan_s / indexed[0]:>11.0f}x"
                  f"  {len(samples):>5}  {check}")
        else:
            print(f"  {label:<22}{'-':>11}{fmt_ms(scan_s)} ms{'':>12}  {len(samples):>5}  {check}")


# --- MCP tools over stdio ----------------------------------------------------------------------------------------
def mcp_arguments(meta: dict[str, Any], idx: FailureIndex) -> dict[str, dict[str, Any] | str]:
    picked = meta["picked"]
    failure_id = idx.recent(limit=1)[0].failure_id
    return {
        "failure_patterns": {"since": "7d"}, "recent_failures": {"limit": 20},
        "failure_detail": {"failure_id": failure_id}, "evolution_advice": {},
        "diagnose_failure": {"fingerprint": picked["frequent_fp"]},
        "fix_effect": {"fingerprint": picked["resolved_fp"]},
        "failure_stats": {}, "record_resolution": "skipped: it writes to the cached index",
    }


async def _mcp_round_trips(db: Path | str, arguments: dict[str, dict[str, Any] | str],
                           repeats: int) -> dict[str, tuple[float, float] | str]:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=sys.executable, args=["-m", "hive_otel_failures", "mcp", "--db", str(db)],
                                   env=dict(os.environ))  # PYTHONPATH included: the server runs the same code
    results: dict[str, tuple[float, float] | str] = {}
    t0 = time.perf_counter()
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = (await session.list_tools()).tools
        print(f"  server start + initialize + list_tools: {(time.perf_counter() - t0) * 1000:.0f} ms, "
              f"{len(tools)} tools")
        print(f"  {'tool':<22}{'p50 ms':>9}{'p95 ms':>9}{'n':>4}  reply chars  (target <= {MCP_TARGET_MS} ms)")
        for tool in tools:
            args = arguments.get(tool.name)
            if args is None:
                required = tool.inputSchema.get("required", [])
                args = "skipped: unknown tool" + (f" needing {required}" if required else "")
                if not required:
                    args = {}
            if isinstance(args, str):
                print(f"  {tool.name:<22}  {args}")
                results[f"mcp {tool.name}"] = args.split(":")[0]
                continue
            samples, reply = [], None
            for i in range(repeats + 1):
                t0 = time.perf_counter()
                reply = await session.call_tool(tool.name, args)
                if i:
                    samples.append(time.perf_counter() - t0)
                if time.perf_counter() - t0 > 5 and len(samples) >= 3:
                    break
            text = "".join(getattr(c, "text", "") for c in reply.content)
            note = f"  ERROR: {text[:80]!r}" if reply.isError else ""
            p50, p95 = percentiles(samples)
            results[f"mcp {tool.name}"] = (p50, p95) if not reply.isError else "error"
            print(f"  {tool.name:<22}{fmt_ms(p50)}{fmt_ms(p95)}{len(samples):>4}  {len(text):>11,}{note}")
    return results


def mcp_section(db: Path | str, meta: dict[str, Any], idx: FailureIndex,
                repeats: int) -> dict[str, tuple[float, float] | str]:
    try:
        present = importlib.util.find_spec("hive_otel_failures.faces.mcp_server") is not None
    except ImportError:
        present = False
    if not present or importlib.util.find_spec("mcp") is None:
        print("  skipped: hive_otel_failures.faces.mcp_server (or the mcp package) is not in this version")
        return {}
    try:
        return asyncio.run(_mcp_round_trips(db, mcp_arguments(meta, idx), repeats))
    except Exception as exc:  # noqa: BLE001 - a server still being written: say so, go on
        print(f"  failed: {exc!r}"[:300])
        return {}


def turn_context_section(db: Path | str, repeats: int) -> dict[str, tuple[float, float] | str]:
    """The Queen's turn-context plugin as Hive calls it: ``await plugin.context(queen_id, message)``."""
    os.environ["HIVE_FAILURES_DB"] = str(db)
    from hive_otel_failures.faces.turn_context import FailureAdviceContext

    async def measure() -> tuple[float, list[float], str | None]:
        plugin = FailureAdviceContext()
        await plugin.start()
        try:
            t0 = time.perf_counter()
            text = await plugin.context("default", "hello")
            first = time.perf_counter() - t0
            samples = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                await plugin.context("default", "next turn")
                samples.append(time.perf_counter() - t0)
            return first, samples, text
        finally:
            await plugin.stop()

    first, samples, text = asyncio.run(measure())
    p50, p95 = percentiles(samples)
    size = len((text or "").encode("utf-8"))
    print(f"  turn context: first call {fmt_ms(first).strip()} ms (opens the index), then p50 {fmt_ms(p50).strip()} "
          f"ms, p95 {fmt_ms(p95).strip()} ms over {len(samples)} turns; reminder {size} bytes")
    return {"turn context (warm)": (p50, p95)}


# --- main ----------------------------------------------------------------------------------------------------
Results = dict[str, tuple[float, float] | str]


def load_average() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" ({os.cpu_count()} cores)"


def print_build(size: str, meta: dict[str, Any], built_now: bool, current_bytes: int | None = None) -> None:
    how = "built now" if built_now else f"cached, built {meta['built_at'][:16]}Z"
    print(f"  {meta['failures']:,} failures, {meta['runs']:,} runs ({meta['failed_runs']:,} failed); {how} "
          f"in {meta['seconds_total']:.0f} s by code {meta['code']}")
    print(f"  write path: add_prepared {meta['failures_per_s']:,.0f} failures/s "
          f"({meta['seconds_add_failures']:.1f} s), {meta['runs_per_s']:,.0f} runs/s "
          f"({meta['seconds_add_runs']:.1f} s), "
          f"batches of {meta['batch']}; generating{' + OTLP lines' if meta['otlp_bytes'] else ''} took the rest")
    where = "database" if meta.get("backend") == "postgresql" else "index"
    now = (f", {human_bytes(current_bytes)} now" if current_bytes is not None and current_bytes != meta["db_bytes"]
           else "")
    otlp = (f"; OTLP file {human_bytes(meta['otlp_bytes'])} ({meta['otlp_lines']:,} lines)" if meta["otlp_bytes"]
            else "")
    print(f"  {where} {human_bytes(meta['db_bytes'])} as built{now} "
          f"({meta['db_bytes'] / meta['failures'] / 1024:.2f} KB per failure with its run rows){otlp}")


def sqlite_section(size: str, sizes: list[str], meta: dict[str, Any], built_now: bool,
                   args: argparse.Namespace) -> tuple[Results, dict[str, Any]]:
    paths = data.paths(size)
    print_build(size, meta, built_now, paths["db"].stat().st_size)
    if args.build_only:
        return {}, meta
    before = sqlite3.connect(paths["db"]).execute("PRAGMA user_version").fetchone()[0]
    if before < LATEST_VERSION and "schema.py" in data.code_version():
        # An uncommitted migration may still change: migrate a copy, keep the cache at a shipped schema.
        scratch = paths["db"].with_name(paths["db"].stem + "-scratch.db")
        print(f"  schema v{before} -> v{LATEST_VERSION} is uncommitted here: copying the index to {scratch.name}")
        shutil.copyfile(paths["db"], scratch)
        paths["db"] = scratch
    t0 = time.perf_counter()
    if before < LATEST_VERSION:  # a reader never migrates: the writer's open does, once
        FailureIndex(paths["db"]).close()
    migrating = time.perf_counter() - t0
    t0 = time.perf_counter()
    idx = FailureIndex(paths["db"], create=False)
    opened = time.perf_counter() - t0
    after = idx.schema_version
    migrated = (f", migrated schema v{before} -> v{after} in {migrating:.0f} s" if after != before
                else f", schema v{after}")
    print(f"  open: {opened * 1000:.0f} ms{migrated}; {load_average()}")
    results = run_queries(idx, meta, args.repeats)
    picked = meta["picked"]
    print(f"  (agent {picked['agent']}, diagnose {picked['frequent_fp']}, fix_effect {picked['resolved_fp']})")
    if not args.no_scan:
        scan_repeats = {"10k": 5, "100k": 3}.get(size, 1)
        print(f"  the same group-bys by scanning {paths['otlp'].name} (json.loads per line), "
              f"{'once' if scan_repeats == 1 else f'median of {scan_repeats}'}:")
        compare_scan(idx, paths["otlp"], results, scan_repeats)
    results.update(turn_context_section(paths["db"], args.repeats))
    if not args.no_mcp and size == sizes[-1]:
        print(f"  MCP tool round trips over stdio on the {size} index:")
        results.update(mcp_section(paths["db"], meta, idx, min(args.repeats, 20)))
    idx.close()
    return results, meta


def postgres_section(server: Any, size: str, sizes: list[str], end: float | None, args: argparse.Namespace,
                     reference: Results | None = None) -> tuple[Results, dict[str, Any]]:
    """The same data into a fresh database of the throwaway server (same add_prepared batches), then the same calls."""
    import psycopg

    url = server.database()
    same = "the SQLite cache's data (same end)" if end is not None else "data ending now"
    print(f"  building {same} into {url.rsplit('/', 1)[1]}; {load_average()}", flush=True)
    meta = data.build(size, log=lambda m: print(m, flush=True), target=url, end=end)
    print_build(size, meta, True)
    print(f"  {load_average()}")
    if args.build_only:
        server.drop(url)
        return {}, meta
    # What autovacuum does to an insert-only table sooner or later: statistics and the visibility map.
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
        sizes_now = conn.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = "
            "c.relnamespace WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "ORDER BY 2 DESC LIMIT 6").fetchall()
    print(f"  VACUUM (ANALYZE) {time.perf_counter() - t0:.0f} s; largest tables with indexes and TOAST: "
          + ", ".join(f"{name} {human_bytes(n)}" for name, n in sizes_now))
    t0 = time.perf_counter()
    idx = hof_open_index(url, create=False)
    print(f"  open: {(time.perf_counter() - t0) * 1000:.0f} ms, schema v{idx.schema_version}; {load_average()}")
    results = run_queries(idx, meta, args.repeats)
    picked = meta["picked"]
    print(f"  (agent {picked['agent']}, diagnose {picked['frequent_fp']}, fix_effect {picked['resolved_fp']})")
    results.update(turn_context_section(url, args.repeats))
    if not args.no_mcp and size == sizes[-1]:
        print(f"  MCP tool round trips over stdio on the {size} database:")
        results.update(mcp_section(url, meta, idx, min(args.repeats, 20)))
    idx.close()
    explain_slow(server, url, meta, results, args.explain_ms, reference or {},
                 [x.strip() for x in args.explain.split(",") if x.strip()])
    server.drop(url)
    return results, meta


def explain_slow(server: Any, url: str, meta: dict[str, Any], results: Results, threshold_ms: float,
                 reference: Results, anyway: list[str]) -> None:
    """One more call, under auto_explain, of each query whose p50 is over its target or over twice (and 5 ms
    more than) SQLite's: the server log's plans of its statements over ``threshold_ms``."""
    def over(label: str, r: Any) -> bool:
        ref = reference.get(label)
        return isinstance(r, tuple) and (r[0] * 1000 > TARGET_MS.get(label, math.inf) or (
            isinstance(ref, tuple) and r[0] > 2 * ref[0] and r[0] - ref[0] > 0.005))

    slow = [label for label, r in results.items() if not label.startswith(("mcp ", "turn "))
            and (over(label, r) or label in anyway)]
    if not slow:
        print("  every query's p50 within its target and within twice SQLite's: no plans")
        return
    import psycopg

    name = url.rsplit("/", 1)[1]
    log = Path(server.dir) / "log"
    with psycopg.connect(url, autocommit=True) as conn:
        for setting, value in (("session_preload_libraries", "auto_explain"),
                               ("auto_explain.log_min_duration", f"{threshold_ms:g}ms"),
                               ("auto_explain.log_analyze", "on"), ("auto_explain.log_buffers", "on")):
            conn.execute(f'ALTER DATABASE "{name}" SET {setting} = \'{value}\'')
    start = log.stat().st_size
    idx = hof_open_index(url, create=False)  # new connections: the settings apply
    try:
        calls = {label: call for label, _, call in query_plan(idx, dict(meta)) if call is not None}
        for label in slow:
            calls[label]()
    finally:
        idx.close()
    with open(log, encoding="utf-8", errors="replace") as f:
        f.seek(start)
        text = f.read()
    print(f"  plans (auto_explain, over {threshold_ms:g} ms) of one more call of {', '.join(slow)}:")
    for line in text.splitlines():
        print("    " + line)
    if not text.strip():
        print(f"    (no statement took over {threshold_ms:g} ms: lower --explain-ms)")


def side_by_side(size: str, columns: dict[str, tuple[Results, dict[str, Any]]]) -> None:
    names = list(columns)
    print(f"\n== {size}: side by side (p50 / p95 ms; warm calls)")
    width = 24
    print(f"  {'':<26}" + "".join(f"{n:>{width}}" for n in names) + "  target")
    labels: list[str] = []
    for results, _ in columns.values():
        labels += [k for k in results if k not in labels]

    def cell(v: Any) -> str:
        if isinstance(v, tuple):
            return f"{v[0] * 1000:.1f} / {v[1] * 1000:.1f}"
        return "-" if v is None else str(v)[:width - 2]

    for label in labels:
        target = (f"<= {TARGET_MS[label]}" if label in TARGET_MS else
                  f"<= {MCP_TARGET_MS}" if label.startswith("mcp ") else "")
        print(f"  {label:<26}" + "".join(f"{cell(columns[n][0].get(label)):>{width}}" for n in names) + f"  {target}")
    for what, fn in (("failures / runs", lambda m: f"{m['failures']:,} / {m['runs']:,}"),
                     ("build failures/s", lambda m: f"{m['failures_per_s']:,.0f}"),
                     ("build runs/s", lambda m: f"{m['runs_per_s']:,.0f}"),
                     ("size as built", lambda m: human_bytes(m["db_bytes"]))):
        print(f"  {what:<26}" + "".join(f"{fn(columns[n][1]):>{width}}" for n in names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10k,100k,1M", help="comma-separated: 10k, 100k, 1M")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="sqlite",
                        help="the cached SQLite index, a throwaway PostgreSQL server built now, or both side by side")
    parser.add_argument("--rebuild", action="store_true", help="build the caches again (after a generator change)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per query after a warm-up")
    parser.add_argument("--build-only", action="store_true", help="the build and its write-path figures only")
    parser.add_argument("--no-scan", action="store_true", help="skip the OTLP file scans")
    parser.add_argument("--no-mcp", action="store_true", help="skip the MCP round trips")
    parser.add_argument("--explain", default="", help="PostgreSQL: comma-separated query labels to explain anyway, "
                        "e.g. 'advise(agent),diagnose(fp)'")
    parser.add_argument("--explain-ms", type=float, default=2,
                        help="PostgreSQL: log the plans (auto_explain, analyze) of statements over this in one more "
                             "call of each query over its target, and print them")
    args = parser.parse_args()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in data.SIZES]
    if unknown:
        parser.error(f"unknown sizes {unknown}: use {', '.join(data.SIZES)}")
    import hive_otel_failures

    print(f"code: {data.code_version()}  (package at {Path(hive_otel_failures.__file__).parent}); {load_average()}")
    server = None
    if args.backend != "sqlite":
        from tests.pg_server import PostgresServer, find_bindir

        bindir = find_bindir()
        if bindir is None:
            parser.error("no PostgreSQL binaries (initdb, pg_ctl): install postgresql or set the bindir variable "
                         "tests/pg_server.py reads")
        server = PostgresServer(bindir).start()
        version = server._admin().execute("SHOW server_version").fetchone()[0]
        print(f"PostgreSQL {version}: a throwaway server in {server.dir} (fsync off, synchronous_commit off)")
    try:
        for size in sizes:
            print(f"\n== {size}")
            columns: dict[str, tuple[Results, dict[str, Any]]] = {}
            end = None
            cached = data.paths(size)["meta"]
            if args.backend == "postgresql" and cached.exists():  # the same data as the SQLite cache's
                end = json.loads(cached.read_text())["end"]
            if args.backend in ("sqlite", "both"):
                print("-- SQLite")
                meta, built_now = data.load_or_build(size, args.rebuild, log=lambda m: print(m, flush=True))
                end = meta["end"]
                columns["SQLite"] = sqlite_section(size, sizes, meta, built_now, args)
            if server is not None:
                print("-- PostgreSQL")
                reference = columns["SQLite"][0] if "SQLite" in columns else None
                columns["PostgreSQL"] = postgres_section(server, size, sizes, end, args, reference)
            if len(columns) > 1 or args.backend == "postgresql":
                side_by_side(size, columns)
            print(f"  {load_average()}")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
