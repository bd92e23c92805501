"""What an instrumented Hive unit has seen while it ran, kept in context variables.

A *unit* is what owns a failure: a graph node (all its attempts), a colony worker, or an
agent loop that nothing instrumented encloses (the Queen, a bare loop). Nested spans (a
loop inside a worker, a tool inside a loop) report into the enclosing unit, so each real
failure becomes exactly one FailureRecord. A *run* is one Orchestrator.execute.
"""

from __future__ import annotations

import hashlib
import json
import traceback
from contextvars import ContextVar
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

from pydantic import BaseModel

from ..conditions import ConditionSet
from ..record import FailureKind, FailureRecord, JudgeFeedback, ToolCallAttempt
from ..scrub import Limits, cap_text

MAX_ITEMS = 50  # judge verdicts / tool calls kept per unit; the newest win
_LIMITS = Limits.from_env()
MAX_TOOL_NAMES = 10_000  # tool names kept per unit and run for conditions (``tool_calls``); the oldest win
# Hive's Goal stamps itself with the time it was built: not part of what the agent is.
_VOLATILE = frozenset({"created_at", "updated_at"})
# The same exclusion as pydantic's serializer takes it fastest: a set is converted on every call.
_EXCLUDE_VOLATILE = dict.fromkeys(_VOLATILE, True)


class Definition:
    """An agent definition (GraphSpec + Goal, or AgentSpec + model) and its version hash.

    The version is hashed when first asked for: a graph run's span carries it from the start,
    while an agent's run needs it only for what is recorded at its end (its outcome, a failure),
    so an unsampled, successful agent run serialises nothing. Only a failure turns the parts
    into a (scrubbed) snapshot, which record preparation does once.
    """

    __slots__ = ("parts", "_version")

    def __init__(self, parts: dict[str, Any]) -> None:
        self.parts = parts
        self._version: str | None = None

    @property
    def version(self) -> str:
        if self._version is None:
            self._version = version_of(self.parts)
        return self._version

    def snapshot_parts(self) -> dict[str, Any]:
        """The definition as plain data without pydantic defaults: what a reader needs, smaller to scrub."""
        return {k: v.model_dump(mode="json", exclude_defaults=True, exclude=_VOLATILE) if hasattr(v, "model_dump")
                else v for k, v in self.parts.items()}


class RunScope:
    """One graph run (Orchestrator.execute).

    Plain classes with slots, here and for units: one is made per run and per node, and a
    dataclass's generated ``__init__`` (defaults, factories) costs a few times these.
    """

    __slots__ = ("agent_id", "session_id", "definition", "failures", "first_error_type", "conditions", "violated",
                 "condition_failures", "condition_error_type", "tool_names", "input_data", "started", "event_bus")

    def __init__(self, agent_id: str, session_id: str, definition: Definition, conditions: ConditionSet | None = None,
                 input_data: Any = None, started: float = 0.0, event_bus: Any = None) -> None:
        self.agent_id, self.session_id, self.definition = agent_id, session_id, definition
        self.failures = 0
        self.first_error_type: str | None = None
        # Custom failure conditions: checked after each node and at the end, each recorded once per run.
        self.conditions = conditions
        self.violated: set[str] = set()  # ids of conditions already recorded in this run
        self.condition_failures = 0  # records of hard violations and unmet criteria: each fails the run
        self.condition_error_type: str | None = None
        self.tool_names: list[str] = []
        self.input_data = input_data
        self.started = started  # time.monotonic()
        self.event_bus = event_bus  # where CONSTRAINT_VIOLATION is published, when asked to


class UnitScope:
    """One owner of failures: a node, a worker or an outermost agent loop."""

    __slots__ = ("agent_id", "node_id", "session_id", "definition", "input_context", "attempts", "judge",
                 "tool_calls", "signals", "exception", "tool_names")

    def __init__(self, agent_id: str | None, node_id: str | None, session_id: str | None,
                 definition: Definition | None = None, input_context: Any = None,
                 exception: BaseException | None = None) -> None:
        self.agent_id, self.node_id, self.session_id = agent_id, node_id, session_id
        self.definition, self.input_context, self.exception = definition, input_context, exception
        self.attempts = 0
        # What Hive handed us, as it was, on the hot path (a successful run never reads it); models,
        # text and caps only when a failure is recorded.
        self.judge: list[tuple[Any, Any, bool]] = []  # iteration, verdict, custom judge
        self.tool_calls: list[tuple[str, Any, Any, bool]] = []  # name, arguments, result, error
        self.signals: dict[str, str] = {}  # FailureKind value -> Hive's reason
        self.tool_names: list[str] = []  # every tool called, for conditions

    def add_tool_call(self, name: str, arguments: Any, result: Any, is_error: bool) -> None:
        calls = self.tool_calls
        calls.append((name, arguments, result, is_error))
        if len(calls) >= 2 * MAX_ITEMS:
            del calls[:-MAX_ITEMS]
        if len(self.tool_names) < MAX_TOOL_NAMES:
            self.tool_names.append(name)

    def judge_feedback(self) -> list[JudgeFeedback]:
        return [JudgeFeedback(attempt=iteration if isinstance(iteration, int) else n,
                              action=str(getattr(verdict, "action", "")),
                              feedback=str(getattr(verdict, "feedback", "") or ""),
                              judge_type="custom" if custom else "implicit")
                for n, (iteration, verdict, custom) in enumerate(self.judge[-MAX_ITEMS:])]

    def tool_attempts(self, max_chars: int) -> list[ToolCallAttempt]:
        """The tool calls, their results cut to ``max_chars`` (a record scrubs and caps them again)."""
        return [ToolCallAttempt(tool_name=n, arguments=a, is_error=e,
                                result=None if r is None else cap_text(r if isinstance(r, str) else str(r), max_chars))
                for n, a, r, e in self.tool_calls[-MAX_ITEMS:]]

    def failure(self, *, kind: FailureKind, error_type: str, error_message: str,
                memory_snapshot: Any = None, attempts: int | None = None, **fields: Any) -> FailureRecord:
        """The FailureRecord for what this unit saw (raw values: record_failure scrubs them once).

        ``fields`` sets other record fields (or replaces what the unit saw, e.g. ``input_context``).
        """
        tb = format_traceback(self.exception) if self.exception is not None else None
        return FailureRecord(**{
            "session_id": self.session_id, "agent_id": self.agent_id, "node_id": self.node_id, "kind": kind,
            "error_type": error_type, "error_message": error_message, "traceback": tb,
            "attempts": attempts if attempts is not None else max(1, self.attempts),
            "judge_feedback": self.judge_feedback(),
            "input_context": self.input_context, "memory_snapshot": memory_snapshot,
            "graph_snapshot": self.definition.snapshot_parts() if self.definition else None,
            "tool_calls": self.tool_attempts(_LIMITS.max_string_chars),
            "agent_version": self.agent_version,
            **fields,
        })

    @property
    def agent_version(self) -> str | None:
        return self.definition.version if self.definition else None

    def classify(self) -> tuple[FailureKind, str] | None:
        """The failure kind the signals point to (most specific first), with Hive's reason."""
        for kind in (FailureKind.DOOM_LOOP, FailureKind.STALLED, FailureKind.JUDGE_ESCALATED,
                     FailureKind.ESCALATED):
            if kind.value in self.signals:
                return kind, self.signals[kind.value]
        return None


current_run: ContextVar[RunScope | None] = ContextVar("hive_otel_failures_run", default=None)
current_unit: ContextVar[UnitScope | None] = ContextVar("hive_otel_failures_unit", default=None)


_TRACEBACKS: dict[int, tuple[BaseException, str]] = {}  # the last few exceptions seen, formatted once


def format_traceback(exc: BaseException) -> str:
    """The exception's traceback, formatted once however many spans and records need it.

    Frames are listed as traceback.format_exception lists them, without Python 3.11's
    column carets: finding those scans each frame's code object, and Hive's agent loop
    functions are thousands of lines long (milliseconds per crash).
    """
    cached = _TRACEBACKS.get(id(exc))
    if cached is not None and cached[0] is exc:
        return cached[1]
    lines = ["Traceback (most recent call last):\n"]
    lines += traceback.StackSummary.extract(traceback.walk_tb(exc.__traceback__)).format()
    lines += traceback.format_exception_only(type(exc), exc)
    text = "".join(lines)
    if len(_TRACEBACKS) >= 16:
        _TRACEBACKS.pop(next(iter(_TRACEBACKS)))
    _TRACEBACKS[id(exc)] = (exc, text)
    return text


def qualified_name(exc: BaseException) -> str:
    """``error.type`` for an exception: its fully qualified class name."""
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"


def _canonical_bytes(value: Any) -> bytes:
    if isinstance(value, str):  # a model name: what json.dumps below gives a str, without its set-up
        return encode_basestring(value).encode("utf-8", "replace")
    if getattr(type(value), "model_dump_json", None) is _MODEL_DUMP_JSON:
        # What model_dump_json returns, as the bytes it decodes (then we encode again): the same hash
        return value.__pydantic_serializer__.to_json(value, exclude=_EXCLUDE_VOLATILE)  # type: ignore[no-any-return]
    dump = getattr(value, "model_dump_json", None)
    if callable(dump):  # pydantic's own serialiser: fast, stable for one definition
        return dump(exclude=_VOLATILE).encode("utf-8", "replace")
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8", "replace")


_MODEL_DUMP_JSON = BaseModel.model_dump_json
_VERSIONS: dict[bytes, str] = {}  # canonical definition -> version, for the definitions seen last
_VERSIONS_KEPT, _VERSION_CACHED_BYTES = 32, 64 * 1024


def version_of(parts: dict[str, Any]) -> str:
    """Implicit agent version: a short hash of the agent definition, for when Hive gives none.

    Runs of one agent serialise the same definition again and again (Hive builds it afresh per
    session): the hash of the few last ones is looked up rather than computed (sha256 costs
    ten times what a dict lookup of the same bytes does).
    """
    canonical = b"".join([piece for key in sorted(parts)  # key NUL value NUL ..., joined once
                          for piece in (key.encode(), b"\0", _canonical_bytes(parts[key]), b"\0")])
    version = _VERSIONS.get(canonical)
    if version is None:
        version = "sha256:" + hashlib.sha256(canonical).hexdigest()[:12]
        if len(canonical) <= _VERSION_CACHED_BYTES:
            if len(_VERSIONS) >= _VERSIONS_KEPT:
                _VERSIONS.clear()  # atomic, unlike evicting one entry while another thread adds one
            _VERSIONS[canonical] = version
    return version
