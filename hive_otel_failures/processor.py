"""FailureIndexProcessor: failure spans in, index rows out, never on the application's time.

``on_end`` runs on the thread that ended the span (inside Hive's agent loop). It only looks
for ``hive.failure`` / ``hive.run`` events, on spans that may carry them, and enqueues. The
writer takes a batch off the queue and turns it into the index's rows (Python, under the GIL);
when it is behind, a second thread writes the previous batch meanwhile (SQLite, which gives the
GIL up). Beside a busy application thread, a writer that did both in turn waited for the GIL
after every write and got half of it for its Python, while the database sat idle.
The queue is bounded: when it is full a record is dropped and counted rather than blocking the agent.

A batch is sized so that it is committed about one flush interval (``schedule_delay_millis``)
after it was taken off the queue, at most ``max_batch_size`` records: while the writer keeps up,
a record is on disk within one interval (to be picked up) plus one, so a kill -9 loses only
the newest records.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import format_span_id, format_trace_id

from . import semconv
from .index import FailureIndex, open_index
from .index.store import run_row
from .record import filled_from_span, from_attributes, from_time_ns, prepare, run_from_attributes, to_attributes
from .spans import may_carry_records

_log = logging.getLogger(__name__)
_FAILURE_EVENT, _RUN_EVENT = semconv.FAILURE_EVENT, semconv.RUN_EVENT


# A queued span is one flat tuple of plain values, not the span nor its Event objects:
#   (trace_id, span_id, start_time, end_time, run keys, run values, then per failure event:
#    timestamp, attribute keys, attribute values)
# with the hive.run event's keys and values None when it has none. CPython's collector stops
# tracking a tuple once what it holds is untracked, so a queued record is never promoted toward
# a full collection on the application's thread (each nesting level would delay that by a
# collection). Queued Events, their attribute mappings and span contexts set off a 30-80 ms
# full collection every ~10k failures; the plain SDK none in 100k.
_Queued = tuple[Any, ...]
_HEAD = 6  # the span's part of a queued tuple; failures follow in threes
# A batch between the writer's threads: when it was taken off the queue, its spans, its failures
# (prepared attributes) and run rows, and the index's prepared batch (None: write one by one).
_Prepared = tuple[float, int, list[Mapping[str, Any]], list[tuple[Any, ...]], Any]
# The constructor waits this long for the writer to open the index, while the application is not
# busy yet: each SQLite call gives the GIL up, and beside four busy threads opening a file took
# 1.3 s (creating one 5.6 s); a storm that started at once then filled the queue before the
# first write. An index that takes longer (locked by another process's migration) opens later.
_OPEN_WAIT = 0.5


def _keys_values(event: Event) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    attributes = event.attributes
    # The SDK's BoundedAttributes copies its dict at C speed; any other Mapping key by key.
    attributes = attributes.copy() if isinstance(attributes, BoundedAttributes) else dict(attributes or {})
    return tuple(attributes), tuple(attributes.values())


_RUN_KEYS = (semconv.RUN_SESSION_ID, semconv.RUN_AGENT_ID, semconv.RUN_AGENT_VERSION, semconv.RUN_QUALITY,
             semconv.RUN_FAILURES, semconv.RUN_OUTCOME)
_TEXT = (str, type(None))
_RUN_GETTERS: dict[tuple[str, ...], itemgetter[Any]] = {}  # by an event's keys (a few orders): _RUN_KEYS' values
_NS_LIMIT = 1 << 63  # span times the SDK can make (2262-04-11); others go through the model, which clamps them


def _run_row_of_event(keys: tuple[str, ...], values: tuple[Any, ...], start_ns: int, end_ns: int) -> tuple[Any, ...]:
    """The runs row of a hive.run event: what run_from_attributes and run_row make of it.

    Those build a pydantic model, twice the writer's other work per run (5 runs a failure);
    attributes as record_run sets them (texts, an int count) need no validation, and any
    other event goes through the model as before. The values are picked by their keys'
    positions, without a dict per run: beside a busy application thread each bytecode of
    the writer's is paid again waiting for the GIL.
    """
    getter = _RUN_GETTERS.get(keys)
    if getter is None:
        if len(_RUN_GETTERS) >= 64:  # events from elsewhere, in many orders: keep a few
            _RUN_GETTERS.clear()
        getter = _RUN_GETTERS[keys] = itemgetter(*(keys.index(k) if k in keys else -1 for k in _RUN_KEYS))
    session_id, agent_id, version, quality, failures, outcome = getter((*values, None))  # -1: absent
    if type(session_id) is str and type(failures) is int and type(agent_id) in _TEXT and type(version) in _TEXT \
            and type(quality) in _TEXT and 0 <= start_ns < _NS_LIMIT and 0 <= end_ns < _NS_LIMIT:
        return (session_id, agent_id or "", version, start_ns, end_ns,
                int(outcome == "success"), quality, failures)
    return run_row(run_from_attributes(dict(zip(keys, values)), from_time_ns(start_ns), from_time_ns(end_ns)))


@dataclass(frozen=True)
class ProcessorStats:
    """Counters readable from the API: nothing is lost silently."""

    queued: int
    written: int
    runs_written: int
    dropped: int
    errors: int


def _cause(exc: BaseException) -> str:
    """``exc`` with the error it interrupted, if any: a failed ROLLBACK must not hide why it ran.

    (SQLite rolls a transaction back by itself on a full disk; the index's ROLLBACK then fails
    with "no transaction is active", raised while handling the real error.)
    """
    text = repr(exc)
    context = exc.__context__
    if context is not None and not exc.__suppress_context__ and exc.__cause__ is None:
        text += f", raised while handling {context!r}"
    elif exc.__cause__ is not None:
        text += f", caused by {exc.__cause__!r}"
    return text


class FailureIndexProcessor(SpanProcessor):
    """Writes every span carrying a ``hive.failure`` event (and every run outcome) to the index.

    Its writer opens the index; the constructor waits for that up to half a second (about
    10 ms for a local file), so that the opening is done before the application is busy.
    """

    def __init__(self, index: FailureIndex | str | os.PathLike[str] | None = None, *,
                 max_queue_size: int | None = None, max_batch_size: int = 2048,
                 schedule_delay_millis: int = 200) -> None:
        self._max_queue = max(1, max_queue_size or int(os.environ.get(semconv.ENV_QUEUE_SIZE, "10000")))
        # 2048 spans (~400 failures and their runs) a transaction, not the SDK's 512: beside a busy
        # application thread the writer waits a switch interval (5 ms) for the GIL after each one,
        # and draining a backlog there it indexed 19% more with 2048 (writer_throughput.py, 3).
        self._max_batch = max(1, max_batch_size)
        self._min_batch = max(1, self._max_batch // 8)
        self._batch_limit = self._min_batch  # records in the next transaction: see _learn
        self._delay = max(0.001, schedule_delay_millis / 1000)
        # deque append/popleft are atomic under the GIL: no lock on the application's path.
        self._queue: deque[_Queued] = deque()
        self._index: FailureIndex | None = index if isinstance(index, FailureIndex) else None
        self._owns_index = self._index is None
        self._location = None if isinstance(index, FailureIndex) else index
        self._cond = threading.Condition()  # writer -> force_flush: "a batch is done"
        self._in_flight = 0  # records taken off the queue, not yet written (under _cond)
        # Between the writer's threads: the first holds at most two prepared batches beside the one
        # being written, one queued here and one it waits to queue.
        self._prepared: queue.Queue[_Prepared | None] = queue.Queue(maxsize=1)
        # Batches handed to the database thread, and written by it (each counted by one thread).
        # Only a writer with a full batch still queued behind the one it took hands it over; one
        # that keeps up writes it itself (once the database thread is idle, so batches stay in
        # order): two threads of ours wanting the GIL beside the application's made its waits
        # over 5 ms four times as many (reliability.py, 2; 109 against 19), with nothing to gain.
        self._handed = self._done = 0
        self._wake = threading.Event()
        self._opened = threading.Event()  # the writer tried to open the index (force_flush waits for it)
        self._stopping = threading.Event()
        self._written = self._runs_written = self._dropped = self._errors = 0
        self._warned: set[str] = set()
        self._writer = threading.Thread(target=self._run, name="hive-failures-writer", daemon=True)
        self._database = threading.Thread(target=self._write_prepared, name="hive-failures-writer-db", daemon=True)
        self._writer.start()
        self._opened.wait(_OPEN_WAIT)

    # --- application thread: check and enqueue, nothing else ---------------------------------
    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if not may_carry_records(span):  # the common case, decided without copying events
            return
        events = span.events
        if not events:
            return
        failures: list[Any] = []  # flat: timestamp, keys, values, ...
        run: tuple[tuple[str, ...], tuple[Any, ...]] | None = None
        unrecorded = 0
        for event in events:
            name = event.name
            if name == _FAILURE_EVENT:
                failures += (event.timestamp, *_keys_values(event))
            elif name == _RUN_EVENT:
                run = run or _keys_values(event)
            elif name == semconv.UNRECORDED_EVENT:
                unrecorded += 1
        if unrecorded:  # record_failure was given something it could not record: it will never be a row
            with self._cond:
                self._errors += unrecorded
            self._warn_once("unrecorded", "hive-failures: record_failure could not record a failure (see its "
                                          "warning); counted in stats().errors")
        if not failures and run is None:
            return
        if self._stopping.is_set():
            self._count_drop("the processor is shut down")
            return
        if len(self._queue) >= self._max_queue:
            self._count_drop("the queue is full")
            return
        context = span.context
        self._queue.append((context.trace_id if context else None, context.span_id if context else None,
                            span.start_time, span.end_time, *(run or (None, None)), *failures))
        if len(self._queue) >= self._max_batch and not self._wake.is_set():
            self._wake.set()

    def _count_drop(self, why: str) -> None:
        with self._cond:
            self._dropped += 1
        self._warn_once("drop", "hive-failures: dropping failure records (%s); see stats().dropped", why)

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _log.warning(message, *args)

    # --- writer threads ----------------------------------------------------------------------
    def _run(self) -> None:
        """The writer's first thread: opens the index, takes batches off the queue, prepares them,
        and writes them too unless it is behind (see _handed)."""
        with suppress_instrumentation():
            self._open()  # early, so readers find the index even before the first failure
            self._database.start()
            self._opened.set()
            try:
                while True:
                    # Wake per batch or per delay, not per record: fewer GIL hand-offs with the app.
                    self._wake.wait(self._delay)
                    self._wake.clear()
                    while self._queue:
                        size = min(self._batch_limit, len(self._queue))
                        with self._cond:  # before popping, so force_flush never sees zero early
                            self._in_flight += size
                        taken = time.monotonic()
                        batch = [self._queue.popleft() for _ in range(size)]
                        prepared = self._prepare(batch, size, taken)
                        behind = len(self._queue) >= self._max_batch or self._handed != self._done  # see _handed
                        if behind and self._hand_over(prepared):
                            self._handed += 1
                        else:  # not behind, or the database thread is gone: written here
                            self._write_counted(prepared)
                    if self._stopping.is_set() and not self._queue:
                        break
            finally:
                self._hand_over(None)
                self._database.join()
        if self._owns_index and self._index is not None:
            self._index.close()

    def _hand_over(self, prepared: _Prepared | None) -> bool:
        """Queue a batch for the database thread (waiting while one is queued); False if that thread is gone."""
        while self._database.is_alive():
            try:
                self._prepared.put(prepared, timeout=self._delay)
                return True
            except queue.Full:
                continue
        return False

    def _write_prepared(self) -> None:
        """The writer's second thread: writes each prepared batch it is handed."""
        with suppress_instrumentation():
            while (prepared := self._prepared.get()) is not None:
                self._write_counted(prepared)
                self._done += 1

    def _write_counted(self, prepared: _Prepared) -> None:
        """Write a prepared batch, then count it."""
        taken, size, failures, runs, batch = prepared
        counts = 0, 0, len(failures) + len(runs)  # unless written: nothing is lost silently
        try:
            counts = self._write(failures, runs, batch)
            self._learn(size, time.monotonic() - taken)
        except Exception as exc:  # noqa: BLE001 - the writer must outlive any batch
            self._warn_once("write", "hive-failures: writing a batch failed: %s", _cause(exc))
        finally:
            self._count_written(size, *counts)

    def _count_written(self, size: int, written: int, runs_written: int, errors: int) -> None:
        """A batch of ``size`` spans is done: what was written, what could not be."""
        with self._cond:
            self._in_flight -= size
            self._written += written
            self._runs_written += runs_written
            self._errors += errors
            self._cond.notify_all()

    def _learn(self, size: int, seconds: float) -> None:
        """Size the next batch so that it is committed about one flush interval after it is taken.

        A record then waits at most one interval to be picked up and one to be committed, while
        the writer keeps up. The records per second of the last batch predict the next one's;
        the floor keeps per-transaction costs from eating throughput.
        """
        fits = int(size * self._delay / seconds) if seconds > 0 else self._max_batch
        self._batch_limit = max(self._min_batch, min(self._max_batch, fits))

    def _open(self) -> FailureIndex | None:
        if self._index is None:
            try:
                self._index = open_index(self._location)
            except Exception as exc:  # noqa: BLE001 - an unusable index must not break the app
                self._warn_once("open", "hive-failures: cannot open the failure index: %s", exc)
                return None
        return self._index

    def _prepare(self, batch: list[_Queued], size: int, taken: float) -> _Prepared:
        """The batch's failures and run rows, and the index's prepared batch of them (None: one by one)."""
        failures: list[Mapping[str, Any]] = []
        runs: list[tuple[Any, ...]] = []
        for queued in batch:
            trace_id, span_id, start_time, end_time, run_keys, run_values = queued[:_HEAD]
            for at in range(_HEAD, len(queued), 3):  # a malformed event loses neither the batch nor its span's others
                timestamp, keys, values = queued[at:at + 3]
                try:
                    failures.append(self._wire(dict(zip(keys, values)), trace_id, span_id, timestamp))
                except Exception as exc:  # noqa: BLE001
                    self._error("malformed failure event", exc)
            if run_keys is not None:
                try:
                    runs.append(_run_row_of_event(run_keys, run_values, start_time or 0, end_time or 0))
                except Exception as exc:  # noqa: BLE001
                    self._error("malformed run event", exc)
        index, prepared = self._open(), None
        if index is not None:
            try:
                prepared = index.prepare_batch(failures, runs)
            except Exception as exc:  # noqa: BLE001 - find the bad entry, keep the others
                self._warn_once("prepare", "hive-failures: could not prepare a batch, writing it one by one: %s",
                                _cause(exc))
        return taken, size, failures, runs, prepared

    def _write(self, failures: list[Mapping[str, Any]], runs: list[tuple[Any, ...]],
               batch: Any) -> tuple[int, int, int]:
        """Failures and runs written, and records that could not be."""
        index = self._index
        if index is None:
            return 0, 0, len(failures) + len(runs)
        if batch is not None:
            try:
                index.write_batch(batch)
                return len(failures), len(runs), 0
            except Exception as exc:  # noqa: BLE001 - find the bad entry, keep the others
                self._warn_once("batch", "hive-failures: batch write failed, retrying one by one: %s", _cause(exc))
        written = sum(self._try_add(index, [f], []) for f in failures)  # outside the handler: errors as themselves
        runs_written = sum(self._try_add(index, [], [r]) for r in runs)
        return written, runs_written, 0

    @staticmethod
    def _wire(attributes: dict[str, Any], trace_id: int | None, span_id: int | None,
              timestamp: int) -> Mapping[str, Any]:
        """Prepared attributes for the index; events not made by record_failure are prepared here."""
        if attributes.get(semconv.FAILURE_PREPARED) is True:
            return attributes
        record = filled_from_span(
            from_attributes(attributes), trace_id=None if trace_id is None else format_trace_id(trace_id),
            span_id=None if span_id is None else format_span_id(span_id),
            time_ns=None if semconv.FAILURE_PREFIX + "timestamp" in attributes else timestamp)
        return to_attributes(prepare(record))

    def _try_add(self, index: FailureIndex, failures: list[Mapping[str, Any]], runs: list[tuple[Any, ...]]) -> int:
        try:
            index.add_prepared(failures, runs)
            return 1
        except Exception as exc:  # noqa: BLE001
            self._error("record write failed", exc)
            return 0

    def _error(self, what: str, exc: Exception) -> None:
        with self._cond:
            self._errors += 1
        self._warn_once(what, "hive-failures: %s: %s", what, _cause(exc))

    # --- lifecycle -------------------------------------------------------------------------
    def stats(self) -> ProcessorStats:
        with self._cond:
            return ProcessorStats(queued=len(self._queue) + self._in_flight, written=self._written,
                                  runs_written=self._runs_written, dropped=self._dropped, errors=self._errors)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Wait until every accepted record is written (or failed); False on timeout."""
        deadline = time.monotonic() + timeout_millis / 1000
        self._wake.set()
        # A flush also means "the index exists": a reader opening it afterwards finds its schema.
        while not self._opened.wait(min(self._delay, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline or not self._writer.is_alive():
                return False
        with self._cond:
            while self._queue or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._writer.is_alive() or not self._database.is_alive():
                    return False
                self._cond.wait(min(remaining, self._delay))
                self._wake.set()
        return True

    def shutdown(self, timeout_millis: int = 30000) -> None:
        """Stop accepting, write what was accepted, close the index. Returns within the timeout."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake.set()
        self._writer.join(timeout_millis / 1000)
        if self._writer.is_alive():
            self._warn_once("shutdown", "hive-failures: shutdown timed out with %d records unwritten",
                            len(self._queue) + self._in_flight)
