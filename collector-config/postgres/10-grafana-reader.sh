#!/bin/sh
# Runs once, when the `central` profile's PostgreSQL initialises its data directory: a
# read-only role for Grafana's datasource. The ingest (the database owner, POSTGRES_USER)
# creates the index tables later; its default privileges (this script runs as that owner)
# give the reader SELECT on them.
set -eu
: "${HIVE_FAILURES_GRAFANA_DB_PASSWORD:?set HIVE_FAILURES_GRAFANA_DB_PASSWORD (Grafana reads the index with it)}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v reader_password="$HIVE_FAILURES_GRAFANA_DB_PASSWORD" <<'SQL'
CREATE ROLE hive_grafana LOGIN PASSWORD :'reader_password';
GRANT CONNECT ON DATABASE :"DBNAME" TO hive_grafana;
GRANT USAGE ON SCHEMA public TO hive_grafana;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO hive_grafana;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO hive_grafana;
SQL
