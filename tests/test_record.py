"""FailureRecord <-> hive.failure span-event attributes, through a real SDK span."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import hive_otel_failures as hof
from hive_otel_failures import semconv
from hive_otel_failures.record import as_prepared, from_attributes, prepare, to_attributes
from hive_otel_failures.scrub import TRUNCATED_KEY, Limits

text = st.text(max_size=40)
opt_text = st.none() | text
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)
records = st.builds(
    hof.FailureRecord,
    failure_id=st.uuids().map(lambda u: u.hex),
    session_id=opt_text, agent_id=opt_text, node_id=opt_text,
    timestamp=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                           timezones=st.just(timezone.utc)),
    kind=st.sampled_from(list(hof.FailureKind)),
    error_type=text, error_message=text, traceback=opt_text,
    attempts=st.integers(0, 50),
    judge_feedback=st.lists(st.builds(hof.JudgeFeedback, attempt=st.integers(0, 9),
                                      action=st.sampled_from(["ACCEPT", "RETRY", "ESCALATE"]),
                                      feedback=text, judge_type=opt_text), max_size=3),
    input_context=json_values, memory_snapshot=json_values, graph_snapshot=json_values,
    constraints_violated=st.lists(text, max_size=3), criteria_unmet=st.lists(text, max_size=3),
    tool_calls=st.lists(st.builds(hof.ToolCallAttempt, tool_name=text, arguments=json_values, result=opt_text,
                                  is_error=st.booleans()), max_size=3),
    trace_id=opt_text, span_id=opt_text, agent_version=opt_text, fingerprint=opt_text,
    transient=st.none() | st.booleans(), evolution_triggered=st.booleans(), resolution=opt_text,
)


def _through_a_span(attributes: dict) -> dict:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("s") as span:
        span.add_event(semconv.FAILURE_EVENT, attributes)
    (finished,) = exporter.get_finished_spans()
    (event,) = finished.events
    return dict(event.attributes)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(records)
def test_every_field_round_trips_through_span_event_attributes(record: hof.FailureRecord) -> None:
    assert from_attributes(_through_a_span(to_attributes(record))) == record


def test_failure_ids_are_uuid7_in_the_order_they_were_made() -> None:
    """Time first, so that the index's unique key on failure ids grows at its end."""
    made = []
    for _ in range(3):
        made += [hof.FailureRecord(error_type="E", error_message="m").failure_id for _ in range(50)]
        time.sleep(0.002)  # the order holds between milliseconds; within one, the bits are random
    assert all(uuid.UUID(i).version == 7 and uuid.UUID(i).variant == uuid.RFC_4122 for i in made)
    assert len(set(made)) == len(made)
    moments = [i[:12] for i in made]
    assert moments == sorted(moments) and abs(int(made[0][:12], 16) - time.time_ns() // 1_000_000) < 60_000


def test_every_model_field_has_an_attribute() -> None:
    record = hof.FailureRecord(
        session_id="s", agent_id="a", node_id="n", error_type="E", error_message="m", traceback="tb", attempts=3,
        judge_feedback=[hof.JudgeFeedback(attempt=1, action="RETRY", feedback="f", judge_type="llm")],
        input_context={"k": 1}, memory_snapshot={"m": [1]}, graph_snapshot={"nodes": []},
        constraints_violated=["c1"], criteria_unmet=["sc1"],
        tool_calls=[hof.ToolCallAttempt(tool_name="t", arguments={"q": 1}, result="r", is_error=True)],
        trace_id="t" * 32, span_id="s" * 16, agent_version="v1", fingerprint="fp", transient=True,
        evolution_triggered=True, resolution="fixed",
    )
    keys = set(to_attributes(record))
    assert keys == {semconv.FAILURE_PREFIX + f for f in hof.FailureRecord.model_fields}


def test_attribute_cut_by_span_limits_keeps_a_marker_instead_of_failing() -> None:
    attrs = to_attributes(hof.FailureRecord(input_context={"a": "x" * 100}, tool_calls=[
        hof.ToolCallAttempt(tool_name="t", arguments={"q": 1})]))
    attrs[semconv.FAILURE_PREFIX + "input_context"] = attrs[semconv.FAILURE_PREFIX + "input_context"][:20]
    attrs[semconv.FAILURE_PREFIX + "tool_calls"] = attrs[semconv.FAILURE_PREFIX + "tool_calls"][:10]
    record = from_attributes(attrs)
    assert record.input_context["__truncated__"]
    assert record.tool_calls == []


def test_record_failure_sets_event_status_and_error_type_on_current_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("node") as span:
        prepared = hof.record_failure(hof.FailureRecord(agent_id="a", node_id="n", error_type="builtins.ValueError",
                                                        error_message="bad value 42"))
        ctx = span.get_span_context()
    (finished,) = exporter.get_finished_spans()
    assert finished.status.status_code is StatusCode.ERROR
    assert finished.attributes[semconv.ERROR_TYPE] == "builtins.ValueError"
    (event,) = finished.events
    assert event.name == semconv.FAILURE_EVENT
    stored = from_attributes(event.attributes)
    assert stored == prepared
    assert stored.trace_id == f"{ctx.trace_id:032x}" and stored.span_id == f"{ctx.span_id:016x}"
    assert stored.fingerprint and stored.fingerprint.startswith("v1:")
    assert stored.transient is False


def test_record_failure_never_raises_and_returns_input_on_a_broken_span() -> None:
    class BrokenSpan:
        def get_span_context(self):
            raise RuntimeError("boom")

    record = hof.FailureRecord(error_message="x")
    assert hof.record_failure(record, span=BrokenSpan()) is record  # type: ignore[arg-type]


def test_prepare_is_idempotent() -> None:
    record = hof.FailureRecord(error_message="token=abcdef123456 at /tmp/x", input_context={"api_key": "k" * 20})
    once = prepare(record)
    assert prepare(once) == once
    # A key whose NUL hid it from the random-key rule the first time (found by hypothesis below).
    call = hof.ToolCallAttempt(tool_name="t", arguments={"000000123456789:;A\x00a": 1})
    record = hof.FailureRecord(tool_calls=[call])
    once = prepare(record)
    assert prepare(once) == once and list(once.tool_calls[0].arguments) == ["[REDACTED]"]


tiny = Limits(max_field_bytes=600, max_string_chars=200, max_items=4)
long_text = st.text(max_size=300)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(constraints=st.lists(long_text, max_size=12), criteria=st.lists(long_text, max_size=12),
       calls=st.lists(st.builds(hof.ToolCallAttempt, tool_name=text, arguments=json_values,
                                result=st.none() | long_text), max_size=12),
       verdicts=st.lists(st.builds(hof.JudgeFeedback, attempt=st.integers(-2**70, 2**70), action=text,
                                   feedback=long_text), max_size=12))
def test_capped_lists_stay_within_caps_keep_a_marker_and_capping_is_idempotent(constraints, criteria, calls,
                                                                                verdicts) -> None:
    record = hof.FailureRecord(constraints_violated=constraints, criteria_unmet=criteria, tool_calls=calls,
                               judge_feedback=verdicts)
    once = prepare(record, tiny)
    assert prepare(once, tiny) == once
    for given_items, kept, budget in ((constraints, once.constraints_violated, tiny.max_field_bytes),
                                      (criteria, once.criteria_unmet, tiny.max_field_bytes),
                                      (calls, once.tool_calls, 4 * tiny.max_field_bytes),
                                      (verdicts, once.judge_feedback, tiny.max_field_bytes)):
        assert len(kept) <= tiny.max_items
        dumped = [k if isinstance(k, str) else k.model_dump(mode="json") for k in kept]
        assert len(json.dumps(dumped, ensure_ascii=False).encode()) <= budget
        if len(kept) != len(given_items):
            markers = [k for k in dumped if TRUNCATED_KEY in json.dumps(k)]
            assert markers, f"{len(given_items)} items became {len(kept)} without a marker"


def _prepared_attributes() -> dict:
    """The hive.failure attributes record_failure puts on a real span."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("node"):
        hof.record_failure(hof.FailureRecord(
            agent_id="a", node_id="n", session_id="s", error_type="builtins.ValueError", error_message="bad row 3",
            judge_feedback=[hof.JudgeFeedback(attempt=1, action="RETRY", feedback="missing total")],
            tool_calls=[hof.ToolCallAttempt(tool_name="lookup", arguments={"id": 3})],
            input_context={"row": 3}, constraints_violated=["totals"]))
    (span,) = exporter.get_finished_spans()
    (event,) = span.events
    return dict(event.attributes)


def test_as_prepared_takes_what_record_failure_made_as_it_is() -> None:
    attributes = _prepared_attributes()
    taken = as_prepared({**attributes, "other.key": 1, semconv.FAILURE_PREFIX + "from_the_future": "x"}, Limits())
    assert taken == {k: v for k, v in attributes.items() if k != semconv.FAILURE_PREPARED}
    assert taken == to_attributes(from_attributes(attributes))  # what the model round trip gives


def test_as_prepared_refuses_what_to_attributes_would_not_make() -> None:
    key = semconv.FAILURE_PREFIX.__add__
    attributes = _prepared_attributes()
    defects = {
        "not marked prepared": {semconv.FAILURE_PREPARED: False},
        "attempts as text": {key("attempts"): "3"},
        "attempts out of range": {key("attempts"): -1},
        "a bool as text": {key("transient"): "false"},
        "an unknown kind": {key("kind"): "gremlins"},
        "a naive time": {key("timestamp"): "2026-01-01T00:00:00"},
        "a time before 1970": {key("timestamp"): "1969-12-31T23:59:59+00:00"},
        "not a time": {key("timestamp"): "yesterday"},
        "a message beyond the limits": {key("error_message"): "x" * (4 * 1024 + 1)},
        "a lone surrogate": {key("agent_id"): "agent-\ud800"},
        "judge feedback of the wrong shape": {key("judge_feedback"): '[{"attempt": "first"}]'},
        "tool calls cut short": {key("tool_calls"): '[{"tool_name": "lookup", "argu'},
        "a list of numbers": {key("constraints_violated"): (1, 2)},
        "an id that is a number": {key("session_id"): 7},
    }
    for why, change in defects.items():
        assert as_prepared({**attributes, **change}, Limits(max_field_bytes=1024)) is None, why
    for required in ("failure_id", "fingerprint", "timestamp", "transient"):
        assert as_prepared({k: v for k, v in attributes.items() if k != key(required)}, Limits()) is None, required


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(session_id=text, agent_id=opt_text, agent_version=opt_text, success=st.booleans(), quality=opt_text,
       failures=st.integers(-5, 2**40))
def test_record_run_fields_marks_a_span_as_record_run_of_the_same_outcome_does(session_id, agent_id, agent_version,
                                                                              success, quality, failures) -> None:
    from hive_otel_failures.spans import record_run_fields

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    fields = {"session_id": session_id, "agent_id": agent_id, "agent_version": agent_version}
    with tracer.start_as_current_span("model") as span:
        hof.record_run(hof.RunOutcome(**fields, success=success, quality=quality, failures=failures), span)
    with tracer.start_as_current_span("fields") as span:
        record_run_fields(span, *fields.values(), success=success, quality=quality, failures=failures)
    model, direct = exporter.get_finished_spans()
    assert [(e.name, dict(e.attributes)) for e in direct.events] == [(e.name, dict(e.attributes)) for e in model.events]
    assert (dict(direct.attributes), direct.status.status_code) == (dict(model.attributes), model.status.status_code)
