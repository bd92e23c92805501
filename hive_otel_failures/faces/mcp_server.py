"""The failure index as MCP tools: what the Queen asks before, and after, she changes an agent.

Served with the official MCP SDK's FastMCP (``mcp.server.fastmcp``, a Hive dependency): over
stdio, which is how Hive starts a local server, or over streamable HTTP on loopback. The
standalone ``fastmcp`` 2.2 package only speaks stdio and SSE, hence the SDK's.

Every tool answers with one compact JSON object, bounded to ``max_chars``: lists are cut and
big fields shortened to fit, and the answer then says ``"truncated": true``. Errors (an
unknown fingerprint, a bad ``since``) come back as a tool error with a one-line message.

``FailureTools`` holds the tools as plain methods returning that JSON, so they can be called
in-process (benchmarks) without a server. Nothing here imports Hive.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from enum import Enum
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, Field

from ..index import (FIX_MIN_RUNS, MIN_DIAGNOSIS_CHARS, FailureIndex, FailureIndexError, default_location, open_index,
                     parse_since)

if TYPE_CHECKING:
    from mcp.server.fastmcp import FastMCP

log = logging.getLogger(__name__)

SERVER_NAME = "hive-failures"
TOOL_NAMES = ("failure_patterns", "recent_failures", "failure_detail", "evolution_advice", "diagnose_failure",
              "fix_effect", "record_resolution", "failure_stats")
DEFAULT_MAX_CHARS = 16_000  # per tool result, about 4k tokens
DEFAULT_DIAGNOSIS_CHARS = 12_000
_MESSAGE_CHARS = 400  # error messages and samples in list entries
_FEEDBACK_CHARS = 240
_LIST_CAP = 25  # per-node / per-version rows in failure_stats
# Keys whose False is the unremarkable default: left out of answers. Others keep False.
_QUIET_FALSE = frozenset({"transient", "recurred_after_resolution", "is_error"})
# failure_detail shortens these first when a record is over the bound: least useful first.
_DETAIL_CUT_ORDER = ("graph_snapshot", "memory_snapshot", "input_context", "tool_calls", "traceback",
                     "judge_feedback", "constraints_violated", "criteria_unmet", "error_message")

INSTRUCTIONS = (
    "The index of this Hive installation's agent failures. Before proposing or making a change to "
    "an agent, call evolution_advice, then diagnose_failure on the pattern you act on. After "
    "deploying a fix, call record_resolution (with the agent_version that carries the fix, if you know it). "
    "Use fix_effect to check "
    "whether a past fix worked before fixing the same pattern again."
)


class ToolInputError(ValueError):
    """A tool call that cannot be answered as asked (unknown id, no index yet, ...)."""


# --- JSON shaping ---------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """JSON-ready, compact: None/empty dropped, times to the second, rates to 4 digits."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            item = _plain(item)
            if item is None or item == "" or item == [] or item == {}:
                continue
            if item is False and key in _QUIET_FALSE:
                continue
            out[key] = item
        if out.get("evolution_triggered") is False and "resolution" not in out:
            del out["evolution_triggered"]  # says something only beside a resolution
        return out
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value.utcoffset() is not None and not value.utcoffset() \
            else value.isoformat(timespec="seconds")
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, Enum):
        return value.value
    return value


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _cut(text: str | None, n: int, *, keep_end: bool = False) -> str | None:
    """At most about n characters, with an explicit marker of what was left out."""
    if text is None or len(text) <= n:
        return text
    n = max(n, 0)
    if keep_end:  # tracebacks: the last frames and the exception line matter most
        return f"[…{len(text) - n} chars cut]" + text[len(text) - n:]
    return text[:n] + f"…[+{len(text) - n} chars]"


class FailureTools:
    """The eight tools over one index, as methods that return bounded compact JSON.

    The index is opened on first use and, while it does not exist yet, looked for again at
    every call: a Queen whose server starts before the first failure is recorded gets
    "no failures recorded yet", and the real answers once the file appears. A reader never
    creates the file.
    """

    def __init__(self, db: str | None = None, *, max_chars: int = DEFAULT_MAX_CHARS) -> None:
        if max_chars < 2_000:
            raise ValueError("max_chars must be at least 2000")
        self.db = db
        self.max_chars = max_chars
        self._index: FailureIndex | None = None
        self._opening = threading.Lock()

    @property
    def location(self) -> str:
        return self.db if self.db is not None else default_location()

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None

    def index(self) -> FailureIndex | None:
        """The open index, or None while there is no file at the location yet."""
        with self._opening:  # tools run in worker threads: open once
            if self._index is None:
                try:
                    self._index = open_index(self.db, create=False)
                except FailureIndexError as exc:
                    if str(exc).startswith("no failure index at"):
                        return None
                    raise
            return self._index

    def _require_index(self, what: str) -> FailureIndex:
        index = self.index()
        if index is None:
            raise ToolInputError(f"no failures recorded yet (no index at {self.location}), so no {what}")
        return index

    def _empty(self, key: str) -> str:
        return _dumps({key: [], "note": f"no failures recorded yet (no index at {self.location})"})

    # --- bounding ---------------------------------------------------------------------------
    def _fit_list(self, key: str, items: list[Any], **extra: Any) -> str:
        """``{key: items, **extra}`` within max_chars: items kept in order while they fit."""
        extra = {k: v for k, v in extra.items() if v is not None}
        text = _dumps({**extra, key: items})
        if len(text) <= self.max_chars:
            return text
        frame = len(_dumps({"truncated": True, "omitted": len(items), **extra, key: []}))
        room, kept = self.max_chars - frame, []
        for item in items:
            size = len(_dumps(item)) + 1
            if size > room:
                break
            kept.append(item)
            room -= size
        return _dumps({"truncated": True, "omitted": len(items) - len(kept), **extra, key: kept})

    def _fit_fields(self, data: dict[str, Any], order: tuple[str, ...]) -> str:
        """One object within max_chars: the fields in ``order`` shortened, first ones first."""
        text = _dumps(data)
        if len(text) <= self.max_chars:
            return text
        data = {"truncated": True, "cut": [], **data}
        for name in order:
            if name not in data:
                continue
            raw = data[name] if isinstance(data[name], str) else _dumps(data[name])
            data["cut"].append(name)
            keep = len(raw)
            for _ in range(4):  # escaping makes the encoded size differ from the raw one: converge
                over = len(_dumps(data)) - self.max_chars
                if over <= 0:
                    return _dumps(data)
                keep = max(0, keep - over - 40)
                data[name] = _cut(raw, keep, keep_end=name == "traceback")
            if len(_dumps(data)) <= self.max_chars:
                return _dumps(data)
        return _dumps({key: data[key] for key in ("truncated", "cut", "failure_id", "fingerprint") if key in data}
                      | {"note": "too large to show even in part; narrow the question"})

    # --- the tools --------------------------------------------------------------------------
    def failure_patterns(self, target_agent: str | None = None, since: str | None = None, limit: int = 20) -> str:
        parse_since(since)
        index = self.index()
        if index is None:
            return self._empty("patterns")
        found = index.patterns(agent_id=target_agent, since=since, limit=limit)
        items = [_plain(p.model_dump() | {"sample_message": _cut(p.sample_message, _MESSAGE_CHARS)}) for p in found]
        note = None if items else "no failures recorded" + (f" since {since}" if since else " yet") + (
            f" for agent {target_agent!r}" if target_agent else "")
        return self._fit_list("patterns", items, note=note)

    def recent_failures(self, target_agent: str | None = None, node_id: str | None = None,
                        error_type: str | None = None, session_id: str | None = None,
                        fingerprint: str | None = None, since: str | None = None, limit: int = 10) -> str:
        parse_since(since)
        index = self.index()
        if index is None:
            return self._empty("failures")
        records = index.recent(agent_id=target_agent, node_id=node_id, error_type=error_type, session_id=session_id,
                               since=since, limit=limit, fingerprint=fingerprint)
        items = [_plain({
            "failure_id": r.failure_id, "timestamp": r.timestamp, "agent_id": r.agent_id, "node_id": r.node_id,
            "session_id": r.session_id, "kind": r.kind, "error_type": r.error_type,
            "error_message": _cut(r.error_message, _MESSAGE_CHARS), "attempts": r.attempts,
            "fingerprint": r.fingerprint, "agent_version": r.agent_version, "transient": r.transient,
            "resolution": r.resolution, "trace_id": r.trace_id,
        }) for r in records]
        return self._fit_list("failures", items, note=None if items else "no failure matches")

    def failure_detail(self, failure_id: str) -> str:
        index = self._require_index("failure details")
        record = index.get(failure_id.strip())
        if record is None:
            raise ToolInputError(f"no failure with id {failure_id!r} (ids come from recent_failures or "
                                 "evolution_advice; a prefix must have 6+ characters)")
        return self._fit_fields(_plain(record), _DETAIL_CUT_ORDER)

    def evolution_advice(self, target_agent: str | None = None, window: str = "7d", min_sessions: int = 3) -> str:
        index = self.index()
        if index is None:
            return self._empty("advice")
        found = index.advise(agent_id=target_agent, window=window, min_sessions=min_sessions)
        items = []
        for advice in found:
            item = _plain(advice)
            item["sample_message"] = _cut(advice.sample_message, _MESSAGE_CHARS)
            evidence = item.get("evidence", {})
            for key in ("example_failure_ids", "example_trace_ids"):
                if key in evidence:
                    evidence[key] = evidence[key][:3]
            if "judge_feedback" in evidence:
                evidence["judge_feedback"] = [_cut(f, _FEEDBACK_CHARS) for f in evidence["judge_feedback"][:3]]
            items.append(item)
        note = None if items else (f"nothing to change in the last {window}: no unresolved systematic failure "
                                   "pattern warrants changing the agent")
        return self._fit_list("advice", items, note=note)

    def diagnose_failure(self, fingerprint: str, budget_chars: int | None = None) -> str:
        index = self._require_index("pattern to diagnose")
        frame = 400 + len(fingerprint)
        budget = min(budget_chars or DEFAULT_DIAGNOSIS_CHARS, self.max_chars - frame)
        for _ in range(3):
            diagnosis = index.diagnose(fingerprint, budget_chars=budget)
            answer = _plain({"fingerprint": diagnosis.fingerprint, "agent_id": diagnosis.agent_id,
                             "node_id": diagnosis.node_id, "trimmed": diagnosis.trimmed,
                             "markdown": diagnosis.markdown})
            text = _dumps(answer)
            if len(text) <= self.max_chars:
                return text
            budget = max(MIN_DIAGNOSIS_CHARS, budget * self.max_chars // len(text) - 200)  # JSON escaping took it
        return self._fit_fields(answer, ("markdown",))

    def fix_effect(self, fingerprint: str, min_runs: int = FIX_MIN_RUNS) -> str:
        index = self._require_index("fix to assess")
        effect = _plain(index.fix_effect(fingerprint, min_runs=min_runs))
        effects = effect.pop("effects", [])
        note = None if effects else ("no resolution recorded for this pattern: call record_resolution after "
                                     "deploying a fix, then fix_effect once the new version has run")
        return self._fit_list("effects", effects, **effect, note=note)

    def record_resolution(self, fingerprint: str, resolution: str, agent_version: str | None = None,
                          evolution_triggered: bool = True) -> str:
        index = self._require_index("pattern to resolve")
        done = index.resolve(fingerprint, resolution, evolution_triggered=evolution_triggered,
                             agent_version=agent_version)
        nxt = "call fix_effect on this fingerprint once the new version has had some runs"
        if agent_version is None:
            nxt += " (without agent_version, the versions first seen after now count as the fix's)"
        return self._fit_fields(_plain({"recorded": done, "next": nxt}), ())

    def failure_stats(self, target_agent: str | None = None, since: str | None = None) -> str:
        parse_since(since)
        index = self.index()
        if index is None:
            return _dumps({"runs": 0, "failures": 0, "note": f"no failures recorded yet (no index at {self.location})"})
        data = _plain(index.stats(agent_id=target_agent, since=since))
        for key in ("runs", "failed_runs", "failures", "sessions_with_failures", "patterns"):
            data.setdefault(key, 0)  # zeros are answers here
        truncated = False
        for key in ("by_node", "by_version"):
            rows = data.get(key, [])
            if len(rows) > _LIST_CAP:
                data[key], data[f"{key}_omitted"], truncated = rows[:_LIST_CAP], len(rows) - _LIST_CAP, True
        if data["runs"] == 0:
            data["note"] = "no runs recorded: failure rates need the run outcomes (record_run or instrument())"
        if truncated:
            data = {"truncated": True, **data}
        return self._fit_fields(data, ("by_version", "by_node", "by_kind"))


# --- the MCP server ---------------------------------------------------------------------------

Agent = Annotated[str | None, Field(description="Only this agent (its id, e.g. 'order-report'); omit for all.")]
Since = Annotated[str | None, Field(description="Only failures since: '30m', '24h', '7d', '2w' or an ISO 8601 time.")]
Fingerprint = Annotated[str, Field(description="A failure pattern's fingerprint (or a unique prefix), as returned "
                                               "by failure_patterns or evolution_advice.")]

DESCRIPTIONS = {
    "failure_patterns": (
        "What keeps failing: failures grouped into patterns (one fingerprint each), most frequent first, "
        "with count, distinct sessions, first/last seen, whether transient, and what was already done "
        "(resolution, recurred_after_resolution). Start here when asked what goes wrong with an agent."),
    "recent_failures": (
        "The latest individual failures, newest first, as summaries (failure_id, time, agent, node, "
        "session, error, attempts, fingerprint, agent_version). Filter by agent, node, error type, session "
        "or fingerprint to see concrete occurrences; then failure_detail for one in full."),
    "failure_detail": (
        "One failure in full: error and traceback, attempts and judge feedback, tool calls tried, input "
        "context, data-buffer snapshot and the agent definition at the time. Pass a failure_id (or a "
        "unique prefix of 6+ characters) from recent_failures or evolution_advice."),
    "evolution_advice": (
        "Call this FIRST before proposing or making any change to an agent. Says which failure patterns "
        "warrant changing the agent (action 'evolve') or need a human (action 'human'), why (triggers: "
        "recurring, blocking, hard_constraint, declining_success, regressed) and the evidence (sessions, "
        "share of runs, examples, judge feedback, last fix and its verdict). An empty answer means failures "
        "give no reason to change the agent. Next call diagnose_failure on the fingerprint you act on."),
    "diagnose_failure": (
        "Call after evolution_advice and before writing a change: the bundle a coding agent needs to fix "
        "one failure pattern, as Markdown within a size budget (the pattern, representative failures, "
        "judge feedback, tool calls, context, agent definition, past resolutions and their effect). "
        "'trimmed' lists what was left out to fit."),
    "fix_effect": (
        "Did a past fix work? For each resolution recorded on a pattern: how often the pattern hit runs "
        "before it and after it (from its agent_version on, else from the versions first seen after it), "
        "a verdict (fixed, "
        "not_fixed, too_early) and a p-value. Call it before fixing a pattern that was already resolved, "
        "and once a deployed fix has had runs."),
    "record_resolution": (
        "Call right after deploying a fix for a failure pattern (e.g. after evolving the agent): records "
        "what was done (and the agent_version that carries the fix, if known; without it, versions first "
        "seen after this call count as fixed ones), so fix_effect can compare runs before and after and "
        "nobody repeats a fix that failed. Pass the fingerprint from evolution_advice or failure_patterns."),
    "failure_stats": (
        "How an agent (or all agents) is doing over a window: runs, failed runs, failure rate, failures "
        "by node and by kind, and per agent version (runs, failure rate) to compare versions."),
}


def build_server(db: str | None = None, *, max_chars: int = DEFAULT_MAX_CHARS, host: str = "127.0.0.1",
                 port: int = 8765) -> FastMCP:
    """A FastMCP server with the eight failure tools over the index at ``db`` (default location if None)."""
    import anyio
    from mcp.server.fastmcp import FastMCP
    from mcp.server.fastmcp.exceptions import ToolError
    from mcp.types import ToolAnnotations

    tools = FailureTools(db, max_chars=max_chars)
    server = FastMCP(SERVER_NAME, instructions=INSTRUCTIONS, host=host, port=port, log_level="WARNING")

    async def run(method: Callable[..., str], **kwargs: Any) -> str:
        try:  # the index is sqlite: keep its I/O off the event loop
            return await anyio.to_thread.run_sync(partial(method, **kwargs))
        except (FailureIndexError, ToolInputError) as exc:
            raise ToolError(str(exc)) from None
        except Exception as exc:
            log.exception("tool %s failed", method.__name__)
            raise ToolError(f"internal error ({type(exc).__name__}): {exc}") from None

    def register(fn: Callable[..., Any], *, read_only: bool = True) -> None:
        server.add_tool(fn, name=fn.__name__, description=DESCRIPTIONS[fn.__name__],
                        annotations=ToolAnnotations(readOnlyHint=read_only, destructiveHint=False,
                                                    idempotentHint=read_only, openWorldHint=False),
                        structured_output=False)

    async def failure_patterns(target_agent: Agent = None, since: Since = None,
                               limit: Annotated[int, Field(ge=1, le=200)] = 20) -> str:
        return await run(tools.failure_patterns, target_agent=target_agent, since=since, limit=limit)

    async def recent_failures(target_agent: Agent = None,
                              node_id: Annotated[str | None, Field(description="Only this node.")] = None,
                              error_type: Annotated[str | None, Field(
                                  description="Only this error type, e.g. 'builtins.ValueError'.")] = None,
                              session_id: Annotated[str | None, Field(description="Only this session.")] = None,
                              fingerprint: Annotated[str | None, Field(
                                  description="Only failures of this pattern (exact fingerprint).")] = None,
                              since: Since = None, limit: Annotated[int, Field(ge=1, le=100)] = 10) -> str:
        return await run(tools.recent_failures, target_agent=target_agent, node_id=node_id, error_type=error_type,
                         session_id=session_id, fingerprint=fingerprint, since=since, limit=limit)

    async def failure_detail(failure_id: Annotated[str, Field(
            description="A failure id, or a unique prefix of 6+ characters.")]) -> str:
        return await run(tools.failure_detail, failure_id=failure_id)

    async def evolution_advice(target_agent: Agent = None,
                               window: Annotated[str, Field(description="Look back this far: '24h', '7d' "
                                                                        "or '2w'.")] = "7d",
                               min_sessions: Annotated[int, Field(
                                   ge=1, description="A pattern must have hit at least this many sessions.")] = 3,
                               ) -> str:
        return await run(tools.evolution_advice, target_agent=target_agent, window=window, min_sessions=min_sessions)

    async def diagnose_failure(fingerprint: Fingerprint, budget_chars: Annotated[int | None, Field(
            ge=MIN_DIAGNOSIS_CHARS,
            description="Size limit of the Markdown in characters; the tool's own bound caps it.")] = None,
                               ) -> str:
        return await run(tools.diagnose_failure, fingerprint=fingerprint, budget_chars=budget_chars)

    async def fix_effect(fingerprint: Fingerprint, min_runs: Annotated[int, Field(
            ge=1, description="Runs needed since the fix before a verdict other than too_early.")] = FIX_MIN_RUNS
                         ) -> str:
        return await run(tools.fix_effect, fingerprint=fingerprint, min_runs=min_runs)

    async def record_resolution(fingerprint: Fingerprint,
                                resolution: Annotated[str, Field(
                                    min_length=1, description="What was done, e.g. 'validate rows before "
                                                              "totalling in node parse'.")],
                                agent_version: Annotated[str | None, Field(
                                    description="The agent version that carries the fix, if known. Leave it "
                                                "out when the fixed version has not run yet.")] = None,
                                evolution_triggered: Annotated[bool, Field(
                                    description="False when fixed without changing the agent.")] = True) -> str:
        return await run(tools.record_resolution, fingerprint=fingerprint, resolution=resolution,
                         agent_version=agent_version, evolution_triggered=evolution_triggered)

    async def failure_stats(target_agent: Agent = None, since: Since = None) -> str:
        return await run(tools.failure_stats, target_agent=target_agent, since=since)

    for fn in (failure_patterns, recent_failures, failure_detail, evolution_advice, diagnose_failure, fix_effect,
               failure_stats):
        register(fn)
    register(record_resolution, read_only=False)
    server.failure_tools = tools  # type: ignore[attr-defined]  # for in-process callers and tests
    return server


def serve(db: str | None = None, *, http: bool = False, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve over stdio (how Hive runs it), or streamable HTTP at http://host:port/mcp."""
    server = build_server(db, host=host, port=port)
    try:
        server.run("streamable-http" if http else "stdio")
    finally:
        server.failure_tools.close()  # type: ignore[attr-defined]
