"""What leaves the machine: OTLP from the standard OTEL_* variables, behind a content policy.

The local index keeps scrubbed content; trace backends get the structure of a failure (ids,
kind, error type and message, attempts, fingerprint) but no prompts, tool arguments, input
context or snapshots unless the user opts in with HIVE_FAILURES_EXPORT_CONTENT=true.

Export must never hold the application up, at run time or at exit, when the collector is
down: the SDK's BatchSpanProcessor is wrapped so that force_flush and shutdown return within
their timeout, and every span that did not reach the collector is counted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry.context import Context
from opentelemetry.sdk.environment_variables import (OTEL_BSP_EXPORT_TIMEOUT, OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
                                                     OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_SCHEDULE_DELAY,
                                                     OTEL_EXPORTER_OTLP_TIMEOUT, OTEL_EXPORTER_OTLP_TRACES_TIMEOUT)
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from . import semconv

_log = logging.getLogger(__name__)
_TRUE = {"1", "true", "yes", "on"}

#: How long Handle.shutdown() and the provider's shutdown at exit give the OTLP export.
DEFAULT_SHUTDOWN_TIMEOUT_MILLIS = 5000


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


@dataclass(frozen=True)
class ExportStats:
    """Spans handed to OTLP export: delivered, never to be delivered, not yet decided."""

    exported: int
    unexported: int  # failed exports, refused by a full queue or after shutdown, left at the deadline
    pending: int  # queued or being exported; 0 once shut down (what is left then is unexported)


class _Ledger(SpanExporter):
    """Wraps the exporter the batch processor calls: counts each batch's outcome, gives up on request.

    ``abort()`` shuts the wrapped exporter down, which is what interrupts the OTLP exporters'
    retry backoff (both wait on their shutdown event); later batches fail here at once.
    """

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.accepted = self.handed = self.exported = self.failed = self.dropped = 0
        self.failing = False  # the last export that finished failed: the collector is not taking spans
        self.give_up_on_failure = False  # set at shutdown: one failed batch and the others are not tried
        self._aborted = False

    def reset(self) -> None:  # in a forked child, whose batch processor starts empty
        self.lock = threading.Lock()
        self.accepted = self.handed = self.exported = self.failed = self.dropped = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        n = len(spans)
        with self.lock:
            self.handed += n
            if self._aborted:
                self.failed += n
                return SpanExportResult.FAILURE
        result = SpanExportResult.FAILURE
        try:
            result = self.inner.export(spans)
        except Exception:  # noqa: BLE001 - the SDK would log it too; here it is also counted
            _log.warning("hive-failures: the OTLP exporter raised", exc_info=True)
        ok = result is SpanExportResult.SUCCESS
        with self.lock:
            if ok:
                self.exported += n
            else:
                self.failed += n
            self.failing = not ok
        if not ok and self.give_up_on_failure:
            self.abort()
        return result

    def abort(self) -> None:
        with self.lock:
            if self._aborted:
                return
            self._aborted = True
        try:
            self.inner.shutdown()
        except Exception:  # noqa: BLE001 - shutting down must not raise into the app
            _log.warning("hive-failures: the OTLP exporter's shutdown raised", exc_info=True)

    def shutdown(self, timeout_millis: float = DEFAULT_SHUTDOWN_TIMEOUT_MILLIS) -> None:
        self.abort()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def _env_positive_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(float(raw))
    except ValueError:
        value = 0
    if value <= 0:
        _log.warning("hive-failures: %s=%r is not a positive number; using %d", name, raw, default)
        return default
    return value


@dataclass(frozen=True)
class BatchSettings:
    """OTEL_BSP_* as the SDK reads them, but an invalid value falls back to the default, not an exception."""

    max_queue_size: int = 2048
    schedule_delay_millis: int = 5000
    max_export_batch_size: int = 512
    export_timeout_millis: int = 30000

    @classmethod
    def from_env(cls) -> BatchSettings:
        d = cls()
        queue = _env_positive_int(OTEL_BSP_MAX_QUEUE_SIZE, d.max_queue_size)
        batch = _env_positive_int(OTEL_BSP_MAX_EXPORT_BATCH_SIZE, d.max_export_batch_size)
        return cls(max_queue_size=queue,
                   schedule_delay_millis=_env_positive_int(OTEL_BSP_SCHEDULE_DELAY, d.schedule_delay_millis),
                   max_export_batch_size=min(batch, queue),  # the SDK refuses a batch larger than the queue
                   export_timeout_millis=_env_positive_int(OTEL_BSP_EXPORT_TIMEOUT, d.export_timeout_millis))


class BoundedBatchSpanProcessor(SpanProcessor):
    """The SDK's BatchSpanProcessor, with force_flush and shutdown that keep to their timeout.

    Why not the SDK's own: its shutdown joins the worker (for up to 30 s) *before* it shuts the
    exporter down, so with the collector down the worker sits out the exporter's retry backoff
    (1, 2, 4 s... within OTEL_EXPORTER_OTLP_TIMEOUT) for the batch in flight and again for each
    batch left; and its force_flush exports on the caller's thread, ignoring its timeout. Here
    the exporter is shut down at the deadline (which interrupts the backoff), at once if the
    collector is already known to be down, and what was not exported is counted
    (``export_stats()``). The application's thread only checks a counter and enqueues: when the
    queue is full the new span is refused and counted, instead of the SDK's drop-and-log.
    """

    def __init__(self, exporter: SpanExporter, settings: BatchSettings | None = None, *,
                 shutdown_timeout_millis: float = DEFAULT_SHUTDOWN_TIMEOUT_MILLIS) -> None:
        self.settings = settings or BatchSettings.from_env()
        self._ledger = _Ledger(exporter)
        self._batch = BatchSpanProcessor(
            self._ledger, max_queue_size=self.settings.max_queue_size,
            schedule_delay_millis=self.settings.schedule_delay_millis,
            max_export_batch_size=self.settings.max_export_batch_size,
            export_timeout_millis=self.settings.export_timeout_millis)
        self._shutdown_timeout_millis = shutdown_timeout_millis
        self._closed = False  # no new spans: shutdown has begun
        self._done = False  # shutdown has returned: whatever is not exported now is unexported
        self._stopper: threading.Thread | None = None
        self._deadline = 0.0
        self._grace = 0.0
        self._flusher: threading.Thread | None = None
        self._flush_lock = threading.Lock()
        self._warned: set[str] = set()
        if hasattr(os, "register_at_fork"):
            ref = weakref.WeakMethod(self._ledger.reset)
            os.register_at_fork(after_in_child=lambda: (reset := ref()) and reset())

    @property
    def span_exporter(self) -> SpanExporter:
        return self._ledger.inner

    # --- application thread ------------------------------------------------------------------
    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if not (span.context and span.context.trace_flags.sampled):
            return
        ledger = self._ledger
        with ledger.lock:
            # accepted - handed is at least what the SDK's queue holds (it pops a batch just before
            # handing it over), so the SDK never drops on its own, unseen, and never logs per span.
            refused = self._closed or ledger.accepted - ledger.handed >= self.settings.max_queue_size
            if refused:
                ledger.dropped += 1
            else:
                ledger.accepted += 1
        if refused:
            why = "shut down" if self._closed else f"behind (its {self.settings.max_queue_size} span queue is full)"
            self._warn_once(why[:6], "hive-failures: OTLP export is %s; spans are dropped and counted in "
                            "Handle.stats().spans_unexported", why)
            return
        self._batch.on_end(span)

    # --- lifecycle ---------------------------------------------------------------------------
    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export what is queued; False if that did not finish within the timeout, or failed."""
        if self._closed:
            return False
        with self._flush_lock:  # one flush at a time runs the export; later callers wait for it
            flusher = self._flusher
            if flusher is None or not flusher.is_alive():
                flusher = threading.Thread(target=self._batch.force_flush, name="hive-failures-otlp-flush", daemon=True)
                try:
                    flusher.start()
                except RuntimeError:  # no new threads at interpreter exit (Python 3.12)
                    return not self._ledger.failing and self._batch.force_flush()
                self._flusher = flusher
        flusher.join(max(0.0, timeout_millis / 1000))
        return not flusher.is_alive() and not self._ledger.failing

    def shutdown(self, timeout_millis: float | None = None) -> None:
        """Export what is queued within the timeout (default 5 s), then stop; count what is left."""
        self.begin_shutdown(timeout_millis)
        self.wait_shutdown()

    def begin_shutdown(self, timeout_millis: float | None = None) -> None:
        """Start shutting down without waiting (Handle.shutdown drains the index meanwhile)."""
        timeout = max(0.0, (self._shutdown_timeout_millis if timeout_millis is None else timeout_millis) / 1000)
        with self._ledger.lock:
            if self._closed:
                return
            self._closed = True
        self._deadline = time.monotonic() + timeout
        self._grace = min(0.25, timeout / 10)  # time for the worker to wind down once the exporter stops
        self._ledger.give_up_on_failure = True
        if self._ledger.failing:
            self._ledger.abort()  # the collector is down: retrying until the deadline would only delay the exit
        stopper = threading.Thread(target=self._batch.shutdown, name="hive-failures-otlp-shutdown", daemon=True)
        try:
            stopper.start()
        except RuntimeError:
            # At interpreter exit Python 3.12 starts no thread: shut down here. A failed batch
            # still stops the rest, so this takes at most one export (OTEL_EXPORTER_OTLP_TIMEOUT).
            self._batch.shutdown()
            self._done = True
            return
        self._stopper = stopper

    def wait_shutdown(self) -> None:
        """Wait for begin_shutdown's deadline at most; what is not exported by then is unexported."""
        stopper = self._stopper
        if stopper is not None and not self._done:
            stopper.join(max(0.0, self._deadline - self._grace - time.monotonic()))
            if stopper.is_alive():
                self._ledger.abort()
                stopper.join(max(0.0, self._deadline - time.monotonic()))
            self._done = True
            stats = self.export_stats()
            if stats.unexported:
                _log.warning("hive-failures: %d spans could not be exported over OTLP (%d were); see "
                             "Handle.stats().spans_unexported", stats.unexported, stats.exported)

    def export_stats(self) -> ExportStats:
        ledger = self._ledger
        with ledger.lock:
            left = ledger.accepted - ledger.exported - ledger.failed
            lost = ledger.failed + ledger.dropped
            if self._done:
                return ExportStats(exported=ledger.exported, unexported=lost + left, pending=0)
            return ExportStats(exported=ledger.exported, unexported=lost, pending=left)

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _log.warning(message, *args)


def _otlp_timeout_seconds() -> float:
    """The OTLP exporters' own timeout (they read the variable in seconds, default 10)."""
    raw = os.environ.get(OTEL_EXPORTER_OTLP_TRACES_TIMEOUT) or os.environ.get(OTEL_EXPORTER_OTLP_TIMEOUT) or "10"
    try:
        return float(raw)
    except ValueError:
        return 10.0


def otlp_span_processor_from_env() -> BoundedBatchSpanProcessor | None:
    """The OTLP export pipeline the OTEL_* variables ask for (content policy unless opted out), or None."""
    settings = BatchSettings.from_env()
    exporter = otlp_exporter_from_env(settings)
    if exporter is None:
        return None
    if not export_content_enabled():
        exporter = ContentPolicyExporter(exporter)
    return BoundedBatchSpanProcessor(exporter, settings)


def otlp_exporter_from_env(settings: BatchSettings | None = None) -> SpanExporter | None:
    """An OTLP span exporter if the OTEL_* variables ask for one, else None.

    Asked for by ``OTEL_TRACES_EXPORTER=otlp`` or an OTLP endpoint variable; ``none`` wins.
    The protocol comes from ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` (grpc, as the Python
    distro's default, or http/protobuf); endpoint, headers, timeout are read by the exporter.
    ``OTEL_BSP_EXPORT_TIMEOUT`` (which the SDK reads but does not use) caps that timeout: one
    export, retries included, takes no longer than either.
    """
    names = {n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()}
    if "none" in names:
        return None
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if "otlp" not in names and not endpoint:
        return None
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip().lower()
    timeout = None  # the exporter's own, from OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT
    if settings is not None and os.environ.get(OTEL_BSP_EXPORT_TIMEOUT):
        timeout = min(_otlp_timeout_seconds(), settings.export_timeout_millis / 1000)
    if protocol.startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPExporter

        return HTTPExporter(timeout=timeout)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GRPCExporter

    return GRPCExporter(timeout=timeout)
