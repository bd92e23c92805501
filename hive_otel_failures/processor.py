"""FailureIndexProcessor: failure spans in, index rows out, never on the application's time.

``on_end`` runs on the thread that ended the span (inside Hive's agent loop). It only looks
for ``hive.failure`` / ``hive.run`` events, on spans that may carry them, and enqueues. A
thread of ours takes batches off the queue and hands them, marshalled, to the index writer:
a process of its own (writer.py), so that turning them into rows and writing them never
waits for, nor holds, the application's GIL. The queue is bounded: when it is full a record
is dropped and counted rather than blocking the agent; so is what the writer holds (a few
batches). A writer process that dies is counted (its unwritten records as errors) and
started again.

A batch is sized so that it is committed about one flush interval (``schedule_delay_millis``)
after it was taken off the queue, at most ``max_batch_size`` records: while the writer keeps up,
a record is on disk within one interval (to be picked up) plus one, so a kill -9 loses only
the newest records; a kill -9 of the application alone loses none that it handed over.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor

from . import semconv
from .index import FailureIndex, default_location
from .spans import may_carry_records
from .writer import QUEUED_HEAD, Queued, encode, receive, send, spawn, write_all

_log = logging.getLogger(__name__)
_FAILURE_EVENT, _RUN_EVENT = semconv.FAILURE_EVENT, semconv.RUN_EVENT


# A queued span is one flat tuple of plain values, not the span nor its Event objects:
#   (trace_id, span_id, start_time, end_time, run keys, run values, then per failure event:
#    timestamp, attribute keys, attribute values)
# with the hive.run event's keys and values None when it has none. CPython's collector stops
# tracking a tuple once what it holds is untracked, so a queued record is never promoted toward
# a full collection on the application's thread (each nesting level would delay that by a
# collection). Queued Events, their attribute mappings and span contexts set off a 30-80 ms
# full collection every ~10k failures; the plain SDK none in 100k. Plain values also marshal.
_run_keys = itemgetter(4)
# The constructor waits this long for the writer to open the index, while the application is not
# busy yet; a storm that started at once filled the queue before the first write. An index that
# takes longer (locked by another process's migration) opens later.
_OPEN_WAIT = 0.5
# Batches the writer process holds: one written, one prepared meanwhile, one waiting, one on its way.
_FRAMES = 4
_RESPAWN_AFTER = 1.0  # seconds a writer process ran at least before it is started again at once


def _records(batch: list[Queued]) -> int:
    """Failures and runs in queued spans (at C speed: a span is a head, then failures in threes)."""
    runs = len(batch) - list(map(_run_keys, batch)).count(None)
    return (sum(map(len, batch)) - QUEUED_HEAD * len(batch)) // 3 + runs


def _keys_values(event: Event) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    attributes = event.attributes
    # The SDK's BoundedAttributes copies its dict at C speed; any other Mapping key by key.
    attributes = attributes.copy() if isinstance(attributes, BoundedAttributes) else dict(attributes or {})
    return tuple(attributes), tuple(attributes.values())


@dataclass(frozen=True)
class ProcessorStats:
    """Counters readable from the API: nothing is lost silently."""

    queued: int
    written: int
    runs_written: int
    dropped: int
    errors: int


@dataclass(eq=False)
class _Process:
    """One writer process, and the batches sent to it not yet reported written: (spans, records)."""

    popen: Any
    started: float
    frames: deque[tuple[int, int]] = field(default_factory=deque)
    ended: bool = False  # its reports ended: what it had not written is counted
    reader: threading.Thread | None = None


class FailureIndexProcessor(SpanProcessor):
    """Writes every span carrying a ``hive.failure`` event (and every run outcome) to the index.

    ``index`` is where: a SQLite file or a ``postgresql://`` URL (default: HIVE_FAILURES_DB or
    $HIVE_HOME/failures.db). Its writer process opens the index; the constructor waits for that
    up to half a second (about 0.2 s for a local file), so that the opening is done before the
    application is busy.
    """

    def __init__(self, index: str | os.PathLike[str] | None = None, *,
                 max_queue_size: int | None = None, max_batch_size: int = 2048,
                 schedule_delay_millis: int = 200) -> None:
        if isinstance(index, FailureIndex):
            raise TypeError("FailureIndexProcessor takes the index's location (a path or a postgresql:// URL), "
                            "not an open FailureIndex: its writer process opens the index itself")
        self._location = str(index) if index is not None else default_location()
        self._max_queue = max(1, max_queue_size or int(os.environ.get(semconv.ENV_QUEUE_SIZE, "10000")))
        # 2048 spans (~400 failures and their runs) a transaction, not the SDK's 512: per-transaction
        # costs, and per-batch hand-offs, are paid less often (writer_throughput.py, 3).
        self._max_batch = max(1, max_batch_size)
        self._min_batch = max(1, self._max_batch // 8)
        self._batch_limit = self._min_batch  # spans in the next batch: see _learn
        self._delay = max(0.001, schedule_delay_millis / 1000)
        # deque append/popleft are atomic under the GIL: no lock on the application's path.
        self._queue: deque[Queued] = deque()
        self._cond = threading.Condition()  # reports -> force_flush and the sender: "a batch is done"
        self._in_flight = 0  # spans taken off the queue, not yet written (under _cond)
        self._process: _Process | None = None
        self._wake = threading.Event()
        self._opened = threading.Event()  # the writer tried to open the index (force_flush waits for it)
        self._stopping = threading.Event()
        self._written = self._runs_written = self._dropped = self._errors = 0
        self._warned: set[str] = set()
        self._sender = threading.Thread(target=self._run, name="hive-failures-sender", daemon=True)
        self._sender.start()
        if hasattr(os, "register_at_fork"):
            after_fork = weakref.WeakMethod(self._after_fork)
            os.register_at_fork(after_in_child=lambda: (method := after_fork()) and method())
        self._opened.wait(_OPEN_WAIT)

    def _after_fork(self) -> None:
        """A process forked from this one records on its own: a queue, sender and writer of its own.

        Its copies of the pipes to our writer are closed: held open, they would keep that writer
        waiting for more after this process is done. Its writer starts with its first batch (the
        index is open already): a pool's worker that records no failure costs no process.
        """
        process = self._process
        if process is not None:
            for stream in (process.popen.stdin, process.popen.stdout):
                stream.close()
        self._process = None
        self._queue = deque()
        self._cond = threading.Condition()
        self._in_flight = 0
        opened = self._opened.is_set()
        self._wake, self._opened = threading.Event(), threading.Event()
        if opened:
            self._opened.set()
        self._written = self._runs_written = self._dropped = self._errors = 0
        if not self._stopping.is_set():
            self._sender = threading.Thread(target=self._run, args=(False,), name="hive-failures-sender", daemon=True)
            self._sender.start()

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

    # --- the sender: from the queue to the writer process ------------------------------------
    def _run(self, early: bool = True) -> None:
        """Takes batches off the queue and sends them to the writer process, a few at a time."""
        try:
            if early:  # so that readers find the index even before the first failure
                self._live_process()
            while True:
                # Wake per batch or per delay, not per record: fewer GIL hand-offs with the app.
                self._wake.wait(self._delay)
                self._wake.clear()
                while self._queue and self._send_batch():
                    pass
                if self._stopping.is_set() and not self._queue:
                    break
                if self._stopping.is_set() and (self._process is None or self._process.ended):
                    self._give_up()  # no writer to write them: counted now, not waited for
                    break
        finally:
            if self._process is not None:
                try:
                    self._process.popen.stdin.close()  # the writer writes what it has, then exits
                except OSError:
                    pass

    def _give_up(self) -> None:
        """Count what is still queued as not written: shutting down, with no writer process running."""
        records = _records([self._queue.popleft() for _ in range(len(self._queue))])
        with self._cond:
            self._errors += records
        self._warn_once("gave up", "hive-failures: shut down with no index writer running; %d records were not "
                                   "written (counted in stats().errors)", records)

    def _live_process(self) -> _Process | None:
        """The writer process, started (again) if need be; None while one that died young waits."""
        process = self._process
        if process is not None and not process.ended:
            return process
        if process is not None and time.monotonic() - process.started < _RESPAWN_AFTER:
            return None
        try:
            popen = spawn()
            send(popen.stdin, (self._location, self._delay))
        except (OSError, ValueError) as exc:
            self._warn_once("spawn", "hive-failures: cannot start the index writer process: %s", exc)
            self._opened.set()
            return None
        self._process = process = _Process(popen, time.monotonic())
        process.reader = threading.Thread(target=self._read_reports, args=(process,), name="hive-failures-reports",
                                          daemon=True)
        process.reader.start()
        return process

    def _send_batch(self) -> bool:
        """Send one batch if the writer process has room for it; False if it has none (now)."""
        process = self._live_process()
        if process is None or len(process.frames) >= _FRAMES:
            return False  # a report, or the next delay, wakes the sender
        size = min(self._batch_limit, len(self._queue))
        with self._cond:  # before popping, so force_flush never sees zero early
            self._in_flight += size
        batch = [self._queue.popleft() for _ in range(size)]
        records = _records(batch)
        try:
            frame = encode(batch)
        except ValueError as exc:  # an attribute value marshal does not take (events not made here)
            self._warn_once("encode", "hive-failures: a batch's events cannot be sent to the writer: %s", exc)
            self._count_written(size, 0, 0, records)
            return True
        with self._cond:
            if process.ended:  # between the check and now: counted as the process's other batches were
                self._count_written(size, 0, 0, records)
                return True
            process.frames.append((size, records))
        try:
            write_all(process.popen.stdin, frame)
        except (OSError, ValueError):
            pass  # the process is gone: its reports end, and this batch is counted with its others
        return True

    # --- reports from the writer process ------------------------------------------------------
    def _read_reports(self, process: _Process) -> None:
        stdout = process.popen.stdout
        try:
            while (report := receive(stdout)) is not None:
                kind = report[0]
                if kind == "done":
                    size, _ = process.frames.popleft()
                    self._count_written(size, *report[1:4])
                    self._learn(size, report[4])
                    if self._queue:
                        self._wake.set()
                elif kind == "opened":
                    self._opened.set()
                elif kind == "warn":
                    self._warn_once(report[1], "%s", report[2])
                elif kind == "log":
                    logging.getLogger(report[1]).log(report[2], "%s", report[3])
        except Exception as exc:  # noqa: BLE001 - a garbled report: the process is of no further use
            self._warn_once("reports", "hive-failures: unreadable report from the index writer: %r", exc)
            process.popen.kill()
        code = process.popen.wait()
        stdout.close()
        with self._cond:
            process.ended = True
            spans, lost = sum(f[0] for f in process.frames), sum(f[1] for f in process.frames)
            process.frames.clear()
        if spans:
            self._count_written(spans, 0, 0, lost)
        if lost or code:
            self._warn_once("exited", "hive-failures: the index writer process exited (code %s); %d records "
                                      "it had were not written (counted in stats().errors)", code, lost)
        self._opened.set()
        self._wake.set()

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
            if time.monotonic() >= deadline or not self._sender.is_alive():
                return False
        with self._cond:
            while self._queue or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._sender.is_alive() and self._in_flight == 0:
                    return False
                self._cond.wait(min(remaining, self._delay))
                self._wake.set()
        return True

    def shutdown(self, timeout_millis: int = 30000) -> None:
        """Stop accepting, write what was accepted, close the index. Returns within the timeout."""
        if self._stopping.is_set():
            return
        deadline = time.monotonic() + timeout_millis / 1000
        self._stopping.set()
        self._wake.set()
        self._sender.join(timeout_millis / 1000)
        process = self._process
        if process is not None and process.reader is not None:  # its reports end when it exits
            process.reader.join(max(0.0, deadline - time.monotonic()))
        unwritten = self.stats().queued
        if unwritten:
            self._warn_once("shutdown", "hive-failures: shutdown timed out with %d records unwritten", unwritten)
