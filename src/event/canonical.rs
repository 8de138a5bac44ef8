//! The canonical JSON form of an event: every field present, in the schema's order, UUIDs
//! lower-case hyphenated, the timestamp in RFC 3339 UTC (`Z`) with microseconds when they are
//! not zero. Serialized straight from the event (no intermediate `Value`), so the queue
//! envelope and the dedupe hash cost one pass each.
//!
//! Object keys inside `attributes` and `metadata` come out sorted (serde_json's default map),
//! which makes the form, and so the queue's message id, independent of the producer's key order.

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use serde::ser::{Serialize, SerializeStruct, Serializer};

use super::{Metric, NormalizedEvent};

/// A borrowed event that serializes to its canonical JSON.
pub(super) struct Canonical<'a>(pub(super) &'a NormalizedEvent);

struct CanonicalMetric<'a>(&'a Metric);

/// `2025-11-14T12:00:00Z`, or `2025-11-14T12:00:00.123456Z` when there are sub-seconds.
pub(super) fn format_timestamp(ts: DateTime<Utc>) -> String {
    let format = if ts.nanosecond() == 0 {
        SecondsFormat::Secs
    } else {
        SecondsFormat::Micros
    };
    ts.to_rfc3339_opts(format, true)
}

impl Serialize for Canonical<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let mut s = serializer.serialize_struct("NormalizedEvent", 9)?;
        s.serialize_field("project_id", &e.project_id)?;
        s.serialize_field("site_id", &e.site_id)?;
        s.serialize_field("device_id", &e.device_id)?;
        s.serialize_field("protocol", &e.protocol)?;
        s.serialize_field("source_timestamp", &format_timestamp(e.source_timestamp))?;
        s.serialize_field("metrics", &Metrics(&e.metrics))?;
        s.serialize_field("config_version", &e.config_version)?;
        s.serialize_field("event_id", &e.event_id)?;
        s.serialize_field("metadata", &e.metadata)?;
        s.end()
    }
}

struct Metrics<'a>(&'a [Metric]);

impl Serialize for Metrics<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(CanonicalMetric))
    }
}

impl Serialize for CanonicalMetric<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let m = self.0;
        let mut s = serializer.serialize_struct("Metric", 4)?;
        s.serialize_field("parameter_key", &m.parameter_key)?;
        s.serialize_field("value", &m.value)?;
        s.serialize_field("quality", &m.quality)?;
        s.serialize_field("attributes", &m.attributes)?;
        s.end()
    }
}
