"""One call to wire OTel for failure capture: provider, index processor, OTLP export.

Joins a TracerProvider someone already installed (opentelemetry-instrument, the app) instead
of replacing it, and never adds a second index processor to the same provider.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from .export import ContentPolicyExporter, export_content_enabled, otlp_exporter_from_env
from .index import default_location
from .processor import FailureIndexProcessor, ProcessorStats

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_handles: dict[int, "Handle"] = {}  # id(provider) -> handle; providers live for the process


@dataclass
class Handle:
    """What configure()/instrument() set up; keep it to flush, shut down or read counters."""

    tracer_provider: TracerProvider | None
    processor: FailureIndexProcessor | None
    index_location: str | None
    exporting: bool = False
    disabled_reason: str | None = None
    instrumented: bool = field(default=False)

    @property
    def enabled(self) -> bool:
        return self.processor is not None

    def stats(self) -> ProcessorStats | None:
        return self.processor.stats() if self.processor else None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if self.tracer_provider is None:
            return True
        return self.tracer_provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()


def _sdk_disabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def configure(*, db: str | os.PathLike[str] | None = None, service_name: str | None = None,
              tracer_provider: TracerProvider | None = None, max_queue_size: int | None = None) -> Handle:
    """Capture failures from any OTel app into the index (and OTLP, if OTEL_* ask for it).

    ``db`` defaults to HIVE_FAILURES_DB or $HIVE_HOME/failures.db. With no provider given, the
    global SDK provider is joined, or one is created (resource from OTEL_SERVICE_NAME /
    OTEL_RESOURCE_ATTRIBUTES) and installed globally together with an OTLP exporter when the
    environment asks for one. Calling again returns the same handle.
    """
    if _sdk_disabled():
        return Handle(None, None, None, disabled_reason="OTEL_SDK_DISABLED=true")
    with _lock:
        provider = tracer_provider or trace.get_tracer_provider()
        created = False
        if not isinstance(provider, TracerProvider):
            if not isinstance(provider, trace.ProxyTracerProvider):
                reason = f"the global tracer provider is a {type(provider).__name__}, not the OTel SDK's"
                _log.warning("hive-failures: %s; failures will not be indexed", reason)
                return Handle(None, None, None, disabled_reason=reason)
            resource = Resource.create({SERVICE_NAME: service_name} if service_name else {})
            provider = TracerProvider(resource=resource)
            created = True
        existing = _handles.get(id(provider))
        if existing is not None:
            return existing
        if not created and tracer_provider is None and not export_content_enabled():
            _log.warning("hive-failures: joined a TracerProvider set up elsewhere; its exporters are not behind "
                         "the content policy, so span content they export is theirs to filter "
                         "(select OTEL_PYTHON_CONFIGURATOR=hive_failures to let this package build the pipeline)")
        location = str(db) if db is not None else default_location()
        processor = FailureIndexProcessor(location, max_queue_size=max_queue_size)
        provider.add_span_processor(processor)
        exporting = False
        if created:
            exporter = otlp_exporter_from_env()
            if exporter is not None:
                if not export_content_enabled():
                    exporter = ContentPolicyExporter(exporter)
                provider.add_span_processor(BatchSpanProcessor(exporter))
                exporting = True
            trace.set_tracer_provider(provider)
        handle = Handle(provider, processor, location, exporting=exporting)
        _handles[id(provider)] = handle
        return handle

