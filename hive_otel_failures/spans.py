"""Attach failures and run outcomes to OTel spans: the one way records enter a trace."""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import Span, Status, StatusCode, format_span_id, format_trace_id

from . import semconv
from .record import (FailureRecord, RunOutcome, filled_from_span, outcome_attributes, prepare, run_attributes, time_ns,
                     to_attributes)

_log = logging.getLogger(__name__)
_UNSET = StatusCode.UNSET  # read on every span's end; an enum member lookup runs Python code on 3.11
_warned = False


def record_failure(record: FailureRecord, span: Span | None = None, *, set_error: bool = True) -> FailureRecord:
    """Put ``record`` on ``span`` (default: the current span) as a ``hive.failure`` event.

    Also sets status ERROR and ``error.type``, unless ``set_error`` is False: a failure that
    does not fail its step (a soft constraint violation). The index processor reads such an
    event only from this package's instrumentation spans and from spans whose status is set.

    The record is prepared first (scrubbed, capped, fingerprinted; a naive timestamp is UTC
    and every timestamp is clamped to [1970-01-01T00:00:00Z, 2262-04-11T23:47:16Z], see
    ``prepare``) and trace/span ids are filled from the span. Returns the prepared record.
    Never raises: a problem here is logged once, and marked on the span (status ERROR, a
    ``hive.failure.unrecorded`` event) so that the index processor counts it in
    ``stats().errors``; the caller carries on.
    """
    global _warned
    added = False
    try:
        span = span if span is not None else trace.get_current_span()
        if not span.is_recording():  # nobody will see it: do no work (OTel convention)
            return record
        if not isinstance(record, FailureRecord):
            raise TypeError(f"record_failure takes a FailureRecord, not {type(record).__qualname__}")
        ctx = span.get_span_context()
        if ctx.is_valid:
            record = filled_from_span(record, trace_id=format_trace_id(ctx.trace_id),
                                      span_id=format_span_id(ctx.span_id))
        prepared = prepare(record)
        attributes = to_attributes(prepared)
        attributes[semconv.FAILURE_PREPARED] = True
        span.add_event(semconv.FAILURE_EVENT, attributes, timestamp=time_ns(prepared.timestamp))
        added = True
        if set_error:
            span.set_attribute(semconv.ERROR_TYPE, prepared.error_type)
            span.set_status(Status(StatusCode.ERROR, prepared.error_message[:512]))
        return prepared
    except Exception as exc:  # noqa: BLE001 - recording a failure must never cause one
        if not _warned:
            _warned = True
            _log.warning("hive-failures: could not record a failure on the span", exc_info=True)
        if not added:
            _mark_unrecorded(span, exc)
        return record


def _mark_unrecorded(span: object, exc: Exception) -> None:
    """Leave on ``span`` what the index processor needs to count a failure it will not get."""
    try:
        error_type = f"{type(exc).__module__}.{type(exc).__qualname__}"
        span.add_event(semconv.UNRECORDED_EVENT, {semconv.ERROR_TYPE: error_type})  # type: ignore[attr-defined]
        span.set_status(Status(StatusCode.ERROR, "hive-failures: the failure could not be recorded"))  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - not an SDK span (or a broken one): no processor will see it
        _log.debug("hive-failures: could not mark an unrecorded failure", exc_info=True)


def record_run(outcome: RunOutcome, span: Span | None = None) -> None:
    """Mark ``span`` as covering one run, with its outcome, so the index can compute rates.

    The index processor does not copy every span's events to look for outcomes: it reads
    them from spans whose status is set and from the spans of this package's instrumentation.
    So on a span of another tracer (your own runtime's), an unset status becomes OK or ERROR
    from the outcome, as the OTel spec lets application code do. OK is final: record the
    outcome once the run's result is known.
    """
    try:
        _mark_run(span if span is not None else trace.get_current_span(), run_attributes(outcome), outcome.success)
    except Exception:  # noqa: BLE001
        _log.debug("hive-failures: could not record a run outcome", exc_info=True)


def record_run_fields(span: Span, session_id: str, agent_id: str | None, agent_version: str | None, *,
                      success: bool, quality: str | None, failures: int) -> None:
    """``record_run(RunOutcome(...), span)`` for a caller whose values need no validating (exact
    ``str``, ``bool`` and ``int``, as the Hive hooks pass): building the model costs 23k instructions,
    and its times are not read (the processor takes a run's start and end from the span)."""
    try:
        _mark_run(span, outcome_attributes(session_id, agent_id, agent_version, success, quality, failures), success)
    except Exception:  # noqa: BLE001
        _log.debug("hive-failures: could not record a run outcome", exc_info=True)


def _mark_run(span: Span, attributes: dict[str, Any], success: bool) -> None:
    span.add_event(semconv.RUN_EVENT, attributes)
    span.set_attribute(semconv.RUN_OUTCOME, attributes[semconv.RUN_OUTCOME])
    if isinstance(span, ReadableSpan) and span.is_recording() and not may_carry_records(span):
        span.set_status(StatusCode.OK if success else StatusCode.ERROR)


def may_carry_records(span: ReadableSpan) -> bool:
    """Whether the index processor looks into ``span``'s events; decided without copying them.

    record_failure sets status ERROR, and record_run leaves a status unset only on the spans
    of this package's instrumentation (a successful run, as the OTel spec asks of
    instrumentation), so a span outside both holds neither a failure nor a run outcome.
    """
    if span.status.status_code is not _UNSET:
        return True
    scope = span.instrumentation_scope
    return scope is not None and scope.name == semconv.INSTRUMENTATION_SCOPE
