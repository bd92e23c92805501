"""The failure index: storage and queries. Knows nothing of OTel or Hive."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import semconv
from ..scrub import Limits
from .advice import FIX_MIN_RUNS
from .diagnosis import MIN_DIAGNOSIS_CHARS
from .models import (Advice, Diagnosis, Evidence, FixEffect, NodeStats, Pattern, Resolution, ResolutionEffect,
                     RunRate, Stats, VersionStats)
from .backend import is_server, redact
from .store import FailureIndex, FailureIndexError, parse_since

if TYPE_CHECKING:
    from .portability import ExportReport, ImportReport, PruneReport

_PORTABILITY = frozenset({"ExportReport", "ImportReport", "PruneReport"})


def __getattr__(name: str) -> Any:
    """The reports of prune, export and import, from the module the methods load when called."""
    if name in _PORTABILITY:
        from . import portability

        return getattr(portability, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_location() -> str:
    """``HIVE_FAILURES_DB``, else ``$HIVE_HOME/failures.db`` (HIVE_HOME defaults to ~/.hive, as Hive's)."""
    configured = os.environ.get(semconv.ENV_DB)
    if configured:
        return configured
    home = os.environ.get(semconv.ENV_HIVE_HOME) or str(Path.home() / ".hive")
    return str(Path(home).expanduser() / "failures.db")


def index_path(url_or_path: str | os.PathLike[str] | None = None) -> Path:
    """The SQLite file of an index location: a path, ``sqlite:///relative.db`` or ``sqlite:////absolute.db``.

    None means the default location. Raises FailureIndexError for what is not a file (a
    PostgreSQL URL: open it with open_index).
    """
    location = str(url_or_path) if url_or_path is not None else default_location()
    if is_server(location):
        raise FailureIndexError(f"{redact(location)} is a PostgreSQL index, not a file")
    if location.startswith("sqlite://"):
        location = location.removeprefix("sqlite://").removeprefix("/")
        if not location:
            raise FailureIndexError("an in-memory SQLite index cannot be shared with a writer thread; give a path")
    return Path(location).expanduser()


def open_index(url_or_path: str | os.PathLike[str] | None = None, *, create: bool = True,
               limits: Limits | None = None) -> FailureIndex:
    """Open (and create or migrate) a failure index: a SQLite file (``index_path``) or a ``postgresql://`` URL.

    ``create=False`` (readers, the CLI) refuses to make a new file and never migrates. A
    PostgreSQL database must exist; opening it creates or migrates the schema in it
    (with ``pip install 'hive-otel-failures[postgres]'``).
    """
    location = str(url_or_path) if url_or_path is not None else default_location()
    if is_server(location):
        return FailureIndex(location, create=create, limits=limits)
    return FailureIndex(index_path(location), create=create, limits=limits)


__all__ = ["FIX_MIN_RUNS", "MIN_DIAGNOSIS_CHARS", "Advice", "Diagnosis", "Evidence", "ExportReport", "FailureIndex",
           "FailureIndexError", "FixEffect", "ImportReport", "NodeStats", "Pattern", "PruneReport", "Resolution",
           "ResolutionEffect", "RunRate", "Stats", "VersionStats", "default_location",
           "index_path", "is_server", "open_index", "parse_since"]
