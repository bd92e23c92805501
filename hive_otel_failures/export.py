"""What leaves the machine: OTLP from the standard OTEL_* variables, behind a content policy.

The local index keeps scrubbed content; trace backends get the structure of a failure (ids,
kind, error type and message, attempts, fingerprint) but no prompts, tool arguments, input
context or snapshots unless the user opts in with HIVE_FAILURES_EXPORT_CONTENT=true.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from . import semconv

_TRUE = {"1", "true", "yes", "on"}


def export_content_enabled() -> bool:
    return os.environ.get(semconv.ENV_EXPORT_CONTENT, "").strip().lower() in _TRUE


def _has_content(attributes: object) -> bool:
    return attributes is not None and any(k in semconv.CONTENT_ATTRIBUTES for k in attributes)  # type: ignore[attr-defined]


def _without_content(attributes: object) -> dict[str, object]:
    return {k: v for k, v in (attributes or {}).items() if k not in semconv.CONTENT_ATTRIBUTES}  # type: ignore[attr-defined]


def strip_content(span: ReadableSpan) -> ReadableSpan:
    """The same span without content attributes, on the span and on its events."""
    if not _has_content(span.attributes) and not any(_has_content(e.attributes) for e in span.events):
        return span
    events = [
        Event(e.name, _without_content(e.attributes), e.timestamp) if _has_content(e.attributes) else e
        for e in span.events
    ]
    return ReadableSpan(
        name=span.name, context=span.context, parent=span.parent, resource=span.resource,
        attributes=_without_content(span.attributes), events=events, links=span.links, kind=span.kind,
        status=span.status, start_time=span.start_time, end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class ContentPolicyExporter(SpanExporter):
    """Wraps an exporter so that content attributes never reach it."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([strip_content(s) for s in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def otlp_exporter_from_env() -> SpanExporter | None:
    """An OTLP span exporter if the OTEL_* variables ask for one, else None.

    Asked for by ``OTEL_TRACES_EXPORTER=otlp`` or an OTLP endpoint variable; ``none`` wins.
    The protocol comes from ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` (grpc, as the Python
    distro's default, or http/protobuf); endpoint, headers, timeout are read by the exporter.
    """
    names = {n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()}
    if "none" in names:
        return None
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if "otlp" not in names and not endpoint:
        return None
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip().lower()
    if protocol.startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPExporter

        return HTTPExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GRPCExporter

    return GRPCExporter()
