-- Least-privilege roles (`nsready migrate --create-roles`, run as the schema owner with
-- CREATEROLE). Not a numbered migration: it is re-run on purpose, idempotent, so grants
-- follow tables that later migrations add. Both roles are NOLOGIN groups: an operator
-- grants them to login users, e.g.
--   CREATE ROLE ingest LOGIN PASSWORD '…' IN ROLE nsready_ingest;
--   CREATE ROLE scada  LOGIN PASSWORD '…' IN ROLE nsready_read;
--
-- nsready_ingest: what `nsready collector` / `worker` / `serve` use and nothing more.
--   ingest_events  SELECT, INSERT, UPDATE  (the bulk upsert: ON CONFLICT DO UPDATE needs
--                                           UPDATE; `latest`/`count` read it). No DELETE,
--                                           no TRUNCATE, no DDL.
--   error_logs     INSERT (+ USAGE on its id sequence); no reading other letters' text.
--   customers, projects, sites, devices, parameter_templates, tokens   SELECT (the registry
--                  cache, token lookups).
--   nsready_schema_migrations SELECT (a start checks the schema is current without DDL).
--   v_scada_latest SELECT (`nsready latest`).
--   Advisory locks and the catalog need no grant.
-- nsready_read: SELECT on the SCADA views only (views run with their owner's rights, so the
--   tables behind them stay closed; on TimescaleDB v_scada_history_1m reads the continuous
--   aggregate scada_rollup_1m the same way).

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nsready_ingest') THEN
        CREATE ROLE nsready_ingest NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nsready_read') THEN
        CREATE ROLE nsready_read NOLOGIN;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO nsready_ingest, nsready_read', current_schema());
    EXECUTE format('GRANT USAGE ON SEQUENCE %s TO nsready_ingest',
                   pg_get_serial_sequence('error_logs', 'id'));
END
$$;

GRANT SELECT, INSERT, UPDATE ON ingest_events TO nsready_ingest;
GRANT INSERT ON error_logs TO nsready_ingest;
GRANT SELECT ON customers, projects, sites, devices, parameter_templates, tokens,
                nsready_schema_migrations, v_scada_latest TO nsready_ingest;
GRANT SELECT ON v_scada_latest, v_scada_history, v_scada_history_1m TO nsready_read;
