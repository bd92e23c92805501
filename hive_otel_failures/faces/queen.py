"""Give Hive's Queen the failure tools: register the MCP server in Hive's own MCP registry.

Hive loads every enabled local server of ``$HIVE_HOME/mcp_registry/installed.json`` when a
Queen session starts, so registering is all it takes. The entry runs the current Python
(``sys.executable -m hive_otel_failures mcp --db <absolute path>``): it needs no PATH and
no virtualenv activation, and it reads the index this command was pointed at.

Hive is imported when these functions run, never at import.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from .. import semconv
from ..index import FailureIndexError, default_location, index_path, is_server

DEFAULT_NAME = "hive-failures"
_DESCRIPTION = ("Hive failure index: what keeps failing, whether to change an agent, a diagnosis for the "
                "change, and whether past fixes worked")


class QueenSetupError(click.ClickException):
    """Hive is missing or refused the change. The CLI prints the message and exits with 2."""

    exit_code = 2


def _registry() -> tuple[Any, Path]:
    """Hive's MCPRegistry, and the installed.json it keeps."""
    try:
        from framework.loader.mcp_registry import MCPRegistry
    except ImportError as exc:
        raise QueenSetupError(
            f"Hive is not installed here ({exc}); install it with: pip install 'hive-otel-failures[hive]'"
        ) from None
    # Hive resolves HIVE_HOME once, when framework.config is first imported; reading it here
    # from the environment gives the same answer and follows a HIVE_HOME set since.
    home = os.environ.get(semconv.ENV_HIVE_HOME) or str(Path.home() / ".hive")
    base = Path(home).expanduser() / "mcp_registry"
    return MCPRegistry(base_path=base), base / "installed.json"


def _absolute_db(db: str | None) -> Path | str:
    """The index as an absolute file path (the Queen's server does not run in this directory), or a
    ``postgresql://`` URL as it is: it names the same database from anywhere."""
    location = db if db is not None else default_location()
    if is_server(location):
        return location
    try:
        return index_path(db).resolve()
    except FailureIndexError as exc:
        raise QueenSetupError(f"the Queen's server reads a SQLite index file: {exc}") from None


def server_args(db: str | None = None) -> list[str]:
    """The arguments after ``sys.executable`` that start the Queen's server on ``db``."""
    return ["-m", "hive_otel_failures", "mcp", "--db", str(_absolute_db(db))]


def install(db: str | None = None, name: str = DEFAULT_NAME) -> str:
    """Register (or update) the failure tools' MCP server in Hive's registry. Idempotent."""
    path = _absolute_db(db)
    registry, where = _registry()
    try:
        from framework.loader.mcp_errors import MCPError
    except ImportError:  # older Hive: no common error type
        MCPError = Exception  # noqa: N806
    try:
        updated = registry.get_server(name) is not None
        if updated:  # add_local refuses an existing name: replace the entry, keep one
            registry.remove(name)
        registry.add_local(name, transport="stdio", command=sys.executable, args=server_args(str(path)),
                           description=_DESCRIPTION)
    except MCPError as exc:
        raise QueenSetupError(f"Hive's MCP registry refused {name!r}: {exc}") from None
    missing = isinstance(path, Path) and not path.exists()  # a server's database exists or install's user sees why
    note = "" if not missing else (" The index does not exist yet: it appears when an instrumented Hive run "
                                   "records its first failure; until then the tools answer 'no failures yet'.")
    return (f"{'Updated' if updated else 'Registered'} MCP server {name!r} in {where}: {sys.executable} "
            f"-m hive_otel_failures mcp --db {path}. The Queen loads its 8 failure tools at her next session."
            + note)


def uninstall(name: str = DEFAULT_NAME) -> str:
    """Remove the failure tools' MCP server from Hive's registry. Idempotent."""
    registry, where = _registry()
    if not where.exists() or registry.get_server(name) is None:  # a fresh HIVE_HOME stays untouched
        return f"MCP server {name!r} is not in {where}: nothing to remove."
    registry.remove(name)
    return f"Removed MCP server {name!r} from {where}. The Queen stops loading its tools at her next session."
