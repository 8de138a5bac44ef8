//! Duration settings: plain seconds (the seed's `0.5`, `30`) or a humantime value (`250ms`, `2m`, `90d`).

use std::time::Duration;

/// Longest duration any setting accepts (10 years): past it deadlines would overflow.
const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Parses a duration: a plain number is seconds (`0.5`, `30`, as the seed writes them);
/// anything else is humantime's syntax (`250ms`, `2m`, `24h`, `90d`, `1h 30m`).
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let s = raw.trim();
    let d = match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => {
            Duration::try_from_secs_f64(secs).map_err(|_| format!("`{raw}` is not a duration"))?
        }
        Ok(_) => return Err(format!("`{raw}` must be a non-negative duration")),
        Err(_) => humantime::parse_duration(s).map_err(|_| {
            format!("`{raw}` is not a duration (examples: 0.5, 30, 250ms, 2m, 24h, 90d)")
        })?,
    };
    if d > MAX_DURATION {
        return Err(format!("`{raw}` is longer than 10 years"));
    }
    Ok(d)
}
