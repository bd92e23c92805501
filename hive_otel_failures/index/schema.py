"""Schema of the failure index as numbered migrations, one numbering for both backends.

Each step is a pair kept side by side: SQLite's script (its number in ``PRAGMA user_version``)
and PostgreSQL's (its number in the ``schema_version`` table). Append a step to change the
schema, with both scripts; never edit one that has shipped. ``MIGRATIONS`` are SQLite's.

The PostgreSQL scripts keep SQLite's tables and columns (a PostgreSQL index holds the same
rows) with PostgreSQL's types: ``double precision`` times, ``boolean`` flags, identity ids,
``failures.seq`` for the order failures were stored in (SQLite's rowid); their indexes cover
what the queries read (``INCLUDE``) and skip what they never look up (partial indexes).
"""

from __future__ import annotations

from typing import NamedTuple


class Migration(NamedTuple):
    sqlite: str
    postgresql: str


# SQLite's runs table: made by migration 2, again (without rowid) by migration 4.
_RUN_COLUMNS = """
        session_id    TEXT NOT NULL,
        agent_id      TEXT NOT NULL DEFAULT '',
        agent_version TEXT,
        started_at    REAL NOT NULL,
        ended_at      REAL NOT NULL,
        success       INTEGER NOT NULL,
        quality       TEXT,
        failures      INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (session_id, agent_id)
"""

# A run's row counted in run_counts at each grain (its trigger's insert, and the update's re-count).
_COUNT_NEW_RUN = """        INSERT INTO run_counts (grain, bucket, agent_id, agent_version, runs, failed, first_ts)
        SELECT grain, CAST(new.started_at / grain AS INTEGER), new.agent_id, coalesce(new.agent_version, ''), 1,
               new.success = 0, new.started_at FROM grains WHERE true
        ON CONFLICT DO UPDATE SET runs = runs + 1, failed = failed + excluded.failed,
                                  first_ts = min(first_ts, excluded.first_ts);
"""

# SQLite's triggers that keep run_counts: made by migration 3, again where migration 4 rebuilds runs.
_RUN_TRIGGERS = f"""
    CREATE TRIGGER runs_counted AFTER INSERT ON runs BEGIN
{_COUNT_NEW_RUN}    END;
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
{_COUNT_NEW_RUN}    END;
"""

MIGRATIONS_BY_STEP: list[Migration] = [
    # 1: failures, their patterns and content-addressed blobs.
    Migration(sqlite="""
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
              postgresql="""
    CREATE TABLE blobs (
        sha256  text PRIMARY KEY,
        content text NOT NULL,
        size    integer NOT NULL
    );
    CREATE TABLE failures (
        failure_id           text PRIMARY KEY,
        session_id           text,
        agent_id             text,
        node_id              text,
        ts                   double precision NOT NULL,
        kind                 text NOT NULL,
        error_type           text NOT NULL,
        error_message        text NOT NULL,
        traceback            text,
        attempts             integer NOT NULL,
        judge_feedback       text NOT NULL,
        constraints_violated text NOT NULL,
        criteria_unmet       text NOT NULL,
        tool_calls           text NOT NULL,
        input_context_sha    text REFERENCES blobs(sha256),
        memory_snapshot_sha  text REFERENCES blobs(sha256),
        graph_snapshot_sha   text REFERENCES blobs(sha256),
        trace_id             text,
        span_id              text,
        agent_version        text,
        fingerprint          text NOT NULL,
        transient            boolean NOT NULL,
        evolution_triggered  boolean NOT NULL DEFAULT false,
        resolution           text,
        seq                  bigint GENERATED ALWAYS AS IDENTITY UNIQUE  -- the order of storing: SQLite's rowid
    );
    CREATE INDEX failures_ts ON failures(ts);
    CREATE INDEX failures_agent_ts ON failures(agent_id, ts);
    CREATE INDEX failures_fp_session ON failures(fingerprint, session_id);
    CREATE INDEX failures_session ON failures(session_id);
    CREATE TABLE patterns (
        fingerprint    text PRIMARY KEY,
        agent_id       text,
        node_id        text,
        error_type     text NOT NULL,
        kind           text NOT NULL,
        sample_message text NOT NULL,
        transient      boolean NOT NULL,
        count          integer NOT NULL,
        sessions       integer NOT NULL,
        first_seen     double precision NOT NULL,
        last_seen      double precision NOT NULL
    );
    """),
    # 2: run outcomes (rates) and the history of what was done about each pattern.
    Migration(sqlite="""
    CREATE TABLE runs (""" + _RUN_COLUMNS + """    );
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
              postgresql="""
    CREATE TABLE runs (
        session_id    text NOT NULL,
        agent_id      text NOT NULL DEFAULT '',
        agent_version text,
        started_at    double precision NOT NULL,
        ended_at      double precision NOT NULL,
        success       boolean NOT NULL,
        quality       text,
        failures      integer NOT NULL DEFAULT 0,
        PRIMARY KEY (session_id, agent_id)
    );
    CREATE INDEX runs_agent_started ON runs(agent_id, started_at);
    CREATE TABLE resolutions (
        id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        fingerprint         text NOT NULL,
        ts                  double precision NOT NULL,
        resolution          text NOT NULL,
        evolution_triggered boolean NOT NULL,
        agent_version       text
    );
    CREATE INDEX resolutions_fp ON resolutions(fingerprint, ts);
    """),
    # 3: counters by hour and by day, so windowed aggregates read a few hundred rows, not the
    # failures and runs tables. A window is whole days plus the hours at its edges. A session
    # counts for a pattern in the bucket of its first failure of that pattern (as in patterns).
    # failure_counts is kept by the writer from each batch; run_counts by triggers, because a
    # run that is recorded again (same session and agent) can change its day, version or outcome.
    Migration(sqlite="""
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
    INSERT INTO grains VALUES (86400), (3600);""" + _RUN_TRIGGERS + """\
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
              # PostgreSQL: the writer's batch statement keeps failure_counts; run_counts is kept by
              # statement triggers that read the rows a statement inserted or changed as transition
              # tables, so a batch of runs is counted in one pass. The primary keys carry the counts
              # (INCLUDE): a window's aggregate is an index-only scan.
              postgresql="""
    CREATE TABLE failure_counts (
        grain         integer NOT NULL,  -- bucket width in seconds: 86400 or 3600
        bucket        bigint NOT NULL,   -- trunc(ts / grain), as SQLite's CAST
        fingerprint   text NOT NULL,
        agent_version text NOT NULL,     -- '' when unknown
        failures      integer NOT NULL,
        sessions      integer NOT NULL,
        first_ts      double precision NOT NULL,
        last_ts       double precision NOT NULL,
        PRIMARY KEY (grain, bucket, fingerprint, agent_version) INCLUDE (failures, sessions, first_ts, last_ts)
    );
    CREATE INDEX failure_counts_fp ON failure_counts(fingerprint, grain)
        INCLUDE (agent_version, bucket, sessions, first_ts);
    CREATE TABLE run_counts (
        grain         integer NOT NULL,
        bucket        bigint NOT NULL,
        agent_id      text NOT NULL,
        agent_version text NOT NULL,
        runs          integer NOT NULL,
        failed        integer NOT NULL,
        first_ts      double precision NOT NULL,
        PRIMARY KEY (grain, bucket, agent_id, agent_version) INCLUDE (runs, failed, first_ts)
    );
    CREATE INDEX run_counts_agent ON run_counts(agent_id, grain) INCLUDE (agent_version, bucket, runs, first_ts);
    CREATE TABLE grains (grain integer PRIMARY KEY);
    INSERT INTO grains VALUES (86400), (3600);
    ANALYZE grains;  -- two rows, which the planner should know when it joins the counters to them
    CREATE FUNCTION runs_counted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO run_counts AS c (grain, bucket, agent_id, agent_version, runs, failed, first_ts)
        SELECT g.grain, trunc(n.started_at / g.grain)::bigint, n.agent_id, coalesce(n.agent_version, ''), count(*),
               count(*) FILTER (WHERE NOT n.success), min(n.started_at)
        FROM new_runs n CROSS JOIN grains g GROUP BY 1, 2, 3, 4
        ON CONFLICT (grain, bucket, agent_id, agent_version) DO UPDATE SET
            runs = c.runs + excluded.runs, failed = c.failed + excluded.failed,
            first_ts = LEAST(c.first_ts, excluded.first_ts);
        RETURN NULL;
    END $$;
    CREATE TRIGGER runs_counted AFTER INSERT ON runs REFERENCING NEW TABLE AS new_runs
        FOR EACH STATEMENT EXECUTE FUNCTION runs_counted();
    -- A run recorded again moves from the counters of its old hour, version and outcome to its new
    -- ones: -1 there and +1 here in one upsert (the first time only from the rows it adds), then the
    -- counters it emptied go, found through a partial index of the (few, fleeting) empty ones. The
    -- planner knows nothing of a transition table's size: no nested loop over two of them.
    CREATE INDEX run_counts_empty ON run_counts(grain) WHERE runs = 0;
    CREATE FUNCTION runs_recounted() RETURNS trigger LANGUAGE plpgsql SET enable_nestloop = off AS $$
    BEGIN
        INSERT INTO run_counts AS c (grain, bucket, agent_id, agent_version, runs, failed, first_ts)
        SELECT g.grain, trunc(m.started_at / g.grain)::bigint, m.agent_id, coalesce(m.agent_version, ''),
               sum(m.delta), coalesce(sum(m.delta) FILTER (WHERE NOT m.success), 0),
               coalesce(min(m.started_at) FILTER (WHERE m.delta > 0), 'Infinity')
        FROM (SELECT side.*
              FROM old_runs o JOIN new_runs n USING (session_id, agent_id)
              CROSS JOIN LATERAL (VALUES (-1, o.agent_id, o.agent_version, o.started_at, o.success),
                                         (1, n.agent_id, n.agent_version, n.started_at, n.success))
                  AS side (delta, agent_id, agent_version, started_at, success)
              WHERE o.success IS DISTINCT FROM n.success OR o.agent_version IS DISTINCT FROM n.agent_version
                    OR trunc(o.started_at / 3600) <> trunc(n.started_at / 3600)) m
        CROSS JOIN grains g GROUP BY 1, 2, 3, 4
        ON CONFLICT (grain, bucket, agent_id, agent_version) DO UPDATE SET
            runs = c.runs + excluded.runs, failed = c.failed + excluded.failed,
            first_ts = LEAST(c.first_ts, excluded.first_ts);
        DELETE FROM run_counts WHERE runs = 0;
        RETURN NULL;
    END $$;
    CREATE TRIGGER runs_recounted AFTER UPDATE ON runs REFERENCING OLD TABLE AS old_runs NEW TABLE AS new_runs
        FOR EACH STATEMENT EXECUTE FUNCTION runs_recounted();
    INSERT INTO run_counts (grain, bucket, agent_id, agent_version, runs, failed, first_ts)
    SELECT g.grain, trunc(r.started_at / g.grain)::bigint, r.agent_id, coalesce(r.agent_version, ''), count(*),
           count(*) FILTER (WHERE NOT r.success), min(r.started_at)
    FROM runs r CROSS JOIN grains g GROUP BY 1, 2, 3, 4;
    INSERT INTO failure_counts (grain, bucket, fingerprint, agent_version, failures, sessions, first_ts, last_ts)
    SELECT g.grain, trunc(f.ts / g.grain)::bigint, f.fingerprint, coalesce(f.agent_version, ''), count(*),
           count(*) FILTER (WHERE f.first), min(f.ts), max(f.ts)
    FROM (SELECT ts, fingerprint, agent_version,
                 row_number() OVER (PARTITION BY fingerprint, session_id ORDER BY seq) = 1 AS first
          FROM failures) f CROSS JOIN grains g
    GROUP BY 1, 2, 3, 4;
    DROP INDEX failures_fp_session;  -- new (pattern, session) pairs are looked up by session instead,
    CREATE INDEX failures_fp_no_session ON failures(fingerprint) WHERE session_id IS NULL;  -- or among those without
    CREATE INDEX failures_fp_ts ON failures(fingerprint, ts);  -- a pattern's newest failures, as examples
    """),
    # 4: a SQLite file keeps each snapshot deflated, in blob_z (sha256, size, z); ``blobs`` is a
    # view of it with the same columns as before, content inflated by ``hof_inflate``, a function
    # the package registers on every connection it opens (sqlite.py), and it takes inserts and
    # deletes as before. failures' REFERENCES follow the table to its new name. A view, not a
    # generated column: SQLite computes a virtual column on every insert, and a Python function
    # there would take the GIL back once per snapshot in the writer's one-statement batch.
    # ``z`` is one byte naming the dictionary (0: none; else a row of blob_dicts, which the writer
    # makes from the file's first snapshots), then raw deflate. PostgreSQL compresses large values
    # itself (TOAST): no change there.
    Migration(sqlite="""
    CREATE TABLE blob_dicts (
        id   INTEGER PRIMARY KEY,
        dict BLOB NOT NULL
    );
    ALTER TABLE blobs RENAME TO blob_z;  -- failures' REFERENCES follow it; then a new table takes the name
    CREATE TABLE blob_z_new (
        sha256 TEXT PRIMARY KEY,
        size   INTEGER NOT NULL,
        z      BLOB NOT NULL
    );
    INSERT INTO blob_z_new (sha256, size, z) SELECT sha256, size, hof_deflate(content) FROM blob_z ORDER BY rowid;
    DROP TABLE blob_z;  -- rows rewritten in place would leave their pages three-quarters empty
    ALTER TABLE blob_z_new RENAME TO blob_z;
    CREATE VIEW blobs (sha256, content, size) AS SELECT sha256, hof_inflate(z), size FROM blob_z;
    CREATE TRIGGER blobs_inserted INSTEAD OF INSERT ON blobs BEGIN
        INSERT OR IGNORE INTO blob_z (sha256, size, z) VALUES (new.sha256, new.size, hof_deflate(new.content));
    END;
    CREATE TRIGGER blobs_deleted INSTEAD OF DELETE ON blobs BEGIN
        DELETE FROM blob_z WHERE sha256 = old.sha256;
    END;
    -- Runs: 5 per failure, about a third of the file. Rows kept in their primary key's b-tree
    -- (no rowid, no second copy of (session_id, agent_id)), without runs_agent_started, which no
    -- query reads (run_counts answers them); the triggers that keep run_counts are made again.
    CREATE TABLE runs_by_session (""" + _RUN_COLUMNS + """    ) WITHOUT ROWID;
    INSERT INTO runs_by_session SELECT session_id, agent_id, agent_version, started_at, ended_at, success, quality,
                                       failures FROM runs;
    DROP TABLE runs;
    ALTER TABLE runs_by_session RENAME TO runs;
    """ + _RUN_TRIGGERS,
              postgresql="""
    COMMENT ON TABLE blobs IS 'snapshots by sha256; PostgreSQL compresses content itself (TOAST)';
    """),
    # 5: a SQLite writer compresses snapshots with zstd and a dictionary it trains (a row of
    # blob_dicts that is a zstd dictionary), where deflate stays readable. Nothing changes in the
    # tables: the version keeps packages that only read deflate from misreading what is stored now.
    Migration(sqlite="""
    SELECT 1;
    """,
              postgresql="""
    SELECT 1;
    """),
]

MIGRATIONS: list[str] = [step.sqlite for step in MIGRATIONS_BY_STEP]  # SQLite's scripts, as they always were
POSTGRESQL_MIGRATIONS: list[str] = [step.postgresql for step in MIGRATIONS_BY_STEP]
LATEST_VERSION = len(MIGRATIONS_BY_STEP)
