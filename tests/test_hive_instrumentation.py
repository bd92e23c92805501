"""HiveInstrumentor on the real aden-hive (scripted LLM, no network): spans and FailureRecords."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import hive_otel_failures as hof
from hive_otel_failures.instrumentation import HiveInstrumentor

from . import hive_scenarios as hs


class Hive:
    """A real SDK pipeline (in-memory exporter + index processor) with Hive instrumented."""

    def __init__(self, tmp_path: Path, db: Path | None = None) -> None:
        self.work = tmp_path / "hive_work"
        self.db = db or tmp_path / "failures.db"
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.processor = hof.FailureIndexProcessor(str(self.db))
        self.provider.add_span_processor(self.processor)
        self.instrumentor = HiveInstrumentor()
        self.instrumentor.instrument(tracer_provider=self.provider)

    def close(self) -> None:
        self.instrumentor.uninstrument()
        self.provider.shutdown()

    def records(self) -> list[hof.FailureRecord]:
        assert self.processor.force_flush(10_000)
        with hof.open_index(self.db) as index:
            return index.recent(limit=1000)

    def index(self) -> hof.FailureIndex:
        assert self.processor.force_flush(10_000)
        return hof.open_index(self.db)

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        (found,) = [s for s in self.spans() if s.name == name]
        return found

    def children(self, parent: ReadableSpan) -> list[str]:
        return sorted(s.name for s in self.spans() if s.parent and s.parent.span_id == parent.context.span_id)


@pytest.fixture
def hive(tmp_path: Path):
    h = Hive(tmp_path)
    yield h
    h.close()


def run(coro):
    return asyncio.run(coro)


def failure_events(span: ReadableSpan) -> list:
    return [e for e in span.events if e.name == "hive.failure"]


def assert_ids(record: hof.FailureRecord, span: ReadableSpan) -> None:
    assert record.trace_id == f"{span.context.trace_id:032x}"
    assert record.span_id == f"{span.context.span_id:016x}"


# --- graph path ----------------------------------------------------------------------------
def test_node_that_raises(hive: Hive) -> None:
    graph, registry = hs.raising_graph()
    result = run(hs.run_graph(hive.work, "session_A", graph, registry))
    assert result.success is False

    (record,) = hive.records()
    assert (record.kind, record.agent_id, record.node_id, record.session_id) == (
        "exception", "report-agent", "fail_node", "session_A")
    assert record.error_type == "builtins.ValueError"
    assert record.error_message == "could not parse topic 'quarterly report for ACME'"
    assert record.attempts == 1
    assert 'hive_scenarios.py", line' in record.traceback and "could not parse topic" in record.traceback
    assert record.memory_snapshot == {"customer": "ACME", "topic": "quarterly report for ACME"}
    assert record.input_context is not None
    assert record.graph_snapshot["graph"]["id"] == "report-agent"
    assert record.graph_snapshot["goal"]["constraints"][0]["id"] == "c1"
    assert record.agent_version and record.agent_version.startswith("sha256:")

    workflow = hive.span("invoke_workflow report-agent")
    node = hive.span("hive.node fail_node")  # its one attempt
    assert workflow.parent is None
    assert workflow.attributes["gen_ai.operation.name"] == "invoke_workflow"
    assert workflow.attributes["gen_ai.agent.id"] == "report-agent"
    assert workflow.attributes["gen_ai.agent.name"] == "report-agent"  # the graph has no name: its id
    assert workflow.attributes["hive.agent.version"] == record.agent_version
    assert workflow.status.status_code is StatusCode.ERROR
    assert workflow.attributes["error.type"] == "builtins.ValueError"
    assert hive.children(workflow) == ["hive.node fail_node", "hive.node prepare"]
    assert hive.children(node) == []
    assert node.attributes["hive.node.id"] == "fail_node" and node.attributes["hive.node.attempt"] == 1
    assert node.status.status_code is StatusCode.ERROR and len(failure_events(node)) == 1
    assert node.attributes["error.type"] == "builtins.ValueError"
    assert [e.name for e in node.events] == ["exception", "hive.failure"]
    assert hive.span("hive.node prepare").status.status_code is StatusCode.UNSET
    assert_ids(record, node)


def test_a_secret_in_an_exception_is_scrubbed_on_the_span_and_in_the_record(hive: Hive) -> None:
    class LeakyNode(hs.NodeProtocol):
        async def execute(self, ctx):
            raise PermissionError("401 for key sk-proj-Abcdefghijklmnopqrstuvwxyz0123456789")

    graph, registry = hs.raising_graph()
    run(hs.run_graph(hive.work, "session_S", graph, {**registry, "fail_node": LeakyNode()}))
    (event,) = [e for e in hive.span("hive.node fail_node").events if e.name == "exception"]
    assert event.attributes["exception.type"] == "builtins.PermissionError"
    for value in (event.attributes["exception.message"], event.attributes["exception.stacktrace"]):
        assert "Abcdefghijklmnop" not in value and "[REDACTED]" in value
    (record,) = hive.records()
    assert "Abcdefghijklmnop" not in record.error_message + record.traceback


def test_node_fails_after_retries_counts_true_attempts(hive: Hive) -> None:
    graph, registry = hs.soft_fail_graph()
    result = run(hs.run_graph(hive.work, "session_B", graph, registry))
    (record,) = hive.records()
    attempts = sorted((s for s in hive.spans() if s.name == "hive.node soft"), key=lambda s: s.start_time)
    assert record.attempts == len(attempts) == 2
    assert [s.attributes["hive.node.attempt"] for s in attempts] == [1, 2]
    assert all(s.status.status_code is StatusCode.ERROR for s in attempts)
    assert attempts[0].end_time <= attempts[1].start_time  # an attempt's span ends with it, not at the retry
    assert [len(failure_events(s)) for s in attempts] == [0, 1]  # the node's record is on its last attempt
    assert record.kind == "node_failed" and record.error_type == "hive.node_failed"
    assert "total != sum(items)" in record.error_message
    assert result.retry_details == {"soft": 2}  # Hive counts 2 retries for 1 retry; we report 2 attempts


def test_event_loop_node_whose_tool_then_llm_fail(hive: Hive) -> None:
    llm = hs.ScriptedLLM([("tool", "flaky_tool", {"q": "ACME"}),
                          ("raise", ValueError("invalid_request_error (HTTP 400)"))])
    run(hs.run_graph(hive.work, "session_C", hs.tool_graph(), {}, llm=llm, tools=[hs.FLAKY_TOOL],
                     loop_config={"max_iterations": 5}))
    (record,) = hive.records()
    assert (record.kind, record.agent_id, record.node_id) == ("exception", "tool-agent", "research")
    assert record.error_type == "builtins.ValueError" and "HTTP 400" in record.error_message
    (call,) = record.tool_calls
    assert (call.tool_name, call.arguments, call.is_error) == ("flaky_tool", {"q": "ACME"}, True)

    attempt = hive.span("hive.node research")
    loop = hive.span("invoke_agent Research")
    tool = hive.span("execute_tool flaky_tool")
    assert loop.parent.span_id == attempt.context.span_id
    assert tool.parent.span_id == loop.context.span_id
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "flaky_tool"
    assert tool.status.status_code is StatusCode.ERROR
    assert loop.status.status_code is StatusCode.ERROR and loop.attributes["error.type"] == "builtins.ValueError"
    assert failure_events(loop) == [] and len(failure_events(attempt)) == 1


# --- current runtime: AgentLoop and colony workers -------------------------------------------
def test_worker_doom_loop_reported_as_success_is_a_failure(hive: Hive) -> None:
    with hs.aden_tools_stand_in():
        result = run(hs.run_colony(hive.work, hs.ScriptedLLM(hs.doom_loop_steps())))
    assert result.status == "failed"
    (record,) = hive.records()
    assert (record.kind, record.agent_id, record.error_type) == ("doom_loop", "colony_worker", "hive.doom_loop")
    assert "Doom loop detected" in record.error_message
    assert record.session_id and record.session_id.startswith("session_")
    assert [t.tool_name for t in record.tool_calls] == ["flaky_tool"] * 3
    assert record.graph_snapshot["agent_spec"]["system_prompt"] == "You are a worker."
    assert record.graph_snapshot["model"] == "scripted/mock-1"
    assert record.input_context["task"] == "fetch the ACME record"

    worker, loop = sorted((s for s in hive.spans() if s.name == "invoke_agent Colony worker"),
                          key=lambda s: s.parent is not None)
    assert worker.parent is None and loop.parent.span_id == worker.context.span_id
    assert worker.status.status_code is StatusCode.ERROR and worker.attributes["error.type"] == "hive.doom_loop"
    assert worker.attributes["hive.worker.status"] == "failed"
    assert {"hive.doom_loop", "hive.escalation"} <= {e.name for e in loop.events}
    assert len(failure_events(worker)) == 1 and failure_events(loop) == []
    assert hive.children(loop) == ["execute_tool flaky_tool"] * 3


def test_stall(hive: Hive) -> None:
    result = run(hs.run_loop(hs.ScriptedLLM([("text", "I am unable to access the record right now.")] * 5),
                             stream_id="worker:w2"))
    assert result.success is False
    (record,) = hive.records()
    assert (record.kind, record.error_type, record.agent_id) == ("stalled", "hive.stalled", "agent-x")
    assert "stalled" in record.error_message
    loop = hive.span("invoke_agent Agent agent-x")
    assert "hive.stalled" in [e.name for e in loop.events]
    assert loop.attributes["gen_ai.request.model"] == "scripted/mock-1"


def test_judge_that_escalates_keeps_full_feedback(hive: Hive) -> None:
    run(hs.run_loop(hs.ScriptedLLM([("text", "Here is a guess at the record.")]), stream_id="judge",
                    judge=hs.EscalatingJudge()))
    (record,) = hive.records()
    assert (record.kind, record.error_type) == ("judge_escalated", "hive.judge_escalated")
    (verdict,) = record.judge_feedback
    assert verdict.action == "ESCALATE" and verdict.judge_type == "custom"
    assert verdict.feedback == f"iteration 0: {hs.EscalatingJudge.FEEDBACK}"
    assert len(verdict.feedback) > 200  # Hive's event cuts it to 200
    (evaluation,) = [e for e in hive.span("invoke_agent Agent agent-x").events
                     if e.name == "gen_ai.evaluation.result"]
    assert evaluation.attributes["gen_ai.evaluation.score.label"] == "ESCALATE"


def test_tool_error_result_marks_the_tool_span_and_is_kept_for_a_later_failure(hive: Hive) -> None:
    llm = hs.ScriptedLLM([("tool", "flaky_tool", {"q": "ACME"})] + [("text", "I cannot find the record.")] * 5)
    run(hs.run_loop(llm, stream_id="worker:w3", tool_executor=hs.tool_reports_error))
    tool = hive.span("execute_tool flaky_tool")
    assert tool.status.status_code is StatusCode.ERROR and tool.attributes["error.type"] == "hive.tool_error"
    assert [e.name for e in tool.events] == []  # an error result, not an exception
    (record,) = hive.records()  # the loop then stalls: the failed call is in the record
    assert record.kind == "stalled"
    (call,) = record.tool_calls
    assert (call.tool_name, call.result, call.is_error) == ("flaky_tool", "record not found", True)


def test_worker_whose_llm_raises(hive: Hive) -> None:
    with hs.aden_tools_stand_in():
        result = run(hs.run_colony(hive.work, hs.ScriptedLLM([("raise", ValueError("model not found (HTTP 404)"))])))
    assert result.status == "failed"
    (record,) = hive.records()
    assert (record.kind, record.error_type) == ("worker_crashed", "builtins.ValueError")
    assert record.error_message == "model not found (HTTP 404)"
    assert "in stream" in record.traceback and "faces/demo.py" in record.traceback


def test_worker_that_crashes_before_publishing_anything(hive: Hive, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("aden_tools", "aden_tools.credentials", "aden_tools.credentials.store_adapter"):
        monkeypatch.delitem(__import__("sys").modules, name, raising=False)
    with pytest.raises(ModuleNotFoundError):  # Hive's own behaviour: no terminal event, the task dies
        run(hs.run_colony(hive.work, hs.ScriptedLLM([])))
    (record,) = hive.records()
    assert (record.kind, record.error_type) == ("worker_crashed", "builtins.ModuleNotFoundError")
    assert "aden_tools" in record.error_message
    worker = hive.span("invoke_agent Colony worker")
    assert worker.status.status_code is StatusCode.ERROR and len(failure_events(worker)) == 1


# --- runs, patterns ----------------------------------------------------------------------------
def test_recurring_failure_across_three_sessions_is_one_pattern_and_success_is_a_run(hive: Hive) -> None:
    for i in range(3):
        graph, registry = hs.raising_graph()
        run(hs.run_graph(hive.work, f"session_{i}", graph, registry))
    graph, registry = hs.ok_graph()
    assert run(hs.run_graph(hive.work, "session_ok", graph, registry)).success
    with hive.index() as index:
        (pattern,) = index.patterns()
        stats = index.stats(agent_id="report-agent")
        assert index.recent(session_id="session_ok") == []
        versions = {r.agent_version for r in index.recent(limit=10)}
    assert (pattern.count, pattern.sessions, pattern.node_id) == (3, 3, "fail_node")
    assert len(versions) == 1  # each run builds a new Goal, stamped with its own created_at: one version still
    assert (stats.runs, stats.failed_runs) == (4, 1 * 3)


def test_a_sampler_sees_the_agent_version_and_a_dropped_run_costs_none(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Decision, Sampler, SamplingResult

    seen: list[dict] = []

    class Looking(Sampler):
        def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None):
            seen.append(dict(attributes or {}))
            return SamplingResult(Decision.DROP)

        def get_description(self) -> str:
            return "looking"

    versions: list[str] = []
    version_of = hof.instrumentation.scopes.version_of
    monkeypatch.setattr("hive_otel_failures.instrumentation.scopes.version_of",
                        lambda parts: versions.append(version_of(parts)) or versions[-1])
    for sampler in (Looking(), ALWAYS_OFF):
        instrumentor = HiveInstrumentor()
        instrumentor.instrument(tracer_provider=TracerProvider(sampler=sampler))
        try:
            graph, registry = hs.ok_graph()
            assert run(hs.run_graph(tmp_path / "work", f"session_{len(seen)}", graph, registry)).success
        finally:
            instrumentor.uninstrument()
    (workflow,) = [a for a in seen if a.get("gen_ai.operation.name") == "invoke_workflow"]
    assert versions == [workflow["hive.agent.version"]]  # once, for the sampler that looks; none when dropped unread
    assert workflow["hive.agent.version"].startswith("sha256:")


# --- one trace id --------------------------------------------------------------------------
def test_graph_path_trace_id_is_hives_l1_trace_id(hive: Hive) -> None:
    graph, registry = hs.raising_graph()
    run(hs.run_graph(hive.work, "session_T", graph, registry))
    workflow = hive.span("invoke_workflow report-agent")
    assert hs.l1_trace_ids(hive.work, "session_T") == [f"{workflow.context.trace_id:032x}"]


def test_colony_log_line_inside_a_tool_carries_the_span_ids(hive: Hive) -> None:
    from framework.observability.logging import StructuredFormatter

    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(StructuredFormatter().format(record))

    handler = Capture()
    hs.TOOL_LOG.addHandler(handler)
    try:
        with hs.aden_tools_stand_in():
            run(hs.run_colony(hive.work, hs.ScriptedLLM(hs.doom_loop_steps())))
    finally:
        hs.TOOL_LOG.removeHandler(handler)
    tools = sorted((s for s in hive.spans() if s.name == "execute_tool flaky_tool"), key=lambda s: s.start_time)
    logged = [json.loads(line) for line in lines]
    assert len(logged) == len(tools) == 3
    for line, span in zip(logged, tools, strict=False):
        assert line["trace_id"] == f"{span.context.trace_id:032x}"
        assert line["span_id"] == f"{span.context.span_id:016x}"


# --- lifecycle and safety ----------------------------------------------------------------------
def test_uninstrument_restores_originals_and_double_instrument_does_not_double(tmp_path: Path) -> None:
    from framework.agent_loop.agent_loop import AgentLoop
    from framework.host.event_bus import EventBus
    from framework.orchestrator.orchestrator import Orchestrator

    originals = (Orchestrator.execute, AgentLoop.execute, EventBus.publish)
    h = Hive(tmp_path)
    assert Orchestrator.execute is not originals[0]
    h.instrumentor.instrument(tracer_provider=h.provider)  # a second time: a no-op
    graph, registry = hs.raising_graph()
    run(hs.run_graph(h.work, "session_D", graph, registry))
    assert len([s for s in h.spans() if s.name == "invoke_workflow report-agent"]) == 1
    assert len(h.records()) == 1
    h.close()
    assert (Orchestrator.execute, AgentLoop.execute, EventBus.publish) == originals
    h.exporter.clear()
    graph, registry = hs.raising_graph()
    run(hs.run_graph(h.work, "session_E", graph, registry))
    assert h.exporter.get_finished_spans() == ()


def _result_shape(result) -> tuple:
    return (result.success, result.error, result.path, result.total_retries, result.nodes_with_failures)


def test_an_unwritable_index_leaves_hives_result_unchanged(tmp_path: Path) -> None:
    graph, registry = hs.raising_graph()
    baseline = _result_shape(run(hs.run_graph(tmp_path / "plain", "session_P", graph, registry)))
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the index directory should be")
    h = Hive(tmp_path, db=blocker / "failures.db")
    try:
        graph, registry = hs.raising_graph()
        assert _result_shape(run(hs.run_graph(h.work, "session_P", graph, registry))) == baseline
        assert h.processor.force_flush(10_000)
        assert h.processor.stats().errors >= 1  # counted, not raised
    finally:
        h.close()


def test_a_bug_inside_the_instrumentation_leaves_hives_result_unchanged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    graph, registry = hs.raising_graph()
    baseline = _result_shape(run(hs.run_graph(tmp_path / "plain", "session_P", graph, registry)))

    def broken(value):
        raise RuntimeError("instrumentation bug")

    h = Hive(tmp_path)
    monkeypatch.setattr("hive_otel_failures.instrumentation.scopes.version_of", broken)  # on the way in
    monkeypatch.setattr("hive_otel_failures.instrumentation.scopes.UnitScope.classify", broken)  # on the way out
    try:
        graph, registry = hs.raising_graph()
        with caplog.at_level(logging.WARNING, logger="hive_otel_failures.instrumentation"):
            assert _result_shape(run(hs.run_graph(h.work, "session_P", graph, registry))) == baseline
            with hs.aden_tools_stand_in():
                assert run(hs.run_colony(h.work, hs.ScriptedLLM(hs.doom_loop_steps()))).status == "failed"
    finally:
        h.close()
    assert any("instrumentation slip" in r.getMessage() for r in caplog.records)  # logged, not raised
