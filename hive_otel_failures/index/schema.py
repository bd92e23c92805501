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
    # 3: counters by hour and by day, so windowed aggregates read a few hundred rows, not the
    # failures and runs tables. A window is whole days plus the hours at its edges. A session
    # counts for a pattern in the bucket of its first failure of that pattern (as in patterns).
    # failure_counts is kept by the writer from each batch; run_counts by triggers, because a
    # run that is recorded again (same session and agent) can change its day, version or outcome.
    """
    CREATE TABLE failure_counts (
        grain         INTEGER NOT NULL,  -- bucket width in seconds: 86400 or 3600
        bucket        INTEGER NOT NULL,  -- CAST(ts / grain AS INTEGER)
        fingerprint   TEXT NOT NULL,
        agent_version TEXT NOT NULL,     -- '' when unknown
        failures      INTEGER NOT NULL,
        sessions      INTEGER NOT NULL,
        first_ts      REAL NOT NULL,
        last_ts       REAL NOT NULL,
        PRIMARY KEY (grain, bucket, fingerprint, agent_version)
    ) WITHOUT ROWID;
    CREATE INDEX failure_counts_fp ON failure_counts(fingerprint, grain);
    CREATE TABLE run_counts (
        grain         INTEGER NOT NULL,
        bucket        INTEGER NOT NULL,
        agent_id      TEXT NOT NULL,
        agent_version TEXT NOT NULL,
        runs          INTEGER NOT NULL,
        failed        INTEGER NOT NULL,
        first_ts      REAL NOT NULL,
        PRIMARY KEY (grain, bucket, agent_id, agent_version)
    ) WITHOUT ROWID;
    CREATE TABLE grains (grain INTEGER PRIMARY KEY);
    INSERT INTO grains VALUES (86400), (3600);
    CREATE TRIGGER runs_counted AFTER INSERT ON runs BEGIN
        INSERT INTO run_counts (grain, bucket, agent_id, agent_version, runs, failed, first_ts)
        SELECT grain, CAST(new.started_at / grain AS INTEGER), new.agent_id, coalesce(new.agent_version, ''), 1,
               new.success = 0, new.started_at FROM grains WHERE true
        ON CONFLICT DO UPDATE SET runs = runs + 1, failed = failed + excluded.failed,
                                  first_ts = min(first_ts, excluded.first_ts);
    END;
    CREATE TRIGGER runs_recounted AFTER UPDATE OF started_at, success, agent_version ON runs
    WHEN old.success IS NOT new.success OR old.agent_version IS NOT new.agent_version
         OR CAST(old.started_at / 3600 AS INTEGER) != CAST(new.started_at / 3600 AS INTEGER)
    BEGIN
        UPDATE run_counts SET runs = runs - 1, failed = failed - (old.success = 0)
        WHERE (grain, bucket, agent_id, agent_version) IN (
            SELECT grain, CAST(old.started_at / grain AS INTEGER), old.agent_id, coalesce(old.agent_version, '')
            FROM grains);
        DELETE FROM run_counts WHERE runs = 0 AND (grain, bucket, agent_id, agent_version) IN (
            SELECT grain, CAST(old.started_at / grain AS INTEGER), old.agent_id, coalesce(old.agent_version, '')
            FROM grains);
        INSERT INTO run_counts (grain, bucket, agent_id, agent_version, runs, failed, first_ts)
        SELECT grain, CAST(new.started_at / grain AS INTEGER), new.agent_id, coalesce(new.agent_version, ''), 1,
               new.success = 0, new.started_at FROM grains WHERE true
        ON CONFLICT DO UPDATE SET runs = runs + 1, failed = failed + excluded.failed,
                                  first_ts = min(first_ts, excluded.first_ts);
    END;
    INSERT INTO run_counts (grain, bucket, agent_id, agent_version, runs, failed, first_ts)
    SELECT grain, CAST(started_at / grain AS INTEGER), agent_id, coalesce(agent_version, ''), COUNT(*),
           SUM(success = 0), MIN(started_at)
    FROM runs, grains GROUP BY 1, 2, 3, 4;
    INSERT INTO failure_counts (grain, bucket, fingerprint, agent_version, failures, sessions, first_ts, last_ts)
    SELECT g.grain, CAST(f.ts / g.grain AS INTEGER), f.fingerprint, coalesce(f.agent_version, ''), COUNT(*),
           SUM(f.rowid IN (SELECT MIN(rowid) FROM failures GROUP BY fingerprint, session_id)), MIN(f.ts), MAX(f.ts)
    FROM failures f, grains g
    GROUP BY 1, 2, 3, 4;
    DROP INDEX failures_fp_session;  -- new (pattern, session) pairs are looked up by session instead
    CREATE INDEX failures_fp_ts ON failures(fingerprint, ts);  -- a pattern's newest failures, as examples
    """,
]

LATEST_VERSION = len(MIGRATIONS)
