"""Schema of the failure index as numbered migrations (``PRAGMA user_version``).

Append a migration to change the schema; never edit one that has shipped.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: failures, their patterns and content-addressed blobs.
    """
    CREATE TABLE blobs (
        sha256  TEXT PRIMARY KEY,
        content TEXT NOT NULL,
        size    INTEGER NOT NULL
    );
    CREATE TABLE failures (
        failure_id           TEXT PRIMARY KEY,
        session_id           TEXT,
        agent_id             TEXT,
        node_id              TEXT,
        ts                   REAL NOT NULL,
        kind                 TEXT NOT NULL,
        error_type           TEXT NOT NULL,
        error_message        TEXT NOT NULL,
        traceback            TEXT,
        attempts             INTEGER NOT NULL,
        judge_feedback       TEXT NOT NULL,
        constraints_violated TEXT NOT NULL,
        criteria_unmet       TEXT NOT NULL,
        tool_calls           TEXT NOT NULL,
        input_context_sha    TEXT REFERENCES blobs(sha256),
        memory_snapshot_sha  TEXT REFERENCES blobs(sha256),
        graph_snapshot_sha   TEXT REFERENCES blobs(sha256),
        trace_id             TEXT,
        span_id              TEXT,
        agent_version        TEXT,
        fingerprint          TEXT NOT NULL,
        transient            INTEGER NOT NULL,
        evolution_triggered  INTEGER NOT NULL DEFAULT 0,
        resolution           TEXT
    );
    CREATE INDEX failures_ts ON failures(ts);
    CREATE INDEX failures_agent_ts ON failures(agent_id, ts);
    CREATE INDEX failures_fp_session ON failures(fingerprint, session_id);
    CREATE INDEX failures_session ON failures(session_id);
    CREATE TABLE patterns (
        fingerprint    TEXT PRIMARY KEY,
        agent_id       TEXT,
        node_id        TEXT,
        error_type     TEXT NOT NULL,
        kind           TEXT NOT NULL,
        sample_message TEXT NOT NULL,
        transient      INTEGER NOT NULL,
        count          INTEGER NOT NULL,
        sessions       INTEGER NOT NULL,
        first_seen     REAL NOT NULL,
        last_seen      REAL NOT NULL
    );
    """,
    # 2: run outcomes (rates) and the history of what was done about each pattern.
    """
    CREATE TABLE runs (
        session_id    TEXT NOT NULL,
        agent_id      TEXT NOT NULL DEFAULT '',
        agent_version TEXT,
        started_at    REAL NOT NULL,
        ended_at      REAL NOT NULL,
        success       INTEGER NOT NULL,
        quality       TEXT,
        failures      INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (session_id, agent_id)
    );
    CREATE INDEX runs_agent_started ON runs(agent_id, started_at);
    CREATE TABLE resolutions (
        id                  INTEGER PRIMARY KEY AUTOINCREMENT,
        fingerprint         TEXT NOT NULL,
        ts                  REAL NOT NULL,
        resolution          TEXT NOT NULL,
        evolution_triggered INTEGER NOT NULL,
        agent_version       TEXT
    );
    CREATE INDEX resolutions_fp ON resolutions(fingerprint, ts);
    """,
]

LATEST_VERSION = len(MIGRATIONS)
