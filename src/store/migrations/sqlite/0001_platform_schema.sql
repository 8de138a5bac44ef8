-- The platform schema (reference/platform.md) translated to SQLite for the embedded store.
--
-- Translation rules, applied to every table:
--   UUID         -> TEXT, lower-case hyphenated (written by Rust from a `Uuid`; the default
--                   below builds a random version-4 id for rows inserted by hand).
--   TIMESTAMPTZ  -> TEXT, RFC 3339 UTC with fixed microsecond precision
--                   `YYYY-MM-DDTHH:MM:SS.ffffffZ`: fixed width makes text order time
--                   order, and microseconds are PostgreSQL's precision, so the primary key
--                   of ingest_events means the same in both stores.
--   JSONB        -> TEXT checked with json_valid(), as PostgreSQL refuses invalid JSON.
--   BIGSERIAL    -> INTEGER PRIMARY KEY AUTOINCREMENT (ids never reused).
--   DOUBLE PRECISION / SMALLINT / INT -> REAL / INTEGER.
-- Foreign keys need `PRAGMA foreign_keys = ON`, which the store sets on every connection.

CREATE TABLE customers (
    id                 TEXT PRIMARY KEY NOT NULL DEFAULT (
        lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' ||
        substr(lower(hex(randomblob(2))), 2) || '-' ||
        substr('89ab', 1 + (abs(random()) % 4), 1) || substr(lower(hex(randomblob(2))), 2) ||
        '-' || lower(hex(randomblob(6)))),
    name               TEXT NOT NULL UNIQUE,
    metadata           TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    -- Grouping only, not a tenant boundary.
    parent_customer_id TEXT REFERENCES customers (id) ON DELETE CASCADE,
    created_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z')
);

CREATE TABLE projects (
    id          TEXT PRIMARY KEY NOT NULL DEFAULT (
        lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' ||
        substr(lower(hex(randomblob(2))), 2) || '-' ||
        substr('89ab', 1 + (abs(random()) % 4), 1) || substr(lower(hex(randomblob(2))), 2) ||
        '-' || lower(hex(randomblob(6)))),
    customer_id TEXT NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    description TEXT,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'),
    UNIQUE (customer_id, name)
);

CREATE TABLE sites (
    id         TEXT PRIMARY KEY NOT NULL DEFAULT (
        lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' ||
        substr(lower(hex(randomblob(2))), 2) || '-' ||
        substr('89ab', 1 + (abs(random()) % 4), 1) || substr(lower(hex(randomblob(2))), 2) ||
        '-' || lower(hex(randomblob(6)))),
    project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    location   TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(location)),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'),
    UNIQUE (project_id, name)
);

CREATE TABLE devices (
    id          TEXT PRIMARY KEY NOT NULL DEFAULT (
        lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' ||
        substr(lower(hex(randomblob(2))), 2) || '-' ||
        substr('89ab', 1 + (abs(random()) % 4), 1) || substr(lower(hex(randomblob(2))), 2) ||
        '-' || lower(hex(randomblob(6)))),
    site_id     TEXT NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    device_type TEXT NOT NULL,
    external_id TEXT UNIQUE,
    status      TEXT NOT NULL DEFAULT 'active',
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'),
    UNIQUE (site_id, name)
);

CREATE TABLE parameter_templates (
    id         TEXT PRIMARY KEY NOT NULL DEFAULT (
        lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' ||
        substr(lower(hex(randomblob(2))), 2) || '-' ||
        substr('89ab', 1 + (abs(random()) % 4), 1) || substr(lower(hex(randomblob(2))), 2) ||
        '-' || lower(hex(randomblob(6)))),
    -- `project:<project uuid>:<name>`, unique across all projects.
    key        TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    unit       TEXT,
    -- project_id, dtype, min, max, required.
    metadata   TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z')
);

CREATE TABLE registry_versions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    checksum    TEXT NOT NULL,
    description TEXT,
    project_id  TEXT,
    version     INTEGER,
    diff_json   TEXT CHECK (diff_json IS NULL OR json_valid(diff_json)),
    author      TEXT,
    full_config TEXT CHECK (full_config IS NULL OR json_valid(full_config)),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'),
    UNIQUE (project_id, version)
);

CREATE TABLE tokens (
    id         TEXT PRIMARY KEY NOT NULL DEFAULT (
        lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' ||
        substr(lower(hex(randomblob(2))), 2) || '-' ||
        substr('89ab', 1 + (abs(random()) % 4), 1) || substr(lower(hex(randomblob(2))), 2) ||
        '-' || lower(hex(randomblob(6)))),
    device_id  TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    expires_at TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z')
);
CREATE INDEX tokens_device_id_idx ON tokens (device_id);

-- The time-series table. WITHOUT ROWID: the primary key is the table's own B-tree, so an
-- upsert is one B-tree search instead of an index search plus a rowid lookup, and rows are
-- stored in key order, the order the worker writes them in.
CREATE TABLE ingest_events (
    time          TEXT NOT NULL,
    device_id     TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    parameter_key TEXT NOT NULL REFERENCES parameter_templates (key) ON DELETE RESTRICT,
    value         REAL,
    quality       INTEGER NOT NULL DEFAULT 0,
    -- The protocol the event came in by.
    source        TEXT,
    -- `<event_id>:<parameter_key>` or `<device_id>:<timestamp>:<parameter_key>`.
    event_id      TEXT,
    attributes    TEXT DEFAULT '{}' CHECK (attributes IS NULL OR json_valid(attributes)),
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'),
    PRIMARY KEY (time, device_id, parameter_key)
) WITHOUT ROWID;
CREATE INDEX ingest_events_device_param_time_idx
    ON ingest_events (device_id, parameter_key, time DESC);
-- DELIBERATELY no unique index on (time, event_id), unlike the platform's first schema:
-- event ids are chosen by clients, and two devices sending the same event_id for the
-- same second must both land (DESIGN.md §6). Deduplication is the primary key's job.

CREATE TABLE error_logs (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    time    TEXT DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'),
    source  TEXT,
    level   TEXT,
    message TEXT NOT NULL,
    context TEXT DEFAULT '{}' CHECK (context IS NULL OR json_valid(context))
);
CREATE INDEX error_logs_time_idx ON error_logs (time);

-- Unused by ingestion; kept so the platform's other tools find the same tables.
-- agg_interval is '1m', '5m' or '1h'.
CREATE TABLE measurements (
    time          TEXT NOT NULL,
    device_id     TEXT NOT NULL,
    parameter_key TEXT NOT NULL,
    agg_interval  TEXT NOT NULL,
    value_avg     REAL,
    value_min     REAL,
    value_max     REAL,
    value_count   INTEGER,
    PRIMARY KEY (time, device_id, parameter_key, agg_interval)
) WITHOUT ROWID;

CREATE TABLE missing_intervals (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id     TEXT NOT NULL,
    parameter_key TEXT NOT NULL,
    start_time    TEXT NOT NULL,
    end_time      TEXT NOT NULL,
    reason        TEXT
);

-- Newest row per device and parameter, read as a skip-scan of
-- ingest_events_device_param_time_idx: the recursive CTE hops from one (device_id,
-- parameter_key) pair to the next with min() probes, then each pair's newest row is one
-- more probe. That costs O(pairs * log rows) instead of the O(rows) of a GROUP BY, which
-- matters because the table grows without bound while the number of pairs does not.
-- (A recursive CTE may not name itself inside a subquery, hence the repeated probes for
-- "next parameter of this device" and "first parameter of the next device".)
CREATE VIEW v_scada_latest AS
WITH RECURSIVE pairs (device_id, parameter_key) AS (
    SELECT d, (SELECT min(parameter_key) FROM ingest_events WHERE device_id = d)
    FROM (SELECT min(device_id) AS d FROM ingest_events)
    UNION ALL
    SELECT
        CASE
            WHEN (SELECT min(parameter_key) FROM ingest_events
                  WHERE device_id = p.device_id AND parameter_key > p.parameter_key) IS NULL
            THEN (SELECT min(device_id) FROM ingest_events WHERE device_id > p.device_id)
            ELSE p.device_id
        END,
        coalesce(
            (SELECT min(parameter_key) FROM ingest_events
             WHERE device_id = p.device_id AND parameter_key > p.parameter_key),
            (SELECT min(parameter_key) FROM ingest_events
             WHERE device_id = (SELECT min(device_id) FROM ingest_events
                                WHERE device_id > p.device_id)))
    FROM pairs p
    WHERE p.device_id IS NOT NULL
)
SELECT e.device_id, e.parameter_key, e.time, e.value, e.quality
FROM pairs p
JOIN ingest_events e
  ON e.device_id = p.device_id
 AND e.parameter_key = p.parameter_key
 AND e.time = (SELECT max(m.time) FROM ingest_events m
               WHERE m.device_id = p.device_id AND m.parameter_key = p.parameter_key);

CREATE VIEW v_scada_history AS
SELECT time, device_id, parameter_key, value, quality, source
FROM ingest_events;
