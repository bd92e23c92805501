"""FailureRecord and RunOutcome, and their mapping to OTel attributes: the wire contract.

A record travels as the attributes of a ``hive.failure`` span event; the index processor
turns those attributes back into a record. ``to_attributes``/``from_attributes`` are the only
place that mapping exists, and they round-trip every field. No OTel import here: the index
host reads records without the SDK.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any, Mapping, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from . import semconv
from .fingerprint import fingerprint as _fingerprint
from .fingerprint import is_transient
from .scrub import TRUNCATED_KEY, Limits, encodable, safe_text, sanitize

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
    CONSTRAINT_VIOLATED = "constraint_violated"  # a hard constraint was broken: the run failed
    SOFT_CONSTRAINT_VIOLATED = "soft_constraint_violated"  # a soft constraint was broken: the run still succeeded
    CRITERIA_UNMET = "criteria_unmet"  # the goal's success criteria were not met, whatever Hive reported
    TIMEOUT = "timeout"  # a run or worker hit its time limit
    ESCALATED = "escalated"  # the agent asked for a human


class JudgeFeedback(BaseModel):
    """One judge verdict: one per attempt/iteration, full text where Hive gives it."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    attempt: int
    action: str  # ACCEPT | RETRY | ESCALATE
    feedback: str = ""
    judge_type: str | None = None


class ToolCallAttempt(BaseModel):
    """A tool call the agent tried before failing."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    tool_name: str
    arguments: Any = None
    result: str | None = None
    is_error: bool = False


def _new_failure_id() -> str:
    """A UUIDv7 (RFC 9562) in hex: the time in milliseconds, then 74 random bits.

    Time first, so that the index's unique key on failure ids grows at its end: random ids put
    each insert on a page of its own, which the index then writes out whole (8 KiB to the WAL,
    again at the checkpoint), 18 KB a failure at 300k (writer_throughput.py, 2). Random bits
    as the OTel SDK makes trace ids, not os.urandom, which gives the GIL up on every call.
    """
    return uuid7(time.time_ns() // 1_000_000, random.getrandbits(80))


def uuid7(milliseconds: int, random_bits: int) -> str:
    """A UUIDv7 in 32 hex digits: ``milliseconds`` since the epoch, then the low 80 of
    ``random_bits`` but for the version and variant bits, which it sets."""
    return f"{milliseconds << 80 | random_bits & _RANDOM | _VERSION:032x}"


_VERSION = 0x7 << 76 | 0b10 << 62  # version 7, variant RFC 9562: the bits the random part leaves out
_RANDOM = (1 << 80) - 1 ^ (0xF << 76 | 0b11 << 62)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class FailureRecord(BaseModel):
    """Everything needed to diagnose one failure without re-running the agent.

    What is attached to a span and stored is the record as ``prepare`` leaves it: a naive
    ``timestamp`` is UTC (in the index and in the export alike) and is clamped to
    [1970-01-01T00:00:00Z, 2262-04-11T23:47:16Z], the times an OTLP span event (signed
    64-bit nanoseconds since the epoch) can carry; ``attempts`` is bounded to [0, 2**31 - 1];
    lone surrogates in any text, ids included, become ``?``; the list fields are capped in
    items and total size with a truncation marker.
    """

    model_config = ConfigDict(extra="forbid", use_enum_values=True, defer_build=True)

    failure_id: str = Field(default_factory=_new_failure_id)
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

    model_config = ConfigDict(extra="forbid", defer_build=True)

    session_id: str
    agent_id: str | None = None
    agent_version: str | None = None
    started_at: datetime = Field(default_factory=_now)
    ended_at: datetime = Field(default_factory=_now)
    success: bool
    quality: str | None = None
    failures: int = 0


# --- normalisation: what any consumer of a record (SQLite, OTLP, JSON) can take -------------------
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# The last whole second an OTLP time (nanoseconds since the epoch, signed 64-bit) can carry.
_LATEST = datetime(2262, 4, 11, 23, 47, 16, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
MAX_COUNT = 2**31 - 1  # attempts, failures: a count above this is a bug upstream, not a fact to store


def utc_time(value: datetime) -> datetime:
    """``value`` in UTC (naive means UTC), clamped to [1970-01-01T00:00:00Z, 2262-04-11T23:47:16Z]."""
    if value.tzinfo is None or value.utcoffset() is None:
        value = value.replace(tzinfo=timezone.utc)
    try:
        value = value.astimezone(timezone.utc)
    except OverflowError:  # year 1 at +05:00 or year 9999 at -05:00: outside datetime's own range
        return _EPOCH if value.year < 1970 else _LATEST
    return _EPOCH if value < _EPOCH else _LATEST if value > _LATEST else value


def time_ns(value: datetime) -> int:
    """Nanoseconds since the epoch of an aware datetime (a ``utc_time``), exact (no float rounding)."""
    return (value - _EPOCH) // _MICROSECOND * 1000


def from_time_ns(ns: int) -> datetime:
    """A span's or event's time (nanoseconds since the epoch) as a UTC datetime, as every reader converts it."""
    return datetime.fromtimestamp(ns / 1e9, timezone.utc)


def filled_from_span(record: FailureRecord, *, trace_id: str | None, span_id: str | None,
                     time_ns: int | None = None) -> FailureRecord:
    """``record`` with the trace and span ids of the span that carries it where it has none, and
    the event's time when given (the caller knows whether the record came with its own)."""
    update: dict[str, Any] = {}
    if record.trace_id is None and trace_id:
        update["trace_id"] = trace_id
    if record.span_id is None and span_id:
        update["span_id"] = span_id
    if time_ns:
        update["timestamp"] = from_time_ns(time_ns)
    return record.model_copy(update=update) if update else record


def bounded_count(value: Any, default: int = 1) -> int:
    """An int in [0, MAX_COUNT]; what is not an integer becomes ``default``."""
    if type(value) is not int:
        try:
            value = int(value)
        except (TypeError, ValueError, OverflowError):
            return default
    return 0 if value < 0 else MAX_COUNT if value > MAX_COUNT else value


def valid_text(value: Any) -> Any:
    """Text that every encoder takes (``scrub.encodable``), from any value. Not scrubbed, not cut."""
    if value is None:
        return None
    return encodable(value if isinstance(value, str) else str(value))


_ID_FIELDS = ("failure_id", "session_id", "agent_id", "node_id", "trace_id", "span_id", "agent_version",
              "fingerprint")
_T = TypeVar("_T")
_MARKER_ROOM = 256  # bytes kept free for the truncation marker of a capped list


def _cap_list(items: Sequence[Any], clean: Callable[[Any], _T], size: Callable[[_T], int], budget: int,
              max_items: int, marker: Callable[[int, int], _T], keep_newest: bool) -> list[_T]:
    """At most ``max_items`` items and ``budget`` bytes of ``items``, cleaned, with a marker for the rest.

    The oldest items are kept (marker last), or with ``keep_newest`` the newest (marker first).
    Items are cleaned only until the caps are reached: 20k items cost as much as the few kept.
    """
    if not isinstance(items, Sequence):  # a model_construct record may hold any iterable
        items = list(items)
    kept: list[tuple[_T, int]] = []
    used = 0
    for n, item in enumerate(reversed(items) if keep_newest else items):
        if n >= max_items:
            break
        cleaned = clean(item)
        item_size = size(cleaned) + 2  # and its ", " in the list's JSON
        if used + item_size > budget:
            break
        kept.append((cleaned, item_size))
        used += item_size
    else:
        out = [c for c, _ in kept]
        return out[::-1] if keep_newest else out
    while kept and (len(kept) > max_items - 1 or used > budget - _MARKER_ROOM):  # room for the marker
        used -= kept.pop()[1]
    out = [c for c, _ in kept]
    if keep_newest:
        return [marker(len(items) - len(out), len(items)), *out[::-1]]
    return [*out, marker(len(items) - len(out), len(items))]


_ENCODE = json.JSONEncoder(ensure_ascii=False).encode  # json.dumps with options builds an encoder per call


def _json_size(value: Any) -> int:
    return len(_ENCODE(value).encode("utf-8"))


def _cut_note(dropped: int, total: int, what: str, limits: Limits, budget: int) -> str:
    return (f"{dropped} of {total} {what} not kept (at most {limits.max_items} items, "
            f"{budget} bytes)")


_NOT_NONE = tuple((name, field) for name, field in FailureRecord.model_fields.items() if field.default is not None)


def _defaults_for_none(record: FailureRecord) -> dict[str, Any]:
    """Defaults for fields that hold None but may not (records made with ``model_construct``)."""
    update: dict[str, Any] = {}
    for name, field in _NOT_NONE:
        if getattr(record, name, None) is None:
            update[name] = field.get_default(call_default_factory=True)
    return update


def prepare(record: FailureRecord, limits: Limits | None = None) -> FailureRecord:
    """A scrubbed, size-capped copy with fingerprint and transient filled in.

    What is attached to spans and stored is always a prepared record; preparing twice
    changes nothing. IDs are copied verbatim but for lone surrogates, which become ``?``.
    Also normalised so that no record can fail an encoder (SQLite, OTLP protobuf, JSON):

    - ``timestamp``: naive means UTC; clamped to [1970-01-01T00:00:00Z, 2262-04-11T23:47:16Z];
    - ``attempts``: bounded to [0, 2**31 - 1];
    - a None where the model has a default (``model_construct``) takes the default;
    - ``constraints_violated`` and ``criteria_unmet`` keep their first items, ``tool_calls``
      and ``judge_feedback`` their newest (those that led to the failure): at most
      ``limits.max_items`` items and ``limits.max_field_bytes`` of JSON per field (four times
      that for ``tool_calls``, whose arguments alone may take a field's size); a marker item
      (``__truncated__`` as the text, tool name or judge action) says how many were not kept.
    """
    limits = limits or Limits.from_env()
    repaired = _defaults_for_none(record)
    if repaired:
        record = record.model_copy(update=repaired)
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
        "judge_feedback": _cap_list(
            record.judge_feedback, lambda j: _clean_verdict(j, limits), _verdict_size, limits.max_field_bytes,
            limits.max_items, lambda n, of: JudgeFeedback(
                attempt=0, action=TRUNCATED_KEY,
                feedback=_cut_note(n, of, "earlier verdicts", limits, limits.max_field_bytes)),
            keep_newest=True),
        "tool_calls": _cap_list(
            record.tool_calls, lambda t: _clean_call(t, limits), _call_size, 4 * limits.max_field_bytes,
            limits.max_items, lambda n, of: ToolCallAttempt(
                tool_name=TRUNCATED_KEY, result=_cut_note(n, of, "earlier tool calls", limits,
                                                          4 * limits.max_field_bytes)),
            keep_newest=True),
        "constraints_violated": _cap_texts(record.constraints_violated, limits),
        "criteria_unmet": _cap_texts(record.criteria_unmet, limits),
        "resolution": safe_text(record.resolution, limits) if record.resolution else None,
        "timestamp": utc_time(record.timestamp),
        "attempts": bounded_count(record.attempts),
    }
    for name in _ID_FIELDS:
        value = getattr(record, name)
        clean = valid_text(value)  # the same object when there is nothing to replace
        if clean is not value:
            update[name] = clean
    if record.fingerprint is None:
        update["fingerprint"] = _fingerprint(
            agent_id=update.get("agent_id", record.agent_id),
            node_id=update.get("node_id", record.node_id),
            error_type=error_type,
            message=message,
            traceback=traceback,
        )
    if record.transient is None:
        update["transient"] = is_transient(error_type, message)
    return record.model_copy(update=update)


def _clean_verdict(verdict: JudgeFeedback, limits: Limits) -> JudgeFeedback:
    return verdict.model_copy(update={
        "attempt": bounded_count(verdict.attempt, 0), "action": valid_text(verdict.action),
        "feedback": safe_text(verdict.feedback, limits), "judge_type": valid_text(verdict.judge_type)})


def _clean_call(call: ToolCallAttempt, limits: Limits) -> ToolCallAttempt:
    return call.model_copy(update={
        "tool_name": valid_text(call.tool_name), "arguments": sanitize(call.arguments, limits),
        "result": safe_text(call.result, limits) if call.result is not None else None})


# An item's size in the list's JSON, from its parts (a model_dump per item cost a quarter of a
# typical record_failure); the constant covers the keys and punctuation, so it never undercounts.
def _text_size(text: str | None) -> int:
    return 4 if text is None else len(_ENCODE(text).encode("utf-8"))


def _call_size(call: ToolCallAttempt) -> int:
    return _json_size(call.arguments) + _text_size(call.tool_name) + _text_size(call.result) + 64


def _verdict_size(verdict: JudgeFeedback) -> int:
    return _text_size(verdict.action) + _text_size(verdict.feedback) + _text_size(verdict.judge_type) + 80


def _cap_texts(values: Sequence[Any], limits: Limits) -> list[str]:
    return _cap_list(values, lambda c: safe_text(c, limits), _text_size, limits.max_field_bytes, limits.max_items,
                     lambda n, of: f"{TRUNCATED_KEY}: " + _cut_note(n, of, "more items", limits,
                                                                    limits.max_field_bytes),
                     keep_newest=False)


# --- attribute mapping ----------------------------------------------------------------------
# Scalars travel as themselves, string lists as string sequences, structures as JSON text.
_JSON_FIELDS = frozenset(
    {"judge_feedback", "input_context", "memory_snapshot", "graph_snapshot", "tool_calls"}
)
_LIST_FIELDS = frozenset({"constraints_violated", "criteria_unmet"})


_RECORD_FIELDS = frozenset(FailureRecord.model_fields)  # the class property is slow to read per key
_KIND_VALUES = frozenset(k.value for k in FailureKind)


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
        if field not in _RECORD_FIELDS:
            continue
        if field in _JSON_FIELDS:
            value = load_json_field(field, value)
        elif field in _LIST_FIELDS:
            value = list(value)
        data[field] = value
    return FailureRecord.model_validate(data)


# What each attribute of a prepared record is, as to_attributes writes it: the ingest takes a
# producer's prepared event as it is when it checks out (a model round trip costs ~200 us).
_TEXT_FIELDS = frozenset(_ID_FIELDS) | {"error_type", "error_message", "traceback", "resolution"}
_BOOL_FIELDS = frozenset({"transient", "evolution_triggered"})
_LIST_ITEMS: dict[str, Any] = {}  # judge_feedback, tool_calls -> their TypeAdapter, built on first use


def _items_valid(field: str, text: str) -> bool:
    adapter = _LIST_ITEMS.get(field)
    if adapter is None:
        from pydantic import TypeAdapter

        item = JudgeFeedback if field == "judge_feedback" else ToolCallAttempt
        adapter = _LIST_ITEMS[field] = TypeAdapter(list[item])  # type: ignore[valid-type]
    try:
        adapter.validate_json(text)
    except ValueError:
        return False
    return True


def as_prepared(attributes: Mapping[str, Any], limits: Limits) -> dict[str, AttributeValue] | None:
    """The ``hive.failure`` attributes of a prepared record, as they are, or None if they are not one.

    Checked without a model: every field of the type to_attributes gives it, a known kind, an
    aware timestamp in range, attempts in [0, MAX_COUNT], judge feedback and tool calls that
    validate, strings that encode, and none longer than ``limits`` allow (4 x max_field_bytes,
    tool calls' cap). Unknown keys are left out. For None, prepare the record instead.
    """
    if attributes.get(semconv.FAILURE_PREPARED) is not True:
        return None
    prefix, longest = semconv.FAILURE_PREFIX, 4 * limits.max_field_bytes
    out: dict[str, AttributeValue] = {}
    for key, value in attributes.items():
        if not key.startswith(prefix):
            continue
        field = key[len(prefix):]
        kind = type(value)
        if field in _TEXT_FIELDS or field in _JSON_FIELDS:
            if kind is not str or len(value) > longest or not _storable(value):
                return None
            if field in ("judge_feedback", "tool_calls") and not _items_valid(field, value):
                return None
        elif field in _BOOL_FIELDS:
            if kind is not bool:
                return None
        elif field in _LIST_FIELDS:
            if kind is not tuple or len(value) > limits.max_items + 1 or not all(
                    type(v) is str and len(v) <= longest and _storable(v) for v in value):
                return None
        elif field == "attempts":
            if kind is not int or not 0 <= value <= MAX_COUNT:
                return None
        elif field == "kind":
            if value not in _KIND_VALUES:
                return None
        elif field == "timestamp":
            if kind is not str or not _in_range(value):
                return None
        else:
            continue
        out[key] = value
    if not all(_key(f) in out for f in ("failure_id", "fingerprint", "timestamp", "transient")):
        return None
    return out


def _storable(text: str) -> bool:
    """What ``scrub.encodable`` leaves as it is (the same object when it is ASCII without a NUL)."""
    return encodable(text) == text


def _in_range(stamp: str) -> bool:
    try:
        value = datetime.fromisoformat(stamp)
    except ValueError:
        return False
    return value.tzinfo is not None and _EPOCH <= value <= _LATEST


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
    return outcome_attributes(outcome.session_id, outcome.agent_id, outcome.agent_version, outcome.success,
                              outcome.quality, outcome.failures)


def outcome_attributes(session_id: str, agent_id: str | None, agent_version: str | None, success: bool,
                       quality: str | None, failures: int) -> dict[str, AttributeValue]:
    """``run_attributes`` of a RunOutcome with these fields, for a caller whose values need no validating."""
    attrs: dict[str, AttributeValue] = {
        semconv.RUN_OUTCOME: "success" if success else "failure",
        semconv.RUN_SESSION_ID: valid_text(session_id),
        semconv.RUN_FAILURES: bounded_count(failures, 0),
    }
    for key, value in (
        (semconv.RUN_AGENT_ID, agent_id),
        (semconv.RUN_AGENT_VERSION, agent_version),
        (semconv.RUN_QUALITY, quality),
    ):
        if value is not None:
            attrs[key] = valid_text(value)  # lone surrogates would fail SQLite and the OTLP batch
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
