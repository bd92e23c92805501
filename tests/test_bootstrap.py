"""configure(): joins or creates the provider, once; OTLP over a real socket, content stays home."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import hive_otel_failures as hof
from hive_otel_failures.processor import FailureIndexProcessor

from .conftest import OTLPReceiver

APP = textwrap.dedent("""
    import hive_otel_failures as hof
    from opentelemetry import trace

    handle = hof.configure()
    assert hof.configure() is handle
    with trace.get_tracer("app").start_as_current_span("invoke_agent worker") as span:
        hof.record_failure(hof.FailureRecord(
            agent_id="report-agent", node_id="parse", session_id="s1", error_type="builtins.ValueError",
            error_message="could not parse", input_context={"doc": "CONTEXT-MARKER"},
            graph_snapshot={"system_prompt": "PROMPT-MARKER"},
            tool_calls=[hof.ToolCallAttempt(tool_name="fetch", arguments={"q": "ARGUMENT-MARKER"})]))
        span.set_attribute("gen_ai.tool.call.arguments", "ARGUMENT-MARKER")
    handle.shutdown()
    print(handle.stats().written, handle.exporting, handle.index_location)
""")


def run_app(env: dict[str, str], tmp_path: Path, code: str = APP, timeout: float = 120) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "HIVE_FAILURES"))}
    full.update(HIVE_HOME=str(tmp_path / "home"), **env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=timeout)


def test_otlp_export_keeps_content_on_the_machine(receiver: OTLPReceiver, tmp_path: Path) -> None:
    proc = run_app({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                    "OTEL_SERVICE_NAME": "report-service"}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == ["1", "True"]
    (span,) = receiver.spans()
    assert receiver.resource_attributes()["service.name"] == "report-service"
    assert span.status.code == 2  # ERROR
    (event,) = [e for e in span.events if e.name == "hive.failure"]
    keys = {a.key for a in event.attributes}
    assert {"hive.failure.error_type", "hive.failure.kind", "hive.failure.fingerprint", "hive.failure.agent_id",
            "hive.failure.session_id"} <= keys
    assert not keys & {"hive.failure.input_context", "hive.failure.graph_snapshot", "hive.failure.tool_calls"}
    wire = b"".join(r.SerializeToString() for r in receiver.requests)
    for marker in (b"CONTEXT-MARKER", b"PROMPT-MARKER", b"ARGUMENT-MARKER"):
        assert marker not in wire
    with hof.open_index(tmp_path / "home" / "failures.db") as index:  # the local index keeps the content
        (record,) = index.recent()
    assert record.input_context == {"doc": "CONTEXT-MARKER"}
    assert record.tool_calls[0].arguments == {"q": "ARGUMENT-MARKER"}


def test_content_leaves_only_when_the_user_opts_in(receiver: OTLPReceiver, tmp_path: Path) -> None:
    proc = run_app({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                    "HIVE_FAILURES_EXPORT_CONTENT": "true"}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    wire = b"".join(r.SerializeToString() for r in receiver.requests)
    assert b"CONTEXT-MARKER" in wire and b"ARGUMENT-MARKER" in wire


def test_no_exporter_unless_asked_and_index_from_env(tmp_path: Path) -> None:
    proc = run_app({"HIVE_FAILURES_DB": str(tmp_path / "custom.db")}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "False", str(tmp_path / "custom.db")]
    assert (tmp_path / "custom.db").exists()


def test_sdk_disabled_sets_nothing_up(tmp_path: Path) -> None:
    code = "import hive_otel_failures as hof; h = hof.configure(); print(h.enabled, h.disabled_reason)"
    proc = run_app({"OTEL_SDK_DISABLED": "true"}, tmp_path, code)
    assert proc.stdout.strip() == "False OTEL_SDK_DISABLED=true"
    assert not (tmp_path / "home").exists()


def test_joining_a_provider_adds_one_processor_however_often_called(db_path: Path) -> None:
    provider = TracerProvider()
    first = hof.configure(db=db_path, tracer_provider=provider)
    second = hof.configure(db=db_path, tracer_provider=provider)
    assert first is second
    processors = provider._active_span_processor._span_processors
    assert sum(isinstance(p, FailureIndexProcessor) for p in processors) == 1
    provider.shutdown()


def test_shutting_down_the_handle_leaves_a_joined_provider_to_its_owner(db_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    handle = hof.configure(db=db_path, tracer_provider=provider)
    with provider.get_tracer("app").start_as_current_span("node"):
        hof.record_failure(hof.FailureRecord(error_message="before"))
    handle.shutdown(timeout=5)
    stats = handle.stats()
    assert stats is not None and stats.written == 1
    assert (stats.spans_exported, stats.spans_unexported, stats.spans_pending_export) == (0, 0, 0)  # no OTLP here
    provider.get_tracer("app").start_span("after").end()  # the owner's pipeline still runs
    assert [s.name for s in exporter.get_finished_spans()] == ["node", "after"]
    provider.shutdown()


def test_joining_a_global_provider_built_elsewhere_says_content_policy_does_not_cover_it(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import logging
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        logging.basicConfig(level=logging.WARNING)
        trace.set_tracer_provider(TracerProvider())
        import hive_otel_failures as hof
        handle = hof.configure()
        print(handle.enabled, handle.exporting)
    """)
    proc = run_app({}, tmp_path, code)
    assert proc.stdout.split() == ["True", "False"]
    assert "not behind the content policy" in proc.stderr
