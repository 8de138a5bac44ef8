//! TimescaleDB settings of the PostgreSQL store: chunk interval, compression and retention
//! of the `ingest_events` hypertable. They only matter where the extension is installed and
//! preloaded; `nsready migrate` (and every service start) applies them idempotently.

use std::time::Duration;

use clap::Args;

use super::parse_duration;

/// A duration setting that also accepts `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toggle {
    Off,
    After(Duration),
}

impl Toggle {
    /// The duration, or `None` when `off`.
    pub fn duration(self) -> Option<Duration> {
        match self {
            Toggle::Off => None,
            Toggle::After(d) => Some(d),
        }
    }
}

/// Parses `off` or a duration ([`parse_duration`]).
pub fn parse_toggle(raw: &str) -> Result<Toggle, String> {
    if raw.trim().eq_ignore_ascii_case("off") {
        return Ok(Toggle::Off);
    }
    parse_duration(raw).map(Toggle::After)
}

/// TimescaleDB hypertable of `ingest_events`.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Store: TimescaleDB (when the extension is installed)")]
pub struct TimescaleArgs {
    /// Time range of one hypertable chunk (new chunks; existing ones keep theirs). `off`
    /// keeps `ingest_events` a plain table even where TimescaleDB is installed (an existing
    /// hypertable stays one).
    #[arg(long, env = "TIMESCALE_CHUNK_INTERVAL", default_value = "1d", value_parser = parse_toggle, global = true)]
    pub timescale_chunk_interval: Toggle,
    /// Chunks whose newest reading is older than this are compressed (segment by
    /// device_id, order by time DESC) by TimescaleDB's policy job; `off` removes the
    /// policy. Late readings into a compressed chunk still land (upsert decompresses the
    /// rows it touches).
    #[arg(long, env = "TIMESCALE_COMPRESS_AFTER", default_value = "7d", value_parser = parse_toggle, global = true)]
    pub timescale_compress_after: Toggle,
    /// Chunks whose newest reading is older than this are dropped by TimescaleDB's policy
    /// job; `off` (the default) keeps everything. When set, INGEST_MAX_PAST must be set and
    /// shorter, so the collector refuses (400) a reading the policy would drop.
    #[arg(long, env = "TIMESCALE_RETENTION", default_value = "off", value_parser = parse_toggle, global = true)]
    pub timescale_retention: Toggle,
}

/// What the store applies: the three settings, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimescalePolicy {
    /// `None`: no hypertable.
    pub chunk_interval: Option<Duration>,
    /// `None`: no compression policy.
    pub compress_after: Option<Duration>,
    /// `None`: no retention policy.
    pub retention: Option<Duration>,
}

impl Default for TimescalePolicy {
    /// The defaults of [`TimescaleArgs`].
    fn default() -> Self {
        TimescalePolicy {
            chunk_interval: Some(Duration::from_secs(86_400)),
            compress_after: Some(Duration::from_secs(7 * 86_400)),
            retention: None,
        }
    }
}

impl TimescaleArgs {
    /// The policy the store applies.
    pub fn policy(&self) -> TimescalePolicy {
        TimescalePolicy {
            chunk_interval: self.timescale_chunk_interval.duration(),
            compress_after: self.timescale_compress_after.duration(),
            retention: self.timescale_retention.duration(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_and_durations_parse() {
        assert_eq!(parse_toggle("off"), Ok(Toggle::Off));
        assert_eq!(parse_toggle(" OFF "), Ok(Toggle::Off));
        assert_eq!(
            parse_toggle("7d"),
            Ok(Toggle::After(Duration::from_secs(7 * 86_400)))
        );
        assert!(parse_toggle("never").is_err());
    }
}
