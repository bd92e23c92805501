"""The index writer: a process of its own that turns queued failure spans into index rows.

Why a process: a writer thread shares the application's GIL. Beside a busy application thread
each SQLite call gave the GIL up and getting it back cost a switch interval (5 ms), so a
writer thread indexed about half of what it indexed alone (0.54 of the idle drain), and its
GIL hand-offs made the application wait over 5 ms six times as often beside a CPU hog. Here
the application's process only serialises batches (marshal, C) and writes them to a pipe; this
process, with a GIL of its own, prepares them (Python) on one thread while the database writes
the one before on another (SQLite, which gives the GIL up). The price is CPU: handing a failure
over (marshal, the pipe, unmarshal) costs about 14 µs, of the 91-96 the sender and this process
spend on it in all (writer_throughput.py).

The parent (FailureIndexProcessor) starts it with ``spawn``; they speak in frames (``send`` /
``receive``): the first frame from the parent is the configuration, then batches of queued
spans; this process answers with reports (``opened``, ``done``, ``warn``, ``log``).
The end of its stdin is the end: it writes what it has, closes the index and exits. It
ignores SIGINT, SIGTERM and SIGHUP (the application's to handle), so what the application
handed over is written even when the application dies. It runs at a lower priority (nice 10)
than the application.
"""

from __future__ import annotations

import gc
import logging
import marshal
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import IO, Any

try:
    from fcntl import F_SETPIPE_SZ, fcntl
except ImportError:  # not Linux
    F_SETPIPE_SZ = None

from . import semconv
from .index import FailureIndex, open_index
from .index.store import run_row
from .record import filled_from_span, from_attributes, from_time_ns, prepare, run_from_attributes, to_attributes

# A queued span is one flat tuple of plain values (see processor.py):
#   (trace_id, span_id, start_time, end_time, run keys, run values, then per failure event:
#    timestamp, attribute keys, attribute values)
Queued = tuple[Any, ...]
QUEUED_HEAD = 6  # the span's part of a queued tuple; failures follow in threes
# A batch between the writer's threads: when it was taken, its failures (prepared attributes) and
# run rows, the index's prepared batch (None: write one by one), how many events were malformed.
_Prepared = tuple[float, list[Mapping[str, Any]], list[tuple[Any, ...]], Any, int]
Report = Callable[..., None]

_FRAME = struct.Struct("<QB")  # the length of the payload, and its kind:
_MESSAGE, _BATCH = 0, 1  # one marshalled value; a batch's spans, in chunks that follow their lengths
_CHUNK_LENGTH = struct.Struct("<I")
# A batch is marshalled this many spans at a time: marshal holds the GIL for a call, ~0.3 ms
# for 128 realistic failure spans, and the application's thread gets the GIL between calls.
_CHUNK = 128


# --- frames ------------------------------------------------------------------------------------
def encode(message: Any) -> bytes:
    """One frame: a list is a batch of queued spans (a list again on the other side), anything else a message."""
    if not isinstance(message, list):
        payload = marshal.dumps(message)
        return _FRAME.pack(len(payload), _MESSAGE) + payload
    parts = [b""]
    for at in range(0, len(message), _CHUNK):
        chunk = marshal.dumps(message[at:at + _CHUNK])
        parts += (_CHUNK_LENGTH.pack(len(chunk)), chunk)
    parts[0] = _FRAME.pack(sum(map(len, parts)), _BATCH)
    return b"".join(parts)


def _spans(payload: bytearray) -> list[Queued]:
    spans: list[Queued] = []
    view, at = memoryview(payload), 0
    while at < len(view):
        (length,) = _CHUNK_LENGTH.unpack_from(view, at)
        at += _CHUNK_LENGTH.size
        spans += marshal.loads(view[at:at + length])
        at += length
    return spans


def write_all(stream: IO[bytes], frame: bytes) -> None:
    """Write a frame whole (an unbuffered stream may take part of it at a time)."""
    data = memoryview(frame)
    while data:
        data = data[stream.write(data) or 0:]


def send(stream: IO[bytes], message: Any) -> None:
    write_all(stream, encode(message))


def _read(stream: IO[bytes], size: int) -> bytearray | None:
    """``size`` bytes, or None at the end of the stream (an unbuffered stream gives a pipe's worth at a time)."""
    data = bytearray(size)
    view, got = memoryview(data), 0
    while got < size:
        n = stream.readinto(view[got:])
        if not n:
            return None
        got += n
    return data


def receive(stream: IO[bytes]) -> Any:
    """The next frame's message, or None at the end of the stream."""
    header = _read(stream, _FRAME.size)
    if header is None:
        return None
    length, kind = _FRAME.unpack(header)
    payload = _read(stream, length)
    if payload is None:
        return None
    return _spans(payload) if kind == _BATCH else marshal.loads(payload)


_PIPE_BYTES = 1 << 20
# Beside a CPU hog, a writer process at the application's priority took cores from the
# application's thread: of 20,000 calls, 51 waited over 5 ms only preempted by the OS.
_NICE = 10


def spawn() -> subprocess.Popen[bytes]:
    """Start a writer process with this interpreter, isolated from the environment's Python settings.

    ``-I``: no PYTHONPATH (and no sitecustomize found through it, which could set up tracing in
    the writer), no user site; the parent's import path is given instead.
    """
    code = ("import sys; sys.path[:0] = %r; from hive_otel_failures.writer import main; main()"
            % [p for p in sys.path if p])
    # Unbuffered pipes: a process forked from the application closes its copies without flushing
    # half a frame into them.
    popen = subprocess.Popen([sys.executable, "-I", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             bufsize=0, close_fds=True)
    # A batch (~3 MB) through a 64 KiB pipe took ~50 reads, each waiting for the writer's GIL
    # when it returned (up to 5 ms beside its Python thread): up to 230 ms a batch. 1 MiB (Linux's
    # default most) takes it in a few.
    if F_SETPIPE_SZ is not None:
        try:
            fcntl(popen.stdin.fileno(), F_SETPIPE_SZ, _PIPE_BYTES)
        except OSError:
            pass  # above /proc/sys/fs/pipe-max-size: the default stays
    return popen


# --- the writer -------------------------------------------------------------------------------
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
    positions, without a dict per run.
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


def cause(exc: BaseException) -> str:
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


class IndexWriter:
    """Writes batches of queued spans to the index, on two threads of its own.

    The first takes a batch off its queue and turns it into rows (Python); when it is behind
    (another batch waits behind the one it took), the second writes the previous batch
    meanwhile (SQLite, which gives the GIL up). One that keeps up writes each batch itself.
    ``report`` is told what happened, batches in the order taken: ``("opened",)``, ``("done",
    failures written, runs written, records that could not be, seconds from taken to written)``,
    ``("warn", key, message)``.
    """

    def __init__(self, location: str, *, delay: float, report: Report) -> None:
        self._location = location
        self._delay = delay
        self._report = report
        self._warned: set[str] = set()
        self._index: FailureIndex | None = None
        self._batches: deque[list[Queued]] = deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        # Between the threads: at most two prepared batches beside the one being written.
        self._prepared: queue.Queue[_Prepared | None] = queue.Queue(maxsize=1)
        self._handed = self._done = 0  # batches handed to the database thread, and written by it
        self._first = threading.Thread(target=self._run, name="hive-failures-writer", daemon=True)
        self._database = threading.Thread(target=self._write_prepared, name="hive-failures-writer-db", daemon=True)
        self._first.start()

    def take(self, batch: list[Queued]) -> None:
        self._batches.append(batch)
        self._wake.set()

    def close(self, timeout: float | None = None) -> None:
        """Write what was taken, then close the index."""
        self._stopping.set()
        self._wake.set()
        self._first.join(timeout)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._report("warn", key, message)

    def _run(self) -> None:
        self._open()  # early, so readers find the index even before the first failure
        self._database.start()
        self._report("opened")
        try:
            while True:
                self._wake.wait(self._delay)
                self._wake.clear()
                while self._batches:
                    prepared = self._prepare(self._batches.popleft(), time.monotonic())
                    behind = bool(self._batches) or self._handed != self._done  # else: written here, in order
                    if behind and self._hand_over(prepared):
                        self._handed += 1
                    else:  # not behind, or the database thread is gone
                        self._write_counted(prepared)
                if self._stopping.is_set() and not self._batches:
                    break
        finally:
            self._hand_over(None)
            self._database.join()
            if self._index is not None:
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
        while (prepared := self._prepared.get()) is not None:
            self._write_counted(prepared)
            self._done += 1

    def _write_counted(self, prepared: _Prepared) -> None:
        taken, failures, runs, batch, malformed = prepared
        counts = 0, 0, len(failures) + len(runs)  # unless written: nothing is lost silently
        try:
            counts = self._write(failures, runs, batch)
        except Exception as exc:  # noqa: BLE001 - the writer must outlive any batch
            self._warn_once("write", f"hive-failures: writing a batch failed: {cause(exc)}")
        finally:
            written, runs_written, errors = counts
            self._report("done", written, runs_written, errors + malformed, time.monotonic() - taken)

    def _open(self) -> FailureIndex | None:
        if self._index is None:
            try:
                self._index = open_index(self._location)
            except Exception as exc:  # noqa: BLE001 - an unusable index must not stop the writer
                self._warn_once("open", f"hive-failures: cannot open the failure index: {exc}")
                return None
        return self._index

    def _prepare(self, batch: list[Queued], taken: float) -> _Prepared:
        """The batch's failures and run rows, the index's prepared batch of them (None: one by one),
        and how many events were malformed."""
        failures: list[Mapping[str, Any]] = []
        runs: list[tuple[Any, ...]] = []
        malformed = 0
        for queued in batch:
            trace_id, span_id, start_time, end_time, run_keys, run_values = queued[:QUEUED_HEAD]
            for at in range(QUEUED_HEAD, len(queued), 3):  # a malformed event loses neither batch nor span
                timestamp, keys, values = queued[at:at + 3]
                try:
                    failures.append(_wire(dict(zip(keys, values)), trace_id, span_id, timestamp))
                except Exception as exc:  # noqa: BLE001
                    malformed += 1
                    self._warn_once("malformed failure event", f"hive-failures: malformed failure event: {cause(exc)}")
            if run_keys is not None:
                try:
                    runs.append(_run_row_of_event(run_keys, run_values, start_time or 0, end_time or 0))
                except Exception as exc:  # noqa: BLE001
                    malformed += 1
                    self._warn_once("malformed run event", f"hive-failures: malformed run event: {cause(exc)}")
        index, prepared = self._open(), None
        if index is not None:
            try:
                prepared = index.prepare_batch(failures, runs)
            except Exception as exc:  # noqa: BLE001 - find the bad entry, keep the others
                self._warn_once("prepare", "hive-failures: could not prepare a batch, writing it one by one: "
                                           + cause(exc))
        return taken, failures, runs, prepared, malformed

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
                self._warn_once("batch", f"hive-failures: batch write failed, retrying one by one: {cause(exc)}")
        written = sum(self._added(index, [f], []) for f in failures)  # outside the handler: errors as themselves
        runs_written = sum(self._added(index, [], [r]) for r in runs)
        return written, runs_written, len(failures) - written + len(runs) - runs_written

    def _added(self, index: FailureIndex, failures: list[Mapping[str, Any]], runs: list[tuple[Any, ...]]) -> bool:
        try:
            index.add_prepared(failures, runs)
            return True
        except Exception as exc:  # noqa: BLE001
            self._warn_once("record write failed", f"hive-failures: record write failed: {cause(exc)}")
            return False


def _wire(attributes: dict[str, Any], trace_id: int | None, span_id: int | None, timestamp: int) -> Mapping[str, Any]:
    """Prepared attributes for the index; events not made by record_failure are prepared here."""
    if attributes.get(semconv.FAILURE_PREPARED) is True:
        return attributes
    record = filled_from_span(
        from_attributes(attributes), trace_id=None if trace_id is None else f"{trace_id:032x}",
        span_id=None if span_id is None else f"{span_id:016x}",
        time_ns=None if semconv.FAILURE_PREFIX + "timestamp" in attributes else timestamp)
    return to_attributes(prepare(record))


# --- the process ------------------------------------------------------------------------------
class _Forward(logging.Handler):
    """Warnings logged in this process (the index's, SQLite's) go to the application's logging."""

    def __init__(self, report: Report) -> None:
        super().__init__(logging.WARNING)
        self._report = report

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._report("log", record.name, record.levelno, record.getMessage())
        except Exception:  # noqa: BLE001 - the pipe is gone: nobody to tell
            pass


def main() -> None:
    """The writer process: configuration, then batches, from stdin; reports to stdout."""
    # The end of stdin is its only end: signals to the application's process group (the
    # terminal's Ctrl-C, a service manager's SIGTERM) are the application's to handle, and it
    # hands over what it has before it exits.
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    if hasattr(signal, "SIGXFSZ"):  # past a file size limit: an error to count and log (EFBIG), not death
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if hasattr(os, "nice"):  # the application's threads first when cores are scarce (its threads inherit it)
        os.nice(_NICE)
    reports = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # whatever else prints goes to stderr, not into the reports
    lock = threading.Lock()
    listened = [True]

    def report(*message: Any) -> None:
        with lock:
            if listened[0]:
                try:
                    send(reports, message)
                except OSError:  # the application is gone: what it handed over is still written
                    listened[0] = False

    logging.getLogger().addHandler(_Forward(report))
    # Our process: its threads that wait in a read or in SQLite get the GIL back from the one
    # preparing rows within 0.5 ms, not 5.
    sys.setswitchinterval(0.0005)
    # Unmarshalling a batch makes tens of thousands of tuples and dicts, none in a cycle: at CPython's
    # default, a young collection every 700 scanned them, a third of the reading thread's CPU
    # (draining 40k failures, 9-11 µs a failure; 6-6.5 so). What was loaded before the first batch
    # is never scanned again (freeze).
    gc.freeze()
    gc.set_threshold(20_000, 20, 100)
    stdin = sys.stdin.buffer.raw
    location, delay = receive(stdin)
    writer = IndexWriter(location, delay=delay, report=report)
    while (batch := receive(stdin)) is not None:
        writer.take(batch)
    writer.close()

