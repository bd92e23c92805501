"""OpenTelemetry instrumentation for Hive (aden-hive): failures as spans and FailureRecords.

The only module that imports ``framework.*``. Hooks, all undone by ``uninstrument()``:

- ``Orchestrator.execute``            -> ``invoke_workflow`` span, run outcome (graph path)
- ``NodeWorker._execute_with_retries`` -> node span with one child span per attempt; the
  node's ``execute`` is wrapped on the instance to keep exception type and traceback
- ``Worker.run``                      -> ``invoke_agent`` span for a colony worker, run outcome
- ``AgentLoop.execute``               -> ``invoke_agent`` span (Queen, workers, event-loop nodes)
- ``AgentLoop._execute_tool``         -> ``execute_tool`` span; ``_judge_turn`` -> full judge text
  and a ``gen_ai.evaluation.result`` event for each RETRY / ESCALATE verdict
- ``EventBus.emit_node_stalled`` and the other emitters of degradation signals (doom loop,
  escalation, stream inactivity, retries) -> span events and the unit's signals. Only those
  emitters: the dozen other events of a run pass through Hive untouched
- ``DecisionTracker.start_run``       -> Hive's log trace_id := the OTel trace id

When a node, a graph run, a colony worker or an outermost agent loop ends, the Goal's
constraints and success criteria and the user's conditions are checked on what it produced
(``conditions.py``): a hard violation or an unmet criterion fails the run, a soft violation is
recorded and the run stays a success.

Wrappers only build records and add span events; the index processor does all I/O.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import logging
import os
from collections.abc import Callable, Collection, ItemsView, Iterator, Mapping
from datetime import datetime, timezone
from time import monotonic, time_ns
from typing import Any

from opentelemetry import context, trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.trace import Span, Status, StatusCode, format_trace_id
from pydantic import BaseModel

from .. import conditions, semconv
from ..conditions import ConditionSet, Step, Violation, conditions_for
from ..export import export_content_enabled
from ..fingerprint import fingerprint
from ..record import FailureKind, RunOutcome
from ..scrub import Limits, cap_text, safe_text
from ..spans import record_failure, record_run, record_run_fields
from .package import _instruments
from .scopes import (MAX_ITEMS, MAX_TOOL_NAMES, Definition, RunScope, UnitScope, current_run, current_unit,
                     format_traceback, qualified_name)

_log = logging.getLogger(__name__)

# (module, class, method) of every hook; a method a Hive version lacks is skipped, not fatal.
_HOOKS: tuple[tuple[str, str, str], ...] = (
    ("framework.orchestrator.orchestrator", "Orchestrator", "execute"),
    ("framework.orchestrator.node_worker", "NodeWorker", "_execute_with_retries"),
    ("framework.host.worker", "Worker", "run"),
    ("framework.agent_loop.agent_loop", "AgentLoop", "execute"),
    ("framework.agent_loop.agent_loop", "AgentLoop", "_execute_tool"),
    ("framework.agent_loop.agent_loop", "AgentLoop", "_judge_turn"),
    ("framework.host.event_bus", "EventBus", "emit_node_stalled"),
    ("framework.host.event_bus", "EventBus", "emit_tool_doom_loop"),
    ("framework.host.event_bus", "EventBus", "emit_escalation_requested"),
    ("framework.host.event_bus", "EventBus", "emit_stream_inactive"),
    ("framework.host.event_bus", "EventBus", "emit_stream_ttft_exceeded"),
    ("framework.host.event_bus", "EventBus", "emit_node_retry"),
    ("framework.tracker.decision_tracker", "DecisionTracker", "start_run"),
    ("framework.host.stream_runtime", "StreamDecisionTracker", "start_run"),
)
_FAILED_WORKER_STATUSES = {"failed": FailureKind.WORKER_FAILED, "timeout": FailureKind.TIMEOUT}
_LIMITS = Limits.from_env()
# EventBus emitter -> (span event name, FailureKind signal or None, the argument that says why)
_SIGNAL_EMITTERS = {
    "emit_node_stalled": (semconv.EVENT_STALLED, FailureKind.STALLED, "reason"),
    "emit_tool_doom_loop": (semconv.EVENT_DOOM_LOOP, FailureKind.DOOM_LOOP, "description"),
    "emit_escalation_requested": (semconv.EVENT_ESCALATION, FailureKind.ESCALATED, "reason"),
    "emit_stream_inactive": (semconv.EVENT_STREAM_INACTIVE, None, "reason"),
    "emit_stream_ttft_exceeded": (semconv.EVENT_STREAM_INACTIVE, None, "reason"),
    "emit_node_retry": (semconv.EVENT_RETRY, None, "error"),
}


_slipped: set[str] = set()
_SCRUBBED_REASONS: dict[str, str] = {}  # a signal's reason -> as its span event carries it


def _scrubbed_reason(reason: Any) -> str:
    """``safe_text(reason)``, remembered for the last few texts: Hive gives the same reasons again and
    again (``Doom loop detected: 3 identical consecutive tool calls (crm_lookup)``), and scrubbing
    one runs a dozen patterns over it."""
    if type(reason) is not str:
        return safe_text(reason)
    scrubbed = _SCRUBBED_REASONS.get(reason)
    if scrubbed is None:
        scrubbed = safe_text(reason)
        if len(reason) <= 1024:
            if len(_SCRUBBED_REASONS) >= 64:
                _SCRUBBED_REASONS.clear()  # atomic, unlike evicting one entry while another thread adds one
            _SCRUBBED_REASONS[reason] = scrubbed
    return scrubbed


def _slip(what: str, exc: Exception) -> None:
    """A bug in our own bookkeeping: Hive continues; each kind is logged once.

    Hot paths catch with a plain ``try`` (free in Python 3.11 until something raises) and
    call this; the cold ones use ``with _guard(what)``.
    """
    if what not in _slipped:
        _slipped.add(what)
        _log.warning("hive-failures: instrumentation slip in %s (Hive continues)", what, exc_info=exc)


class _guard:  # noqa: N801 - used like a function: ``with _guard("what"):``
    """Run our own bookkeeping without ever raising into Hive; log each kind of slip once."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if isinstance(exc, Exception):
            _slip(self.what, exc)
            return True
        return False


_Restore = tuple[Any, Any, Any, Any]  # what _activate changed: context token, unit token, log context and token


def _activate(tracer: trace.Tracer, name: str, attributes: Mapping[str, Any] | None, unit: UnitScope | None,
              log_context: Any) -> tuple[Span, _Restore]:
    """Start a span for a Hive step and make it current: while Hive runs inside it, ``unit``
    collects what happens and Hive's JSON logs carry the span's trace and span ids.
    ``_deactivate(span, restore)`` undoes that and ends the span.

    Two plain functions in a ``try``/``finally`` rather than a context manager (a class of ours,
    or the SDK's generator ones): they are on every step's path, and a ``with`` costs ~3k
    instructions a span more.
    """
    # The current context, read once (not by the tracer, its sampler and set_span_in_context each):
    # the span's parent, and what the span is made current in.
    parent = context.get_current()
    span = _start_span(tracer, name, attributes, parent)
    context_token = context.attach(trace.set_span_in_context(span, parent))
    unit_token = current_unit.set(unit) if unit is not None else None
    log_token = None
    if log_context is not None:
        ctx = span.get_span_context()
        if ctx.is_valid:
            log_token = log_context.set({**(log_context.get() or {}), "trace_id": _trace_hex(ctx.trace_id),
                                         "span_id": f"{ctx.span_id:016x}"})  # as format_span_id
    return span, (context_token, unit_token, log_context, log_token)


def _deactivate(span: Span, restore: _Restore) -> None:
    context_token, unit_token, log_context, log_token = restore
    if log_token is not None:
        log_context.reset(log_token)
    if unit_token is not None:
        current_unit.reset(unit_token)
    context.detach(context_token)
    span.end()


_last_trace: tuple[int, str] = (0, format_trace_id(0))


def _trace_hex(trace_id: int) -> str:
    """format_trace_id, remembered for the last trace: a run's spans all share it."""
    global _last_trace
    last = _last_trace
    if last[0] != trace_id:
        last = _last_trace = (trace_id, format_trace_id(trace_id))
    return last[1]


def _record(span: Span, unit: UnitScope, *, set_error: bool = True, **fields: Any) -> None:
    """Build the unit's FailureRecord and put it on the span, unless nobody records the span."""
    if span.is_recording():
        record_failure(unit.failure(**fields), span, set_error=set_error)


def _record_outcome(span: Span, session_id: Any, agent_id: Any, agent_version: str | None, *, success: bool,
                    quality: str | None, failures: int) -> None:
    """The run's outcome on its span. Ids that are exact text need no RunOutcome (its validation
    passes them, and our own bool, int and version text, unchanged: 23k instructions for nothing);
    anything else Hive gave is validated by one, as before."""
    if type(session_id) is str and (agent_id is None or type(agent_id) is str):
        record_run_fields(span, session_id, agent_id, agent_version, success=success, quality=quality,
                          failures=failures)
    else:
        now = datetime.now(timezone.utc)  # start/end are read from the span by the processor
        record_run(RunOutcome(session_id=session_id, agent_id=agent_id, agent_version=agent_version, started_at=now,
                              ended_at=now, success=success, quality=quality, failures=failures), span)


def _violation_kind(violation: Violation) -> FailureKind:
    return FailureKind.CONSTRAINT_VIOLATED if violation.condition.hard else FailureKind.SOFT_CONSTRAINT_VIOLATED


def _record_violations(span: Span, unit: UnitScope, constraints: list[Violation], criteria: list[Violation],
                       step: Step, memory: Any) -> tuple[int, str | None]:
    """One record per violated constraint, one for the unmet criteria; what fails the run: (count, error type).

    Grouped by condition (the fingerprint ignores the observed values); a violation is
    systematic, never transient. The values the check read go with the step's input into
    ``input_context``, which stays in the local index unless content export is on.
    """
    failing, first = 0, None
    for violation in constraints:
        condition, kind = violation.condition, _violation_kind(violation)
        error_type = f"hive.{kind.value}"
        severity = "hard" if condition.hard else "soft"
        _record(span, unit, set_error=condition.hard, kind=kind, error_type=error_type,
                error_message=f"{severity} constraint {condition.id} ({condition.category}) violated: "
                              f"{violation.check_text}",
                memory_snapshot=memory, constraints_violated=[condition.id], transient=False,
                input_context={"input": step.input, "observed": violation.observed},
                fingerprint=fingerprint(agent_id=unit.agent_id, node_id=unit.node_id, error_type=error_type,
                                        message=condition.id))
        if condition.hard:
            failing, first = failing + 1, first or error_type
    if criteria:
        ids = [v.condition.id for v in criteria]
        error_type = f"hive.{FailureKind.CRITERIA_UNMET.value}"
        _record(span, unit, kind=FailureKind.CRITERIA_UNMET, error_type=error_type,
                error_message="success criteria not met: " + "; ".join(f"{v.condition.id} ({v.check_text})"
                                                                      for v in criteria),
                memory_snapshot=memory, criteria_unmet=ids, transient=False,
                input_context={"input": step.input, "observed": {v.condition.id: v.observed for v in criteria}},
                fingerprint=fingerprint(agent_id=unit.agent_id, node_id=unit.node_id, error_type=error_type,
                                        message=" ".join(sorted(ids))))
        failing, first = failing + 1, first or error_type
    return failing, first


def _read_memory(buffer: Any) -> Any:
    memory = None
    with _guard("buffer snapshot"):
        memory = buffer.read_all() if buffer is not None else None
    return memory


def _agent_conditions(span: Span, unit: UnitScope, conditions: ConditionSet, step: Step, *,
                      check_criteria: bool) -> tuple[list[Violation], int]:
    """Check and record an agent's (a worker's, an outermost loop's) conditions: its violations, and how
    many records fail its run."""
    violations = conditions.check_constraints(step)
    criteria = conditions.check_criteria(step) if check_criteria else []
    return violations, _record_violations(span, unit, violations, criteria, step, None)[0]


async def _publish_violations(bus: Any, violations: list[Violation], *, stream_id: Any, execution_id: Any,
                              node_id: Any) -> None:
    """Hive's CONSTRAINT_VIOLATION, which Hive itself never publishes, for its own consumers (the Queen)."""
    if bus is None or not violations:
        return
    with _guard("publish violation"):
        from framework.host.event_bus import AgentEvent, EventType

        for violation in violations:
            condition = violation.condition
            await bus.publish(AgentEvent(
                type=EventType.CONSTRAINT_VIOLATION, stream_id=str(stream_id or ""), node_id=node_id,
                execution_id=str(execution_id or "") or None,
                data={"constraint_id": condition.id, "description": condition.description or violation.check_text,
                      "severity": "hard" if condition.hard else "soft", "category": condition.category,
                      "check": violation.check_text}))


def _record_exception(span: Span, exc: BaseException) -> None:
    """The standard ``exception`` span event, with the traceback formatted once (see format_traceback)."""
    if span.is_recording():
        span.add_event("exception", {"exception.type": qualified_name(exc),  # scrubbed, as records are
                                     "exception.message": safe_text(str(exc), _LIMITS),
                                     "exception.stacktrace": safe_text(format_traceback(exc), _LIMITS)})


def _fail_span(span: Span, error_type: str, message: str) -> None:
    span.set_attribute(semconv.ERROR_TYPE, error_type)
    span.set_status(Status(StatusCode.ERROR, message[:512]))


def _agent_info(ctx: Any) -> dict[str, Any]:
    spec = getattr(ctx, "agent_spec", None)
    agent_id = getattr(ctx, "agent_id", None)
    execution_id = getattr(ctx, "execution_id", None)
    return {
        "agent_id": getattr(spec, "id", None) or agent_id,
        "name": getattr(spec, "name", None) or agent_id or "agent",
        "session_id": getattr(ctx, "session_id", None) or execution_id or None,
        "colony_id": getattr(ctx, "colony_id", None),
        "stream_id": getattr(ctx, "stream_id", None),
        "execution_id": execution_id,
        "model": getattr(getattr(ctx, "llm", None), "model", None),
        "spec": spec,
    }


def _agent_unit(info: dict[str, Any], input_context: Any) -> UnitScope:
    """The unit that owns an agent's failures (a colony worker, or a loop nothing encloses)."""
    spec = info["spec"]
    definition = Definition({"agent_spec": spec, "model": info["model"]}) if spec is not None else None
    return UnitScope(info["agent_id"], None, info["session_id"], definition, input_context)


_AGENT_ATTRIBUTES = ((semconv.GEN_AI_AGENT_ID, "agent_id"), (semconv.GEN_AI_AGENT_NAME, "name"),
                     (semconv.GEN_AI_CONVERSATION_ID, "session_id"), (semconv.HIVE_COLONY_ID, "colony_id"),
                     (semconv.HIVE_STREAM_ID, "stream_id"), (semconv.HIVE_EXECUTION_ID, "execution_id"),
                     (semconv.GEN_AI_REQUEST_MODEL, "model"))


def _agent_attributes(info: dict[str, Any]) -> dict[str, Any]:
    """An agent span's attributes: the ids Hive gave, as text; none that is missing or empty."""
    attributes: dict[str, Any] = {semconv.GEN_AI_OPERATION_NAME: semconv.OP_INVOKE_AGENT}
    for key, field in _AGENT_ATTRIBUTES:
        value = info[field]
        if value is not None and value != "":
            attributes[key] = value if type(value) is str else str(value)
    return attributes


_NAMELESS: dict[type, bool] = {}  # graph class -> a pydantic model with no ``name`` but as an extra field


def _graph_name(graph: Any) -> Any:
    """``getattr(graph, "name", None)``. Hive's GraphSpec has a name only as an extra field, and a
    pydantic model asked for a field it lacks builds and formats an AttributeError (40 times
    the cost of a read): for such a class, the extra fields are read instead."""
    cls = type(graph)
    nameless = _NAMELESS.get(cls)
    if nameless is None:
        nameless = _NAMELESS[cls] = (isinstance(graph, BaseModel) and "name" not in cls.model_fields
                                     and not any("name" in vars(k) for k in cls.__mro__))
    if nameless:
        extra = graph.__pydantic_extra__
        return extra.get("name") if extra else None
    return getattr(graph, "name", None)


class _WorkflowAttributes(Mapping[str, Any]):
    """A graph run's span attributes, with its agent version (a serialisation of the definition)
    computed when they are first read: by a sampler that looks at them, or by the SDK as it
    records the span. A span that is dropped unread (a sampler that samples by trace id or
    parent) costs no version."""

    __slots__ = ("_named", "_definition", "_all")

    def __init__(self, named: dict[str, Any], definition: Definition) -> None:
        self._named, self._definition = named, definition
        self._all: dict[str, Any] | None = None

    def _attributes(self) -> dict[str, Any]:
        if self._all is None:
            try:
                self._all = {**self._named, semconv.HIVE_AGENT_VERSION: self._definition.version}
            except Exception as exc:  # read inside the SDK's start_span: never raise into it
                _slip("workflow attributes", exc)
                self._all = dict(self._named)  # the span keeps what is known without the version
        return self._all

    def __getitem__(self, key: str) -> Any:
        return self._attributes()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._attributes())

    def __len__(self) -> int:
        return len(self._attributes())

    def items(self) -> ItemsView[str, Any]:  # what the SDK copies a span's attributes with: the dict's own
        return self._attributes().items()


def _start_span(tracer: trace.Tracer, name: str, attributes: Mapping[str, Any] | None,
                parent: context.Context | None = None) -> Span:
    """A span for a Hive step; its status and exception events are ours to set, not the SDK's.

    ``parent``: the current context when the caller has read it already (else the tracer reads it)."""
    return tracer.start_span(name, context=parent, attributes=attributes, record_exception=False,
                             set_status_on_exception=False)


class _Attempts:
    """One span per attempt of a graph node, named ``hive.node <id>``, as OTel HTTP clients do
    per resend. Hive flattens an attempt's exception into a string; ``execute``, wrapped on
    the instance, sees it first. The last attempt's span stays open until the node is done,
    so the node's failure record lands on it; earlier ones end when their attempt did.
    """

    __slots__ = ("tracer", "name", "attributes", "unit", "_node_impl", "_original", "_had_own", "_span", "_ended_at")

    def __init__(self, tracer: trace.Tracer, node_impl: Any, name: str, attributes: dict[str, Any],
                 unit: UnitScope) -> None:
        self.tracer, self.name, self.attributes, self.unit = tracer, name, attributes, unit
        self._node_impl, self._span, self._ended_at = node_impl, None, None
        self._original = getattr(node_impl, "execute", None)
        self._had_own = "execute" in getattr(node_impl, "__dict__", {})
        if self._original is None or isinstance(getattr(self._original, "__self__", None), _Attempts):
            self._original = None  # nothing to wrap, or an outer call already wraps it
            return
        try:  # on the instance: the object itself is untouched (Hive checks isinstance(node_impl, AgentLoop))
            node_impl.execute = self._execute
        except (AttributeError, TypeError):
            self._original = None

    async def _execute(self, ctx: Any) -> Any:
        if self._span is not None:
            self._end_open_span(self._ended_at)
        unit = self.unit
        unit.attempts += 1
        parent = context.get_current()  # read once, as _activate does
        span = self._span = _start_span(
            self.tracer, self.name, {**self.attributes, semconv.HIVE_NODE_ATTEMPT: unit.attempts}, parent)
        token = context.attach(trace.set_span_in_context(span, parent))
        try:
            result = await self._original(ctx)  # type: ignore[misc]
        except Exception as exc:
            with _guard("attempt raised"):
                self.unit.exception = exc
                _record_exception(span, exc)
                _fail_span(span, qualified_name(exc), str(exc))
            raise
        finally:
            context.detach(token)
            self._ended_at = time_ns()
        try:
            if not getattr(result, "success", True):
                _fail_span(span, "hive.node_failed", str(getattr(result, "error", "") or "node failed"))
        except Exception as exc:
            _slip("attempt end", exc)
        return result

    def last_span(self) -> Span:
        """The last attempt's span; a fresh one if Hive failed the node before any attempt ran."""
        if self._span is None:
            self._span = _start_span(self.tracer, self.name, self.attributes)
        return self._span

    def _end_open_span(self, end_time: int | None) -> None:
        """End the open attempt's span at ``end_time`` (None: now)."""
        span, self._span = self._span, None
        if span is not None:
            span.end(end_time=end_time)

    def close(self) -> None:
        """End the last span (now: it covers Hive's verdict on the node) and restore ``execute``."""
        try:
            self._end_open_span(None)
            if self._original is not None:
                if self._had_own:
                    self._node_impl.execute = self._original
                else:
                    del self._node_impl.execute
        except Exception as exc:
            _slip("node restore", exc)


def _hive_log_context() -> Any:
    """Hive's log-context ContextVar (framework.observability), or None if this Hive has none."""
    try:
        from framework.observability import logging as hive_logging

        return hive_logging.trace_context
    except (ImportError, AttributeError):
        return None


class _Hooks:
    """The wrappers, bound to one tracer. An async hook gets ``wrapped``, Hive's unbound method,
    and calls it as ``wrapped(instance, *args, **kwargs)``."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer
        self.export_content = export_content_enabled()  # tool arguments on spans only when opted in
        self.log_context = _hive_log_context()
        self.publish_violations = os.environ.get(semconv.ENV_PUBLISH_VIOLATIONS, "").strip().lower() in (
            "1", "true", "yes", "on")

    # --- graph path --------------------------------------------------------------------------
    async def orchestrator_execute(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        graph = args[0] if args else kwargs.get("graph")
        goal = args[1] if len(args) > 1 else kwargs.get("goal")
        run = None
        try:
            definition = Definition({"graph": graph, "goal": goal})
            session_id = ""
            getter = getattr(instance, "_get_runtime_log_session_id", None)
            if callable(getter):
                session_id = getter() or ""
            session_id = session_id or str(getattr(instance, "_execution_id", "") or getattr(instance, "_run_id", ""))
            agent_id = str(getattr(graph, "id", "graph"))
            run = RunScope(agent_id, session_id, definition, conditions_for(goal, agent_id),
                           args[2] if len(args) > 2 else kwargs.get("input_data"), monotonic(),
                           getattr(instance, "_event_bus", None))
        except Exception as exc:
            _slip("workflow start", exc)
        attributes: Mapping[str, Any] = {}
        if run:
            try:
                attributes = _WorkflowAttributes({
                    semconv.GEN_AI_OPERATION_NAME: semconv.OP_INVOKE_WORKFLOW, semconv.GEN_AI_AGENT_ID: run.agent_id,
                    semconv.GEN_AI_AGENT_NAME: str(_graph_name(graph) or run.agent_id),
                    semconv.GEN_AI_CONVERSATION_ID: run.session_id}, run.definition)
            except Exception as exc:
                _slip("workflow attributes", exc)
        name = run.agent_id if run else "graph"
        # Hive sets its own log trace context on this path (see start_run).
        span, restore = _activate(self.tracer, f"{semconv.OP_INVOKE_WORKFLOW} {name}", attributes, None, None)
        try:
            token = current_run.set(run) if run else None
            try:
                result = await wrapped(instance, *args, **kwargs)
            except BaseException as exc:
                with _guard("workflow raised"):
                    if run and not isinstance(exc, asyncio.CancelledError):
                        self._finish_workflow(span, run, None, exc)
                raise
            finally:
                if token is not None:
                    current_run.reset(token)
            violations: list[Violation] = []
            if run:
                try:
                    violations = self._finish_workflow(span, run, result, None)
                except Exception as exc:
                    _slip("workflow end", exc)
            if violations and self.publish_violations and run:
                await _publish_violations(run.event_bus, violations, stream_id=getattr(instance, "_stream_id", ""),
                                          execution_id=getattr(instance, "_execution_id", ""), node_id=None)
            return result
        finally:
            _deactivate(span, restore)

    def _finish_workflow(self, span: Span, run: RunScope, result: Any, exc: BaseException | None) -> list[Violation]:
        """Record the run's outcome (and a failure no node owns); check its conditions. Returns the
        constraint violations recorded here."""
        success = exc is None and bool(getattr(result, "success", False))
        if not success:
            error = str(exc) if exc is not None else str(getattr(result, "error", "") or "execution failed")
            if run.failures == 0:  # failed before or outside any node (invalid graph, missing tools)
                unit = UnitScope(agent_id=run.agent_id, node_id=None, session_id=run.session_id,
                                 definition=run.definition, exception=exc)
                error_type = qualified_name(exc) if exc is not None else "hive.execution_failed"
                _record(span, unit, kind=FailureKind.EXCEPTION, error_type=error_type,
                        error_message=error)
                run.failures += 1
                run.first_error_type = run.first_error_type or error_type
            _fail_span(span, run.first_error_type or "hive.execution_failed", error)
        violations: list[Violation] = []
        if result is not None and run.conditions is not None:
            violations = self._run_conditions(span, run, run.conditions, result, check_criteria=success)
        if success and run.condition_failures:  # Hive says success; the goal's conditions say otherwise
            success = False
            _fail_span(span, run.condition_error_type or "hive.constraint_violated",
                       "the run broke its goal's hard constraints or missed its success criteria")
        if span.is_recording():  # nobody sees the outcome of a span that is not recorded
            quality = getattr(result, "execution_quality", None) if result is not None else "failed"
            _record_outcome(span, run.session_id, run.agent_id, run.definition.version, success=success,
                            quality=str(quality) if quality else None, failures=run.failures + run.condition_failures)
        return violations

    def _run_conditions(self, span: Span, run: RunScope, conditions: ConditionSet, result: Any, *,
                        check_criteria: bool) -> list[Violation]:
        """The run-level check: constraints no node broke yet, and (if Hive says success) the criteria."""
        state = getattr(result, "session_state", None)
        memory = state.get("data_buffer") if isinstance(state, dict) else None
        step = Step(output=getattr(result, "output", None), memory=memory, input=run.input_data,
                    tokens=getattr(result, "total_tokens", None), tool_calls=run.tool_names,
                    duration_s=monotonic() - run.started)
        constraints = conditions.check_constraints(step, skip=run.violated)
        criteria = conditions.check_criteria(step) if check_criteria else []
        if constraints or criteria:  # the common case, a run that meets its goal, records nothing
            unit = UnitScope(agent_id=run.agent_id, node_id=None, session_id=run.session_id,
                             definition=run.definition, input_context=run.input_data)
            self._count_violations(run, *_record_violations(span, unit, constraints, criteria, step, memory),
                                   constraints)
        return constraints

    @staticmethod
    def _count_violations(run: RunScope, failing: int, error_type: str | None, constraints: list[Violation]) -> None:
        run.violated.update(v.condition.id for v in constraints)
        run.condition_failures += failing
        run.condition_error_type = run.condition_error_type or error_type

    async def node_with_retries(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        node_impl = args[0] if args else kwargs.get("node_impl")
        ctx = args[1] if len(args) > 1 else kwargs.get("ctx")
        run = current_run.get()
        node_id = str(getattr(ctx, "node_id", None) or getattr(getattr(instance, "node_spec", None), "id", "node"))
        if run is not None:
            unit = UnitScope(run.agent_id, node_id, run.session_id, run.definition, getattr(ctx, "input_data", None))
            attributes = {semconv.HIVE_NODE_ID: node_id, semconv.GEN_AI_AGENT_ID: run.agent_id}
            conditions = run.conditions
        else:
            unit = UnitScope(None, node_id, None, None, getattr(ctx, "input_data", None))
            attributes, conditions = {semconv.HIVE_NODE_ID: node_id}, None
        attempts = _Attempts(self.tracer, node_impl, f"hive.node {node_id}", attributes, unit)
        started = monotonic()
        token = current_unit.set(unit)
        try:
            result = await wrapped(instance, *args, **kwargs)
        except BaseException:
            attempts.close()
            raise
        finally:
            current_unit.reset(token)
        failed = not getattr(result, "success", True)
        violations: list[Violation] = []
        if conditions is not None and unit.tool_names:
            try:
                run.tool_names += unit.tool_names[:MAX_TOOL_NAMES - len(run.tool_names)]  # type: ignore[union-attr]
            except Exception as exc:
                _slip("node conditions", exc)
        if failed or (conditions is not None and conditions.constraints):
            # The whole data buffer (the node's ctx.buffer only shows its input keys).
            buffer = getattr(getattr(instance, "_gc", None), "buffer", None) or getattr(ctx, "buffer", None)
            if failed:
                with _guard("node end"):
                    self._node_failed(attempts.last_span(), unit, run, buffer, result)
            if conditions is not None and conditions.constraints:
                with _guard("node conditions"):
                    violations = self._node_conditions(attempts.last_span(), unit, run, conditions, buffer,  # type: ignore[arg-type]
                                                       result, monotonic() - started)
        attempts.close()
        if violations and self.publish_violations and run is not None:
            await _publish_violations(run.event_bus, violations, stream_id=getattr(ctx, "stream_id", ""),
                                      execution_id=getattr(ctx, "execution_id", ""), node_id=node_id)
        return result

    def _node_conditions(self, span: Span, unit: UnitScope, run: RunScope, conditions: ConditionSet, buffer: Any,
                         result: Any, duration_s: float) -> list[Violation]:
        """The constraints this node's output breaks first in the run: the node is what broke them.

        Called only when the run has constraints; its success criteria are checked when it ends.
        """
        output = getattr(result, "output", None)
        # Memory as the node leaves it: Hive writes the node's output to the buffer only after this hook.
        memory = {**(_read_memory(buffer) or {}), **(output if isinstance(output, dict) else {})}
        step = Step(output=output, memory=memory, input=unit.input_context,
                    tokens=getattr(result, "tokens_used", None), tool_calls=unit.tool_names, duration_s=duration_s)
        constraints = conditions.check_constraints(step, skip=run.violated)
        self._count_violations(run, *_record_violations(span, unit, constraints, [], step, memory), constraints)
        return constraints

    def _node_failed(self, span: Span, unit: UnitScope, run: RunScope | None, buffer: Any, result: Any) -> None:
        error = str(getattr(result, "error", "") or "node failed")
        memory = _read_memory(buffer)
        if unit.exception is not None:
            kind, error_type, message = FailureKind.EXCEPTION, qualified_name(unit.exception), str(unit.exception)
        else:
            signal = unit.classify()
            kind, message = signal if signal else (FailureKind.NODE_FAILED, error)
            error_type = f"hive.{kind.value}"
        _record(span, unit, kind=kind, error_type=error_type, error_message=message or error,
                memory_snapshot=memory)
        if run is not None:
            run.failures += 1
            run.first_error_type = run.first_error_type or error_type

    # --- current runtime -----------------------------------------------------------------------
    async def worker_run(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        unit = info = ctx = conditions = None
        with _guard("worker start"):
            ctx = getattr(instance, "_context", None)
            info = _agent_info(ctx)
            info["session_id"] = info["session_id"] or str(getattr(instance, "id", ""))
            unit = _agent_unit(info, {"task": getattr(instance, "task", None),
                                      "input_data": getattr(ctx, "input_data", None)})
            conditions = conditions_for(getattr(ctx, "goal", None), info["agent_id"])
        name = (info or {}).get("name") or "worker"
        attributes: dict[str, Any] = {}
        with _guard("worker attributes"):
            attributes = {**_agent_attributes(info or {}), semconv.HIVE_WORKER_ID: str(getattr(instance, "id", ""))}
        span, restore = _activate(self.tracer, f"{semconv.OP_INVOKE_AGENT} {name}", attributes, unit, self.log_context)
        try:
            result = await wrapped(instance, *args, **kwargs)
        except BaseException as exc:
            with _guard("worker crashed"):
                if unit and not isinstance(exc, asyncio.CancelledError):
                    if unit.exception is not exc:  # crashed outside the loop: no inner span has it
                        _record_exception(span, exc)
                    unit.exception = exc
                    _record(span, unit, kind=FailureKind.WORKER_CRASHED, error_type=qualified_name(exc),
                            error_message=str(exc))
                    self._run_outcome(span, unit, success=False, quality="crashed", failures=1)
            raise
        else:
            violations: list[Violation] = []
            with _guard("worker end"):
                if unit:
                    violations = self._worker_done(span, unit, result, conditions, getattr(ctx, "input_data", None))
            if violations and self.publish_violations:
                await _publish_violations(getattr(instance, "_event_bus", None), violations,
                                          stream_id=getattr(ctx, "stream_id", ""),
                                          execution_id=getattr(ctx, "execution_id", ""), node_id=None)
            return result
        finally:
            _deactivate(span, restore)

    def _worker_done(self, span: Span, unit: UnitScope, result: Any, conditions: ConditionSet | None,
                     step_input: Any) -> list[Violation]:
        """The worker's run outcome, its failure if Hive failed it, and its conditions' violations (returned)."""
        status = str(getattr(result, "status", "") or "")
        span.set_attribute(semconv.HIVE_WORKER_STATUS, status)
        failed_kind = _FAILED_WORKER_STATUSES.get(status)
        violations, failing = [], 0
        if conditions is not None:  # what a worker hands back is its report's data and its loop's output
            output = {**(getattr(result, "data", None) or {}), **(getattr(result, "output", None) or {})}
            step = Step(output=output, input=step_input, tokens=getattr(result, "tokens_used", None),
                        tool_calls=unit.tool_names, duration_s=getattr(result, "duration_seconds", None))
            violations, failing = _agent_conditions(span, unit, conditions, step, check_criteria=failed_kind is None)
        if failed_kind is None:
            self._run_outcome(span, unit, success=not failing, quality=status or None, failures=failing)
            return violations
        message = str(getattr(result, "error", None) or getattr(result, "summary", None) or status)
        signal = unit.classify()
        if unit.exception is not None:
            kind, error_type, message = FailureKind.WORKER_CRASHED, qualified_name(unit.exception), str(unit.exception)
        elif signal is not None:
            kind, reason = signal
            error_type = f"hive.{kind.value}"
            message = f"{reason}; {message}" if reason and reason not in message else message
        else:
            kind, error_type = failed_kind, f"hive.{failed_kind.value}"
        _record(span, unit, kind=kind, error_type=error_type, error_message=message)
        self._run_outcome(span, unit, success=False, quality=status, failures=1 + failing)
        return violations

    def _run_outcome(self, span: Span, unit: UnitScope, *, success: bool, quality: str | None, failures: int) -> None:
        if unit.session_id and span.is_recording():
            _record_outcome(span, unit.session_id, unit.agent_id, unit.agent_version, success=success,
                            quality=quality, failures=failures)

    async def agent_loop_execute(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        info: dict[str, Any] = {}
        owner: UnitScope | None = None
        conditions: ConditionSet | None = None
        try:
            ctx = args[0] if args else kwargs.get("ctx")
            info = _agent_info(ctx)
            if current_unit.get() is None:  # nothing encloses this loop: it owns its failures (and conditions)
                owner = _agent_unit(info, getattr(ctx, "input_data", None))
                conditions = conditions_for(getattr(ctx, "goal", None), info["agent_id"])
        except Exception as exc:
            _slip("loop start", exc)
        attributes: dict[str, Any] = {}
        try:
            attributes = _agent_attributes(info)
        except Exception as exc:
            _slip("loop attributes", exc)
        span, restore = _activate(self.tracer, f"{semconv.OP_INVOKE_AGENT} {info.get('name') or 'agent'}", attributes,
                                  owner, self.log_context)
        try:
            result = await wrapped(instance, *args, **kwargs)
        except BaseException as exc:
            with _guard("loop raised"):
                if not isinstance(exc, asyncio.CancelledError):
                    unit = owner or current_unit.get()
                    if unit is not None:
                        unit.exception = exc
                    _record_exception(span, exc)
                    _fail_span(span, qualified_name(exc), str(exc))
                    if owner:
                        _record(span, owner, kind=FailureKind.EXCEPTION, error_type=qualified_name(exc),
                                error_message=str(exc))
                        self._run_outcome(span, owner, success=False, quality="crashed", failures=1)
            raise
        else:
            violations: list[Violation] = []
            try:
                violations = self._loop_done(span, owner, result, conditions)
            except Exception as exc:
                _slip("loop end", exc)
            if violations and self.publish_violations:
                await _publish_violations(getattr(instance, "_event_bus", None), violations,
                                          stream_id=info.get("stream_id"), execution_id=info.get("execution_id"),
                                          node_id=None)
            return result
        finally:
            _deactivate(span, restore)

    def _loop_done(self, span: Span, owner: UnitScope | None, result: Any,
                   conditions: ConditionSet | None) -> list[Violation]:
        """The loop's outcome; for an outermost loop, its run outcome and its conditions' violations (returned)."""
        exit_reason = getattr(result, "exit_reason", None)
        if exit_reason:
            span.set_attribute(semconv.HIVE_EXIT_REASON, str(exit_reason))
        succeeded = bool(getattr(result, "success", True))
        violations, failing = [], 0
        if owner and conditions is not None:
            latency_ms = getattr(result, "latency_ms", None)
            step = Step(output=getattr(result, "output", None), input=owner.input_context,
                        tokens=getattr(result, "tokens_used", None), tool_calls=owner.tool_names,
                        duration_s=latency_ms / 1000 if isinstance(latency_ms, (int, float)) else None)
            violations, failing = _agent_conditions(span, owner, conditions, step, check_criteria=succeeded)
        if succeeded:
            if owner:
                self._run_outcome(span, owner, success=not failing, quality=str(exit_reason or "completed"),
                                  failures=failing)
            return violations
        unit = owner or current_unit.get()
        message = str(getattr(result, "error", "") or exit_reason or "agent loop failed")
        signal = unit.classify() if unit else None
        if signal:
            kind = signal[0]
        elif exit_reason == "timeout":
            kind = FailureKind.TIMEOUT
        else:
            kind = FailureKind.WORKER_FAILED
        error_type = f"hive.{kind.value}"
        _fail_span(span, error_type, message)
        if owner:
            _record(span, owner, kind=kind, error_type=error_type, error_message=message)
            self._run_outcome(span, owner, success=False, quality=str(exit_reason or "failed"), failures=1 + failing)
        return violations

    async def execute_tool(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        tc = args[0] if args else kwargs.get("tc")
        name = str(getattr(tc, "tool_name", "tool"))
        attributes = {semconv.GEN_AI_OPERATION_NAME: semconv.OP_EXECUTE_TOOL, semconv.GEN_AI_TOOL_NAME: name,
                      semconv.GEN_AI_TOOL_CALL_ID: str(getattr(tc, "tool_use_id", "") or "")}
        if self.export_content:
            with _guard("tool attributes"):
                attributes[semconv.GEN_AI_TOOL_CALL_ARGUMENTS] = safe_text(getattr(tc, "tool_input", None))
        span, restore = _activate(self.tracer, f"{semconv.OP_EXECUTE_TOOL} {name}", attributes, None, self.log_context)
        try:
            result = await wrapped(instance, *args, **kwargs)
        except Exception as exc:
            with _guard("tool raised"):
                _record_exception(span, exc)
                _fail_span(span, qualified_name(exc), str(exc))
                self._note_tool(tc, name, str(exc), True)
            raise
        else:
            try:
                is_error = bool(getattr(result, "is_error", False))
                content = getattr(result, "content", None)
                if is_error:
                    _fail_span(span, "hive.tool_error", safe_text(content))
                unit = current_unit.get()
                if unit is not None:  # raw but capped (Hive may drop it from its conversation; we keep it)
                    if isinstance(content, str) and len(content) > _LIMITS.max_string_chars:
                        content = cap_text(content, _LIMITS.max_string_chars)
                    unit.add_tool_call(name, getattr(tc, "tool_input", None), content, is_error)
            except Exception as exc:
                _slip("tool end", exc)
            return result
        finally:
            _deactivate(span, restore)

    @staticmethod
    def _note_tool(tc: Any, name: str, content: Any, is_error: bool) -> None:
        unit = current_unit.get()
        if unit is not None:  # raw but capped: scrubbed only if it ends up in a FailureRecord
            unit.add_tool_call(name, getattr(tc, "tool_input", None), cap_text(content, _LIMITS.max_string_chars),
                               is_error)

    async def judge_turn(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        verdict = await wrapped(instance, *args, **kwargs)
        try:
            action = getattr(verdict, "action", None)
            unit = current_unit.get()
            if unit is not None:  # the verdict (action, feedback) on the unit's iteration; trimmed now and then
                judge, iteration = unit.judge, args[5] if len(args) > 5 else kwargs.get("iteration")
                judge.append((len(judge) if iteration is None else iteration, verdict,
                              getattr(instance, "_judge", None) is not None))
                if len(judge) >= 2 * MAX_ITEMS:
                    del judge[:-MAX_ITEMS]
            if action == "RETRY" or action == "ESCALATE":
                self._verdict_event(str(action), str(getattr(verdict, "feedback", "") or ""), unit)
        except Exception as exc:
            _slip("judge verdict", exc)
        return verdict

    def _verdict_event(self, action: str, feedback: str, unit: UnitScope | None) -> None:
        """A verdict that is not ACCEPT: the evaluation event Hive's JUDGE_VERDICT would give, on the loop's span."""
        span = trace.get_current_span()
        if span.is_recording():
            attributes = {semconv.EVALUATION_NAME: "hive.judge", semconv.EVALUATION_SCORE_LABEL: action}
            if self.export_content:  # the explanation is content (cut as Hive's event cuts it); the index has it all
                attributes[semconv.EVALUATION_EXPLANATION] = safe_text(feedback[:200])
            span.add_event(semconv.EVALUATION_EVENT, attributes)
        if action == "ESCALATE" and unit is not None:
            unit.signals.setdefault(FailureKind.JUDGE_ESCALATED.value, feedback)

    # --- Hive's degradation signals and its own trace ids ---------------------------------------
    def signal(self, emitter: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """A maker of the replacement of ``EventBus.<emitter>``: Hive emits a degradation signal
        (a stall, a doom loop, ...) rarely, so its arguments are bound by name here, at no cost to
        the events that matter to nobody but Hive (publish itself is not touched)."""
        event_name, kind, key = _SIGNAL_EMITTERS[emitter]
        kind_value = kind.value if kind is not None else None

        def make(emit: Callable[..., Any]) -> Callable[..., Any]:
            names = list(inspect.signature(emit).parameters)[1:]  # after the bus
            keys = [(names.index(k), k) for k in (key, "reason") if k in names]  # what says why: position, keyword

            def emitting(bus: Any, *args: Any, **kwargs: Any) -> Any:
                try:
                    reason: Any = ""
                    for i, k in keys:
                        reason = (args[i] if i < len(args) else kwargs.get(k)) or ""
                        if reason:
                            break
                    self._signal(event_name, kind_value, reason)
                except Exception as exc:
                    _slip("event", exc)
                return emit(bus, *args, **kwargs)

            return _coroutine_function(emitting)

        return make

    @staticmethod
    def _signal(event_name: str, kind: str | None, reason: Any) -> None:
        """In-memory only: a span event on the current span, a signal (a FailureKind value) on the current unit."""
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(event_name, {semconv.EVENT_REASON: _scrubbed_reason(reason)})
        unit = current_unit.get()
        if kind is not None and unit is not None:  # raw but capped: a record is scrubbed when it is built
            unit.signals.setdefault(kind, cap_text(str(reason), _LIMITS.max_string_chars))

    @staticmethod
    def trace_ids(start_run: Callable[..., Any]) -> Callable[..., Any]:
        """``start_run``, after which Hive's trace_id is the OTel one: one id in logs and traces."""
        from framework.observability import set_trace_context

        def started(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = start_run(self, *args, **kwargs)
            try:
                ctx = trace.get_current_span().get_span_context()
                if ctx.is_valid:  # as format_trace_id and format_span_id
                    set_trace_context(trace_id=_trace_hex(ctx.trace_id), span_id=f"{ctx.span_id:016x}")
            except Exception as exc:
                _slip("hive trace id", exc)
            return result

        return started


class HiveInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Instrument aden-hive: ``HiveInstrumentor().instrument(tracer_provider=...)``."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        tracer = trace.get_tracer(semconv.INSTRUMENTATION_SCOPE, tracer_provider=kwargs.get("tracer_provider"))
        conditions.load_from_env()  # HIVE_FAILURES_CONDITIONS: a bad file is logged and counted, not raised
        hooks = _Hooks(tracer)
        makers: dict[tuple[str, str], Callable[[Callable[..., Any]], Callable[..., Any]]] = {
            ("Orchestrator", "execute"): _around(hooks.orchestrator_execute),
            ("NodeWorker", "_execute_with_retries"): _around(hooks.node_with_retries),
            ("Worker", "run"): _around(hooks.worker_run),
            ("AgentLoop", "execute"): _around(hooks.agent_loop_execute),
            ("AgentLoop", "_execute_tool"): _around(hooks.execute_tool),
            ("AgentLoop", "_judge_turn"): _around(hooks.judge_turn),
            **{("EventBus", emitter): hooks.signal(emitter) for emitter in _SIGNAL_EMITTERS},
            ("DecisionTracker", "start_run"): hooks.trace_ids,
            ("StreamDecisionTracker", "start_run"): hooks.trace_ids,
        }
        self._patched: list[tuple[type, str, Any]] = []
        for module, cls_name, method in _HOOKS:
            try:
                owner = getattr(importlib.import_module(module), cls_name)
                original = getattr(owner, method)
                replacement = makers[(cls_name, method)](original)
            except (ImportError, AttributeError) as exc:
                _log.info("hive-failures: hook %s.%s.%s not available in this Hive: %s", module, cls_name, method, exc)
                continue
            self._patched.append((owner, method, owner.__dict__.get(method, _INHERITED)))
            setattr(owner, method, functools.update_wrapper(replacement, original))

    def _uninstrument(self, **kwargs: Any) -> None:
        for owner, method, own in reversed(getattr(self, "_patched", [])):
            if own is _INHERITED:
                delattr(owner, method)
            else:
                setattr(owner, method, own)
        self._patched = []


_INHERITED = object()  # a patched method the class inherited: uninstrument deletes the patch


def _around(hook: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A maker of the replacement of an async method: the coroutine ``hook(original, self, args,
    kwargs)`` runs in place of each call. A plain function on the class, not a wrapper object:
    no proxy on every call, no extra await layer (it hands Hive the hook's coroutine), and
    ``uninstrument`` puts the original back."""
    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def around(self: Any, *args: Any, **kwargs: Any) -> Any:
            return hook(original, self, args, kwargs)

        return _coroutine_function(around)

    return make


def _coroutine_function(function: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a plain function that returns a coroutine as a coroutine function, as the method it replaces."""
    mark = getattr(inspect, "markcoroutinefunction", None)  # Python 3.12+
    if mark is not None:
        return mark(function)  # type: ignore[no-any-return]
    function._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]  # what asyncio checks on 3.11
    return function


__all__ = ["HiveInstrumentor"]
