#!/bin/sh
# compose one-shot (service db-app-user): creates or updates the login role the nsready
# services use, a member of nsready_ingest (created by `nsready migrate --create-roles`).
# Passwords come from the compose secrets; psql gets them as variables, quoted by %L.
set -eu
PGPASSWORD="$(cat /run/secrets/postgres_password)"
export PGPASSWORD
psql -v ON_ERROR_STOP=1 -h timescaledb -U postgres -d nsready \
    -v pw="$(cat /run/secrets/app_db_password)" <<'SQL'
SELECT format('CREATE ROLE nsready_app LOGIN IN ROLE nsready_ingest')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nsready_app') \gexec
SELECT format('ALTER ROLE nsready_app PASSWORD %L', :'pw') \gexec
SQL
