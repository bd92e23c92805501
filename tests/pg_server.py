"""A throwaway PostgreSQL server for the tests: initdb and pg_ctl in a temporary directory, on loopback.

PostgreSQL refuses to run as root (CI runs as root), so under root the server runs as the
unprivileged user ``nobody``, in a directory that user owns. The binaries are PostgreSQL's own:
``HIVE_FAILURES_TEST_PG_BIN``, else the newest ``/usr/lib/postgresql/*/bin`` (Debian's layout),
else ``initdb`` on PATH. ``HIVE_FAILURES_TEST_PG_URL`` (a superuser URL to a running server's
maintenance database) uses that server instead. Without binaries the PostgreSQL tests fail,
unless ``HIVE_FAILURES_TEST_NO_POSTGRES=1`` says to skip them (CI never sets it).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

ENV_BIN = "HIVE_FAILURES_TEST_PG_BIN"
ENV_URL = "HIVE_FAILURES_TEST_PG_URL"
ENV_SKIP = "HIVE_FAILURES_TEST_NO_POSTGRES"
UNPRIVILEGED_USER = "nobody"


def find_bindir() -> Path | None:
    """The directory of initdb, pg_ctl and postgres, the newest version first."""
    if os.environ.get(ENV_BIN):
        return Path(os.environ[ENV_BIN])

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.name))

    debian = sorted((p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")), key=version, reverse=True)
    if debian:
        return debian[0]
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """``start()`` a server of its own, or use ``HIVE_FAILURES_TEST_PG_URL``; ``database()`` makes a fresh one."""

    def __init__(self, bindir: Path | None = None, url: str | None = None) -> None:
        self.bindir = bindir
        self.url = url  # the maintenance database, as a superuser
        self.dir: Path | None = None
        self._run_as: dict[str, object] = {}

    def start(self) -> PostgresServer:
        try:
            return self._start()
        except BaseException:
            self.stop()  # nothing left behind in /tmp
            raise

    def _start(self) -> PostgresServer:
        assert self.bindir is not None
        root = os.geteuid() == 0
        # Under root the server's user must reach its directory: /tmp, not a TMPDIR inside /root.
        self.dir = Path(tempfile.mkdtemp(prefix="hof-pg-", dir="/tmp" if root and Path("/tmp").is_dir() else None))
        if root:
            user = pwd.getpwnam(UNPRIVILEGED_USER)
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        data = self.dir / "data"
        self._run("initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale",
                  "--no-sync")
        last_error = ""
        for _ in range(5):  # another process may take the free port before the server does
            port = free_port()
            options = (f"-h 127.0.0.1 -p {port} -k {self.dir} -F -c full_page_writes=off "
                       "-c synchronous_commit=off -c max_connections=200")
            done = self._run("pg_ctl", "-D", str(data), "-l", str(self.dir / "log"), "-o", options, "-w", "-t",
                             "60", "start", check=False)
            if done.returncode == 0:
                self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
                return self
            last_error = done.stdout + done.stderr + (self.dir / "log").read_text(errors="replace")
        raise RuntimeError(f"PostgreSQL did not start:\n{last_error}")

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.bindir is not None and self.dir is not None
        done = subprocess.run([str(self.bindir / program), *args], cwd=self.dir, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "HOME": str(self.dir), "LC_ALL": "C"},
                              **self._run_as)  # type: ignore[arg-type]
        if check and done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done

    def stop(self) -> None:
        if self.dir is None:
            return
        try:
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop", check=False)
        except OSError:
            pass  # no pg_ctl: no server either
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    # --- databases ----------------------------------------------------------------------------
    def _admin(self):  # type: ignore[no-untyped-def]
        import psycopg

        assert self.url is not None
        return psycopg.connect(self.url, autocommit=True)

    def database(self) -> str:
        """A new, empty database; its URL."""
        name = f"hof_{uuid.uuid4().hex[:16]}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        assert self.url is not None
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def drop(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
