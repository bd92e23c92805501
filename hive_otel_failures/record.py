"""FailureRecord and RunOutcome, and their mapping to OTel attributes: the wire contract.

A record travels as the attributes of a ``hive.failure`` span event; the index processor
turns those attributes back into a record. ``to_attributes``/``from_attributes`` are the only
place that mapping exists, and they round-trip every field. No OTel import here: the index
host reads records without the SDK.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field

from . import semconv
from .fingerprint import fingerprint as _fingerprint
from .fingerprint import is_transient
from .scrub import TRUNCATED_KEY, Limits, safe_text, sanitize

AttributeValue = str | bool | int | float | tuple[str, ...]


class FailureKind(str, Enum):
    """What kind of failure this is; one small vocabulary shared by all runtimes."""

    EXCEPTION = "exception"  # code raised (a node, a tool, the LLM client)
    NODE_FAILED = "node_failed"  # a graph node returned success=False after its attempts
    WORKER_CRASHED = "worker_crashed"  # a colony worker died before or outside its loop
    WORKER_FAILED = "worker_failed"  # a colony worker finished with status failed
    STALLED = "stalled"  # the model repeated itself; Hive's stall detector fired
    DOOM_LOOP = "doom_loop"  # the same failing tool call, turn after turn
    JUDGE_ESCALATED = "judge_escalated"  # the judge gave up on the output
    CONSTRAINT_VIOLATED = "constraint_violated"  # a goal constraint was broken
    TIMEOUT = "timeout"  # a run or worker hit its time limit
    ESCALATED = "escalated"  # the agent asked for a human


class JudgeFeedback(BaseModel):
    """One judge verdict: one per attempt/iteration, full text where Hive gives it."""

    model_config = ConfigDict(extra="forbid")

    attempt: int
    action: str  # ACCEPT | RETRY | ESCALATE
    feedback: str = ""
    judge_type: str | None = None


class ToolCallAttempt(BaseModel):
    """A tool call the agent tried before failing."""

    model_config = ConfigDict(extra="forbid")

    tool_name: str
    arguments: Any = None
    result: str | None = None
    is_error: bool = False


def _now() -> datetime:
    return datetime.now(timezone.utc)


class FailureRecord(BaseModel):
    """Everything needed to diagnose one failure without re-running the agent."""

    model_config = ConfigDict(extra="forbid", use_enum_values=True)

    failure_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    session_id: str | None = None
    agent_id: str | None = None
    node_id: str | None = None
    timestamp: datetime = Field(default_factory=_now)
    kind: FailureKind = FailureKind.EXCEPTION
    error_type: str = "unknown"
    error_message: str = ""
    traceback: str | None = None
    attempts: int = 1
    judge_feedback: list[JudgeFeedback] = Field(default_factory=list)
    input_context: Any = None
    memory_snapshot: Any = None
    graph_snapshot: Any = None
    constraints_violated: list[str] = Field(default_factory=list)
    criteria_unmet: list[str] = Field(default_factory=list)
    tool_calls: list[ToolCallAttempt] = Field(default_factory=list)
    trace_id: str | None = None
    span_id: str | None = None
    agent_version: str | None = None
    fingerprint: str | None = None
    transient: bool | None = None
    evolution_triggered: bool = False
    resolution: str | None = None


class RunOutcome(BaseModel):
    """One run (session) of an agent, failed or not, so rates can be computed."""

    model_config = ConfigDict(extra="forbid")

    session_id: str
    agent_id: str | None = None
    agent_version: str | None = None
    started_at: datetime = Field(default_factory=_now)
    ended_at: datetime = Field(default_factory=_now)
    success: bool
    quality: str | None = None
    failures: int = 0


def prepare(record: FailureRecord, limits: Limits | None = None) -> FailureRecord:
    """A scrubbed, size-capped copy with fingerprint and transient filled in.

    What is attached to spans and stored is always a prepared record; preparing twice
    changes nothing. IDs are copied verbatim.
    """
    limits = limits or Limits.from_env()
    message = safe_text(record.error_message, limits)
    error_type = safe_text(record.error_type, limits) or "unknown"
    traceback = safe_text(record.traceback, limits) if record.traceback else None
    update: dict[str, Any] = {
        "error_type": error_type,
        "error_message": message,
        "traceback": traceback,
        "input_context": sanitize(record.input_context, limits),
        "memory_snapshot": sanitize(record.memory_snapshot, limits),
        "graph_snapshot": sanitize(record.graph_snapshot, limits),
        "judge_feedback": [
            j.model_copy(update={"feedback": safe_text(j.feedback, limits)}) for j in record.judge_feedback
        ],
        "tool_calls": [
            t.model_copy(
                update={
                    "arguments": sanitize(t.arguments, limits),
                    "result": safe_text(t.result, limits) if t.result is not None else None,
                }
            )
            for t in record.tool_calls
        ],
        "constraints_violated": [safe_text(c, limits) for c in record.constraints_violated],
        "criteria_unmet": [safe_text(c, limits) for c in record.criteria_unmet],
        "resolution": safe_text(record.resolution, limits) if record.resolution else None,
    }
    if record.fingerprint is None:
        update["fingerprint"] = _fingerprint(
            agent_id=record.agent_id,
            node_id=record.node_id,
            error_type=error_type,
            message=message,
            traceback=traceback,
        )
    if record.transient is None:
        update["transient"] = is_transient(error_type, message)
    return record.model_copy(update=update)


# --- attribute mapping ----------------------------------------------------------------------
# Scalars travel as themselves, string lists as string sequences, structures as JSON text.
_JSON_FIELDS = frozenset(
    {"judge_feedback", "input_context", "memory_snapshot", "graph_snapshot", "tool_calls"}
)
_LIST_FIELDS = frozenset({"constraints_violated", "criteria_unmet"})


def _key(field: str) -> str:
    return semconv.FAILURE_PREFIX + field


def to_attributes(record: FailureRecord) -> dict[str, AttributeValue]:
    """The ``hive.failure`` event attributes for ``record`` (None fields are omitted)."""
    data = record.model_dump(mode="json")
    attrs: dict[str, AttributeValue] = {}
    for field, value in data.items():
        if value is None:
            continue
        if field in _JSON_FIELDS:
            attrs[_key(field)] = json.dumps(value, ensure_ascii=False, sort_keys=True)
        elif field in _LIST_FIELDS:
            attrs[_key(field)] = tuple(value)
        else:
            attrs[_key(field)] = value
    return attrs


def from_attributes(attributes: Mapping[str, Any]) -> FailureRecord:
    """Rebuild a FailureRecord from ``hive.failure`` event attributes; unknown keys are ignored."""
    data: dict[str, Any] = {}
    prefix = semconv.FAILURE_PREFIX
    for key, value in attributes.items():
        if not key.startswith(prefix):
            continue
        field = key[len(prefix) :]
        if field not in FailureRecord.model_fields:
            continue
        if field in _JSON_FIELDS:
            value = load_json_field(field, value)
        elif field in _LIST_FIELDS:
            value = list(value)
        data[field] = value
    return FailureRecord.model_validate(data)


def load_json_field(field: str, text: str | None) -> Any:
    """A JSON field of a record (event attribute or stored column), never raising.

    Text cut by span limits keeps a truncation marker; a list field that is not a list
    becomes empty. None stays None.
    """
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        value = {TRUNCATED_KEY: "value is not valid JSON (cut by span limits?)", "preview": str(text)[:1024]}
    if field in ("judge_feedback", "tool_calls") and not isinstance(value, list):
        return []
    return value


def run_attributes(outcome: RunOutcome) -> dict[str, AttributeValue]:
    """Span attributes that mark a span as covering one run, with its outcome."""
    attrs: dict[str, AttributeValue] = {
        semconv.RUN_OUTCOME: "success" if outcome.success else "failure",
        semconv.RUN_SESSION_ID: outcome.session_id,
        semconv.RUN_FAILURES: outcome.failures,
    }
    for key, value in (
        (semconv.RUN_AGENT_ID, outcome.agent_id),
        (semconv.RUN_AGENT_VERSION, outcome.agent_version),
        (semconv.RUN_QUALITY, outcome.quality),
    ):
        if value is not None:
            attrs[key] = value
    return attrs


def run_from_attributes(
    attributes: Mapping[str, Any], started_at: datetime, ended_at: datetime
) -> RunOutcome:
    """Rebuild a RunOutcome from a run span's attributes and its start/end times."""
    return RunOutcome(
        session_id=str(attributes[semconv.RUN_SESSION_ID]),
        agent_id=attributes.get(semconv.RUN_AGENT_ID),
        agent_version=attributes.get(semconv.RUN_AGENT_VERSION),
        started_at=started_at,
        ended_at=ended_at,
        success=attributes.get(semconv.RUN_OUTCOME) == "success",
        quality=attributes.get(semconv.RUN_QUALITY),
        failures=int(attributes.get(semconv.RUN_FAILURES, 0)),
    )
