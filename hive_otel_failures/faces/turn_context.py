"""The Queen's turn context: a short reminder of open failure advice before each of her turns.

Hive (aden-hive >= 1.0.12, ``framework/server/turn_context.py``) builds each installed factory of
the ``hive.turn_context`` entry-point group with a ``TurnContextHost`` and starts the ones that
``$HIVE_HOME/configuration.json`` enables::

    {"turn_context": {"hive_failures": {"enabled": true}}}

Before every Queen turn it awaits ``context(queen_id, message)`` for at most 5 s and puts any text
in a ``<system-reminder>`` ahead of her message; ``None`` adds nothing. Here the text names the
patterns ``FailureIndex.advise`` says warrant changing an agent (or a human), and points to the MCP
tools that have the details: ``evolution_advice``, then ``diagnose_failure``, and
``record_resolution`` after a fix. With no open advice, no index, or an index that cannot be read,
the Queen sees nothing from us: a reminder that is not actionable only fills her context.

Scope: all agents in the index, not only those in the Queen's colonies. Hive does record which
colonies are a queen's (``$HIVE_HOME/colonies/<colony>/metadata.json`` names her ``queen_name``),
but nothing in the index ties a failure to a colony: under ``hive serve`` every colony worker runs
the session runtime's shared spec, so its failures carry the agent id ``queen_colony`` whichever
colony or queen it served; the Queen's own loop is ``queen``; and a FailureRecord has no colony
field. Filtering by colony would therefore drop real advice without making the rest more precise.

The reminder is built from ids and counts only, never from error messages, which can quote tool
output or user content; ids are cut short and stripped of markup. It stays under 1 KB.

This module imports Hive nowhere: Hive hands it the host, and the index knows nothing of Hive.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from ..index import Advice, FailureIndex, FailureIndexError, default_location, index_path, open_index

logger = logging.getLogger(__name__)

_MAX_BYTES = 1024  # the whole reminder, UTF-8; Hive adds its own wrapper around it
_ID_CHARS = 40  # per agent or node id in a line
_WINDOW = "7d"
_HUMAN = "[human]: the agent asked for a person; take it to the user, not into the agent. "
_FOOTER = ("Call evolution_advice for the evidence, then diagnose_failure <fingerprint> before changing an "
           "agent; after a fix, call record_resolution.")


class FailureAdviceContext:
    """Hive's turn-context plugin: ``context()`` returns the open advice as a few lines, or None.

    The index is opened at the first turn that finds it and kept open between turns. It is
    reopened when a read fails or the file at the index location is replaced, and a missing
    file means no reminder. Any error is logged once, until a turn succeeds again, and becomes
    ``None``: nothing raises into Hive.
    """

    def __init__(self, host: Any = None) -> None:
        self._name = str(getattr(host, "name", None) or "hive_failures")
        self._lock = threading.Lock()  # turns of several queens may overlap; one index, one user at a time
        self._index: FailureIndex | None = None
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the file we opened
        self._failing = False  # an error was logged and no turn has succeeded since
        self._errors = 0

    async def start(self) -> None:
        """Nothing to do: the index may not exist yet, so the first turn opens it."""

    async def stop(self) -> None:
        try:
            await asyncio.to_thread(self._stop)  # waits for a turn in flight, without holding Hive's loop
        except Exception:
            logger.debug("turn context %r: stopping failed", self._name, exc_info=True)

    def _stop(self) -> None:
        with self._lock:
            self._close()

    async def context(self, queen_id: str, message: str) -> str | None:
        """The reminder for ``queen_id``'s next turn, or None; ``message`` does not change it."""
        try:
            text = await asyncio.to_thread(self._reminder)  # SQLite off Hive's event loop
        except Exception as exc:  # never into Hive: its loader would only log and skip us anyway
            self._failed(exc)
            return None
        self._failing = False
        return text

    # --- on a worker thread -------------------------------------------------------------------
    def _reminder(self) -> str | None:
        with self._lock:
            index = self._open()
            if index is None:
                return None
            try:
                advice = index.advise(window=_WINDOW)
            except BaseException:
                self._close()  # a fresh connection next turn
                raise
        return _render(advice)

    def _open(self) -> FailureIndex | None:
        location = default_location()
        try:
            path = index_path(location)
        except FailureIndexError:
            path = None  # not a file (a server URL): open_index says why
        try:
            stat = os.stat(path) if path is not None else None
        except FileNotFoundError:
            self._close()  # the file went away: no index, no reminder
            return None
        file_id = (stat.st_dev, stat.st_ino) if stat is not None else None
        if self._index is not None and file_id == self._file_id:
            return self._index
        self._close()  # first turn, or the file was replaced under us
        self._index = open_index(location, create=False)
        self._file_id = file_id
        return self._index

    def _close(self) -> None:
        index, self._index, self._file_id = self._index, None, None
        if index is not None:
            try:
                index.close()
            except Exception:  # closing a broken index must not hide why it broke
                logger.debug("closing the failure index failed", exc_info=True)

    def _failed(self, exc: BaseException) -> None:
        self._errors += 1
        if self._failing:
            logger.debug("turn context %r: still failing (%s)", self._name, exc)
            return
        self._failing = True
        quiet = isinstance(exc, FailureIndexError)  # unreadable or foreign file: the message says it all
        logger.warning("turn context %r: no failure reminder for the Queen (logged once, until a turn works): %s",
                       self._name, exc, exc_info=None if quiet else exc)


def _render(advice: Sequence[Advice]) -> str | None:
    """The reminder for this advice, most important first (as advise orders it), under 1 KB."""
    if not advice:
        return None
    count = len(advice)
    head = (f"Failure index: {count} failure pattern{'s' if count != 1 else ''} (all agents, last 7 days) "
            f"warrant{'s' if count == 1 else ''} attention:")
    legend = _HUMAN if any(a.action == "human" for a in advice) else ""  # room for it, in case
    shown: list[str] = []
    human_shown = False
    for i, a in enumerate(advice):
        line, more = _line(a), count - i - 1
        tail = [f"(+{more} more)"] if more else []
        if _size([head, *shown, line, *tail, legend + _FOOTER]) > _MAX_BYTES:
            break
        shown.append(line)
        human_shown = human_shown or a.action == "human"
    left = count - len(shown)
    legend = _HUMAN if human_shown else ""
    text = "\n".join([head, *shown, *([f"(+{left} more)"] if left else []), legend + _FOOTER])
    return _cut(text)


def _line(a: Advice) -> str:
    where = _clean(a.agent_id or "?") + (f"/{_clean(a.node_id)}" if a.node_id else "")
    what = _clean((a.error_type or a.kind or "failure").rsplit(".", 1)[-1])
    sessions = a.evidence.sessions
    counted = f"{sessions} session{'s' if sessions != 1 else ''}"
    why = f"{', '.join(a.triggers)}; {counted}" if a.triggers else counted
    return f"- {'[human] ' if a.action == 'human' else ''}{where} {what} ({why}) {_clean(a.fingerprint, 64)}"


def _clean(value: str, limit: int = _ID_CHARS) -> str:
    """One short line of plain text: no markup, no control characters."""
    text = "".join(c if c.isprintable() and c not in "<>`" else " " for c in str(value))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _size(parts: list[str]) -> int:
    return len("\n".join(parts).encode("utf-8"))


def _cut(text: str) -> str:
    """The hard cap, whatever the lines held (the loop above keeps to it for sane input)."""
    data = text.encode("utf-8")
    return text if len(data) <= _MAX_BYTES else data[:_MAX_BYTES].decode("utf-8", "ignore")
