"""The failure index: storage and queries. Knows nothing of OTel or Hive."""

from __future__ import annotations

import os
from pathlib import Path

from .. import semconv
from ..scrub import Limits
from .advice import FIX_MIN_RUNS
from .diagnosis import MIN_DIAGNOSIS_CHARS
from .models import (Advice, Diagnosis, Evidence, FixEffect, NodeStats, Pattern, Resolution, ResolutionEffect,
                     RunRate, Stats, VersionStats)
from .store import FailureIndex, FailureIndexError, parse_since


def default_location() -> str:
    """``HIVE_FAILURES_DB``, else ``$HIVE_HOME/failures.db`` (HIVE_HOME defaults to ~/.hive, as Hive's)."""
    configured = os.environ.get(semconv.ENV_DB)
    if configured:
        return configured
    home = os.environ.get(semconv.ENV_HIVE_HOME) or str(Path.home() / ".hive")
    return str(Path(home).expanduser() / "failures.db")


def index_path(url_or_path: str | os.PathLike[str] | None = None) -> Path:
    """The SQLite file of an index location: a path, ``sqlite:///relative.db`` or ``sqlite:////absolute.db``.

    None means the default location. Raises FailureIndexError for what is not a file.
    """
    location = str(url_or_path) if url_or_path is not None else default_location()
    if location.startswith(("postgresql://", "postgres://")):
        raise FailureIndexError("PostgreSQL indexes are not supported by this version; use a SQLite path")
    if location.startswith("sqlite://"):
        location = location.removeprefix("sqlite://").removeprefix("/")
        if not location:
            raise FailureIndexError("an in-memory SQLite index cannot be shared with a writer thread; give a path")
    return Path(location).expanduser()


def open_index(url_or_path: str | os.PathLike[str] | None = None, *, create: bool = True,
               limits: Limits | None = None) -> FailureIndex:
    """Open (and create or migrate) a failure index at ``index_path(url_or_path)``.

    ``create=False`` refuses to make a new file (readers, the CLI).
    """
    return FailureIndex(index_path(url_or_path), create=create, limits=limits)


__all__ = ["FIX_MIN_RUNS", "MIN_DIAGNOSIS_CHARS", "Advice", "Diagnosis", "Evidence", "FailureIndex",
           "FailureIndexError", "FixEffect", "NodeStats", "Pattern", "Resolution", "ResolutionEffect", "RunRate",
           "Stats", "VersionStats", "default_location", "index_path", "open_index", "parse_since"]
