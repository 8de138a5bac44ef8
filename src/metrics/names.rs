//! Names of the metrics as scraped (counters with prometheus' `_total` suffix), for the
//! readers of `/metrics` (loadgen's scraper): they spell no metric name of their own.

/// Histogram: publish → commit, per event.
pub const PROCESSING_SECONDS: &str = "ingest_processing_duration_seconds";
/// Histogram: one batch's database write.
pub const DB_WRITE_SECONDS: &str = "ingest_db_write_duration_seconds";
/// Histogram: messages per committed batch.
pub const BATCH_SIZE: &str = "ingest_batch_size";
/// Histogram: the collector's wait for the queue's ack.
pub const PUBLISH_SECONDS: &str = "ingest_publish_duration_seconds";
/// Counter: rows written.
pub const ROWS_TOTAL: &str = "ingest_rows_total";
/// Counter: events by status.
pub const EVENTS_TOTAL: &str = "ingest_events_total";
/// Counter: requests or events refused by auth or the rate limit, by reason.
pub const REFUSED_TOTAL: &str = "ingest_refused_total";
