"""Raw access to an index location on either backend, around the API: to build old schemas and read rows."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from hive_otel_failures.index.backend import is_server
from hive_otel_failures.index.schema import MIGRATIONS, POSTGRESQL_MIGRATIONS


class Raw:
    """One plain connection; ``?`` placeholders on both backends, autocommit."""

    def __init__(self, location: str) -> None:
        self.server = is_server(location)
        if self.server:
            import psycopg

            self.conn: Any = psycopg.connect(location, autocommit=True)
        else:
            from hive_otel_failures.index.sqlite import register

            self.conn = sqlite3.connect(location, isolation_level=None)
            register(self.conn, location)  # blobs.content and the migrations' functions

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.server:
            from hive_otel_failures.index.postgres import _pg

            cursor = self.conn.execute(_pg(sql), params)
            return cursor.fetchall() if cursor.description else []
        return self.conn.execute(sql, params).fetchall()

    def migrate_to(self, version: int) -> None:
        """The schema as migrations 1..version left it, as an older package made it."""
        if self.server:
            for script in POSTGRESQL_MIGRATIONS[:version]:
                self.conn.execute(script)
        else:
            for script in MIGRATIONS[:version]:
                self.conn.executescript(script)
        self.set_version(version)

    def set_version(self, version: int) -> None:
        if self.server:
            self.conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
            self.conn.execute("DELETE FROM schema_version")
            self.conn.execute("INSERT INTO schema_version VALUES (%s)", (version,))
        else:
            self.conn.execute(f"PRAGMA user_version = {version}")

    @property
    def version(self) -> int:
        if self.server:
            if self.conn.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:
                return 0
            return self.conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def insert(self, table: str, columns: str, rows: Sequence[Sequence[Any]]) -> None:
        marks = ", ".join("?" * len(columns.split(",")))
        for row in rows:
            self.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", row)

    def close(self) -> None:
        self.conn.close()


@contextmanager
def raw(location: str) -> Iterator[Raw]:
    connection = Raw(location)
    try:
        yield connection
    finally:
        connection.close()
