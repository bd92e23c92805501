"""The realistic failure index behind benchmarks/queries.py: generated, written, cached.

One deterministic stream of runs (sessions) and their failures feeds two sinks:

- the index, through the package's write path: ``FailureIndex.add_prepared`` in batches of
  512, as the processor's writer calls it, failures and run outcomes in separate calls so
  each gets its own throughput;
- an OTLP JSON-lines file, one ExportTraceServiceRequest per line as the Collector's file
  exporter writes them (OTLP/JSON: hex ids, integer enums, 64-bit integers as strings).

The world: 50 agents with uneven traffic, 3-4 versions each over 30 days ending at build
time, 300 patterns (a few frequent, a long tail; some fixed in a later version, some new in
one, some transient), ~5 runs per failure, sessions with 1-3 failures, 1-4 KB of input
context and memory per failure, a graph snapshot per agent version, judge feedback, tool
calls, constraints. Bump ``GENERATOR_VERSION`` when any of it changes: caches are keyed by it.

Preparing 1M records (scrub, fingerprint, pydantic) would take longer than writing them, so
each pattern's record is prepared once with ``to_attributes(prepare(record))`` and each
failure is that dict with its own ids, timestamp, version, message numbers (which the
fingerprint parameterises away; checked when the world is built) and content. The content
is generated JSON-safe and secret-free and is serialised the way ``to_attributes`` does,
so ``prepare`` would leave it as it is.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import random
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hive_otel_failures import semconv
from hive_otel_failures.fingerprint import fingerprint as compute_fingerprint
from hive_otel_failures.index import FailureIndex
from hive_otel_failures.index.schema import LATEST_VERSION
from hive_otel_failures.record import FailureRecord, RunOutcome, prepare, to_attributes, uuid7

GENERATOR_VERSION = 1
CACHE = Path(__file__).resolve().parent / ".cache"
AGENTS = 50
PATTERNS = 300
DAYS = 30
RUNS_PER_FAILURE = 5
FAILURES_PER_SESSION = ((1, 0.70), (2, 0.20), (3, 0.10))  # mean 1.4: ~14% of runs fail
BATCH = 512  # failures per add_prepared call (the SDK's batch size; the processor's transactions take up to 2048 spans)
_P = semconv.FAILURE_PREFIX

_WORDS = [
    'order', 'invoice', 'customer', 'refund', 'shipment', 'ticket', 'report', 'summary', 'source', 'citation',
    'email', 'draft', 'review', 'policy', 'contract', 'quote', 'budget', 'forecast', 'region', 'account',
    'payment', 'vendor', 'product', 'inventory', 'lead', 'campaign', 'meeting', 'schedule', 'priority',
    'escalation', 'approval', 'threshold', 'dataset', 'column', 'metric'
]
_NODES = [
    'intake', 'planner', 'research', 'fetch_orders', 'classify', 'summarize', 'write_report', 'review',
    'send_email', 'extract_fields', 'validate', 'lookup_account', 'draft_reply', 'route'
]
_TOOLS = ("web_search", "fetch_url", "sql_query", "send_email", "read_file", "crm_lookup", "calendar_create")


@dataclass
class Pattern:
    agent: int
    node: str
    kind: str
    error_type: str
    template: str  # str.format with {n}, {m}: numbers the fingerprint parameterises
    weight: float
    first_version: int  # index into the agent's versions
    fixed_in: int | None  # None: never fixed
    attrs: dict[str, Any] = field(default_factory=dict)  # prepared hive.failure attributes
    fingerprint: str = ""
    judge: bool = False
    tools: bool = False


# kind, error_type, message template, judge feedback, tool calls, constraints, criteria
_CATALOG: list[tuple[str, str, str, bool, bool, tuple[str, ...], tuple[str, ...]]] = [
    ("exception", "builtins.KeyError", "missing key {w} in {w2} payload after {n} fields", False, False, (), ()),
    ("exception", "builtins.ValueError", "could not parse row {n} of {w}s export, column {m}", False, False, (), ()),
    ("exception", "json.decoder.JSONDecodeError", "Expecting value: line {n} column {m} (char {k}) in {w} reply",
     False, False, (), ()),
    ("exception", "httpx.HTTPStatusError", "Client error 404 Not Found for {w} item {n}", False, True, (), ()),
    ("exception", "pydantic_core.ValidationError", "{n} validation errors for {W}Output: field {w2} required",
     False, False, (), ()),
    ("exception", "builtins.PermissionError", "{w} tool denied: scope {w2} not granted (attempt {n})", False, True,
     (), ()),
    ("exception", "openai.RateLimitError", "Rate limit reached for requests: retry after {n}s ({w})", False, False,
     (), ()),
    ("exception", "httpx.ReadTimeout", "timed out after {n}s waiting for {w} service", False, True, (), ()),
    ("exception", "openai.InternalServerError", "Error code: 503 - service unavailable ({w} call {n})", False,
     False, (), ()),
    ("timeout", "asyncio.TimeoutError", "{w} node exceeded its {n}s time limit", False, False, (), ()),
    ("node_failed", "hive.node_failed", "node returned success=False after {n} attempts: {w} has no {w2}",
     True, True, (), ("output names the {w}",)),
    ("judge_escalated", "hive.judge_escalated", ("judge escalated after {n} attempts: {w} summary does not cite "
                                                 "sources"), True, False, (), ("every claim cites a source",)),
    ("constraint_violated", "hive.constraint_violated", "constraint no_{w}_in_output violated at turn {n}",
     True, False, ("no_{w}_in_output",), ()),
    ("escalated", "hive.escalation", "agent asked for a human: cannot decide {w} over {n} USD", False, False, (), ()),
    ("doom_loop", "hive.doom_loop", "same failing {w} tool call {n} turns in a row", False, True, (), ()),
    ("stalled", "hive.stalled", "model repeated its {w} answer {n} times", True, False, (), ()),
    ("worker_failed", "hive.worker_failed", "worker finished with status failed: {w} queue empty after {n}s",
     False, False, (), ()),
]
_CATALOG_WEIGHTS = (14, 10, 8, 7, 6, 3, 5, 5, 3, 3, 10, 6, 4, 3, 3, 2, 2)


class World:
    """Agents, versions, patterns and their prepared attributes; deterministic for a seed and an end time."""

    def __init__(self, end: float, seed: int = 7) -> None:
        rng = random.Random(seed)
        self.end, self.start = end, end - DAYS * 86400
        self.agents = [f"{rng.choice(_WORDS)}-{rng.choice(_WORDS)}-agent-{i:02d}" for i in range(AGENTS)]
        self.agent_weights = [1 / (i + 1) ** 0.7 for i in range(AGENTS)]  # uneven traffic
        self.agent_cum = list(itertools.accumulate(self.agent_weights))
        self.fail_scale = [rng.uniform(0.5, 1.5) for _ in range(AGENTS)]
        # 3-4 versions per agent: (start time, name), the first one older than the window.
        self.versions: list[list[tuple[float, str]]] = []
        for _ in range(AGENTS):
            n = rng.choice((3, 4))
            starts = sorted(rng.uniform(self.start + 2 * 86400, self.end - 86400) for _ in range(n - 1))
            names = [f"1.{minor}.{rng.randrange(3)}" for minor in range(n)]
            self.versions.append(list(zip([self.start - 86400, *starts], names)))
        self.graphs = {(a, v): _graph_snapshot(rng, self.agents[a], name)
                       for a in range(AGENTS) for v, (_, name) in enumerate(self.versions[a])}
        self.patterns = self._patterns(rng)
        self._by_agent_version: dict[tuple[int, int], tuple[list[Pattern], list[float]]] = {}
        for a in range(AGENTS):
            for v in range(len(self.versions[a])):
                active = [p for p in self.patterns if p.agent == a and p.first_version <= v
                          and (p.fixed_in is None or v < p.fixed_in)]
                active = active or [p for p in self.patterns if p.agent == a]
                self._by_agent_version[(a, v)] = (active, list(itertools.accumulate(p.weight for p in active)))

    def _patterns(self, rng: random.Random) -> list[Pattern]:
        # Every agent gets 2; the other 200 go to agents in proportion to their traffic.
        owners = [a for a in range(AGENTS) for _ in range(2)]
        owners += rng.choices(range(AGENTS), weights=self.agent_weights, k=PATTERNS - len(owners))
        patterns, seen = [], set()
        per_agent_rank: dict[int, int] = {}
        for a in owners:
            while True:
                entry = rng.choices(_CATALOG, weights=_CATALOG_WEIGHTS)[0]
                node, w, w2 = rng.choice(_NODES), rng.choice(_WORDS), rng.choice(_WORDS)
                kind, error_type, template, judge, tools, constraints, criteria = entry
                template = template.replace("{w}", w).replace("{w2}", w2).replace("{W}", w.title())
                key = (a, node, error_type, template)
                if key not in seen:
                    seen.add(key)
                    break
            rank = per_agent_rank[a] = per_agent_rank.get(a, 0) + 1
            n_versions = len(self.versions[a])
            roll = rng.random()
            first, fixed = 0, None
            if roll < 0.18:
                fixed = rng.randrange(1, n_versions)  # fixed by a later version
            elif roll < 0.28:
                first = rng.randrange(1, n_versions)  # came with a later version
            p = Pattern(agent=a, node=node, kind=kind, error_type=error_type, template=template,
                        weight=1 / rank ** 1.3, first_version=first, fixed_in=fixed, judge=judge, tools=tools)
            agent = self.agents[a]
            record = FailureRecord(
                agent_id=agent, node_id=node, kind=kind, error_type=error_type,
                error_message=template.format(n=3, m=7, k=41), session_id="s", failure_id="f",
                traceback=_traceback(agent, node, error_type) if kind == "exception" else None,
                constraints_violated=[c.replace("{w}", w) for c in constraints],
                criteria_unmet=[c.replace("{w}", w) for c in criteria],
            )
            p.attrs = to_attributes(prepare(record))
            p.fingerprint = p.attrs[_P + "fingerprint"]
            for n in (12, 987):  # the numbers vary per failure: the fingerprint must not
                again = compute_fingerprint(agent_id=agent, node_id=node, error_type=error_type,
                                            message=template.format(n=n, m=n + 1, k=n * 3),
                                            traceback=record.traceback)
                if again != p.fingerprint:
                    raise RuntimeError(f"generator bug: {template!r} does not keep its fingerprint")
            patterns.append(p)
        return patterns

    def version_at(self, agent: int, t: float) -> int:
        starts = [s for s, _ in self.versions[agent]]
        return bisect.bisect_right(starts, t) - 1

    def pick(self, rng: random.Random, agent: int, version: int) -> Pattern:
        active, cum = self._by_agent_version[(agent, version)]
        return rng.choices(active, cum_weights=cum)[0]


def _traceback(agent: str, node: str, error_type: str) -> str:
    module = agent.replace("-", "_")
    return ("Traceback (most recent call last):\n"
            f'  File "/srv/agents/{module}/nodes.py", line 88, in {node}\n    result = await step(ctx)\n'
            f'  File "/srv/agents/{module}/tools.py", line 41, in step\n    return parse(reply)\n'
            f"{error_type}: ...\n")


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 18))).capitalize() + "."


def _graph_snapshot(rng: random.Random, agent: str, version: str) -> str:
    nodes = rng.sample(_NODES, rng.randint(4, 8))
    graph = {"id": agent, "version": version, "entry": nodes[0],
             "nodes": [{"id": n, "tools": rng.sample(_TOOLS, 2), "max_retries": 3,
                        "system_prompt": " ".join(_sentence(rng) for _ in range(rng.randint(2, 5)))} for n in nodes],
             "edges": [{"source": a, "target": b, "condition": "on_success"} for a, b in itertools.pairwise(nodes)]}
    return json.dumps(graph, ensure_ascii=False, sort_keys=True)


class _Content:
    """Varied 1-4 KB of input context and memory per failure, from pools (fast enough for 1M)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.sentences = [_sentence(rng) for _ in range(400)]

    def failure(self, i: int) -> tuple[str, str]:
        rng, s = self.rng, self.sentences
        context = {"task": s[rng.randrange(400)], "request_id": i, "user": {"id": rng.randrange(10**6),
                   "tier": rng.choice(("free", "pro", "team"))},
                   "messages": [{"role": r, "content": " ".join(rng.choices(s, k=rng.randint(2, 6)))}
                                for r in ("user", "assistant", "user")[: rng.randint(1, 3)]],
                   "params": {w: rng.randrange(1000) for w in rng.sample(_WORDS, rng.randint(4, 12))}}
        memory = {w: " ".join(rng.choices(s, k=rng.randint(1, 4))) for w in rng.sample(_WORDS, rng.randint(3, 7))}
        memory["turn"] = rng.randint(1, 30)
        return (json.dumps(context, ensure_ascii=False, sort_keys=True),
                json.dumps(memory, ensure_ascii=False, sort_keys=True))

    def judge(self, attempts: int, kind: str) -> str:
        last = "ESCALATE" if kind == "judge_escalated" else "RETRY"
        return json.dumps([{"action": last if a == attempts else "RETRY", "attempt": a,
                            "feedback": self.sentences[self.rng.randrange(400)], "judge_type": "llm"}
                           for a in range(1, attempts + 1)], ensure_ascii=False, sort_keys=True)

    def tools(self) -> str:
        rng = self.rng
        return json.dumps([{"arguments": {"query": self.sentences[rng.randrange(400)][:60],
                                          "limit": rng.randint(1, 50)},
                            "is_error": rng.random() < 0.6, "result": self.sentences[rng.randrange(400)],
                            "tool_name": rng.choice(_TOOLS)} for _ in range(rng.randint(1, 3))],
                          ensure_ascii=False, sort_keys=True)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(slots=True)
class Run:
    session_id: str
    agent_id: str
    agent_version: str
    started: float
    ended: float
    success: bool
    quality: str | None
    trace_id: str
    span_id: str
    failures: list[dict[str, Any]]  # prepared hive.failure attributes


def generate(world: World, n_failures: int, seed: int = 11) -> Iterator[Run]:
    """Runs in time order over the window; exactly ``n_failures`` failures, ~5 runs per failure."""
    rng = random.Random(seed)
    content = _Content(rng)
    n_runs = n_failures * RUNS_PER_FAILURE
    mean_per_session = sum(k * w for k, w in FAILURES_PER_SESSION)
    base_fail = n_failures / mean_per_session / n_runs
    gap = (world.end - world.start - 600) / n_runs
    sizes, size_weights = zip(*FAILURES_PER_SESSION)
    t, made, i = world.start, 0, 0
    while made < n_failures:
        i += 1
        t = min(t + rng.expovariate(1 / gap), world.end - 300)
        a = bisect.bisect_left(world.agent_cum, rng.random() * world.agent_cum[-1])
        v = world.version_at(a, t)
        # Later versions fail a little less often: the versions view has something to show.
        fails = rng.random() < base_fail * world.fail_scale[a] * (1.15 - 0.1 * v)
        duration = rng.uniform(5, 300)
        stamp = datetime.fromtimestamp(t, UTC).strftime("%Y%m%d_%H%M%S")
        run = Run(session_id=f"session_{stamp}_{rng.getrandbits(32):08x}", agent_id=world.agents[a],
                  agent_version=world.versions[a][v][1], started=t, ended=t + duration, success=not fails,
                  quality=rng.choice(("good", "good", "degraded", None)), trace_id=f"{rng.getrandbits(128):032x}",
                  span_id=f"{rng.getrandbits(64):016x}", failures=[])
        if fails:
            k = min(rng.choices(sizes, weights=size_weights)[0], n_failures - made)
            pattern = world.pick(rng, a, v)
            for j in range(k):
                if j and rng.random() < 0.5:
                    pattern = world.pick(rng, a, v)
                run.failures.append(_failure(rng, content, world, pattern, run, t + duration * (j + 1) / (k + 1), made))
                made += 1
        yield run


def _failure(rng: random.Random, content: _Content, world: World, p: Pattern, run: Run, t: float,
             i: int) -> dict[str, Any]:
    attrs = dict(p.attrs)
    n = rng.randint(2, 5000)
    attempts = rng.randint(1, 3)
    context, memory = content.failure(i)
    attrs.update({
        _P + "failure_id": uuid7(int(t * 1000), rng.getrandbits(128)),  # as record.py makes them, at time t
        _P + "session_id": run.session_id,
        _P + "timestamp": _iso(t), _P + "error_message": p.template.format(n=n, m=n % 97, k=n * 7),
        _P + "attempts": attempts, _P + "input_context": context, _P + "memory_snapshot": memory,
        _P + "graph_snapshot": world.graphs[(p.agent, world.version_at(p.agent, run.started))],
        _P + "trace_id": run.trace_id, _P + "span_id": f"{rng.getrandbits(64):016x}",
        _P + "agent_version": run.agent_version,
    })
    if p.judge or rng.random() < 0.1:
        attrs[_P + "judge_feedback"] = content.judge(attempts, p.kind)
    if p.tools or rng.random() < 0.1:
        attrs[_P + "tool_calls"] = content.tools()
    return attrs


# --- the OTLP JSON-lines sink -------------------------------------------------------------------------------
def _value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, tuple):
        return {"arrayValue": {"values": [_value(x) for x in v]}}
    return {"stringValue": v}


def _kvs(attrs: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _value(v)} for k, v in attrs.items()]


def _nanos(t: float) -> str:
    return str(int(t * 1e9))


_RESOURCE = {"attributes": _kvs({"service.name": "hive", "telemetry.sdk.language": "python",
                                 "telemetry.sdk.name": "opentelemetry"})}
_SCOPE = {"name": semconv.INSTRUMENTATION_SCOPE, "version": "0.1.0"}


def _otlp_spans(run: Run) -> list[dict[str, Any]]:
    """The run's invoke_agent span (hive.run event) and one node span per failure (hive.failure event).

    What leaves the machine by default: content attributes stripped, as ContentPolicyExporter does.
    """
    outcome = {semconv.RUN_OUTCOME: "success" if run.success else "failure", semconv.RUN_SESSION_ID: run.session_id,
               semconv.RUN_FAILURES: len(run.failures), semconv.RUN_AGENT_ID: run.agent_id,
               semconv.RUN_AGENT_VERSION: run.agent_version}
    if run.quality is not None:
        outcome[semconv.RUN_QUALITY] = run.quality
    spans = [{
        "traceId": run.trace_id, "spanId": run.span_id, "name": f"invoke_agent {run.agent_id}", "kind": 1,
        "startTimeUnixNano": _nanos(run.started), "endTimeUnixNano": _nanos(run.ended),
        "attributes": _kvs({semconv.GEN_AI_OPERATION_NAME: semconv.OP_INVOKE_AGENT, semconv.GEN_AI_AGENT_ID:
                            run.agent_id, semconv.GEN_AI_CONVERSATION_ID: run.session_id,
                            semconv.HIVE_AGENT_VERSION: run.agent_version,
                            semconv.RUN_OUTCOME: outcome[semconv.RUN_OUTCOME]}),
        "events": [{"timeUnixNano": _nanos(run.ended), "name": semconv.RUN_EVENT, "attributes": _kvs(outcome)}],
        "status": {"code": 1 if run.success else 2},
    }]
    for f in run.failures:
        at = datetime.fromisoformat(f[_P + "timestamp"]).timestamp()
        event = {k: v for k, v in f.items() if k not in semconv.CONTENT_ATTRIBUTES}
        event[semconv.FAILURE_PREPARED] = True
        spans.append({
            "traceId": run.trace_id, "spanId": f[_P + "span_id"], "parentSpanId": run.span_id,
            "name": f"node {f.get(_P + 'node_id')}", "kind": 1, "startTimeUnixNano": _nanos(at - 1.5),
            "endTimeUnixNano": _nanos(at), "attributes": _kvs({semconv.HIVE_NODE_ID: f.get(_P + "node_id", ""),
                                                              semconv.ERROR_TYPE: f[_P + "error_type"]}),
            "events": [{"timeUnixNano": _nanos(at), "name": semconv.FAILURE_EVENT, "attributes": _kvs(event)}],
            "status": {"code": 2, "message": f[_P + "error_message"]},
        })
    return spans


def _otlp_line(spans: list[dict[str, Any]]) -> str:
    request = {"resourceSpans": [{"resource": _RESOURCE, "scopeSpans": [{"scope": _SCOPE, "spans": spans}]}]}
    return json.dumps(request, ensure_ascii=False, separators=(",", ":"))


def _check_otlp_line(line: str) -> None:
    """The line parses as an ExportTraceServiceRequest with opentelemetry-proto's classes (strict fields)."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = json_format.Parse(line, ExportTraceServiceRequest())
    assert request.resource_spans[0].scope_spans[0].spans, "generator bug: an empty OTLP request"


# --- building both -----------------------------------------------------------------------------------------
SIZES = {"10k": 10_000, "100k": 100_000, "1M": 1_000_000}


def paths(size: str) -> dict[str, Path]:
    stem = CACHE / f"queries-g{GENERATOR_VERSION}-{size}"
    return {"db": stem.with_suffix(".db"), "otlp": stem.with_suffix(".otlp.jsonl"), "meta": stem.with_suffix(".json")}


def code_version() -> str:
    """The commit measured, and whether the package had uncommitted changes (others edit it concurrently)."""
    import hive_otel_failures

    root = Path(__file__).resolve().parent.parent
    package_root = Path(hive_otel_failures.__file__).resolve().parent.parent
    if package_root != root:  # e.g. PYTHONPATH=<an export of a commit>: say which, if it was noted there
        noted = package_root / "COMMIT"
        return (noted.read_text().strip() if noted.exists() else "?") + f" (package from {package_root})"
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "hive_otel_failures"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    changed = sorted({line[3:].strip() for line in dirty if line.strip() and line[3:].strip().endswith(".py")})
    return head + (f" + uncommitted {', '.join(changed)}" if changed else "")


def postgres_bytes(url: str) -> int:
    """pg_database_size of the database at ``url`` (tables, indexes, TOAST)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def build(size: str, log=print, target: str | None = None, end: float | None = None) -> dict[str, Any]:
    """Write the index and the OTLP file for ``size`` under .cache; returns (and saves) the build figures.

    With ``target`` (a ``postgresql://`` URL of an empty database) the same data goes through the same
    ``add_prepared`` batches into that index instead: no OTLP file, nothing cached, the figures only returned.
    ``end`` (a cached build's) makes the same runs and failures as that build, to the same timestamps.
    """
    n = SIZES[size]
    final = paths(size)
    tmp = {k: p.with_name(p.name.replace(f"-{size}", f"-{size}-partial")) for k, p in final.items()}
    if target is None:
        CACHE.mkdir(parents=True, exist_ok=True)
        for p in list(tmp.values()) + [tmp["db"].with_name(tmp["db"].name + s) for s in ("-wal", "-shm")]:
            p.unlink(missing_ok=True)
    end = time.time() if end is None else end
    t0 = time.perf_counter()
    world = World(end)
    idx = FailureIndex(tmp["db"] if target is None else target)
    fail_batch: list[dict[str, Any]] = []
    run_batch: list[RunOutcome] = []
    span_batch: list[dict[str, Any]] = []
    clock = {"failures": 0.0, "runs": 0.0, "otlp": 0.0}
    counts = {"failures": 0, "runs": 0, "failed_runs": 0, "otlp_lines": 0}
    checked = False
    perf = time.perf_counter
    with open(tmp["otlp"] if target is None else os.devnull, "w", encoding="utf-8") as otlp:
        def flush_failures() -> None:
            c = perf()
            idx.add_prepared(fail_batch)
            clock["failures"] += perf() - c
            fail_batch.clear()

        def flush_runs() -> None:
            c = perf()
            idx.add_prepared((), runs=run_batch)
            clock["runs"] += perf() - c
            run_batch.clear()

        def flush_spans() -> None:
            nonlocal checked
            c = perf()
            line = _otlp_line(span_batch)
            otlp.write(line + "\n")
            clock["otlp"] += perf() - c
            if not checked:
                _check_otlp_line(line)
                checked = True
            counts["otlp_lines"] += 1
            span_batch.clear()

        progress, last = perf(), (0, 0.0)
        for run in generate(world, n):
            counts["runs"] += 1
            counts["failed_runs"] += not run.success
            run_batch.append(RunOutcome(session_id=run.session_id, agent_id=run.agent_id,
                                        agent_version=run.agent_version,
                                        started_at=datetime.fromtimestamp(run.started, UTC),
                                        ended_at=datetime.fromtimestamp(run.ended, UTC),
                                        success=run.success, quality=run.quality, failures=len(run.failures)))
            fail_batch.extend(run.failures)
            counts["failures"] += len(run.failures)
            if target is None:
                c = perf()
                span_batch.extend(_otlp_spans(run))
                clock["otlp"] += perf() - c
            if len(fail_batch) >= BATCH:
                flush_failures()
            if len(run_batch) >= BATCH:
                flush_runs()
            if len(span_batch) >= BATCH:
                flush_spans()
            if perf() - progress > 60:
                progress = perf()
                done, spent = counts["failures"] - last[0], clock["failures"] - last[1]
                log(f"  [{size}] {counts['failures']:,} / {n:,} failures, {counts['runs']:,} runs, "
                    f"{perf() - t0:.0f} s; add_prepared {done / max(spent, 1e-9):,.0f} failures/s since the last line")
                last = (counts["failures"], clock["failures"])
        if fail_batch:
            flush_failures()
        if run_batch:
            flush_runs()
        if span_batch:
            flush_spans()
    # A few resolutions: the patterns a later version fixed, and two whose fix did not hold.
    resolved: list[dict[str, Any]] = []
    c = perf()
    fixed = sorted((p for p in world.patterns if p.fixed_in is not None), key=lambda p: -p.weight)[:6]
    held_not = sorted((p for p in world.patterns if p.fixed_in is None and p.first_version == 0
                       and len(world.versions[p.agent]) > 2 and p.kind != "exception"), key=lambda p: -p.weight)[:2]
    for p, v in [(p, p.fixed_in) for p in fixed] + [(p, 1) for p in held_not]:
        version = world.versions[p.agent][v][1]
        try:
            idx.resolve(p.fingerprint, f"changed the {p.node} node's prompt and retries (pattern {p.kind})",
                        agent_version=version)
            resolved.append({"fingerprint": p.fingerprint, "agent_version": version, "held": p.fixed_in is not None})
        except Exception as exc:  # noqa: BLE001 - a pattern the sample never hit (tiny sizes)
            log(f"  [{size}] could not resolve {p.fingerprint}: {exc}")
    resolve_s = perf() - c
    idx.close()
    total = perf() - t0
    meta = {
        "size": size, "generator_version": GENERATOR_VERSION, "end": end, "built_at": _iso(end),
        "code": code_version(), **counts, "seconds_total": total, "seconds_add_failures": clock["failures"],
        "seconds_add_runs": clock["runs"], "seconds_otlp": clock["otlp"], "seconds_resolve": resolve_s,
        "failures_per_s": counts["failures"] / clock["failures"], "runs_per_s": counts["runs"] / clock["runs"],
        "batch": BATCH, "resolved": resolved,
        "agents": world.agents, "top_patterns": [p.fingerprint for p in sorted(world.patterns, key=lambda p: -p.weight)
                                                 if p.agent == 0][:3],
    }
    if target is not None:
        meta.update(backend="postgresql", db_bytes=postgres_bytes(target), otlp_bytes=0)
        return meta
    for k in ("db", "otlp"):
        os.replace(tmp[k], final[k])
    meta["db_bytes"] = final["db"].stat().st_size
    meta["otlp_bytes"] = final["otlp"].stat().st_size
    final["meta"].write_text(json.dumps(meta, indent=1))
    return meta


def load_or_build(size: str, rebuild: bool, log=print) -> tuple[dict[str, Any], bool]:
    """The cached build's figures (built now if missing or ``rebuild``), and whether it was built now."""
    p = paths(size)
    if not rebuild and all(x.exists() for x in p.values()):
        conn = sqlite3.connect(p["db"])
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        conn.close()
        if version <= LATEST_VERSION:
            return json.loads(p["meta"].read_text()), False
        log(f"  [{size}] the cached index has schema v{version}, newer than this code's v{LATEST_VERSION}: "
            "building it again")
    return build(size, log), True


if __name__ == "__main__":  # build caches only: python benchmarks/_query_data.py 1M [--rebuild]
    import sys

    for s in sys.argv[1].split(","):
        meta, built = load_or_build(s, "--rebuild" in sys.argv)
        print(json.dumps({k: v for k, v in meta.items() if k not in ("agents", "resolved")}, indent=1))
