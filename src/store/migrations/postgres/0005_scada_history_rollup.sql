-- 0005: `v_scada_history_1m`, SCADA history per device, parameter and minute: min, max, avg,
-- the last value (by time) and the number of readings.
--
-- On plain PostgreSQL this view computes the rollup from `ingest_events` at each read. Where
-- TimescaleDB is installed, the TimescaleDB step of `migrate` (src/store/postgres/
-- timescale.rs) replaces its body with a read of the continuous aggregate
-- `scada_rollup_1m` (same columns, same types), refreshed by a policy job.
CREATE OR REPLACE VIEW v_scada_history_1m AS
SELECT date_trunc('minute', time)               AS bucket,
       device_id,
       parameter_key,
       min(value)                               AS value_min,
       max(value)                               AS value_max,
       avg(value)                               AS value_avg,
       (array_agg(value ORDER BY time DESC))[1] AS value_last,
       count(*)                                 AS value_count
  FROM ingest_events
 GROUP BY 1, 2, 3;
