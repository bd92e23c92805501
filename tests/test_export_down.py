"""OTLP export with the collector down (a closed local port) or up (a real OTLP/HTTP receiver).

Issue 13: shutdown took 13-16 s with the collector down, with nothing said of the spans that
never left. Real exporters, real sockets, no mocks. Timing bounds are generous on purpose (the
machine is shared); the measured figures are in benchmarks and the issue, not here.
"""

from __future__ import annotations

import json
import socket
import textwrap
import time
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider

import hive_otel_failures as hof
from hive_otel_failures.export import BatchSettings, BoundedBatchSpanProcessor

from .conftest import OTLPReceiver
from .test_bootstrap import run_app


def closed_port() -> int:
    """A loopback port nobody listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# 600 failure spans: one full batch (512) in flight when shutdown starts, 88 still queued.
APP = textwrap.dedent("""
    import dataclasses, json, sys, time
    import hive_otel_failures as hof
    from opentelemetry import trace

    n, timeout = int(sys.argv[1]), float(sys.argv[2])
    handle = hof.configure()
    tracer = trace.get_tracer("app")
    slowest_end = 0.0
    for i in range(n):
        span = tracer.start_span("invoke_agent worker")
        hof.record_failure(hof.FailureRecord(agent_id="a", session_id=f"s{i}", error_type="builtins.ValueError",
                                             error_message=f"failure {i}"), span=span)
        t0 = time.perf_counter()
        span.end()
        slowest_end = max(slowest_end, time.perf_counter() - t0)
    t0 = time.perf_counter()
    handle.shutdown() if timeout < 0 else handle.shutdown(timeout=timeout)
    elapsed = time.perf_counter() - t0
    print(json.dumps({"shutdown_s": elapsed, "slowest_end_s": slowest_end, "exporting": handle.exporting,
                      **dataclasses.asdict(handle.stats())}))
""")


def run(env: dict[str, str], tmp_path: Path, n: int = 600, timeout: float = -1) -> dict:
    code = APP.replace("sys.argv[1]", str(n)).replace("sys.argv[2]", repr(timeout))
    proc = run_app(env, tmp_path, code)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def down(protocol: str, **env: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            **env}


def indexed(tmp_path: Path) -> int:
    with hof.open_index(tmp_path / "home" / "failures.db", create=False) as index:
        return len(index.recent(limit=10_000))


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_shutdown_with_the_collector_down_is_bounded_and_counts_what_was_not_exported(
        protocol: str, tmp_path: Path) -> None:
    out = run(down(protocol), tmp_path)
    assert out["exporting"] is True
    assert out["shutdown_s"] < 10, out  # the default bound is 5 s (the SDK alone: 13-16 s)
    assert (out["spans_exported"], out["spans_unexported"], out["spans_pending_export"]) == (0, 600, 0)
    assert out["written"] == 600 and indexed(tmp_path) == 600  # the index is complete all the same
    assert out["slowest_end_s"] < 1, out  # ending a span never waits on the exporter's retries


def test_the_shutdown_timeout_parameter_bounds_the_export(tmp_path: Path) -> None:
    out = run(down("http/protobuf"), tmp_path, timeout=1)
    assert out["shutdown_s"] < 5, out
    assert (out["spans_exported"], out["spans_unexported"], out["written"]) == (0, 600, 600)


@pytest.mark.parametrize("variable,value", [("OTEL_EXPORTER_OTLP_TIMEOUT", "0.5"),  # seconds, as the exporters read it
                                            ("OTEL_BSP_EXPORT_TIMEOUT", "500")])  # milliseconds
def test_the_otel_export_timeout_is_honoured_at_shutdown(variable: str, value: str, tmp_path: Path) -> None:
    """With a 0.5 s export timeout, a 60 s shutdown bound is not waited out: one failed export ends it."""
    out = run(down("grpc", **{variable: value}), tmp_path, timeout=60)
    assert out["shutdown_s"] < 10, out
    assert (out["spans_unexported"], out["written"]) == (600, 600)


def test_with_the_collector_up_nothing_is_counted_as_lost(receiver: OTLPReceiver, tmp_path: Path) -> None:
    out = run({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
              tmp_path)
    assert (out["spans_exported"], out["spans_unexported"], out["spans_pending_export"]) == (600, 0, 0)
    assert len(receiver.spans()) == 600 and len(receiver.requests) >= 2  # a batch of 512, then the rest at shutdown
    assert out["written"] == 600


def test_invalid_batch_settings_fall_back_instead_of_breaking_configure(receiver: OTLPReceiver,
                                                                        tmp_path: Path) -> None:
    out = run({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
               "OTEL_BSP_MAX_QUEUE_SIZE": "0", "OTEL_BSP_SCHEDULE_DELAY": "soon",
               "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "-3"},
              tmp_path, n=20)
    assert out["exporting"] is True and out["spans_exported"] == 20 == len(receiver.spans())


# --- the processor on its own provider ---------------------------------------------------------------

def _pipeline(settings: BatchSettings | None = None) -> tuple[TracerProvider, BoundedBatchSpanProcessor]:
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{closed_port()}/v1/traces")
    processor = BoundedBatchSpanProcessor(exporter, settings)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    return provider, processor


def test_force_flush_keeps_to_its_timeout_with_the_collector_down() -> None:
    provider, processor = _pipeline()
    tracer = provider.get_tracer("t")
    for i in range(10):
        tracer.start_span(f"s{i}").end()
    t0 = time.monotonic()
    assert processor.force_flush(300) is False  # the SDK's own force_flush waits out the retries
    assert time.monotonic() - t0 < 5
    t0 = time.monotonic()
    processor.shutdown(timeout_millis=500)
    assert time.monotonic() - t0 < 5
    stats = processor.export_stats()
    assert (stats.exported, stats.unexported, stats.pending) == (0, 10, 0)


def test_a_full_export_queue_refuses_and_counts_every_span(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "8")  # the batch size (512) is brought down to 8 with it
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
    settings = BatchSettings.from_env()
    assert (settings.max_queue_size, settings.max_export_batch_size) == (8, 8)
    provider, processor = _pipeline(settings)
    tracer = provider.get_tracer("t")
    for i in range(50):
        tracer.start_span(f"s{i}").end()
    running = processor.export_stats()
    assert running.exported + running.unexported + running.pending == 50
    assert running.pending <= 16 and running.unexported >= 34  # at most a queue in flight and a queue waiting
    processor.shutdown(timeout_millis=500)
    stats = processor.export_stats()
    assert (stats.exported, stats.unexported, stats.pending) == (0, 50, 0)
    tracer.start_span("after shutdown").end()
    assert processor.export_stats().unexported == 51
