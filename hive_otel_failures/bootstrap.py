"""One call to wire OTel for failure capture: provider, index processor, OTLP export.

Joins a TracerProvider someone already installed (opentelemetry-instrument, the app) instead
of replacing it, and never adds a second index processor to the same provider.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field, fields

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider

from .export import (DEFAULT_SHUTDOWN_TIMEOUT_MILLIS, BoundedBatchSpanProcessor, export_content_enabled,
                     otlp_span_processor_from_env)
from .index import default_location
from .processor import FailureIndexProcessor, ProcessorStats

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_handles: dict[int, "Handle"] = {}  # id(provider) -> handle; providers live for the process


@dataclass(frozen=True)
class HandleStats(ProcessorStats):
    """The index's counters (records), and the OTLP export's (spans; all 0 when not exporting).

    ``spans_unexported`` counts spans that will never reach the collector: exports that failed,
    spans refused by a full export queue or after shutdown, and what shutdown left at its deadline.
    ``spans_pending_export`` are queued or being sent; after shutdown it is 0.
    """

    spans_exported: int = 0
    spans_unexported: int = 0
    spans_pending_export: int = 0


@dataclass
class Handle:
    """What configure()/instrument() set up; keep it to flush, shut down or read counters."""

    tracer_provider: TracerProvider | None
    processor: FailureIndexProcessor | None
    index_location: str | None
    exporting: bool = False
    disabled_reason: str | None = None
    instrumented: bool = field(default=False)
    export_processor: BoundedBatchSpanProcessor | None = field(default=None, repr=False)
    owns_provider: bool = field(default=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.processor is not None

    def stats(self) -> HandleStats | None:
        if self.processor is None:
            return None
        base = self.processor.stats()
        counts = {f.name: getattr(base, f.name) for f in fields(base)}
        if self.export_processor is not None:
            export = self.export_processor.export_stats()
            counts.update(spans_exported=export.exported, spans_unexported=export.unexported,
                          spans_pending_export=export.pending)
        return HandleStats(**counts)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if self.tracer_provider is None:
            return True
        return self.tracer_provider.force_flush(timeout_millis)

    def shutdown(self, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_MILLIS / 1000) -> None:
        """Write what the index accepted, export what OTLP can, within ``timeout`` seconds; then stop.

        The index and the export drain side by side under the one deadline. With the collector
        down, the export gives up at the deadline (at once if it already knows the collector is
        down); spans it could not send are counted in ``stats().spans_unexported``. A provider
        configure() created is shut down too; one it joined belongs to its owner and keeps running
        (its other processors' shutdown is not ours to bound).
        """
        deadline = time.monotonic() + max(0.0, timeout)
        if self.export_processor is not None:
            self.export_processor.begin_shutdown(max(0.0, timeout) * 1000)
        if self.processor is not None:
            self.processor.shutdown(timeout_millis=max(0.0, deadline - time.monotonic()) * 1000)
        if self.export_processor is not None:
            self.export_processor.wait_shutdown()
        if self.owns_provider and self.tracer_provider is not None:
            self.tracer_provider.shutdown()  # our processors are down already: this only unhooks the provider


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
        export_processor = None
        if created:
            try:
                export_processor = otlp_span_processor_from_env()
            except Exception as exc:  # noqa: BLE001 - a bad OTEL_EXPORTER_OTLP_* must not stop the app
                _log.warning("hive-failures: cannot set up OTLP export (%s); failures are still indexed", exc)
            if export_processor is not None:
                provider.add_span_processor(export_processor)
            trace.set_tracer_provider(provider)
        handle = Handle(provider, processor, location, exporting=export_processor is not None,
                        export_processor=export_processor, owns_provider=created)
        _handles[id(provider)] = handle
        return handle

