"""FailureIndexProcessor: failure spans in, index rows out, never on the application's time.

``on_end`` runs on the thread that ended the span (inside Hive's agent loop). It only looks
for a ``hive.failure`` event or run-outcome attributes and enqueues; a writer thread turns
attributes into records and writes them in batched transactions. The queue is bounded: when
it is full a record is dropped and counted rather than blocking the agent.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import format_span_id, format_trace_id

from . import semconv
from .index import FailureIndex, open_index
from .record import FailureRecord, RunOutcome, from_attributes, run_from_attributes

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Item:
    failures: tuple[tuple[dict[str, Any], int], ...]  # (event attributes, event time ns)
    run: dict[str, Any] | None
    trace_id: int
    span_id: int
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class ProcessorStats:
    """Counters readable from the API: nothing is lost silently."""

    queued: int
    written: int
    runs_written: int
    dropped: int
    errors: int


def _dt(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, timezone.utc)


class FailureIndexProcessor(SpanProcessor):
    """Writes every span carrying a ``hive.failure`` event (and every run outcome) to the index."""

    def __init__(self, index: FailureIndex | str | os.PathLike[str] | None = None, *,
                 max_queue_size: int | None = None, max_batch_size: int = 512) -> None:
        size = max_queue_size or int(os.environ.get(semconv.ENV_QUEUE_SIZE, "10000"))
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=max(1, size))
        self._max_batch = max(1, max_batch_size)
        self._index: FailureIndex | None = index if isinstance(index, FailureIndex) else None
        self._owns_index = self._index is None
        self._location = None if isinstance(index, FailureIndex) else index
        self._cond = threading.Condition()
        self._pending = 0
        self._written = self._runs_written = self._dropped = self._errors = 0
        self._warned: set[str] = set()
        self._stopping = threading.Event()
        self._writer = threading.Thread(target=self._run, name="hive-failures-writer", daemon=True)
        self._writer.start()

    # --- application thread: check and enqueue, nothing else ---------------------------------
    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        events = span.events
        attributes = span.attributes
        is_run = attributes is not None and semconv.RUN_OUTCOME in attributes
        if not events and not is_run:
            return
        failures = tuple((dict(e.attributes or {}), e.timestamp) for e in events if e.name == semconv.FAILURE_EVENT)
        if not failures and not is_run:
            return
        if self._stopping.is_set():
            self._count_drop("the processor is shut down")
            return
        ctx = span.context
        item = _Item(failures, dict(attributes) if is_run else None, ctx.trace_id if ctx else 0,
                     ctx.span_id if ctx else 0, span.start_time or 0, span.end_time or 0)
        with self._cond:
            self._pending += 1
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._cond:
                self._pending -= 1
            self._count_drop("the queue is full")

    def _count_drop(self, why: str) -> None:
        with self._cond:
            self._dropped += 1
        self._warn_once("drop", "hive-failures: dropping failure records (%s); see stats().dropped", why)

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _log.warning(message, *args)

    # --- writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        with suppress_instrumentation():
            self._open()  # early, so readers find the index even before the first failure
            while True:
                try:
                    first = self._queue.get(timeout=0.1)
                except queue.Empty:
                    if self._stopping.is_set():
                        break
                    continue
                batch = [first]
                while len(batch) < self._max_batch:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                self._write(batch)
                with self._cond:
                    self._pending -= len(batch)
                    self._cond.notify_all()
        if self._owns_index and self._index is not None:
            self._index.close()

    def _open(self) -> FailureIndex | None:
        if self._index is None:
            try:
                self._index = open_index(self._location)
            except Exception as exc:  # noqa: BLE001 - an unusable index must not break the app
                self._warn_once("open", "hive-failures: cannot open the failure index: %s", exc)
                return None
        return self._index

    def _write(self, batch: list[_Item]) -> None:
        failures: list[FailureRecord] = []
        runs: list[RunOutcome] = []
        for item in batch:
            try:
                failures += [self._record(attrs, ns, item) for attrs, ns in item.failures]
                if item.run is not None:
                    runs.append(run_from_attributes(item.run, _dt(item.start_ns), _dt(item.end_ns)))
            except Exception as exc:  # noqa: BLE001 - one malformed span must not lose the batch
                self._error("malformed failure span", exc)
        index = self._open()
        if index is None:
            with self._cond:
                self._errors += len(failures) + len(runs)
            return
        try:
            index.add(failures, runs)
        except Exception as exc:  # noqa: BLE001
            self._error("batch write failed, retrying one by one", exc)
            failures_ok = runs_ok = 0
            for record in failures:
                failures_ok += self._try_add(index, [record], [])
            for run in runs:
                runs_ok += self._try_add(index, [], [run])
            with self._cond:
                self._written += failures_ok
                self._runs_written += runs_ok
            return
        with self._cond:
            self._written += len(failures)
            self._runs_written += len(runs)

    def _try_add(self, index: FailureIndex, failures: list[FailureRecord], runs: list[RunOutcome]) -> int:
        try:
            index.add(failures, runs)
            return 1
        except Exception as exc:  # noqa: BLE001
            self._error("record write failed", exc)
            return 0

    def _error(self, what: str, exc: Exception) -> None:
        with self._cond:
            self._errors += 1
        self._warn_once(what, "hive-failures: %s: %r", what, exc)

    @staticmethod
    def _record(attributes: dict[str, Any], timestamp_ns: int, item: _Item) -> FailureRecord:
        record = from_attributes(attributes)
        update: dict[str, Any] = {}
        if record.trace_id is None and item.trace_id:
            update["trace_id"] = format_trace_id(item.trace_id)
        if record.span_id is None and item.span_id:
            update["span_id"] = format_span_id(item.span_id)
        if semconv.FAILURE_PREFIX + "timestamp" not in attributes and timestamp_ns:
            update["timestamp"] = _dt(timestamp_ns)
        return record.model_copy(update=update) if update else record

    # --- lifecycle -------------------------------------------------------------------------
    def stats(self) -> ProcessorStats:
        with self._cond:
            return ProcessorStats(queued=self._pending, written=self._written, runs_written=self._runs_written,
                                  dropped=self._dropped, errors=self._errors)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Wait until every accepted record is written (or failed); False on timeout."""
        deadline = time.monotonic() + timeout_millis / 1000
        with self._cond:
            while self._pending > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._writer.is_alive():
                    return self._pending == 0
                self._cond.wait(remaining)
        return True

    def shutdown(self, timeout_millis: int = 30000) -> None:
        """Stop accepting, write what was accepted, close the index. Returns within the timeout."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._writer.join(timeout_millis / 1000)
        if self._writer.is_alive():
            self._warn_once("shutdown", "hive-failures: shutdown timed out with %d records unwritten",
                            self.stats().queued)
