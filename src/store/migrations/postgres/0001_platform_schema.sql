-- 0001: the platform's schema (shared/reference/platform.md), so nsready and the platform's
-- other services (registry admin, SCADA exports) read and write the same tables.
--
-- `IF NOT EXISTS` everywhere: a database the platform already created is adopted as it is
-- instead of failing the first `nsready migrate`. Constraint names are spelled out because
-- the registry import maps them to messages that name the offending row.
-- `gen_random_uuid()` is built into PostgreSQL 13 and later (no pgcrypto needed).
-- Columns that join the registry together (names and parent ids) are NOT NULL: the worker's
-- registry cache cannot place a device whose site or project is unknown.

-- Registry -------------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS customers (
    id                 UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
    name               TEXT        NOT NULL CONSTRAINT customers_name_key UNIQUE,
    metadata           JSONB       DEFAULT '{}'::jsonb,
    -- Grouping only, not a tenant boundary.
    parent_customer_id UUID        CONSTRAINT customers_parent_customer_id_fkey
                                   REFERENCES customers (id) ON DELETE CASCADE,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS projects (
    id          UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id UUID        NOT NULL CONSTRAINT projects_customer_id_fkey
                            REFERENCES customers (id) ON DELETE CASCADE,
    name        TEXT        NOT NULL,
    description TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT projects_customer_id_name_key UNIQUE (customer_id, name)
);

CREATE TABLE IF NOT EXISTS sites (
    id         UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id UUID        NOT NULL CONSTRAINT sites_project_id_fkey
                           REFERENCES projects (id) ON DELETE CASCADE,
    name       TEXT        NOT NULL,
    location   JSONB       DEFAULT '{}'::jsonb,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT sites_project_id_name_key UNIQUE (project_id, name)
);

CREATE TABLE IF NOT EXISTS devices (
    id          UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id     UUID        NOT NULL CONSTRAINT devices_site_id_fkey
                            REFERENCES sites (id) ON DELETE CASCADE,
    name        TEXT        NOT NULL,
    device_type TEXT        NOT NULL,
    external_id TEXT        CONSTRAINT devices_external_id_key UNIQUE,
    status      TEXT        NOT NULL DEFAULT 'active',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT devices_site_id_name_key UNIQUE (site_id, name)
);

-- `key` is `project:<project uuid>:<name>`, unique across all projects; metadata holds
-- project_id, dtype, min, max, required.
CREATE TABLE IF NOT EXISTS parameter_templates (
    id         UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
    key        TEXT        NOT NULL CONSTRAINT parameter_templates_key_key UNIQUE,
    name       TEXT        NOT NULL,
    unit       TEXT,
    metadata   JSONB       DEFAULT '{}'::jsonb,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS registry_versions (
    id          BIGSERIAL   PRIMARY KEY,
    checksum    TEXT        NOT NULL,
    description TEXT,
    project_id  UUID,
    version     INT,
    diff_json   JSONB,
    author      TEXT,
    full_config JSONB,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT registry_versions_project_id_version_key UNIQUE (project_id, version)
);

CREATE TABLE IF NOT EXISTS tokens (
    id         UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
    device_id  UUID        NOT NULL CONSTRAINT tokens_device_id_fkey
                           REFERENCES devices (id) ON DELETE CASCADE,
    token_hash TEXT        NOT NULL CONSTRAINT tokens_token_hash_key UNIQUE,
    expires_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS tokens_device_id_idx ON tokens (device_id);

-- Telemetry ------------------------------------------------------------------------------

-- One row per (time, device, parameter): the primary key is what makes redeliveries and
-- client retries idempotent (the worker upserts on it). A unique index on a TimescaleDB
-- hypertable must contain `time`, which this key does.
--
-- DELIBERATE DEVIATION from the platform: no `UNIQUE (time, event_id) WHERE event_id IS NOT
-- NULL`. DESIGN.md §6 requires that a collision of `event_id` between different devices never
-- fails anyone's insert, and that index would make the second device's batch fail.
-- Idempotency is already given by the primary key.
CREATE TABLE IF NOT EXISTS ingest_events (
    time          TIMESTAMPTZ      NOT NULL,
    device_id     UUID             NOT NULL CONSTRAINT ingest_events_device_id_fkey
                                   REFERENCES devices (id) ON DELETE CASCADE,
    -- RESTRICT: deleting a template that still has data is refused rather than silently
    -- dropping history.
    parameter_key TEXT             NOT NULL CONSTRAINT ingest_events_parameter_key_fkey
                                   REFERENCES parameter_templates (key) ON DELETE RESTRICT,
    value         DOUBLE PRECISION,
    quality       SMALLINT         NOT NULL DEFAULT 0,
    -- The protocol the event came in by (GPRS, SMS, HTTP, MQTT).
    source        TEXT,
    -- `<event_id>:<parameter_key>` or `<device_id>:<timestamp>:<parameter_key>`.
    event_id      TEXT,
    attributes    JSONB            DEFAULT '{}'::jsonb,
    -- Time of the first write; upserts leave it alone.
    created_at    TIMESTAMPTZ      NOT NULL DEFAULT now(),
    CONSTRAINT ingest_events_pkey PRIMARY KEY (time, device_id, parameter_key)
);
CREATE INDEX IF NOT EXISTS ingest_events_device_key_time_idx
    ON ingest_events (device_id, parameter_key, time DESC);

CREATE TABLE IF NOT EXISTS error_logs (
    id      BIGSERIAL   PRIMARY KEY,
    time    TIMESTAMPTZ DEFAULT now(),
    source  TEXT,
    level   TEXT,
    message TEXT        NOT NULL,
    -- trace_id, device_id, error_type of the dead letter.
    context JSONB       DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS error_logs_time_idx ON error_logs (time);

-- Unused by ingestion; created so the platform's aggregation and gap jobs find them.
CREATE TABLE IF NOT EXISTS measurements (
    time          TIMESTAMPTZ      NOT NULL,
    device_id     UUID             NOT NULL,
    parameter_key TEXT             NOT NULL,
    agg_interval  TEXT             NOT NULL, -- '1m', '5m', '1h'
    value_avg     DOUBLE PRECISION,
    value_min     DOUBLE PRECISION,
    value_max     DOUBLE PRECISION,
    value_count   BIGINT
);

CREATE TABLE IF NOT EXISTS missing_intervals (
    id            BIGSERIAL   PRIMARY KEY,
    device_id     UUID,
    parameter_key TEXT,
    start_time    TIMESTAMPTZ,
    end_time      TIMESTAMPTZ,
    reason        TEXT
);

-- Views used by SCADA exports ------------------------------------------------------------

-- The newest row per (device, parameter). DISTINCT ON keeps the first row of each group in
-- ORDER BY order, so `time DESC` makes it the newest; the (device_id, parameter_key, time
-- DESC) index serves exactly this order.
CREATE OR REPLACE VIEW v_scada_latest AS
SELECT DISTINCT ON (device_id, parameter_key)
       device_id, parameter_key, time, value, quality
  FROM ingest_events
 ORDER BY device_id, parameter_key, time DESC;

CREATE OR REPLACE VIEW v_scada_history AS
SELECT time, device_id, parameter_key, value, quality, source
  FROM ingest_events;
