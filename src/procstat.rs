//! This process's resource use, read from Linux's `/proc/self` for the process metrics.
//!
//! `prometheus-client` has no process collector, so [`read`] reads what the usual one
//! exports: CPU seconds (user + system), resident memory, open and maximum file
//! descriptors, and the start time. It names no metric (`metrics.rs` does). On a system
//! without `/proc` every field is `None` and the metrics are left out; nothing fails.

use std::fs;

/// Linux reports CPU times in `/proc` in USER_HZ ticks, which the kernel fixes at 100 for
/// its user interface on every architecture Rust supports there.
const TICKS_PER_SEC: f64 = 100.0;

/// One reading; `None` for what could not be read.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcStats {
    /// User + system CPU time, in seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident set size, in bytes.
    pub resident_bytes: Option<u64>,
    /// Virtual memory size, in bytes.
    pub virtual_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
    /// Start time, in seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

/// Reads `/proc/self` now.
pub fn read() -> ProcStats {
    let stat = fs::read_to_string("/proc/self/stat").ok();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // `fields[0]` is field 3 of proc(5) (state): field n is fields[n - 3].
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let cpu_seconds = match (field(14), field(15)) {
        (Some(u), Some(s)) => Some((u + s) as f64 / TICKS_PER_SEC),
        _ => None,
    };
    let start_time_seconds = match (field(22), boot_time()) {
        (Some(ticks), Some(boot)) => Some(boot as f64 + ticks as f64 / TICKS_PER_SEC),
        _ => None,
    };
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    ProcStats {
        cpu_seconds,
        resident_bytes: status_kib(&status, "VmRSS:").map(|k| k * 1024),
        virtual_bytes: field(23),
        open_fds: fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64),
        max_fds: max_open_files(),
        start_time_seconds,
    }
}

/// A `kB` line of `/proc/self/status`.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Boot time, seconds since the epoch (`btime` of `/proc/stat`).
fn boot_time() -> Option<u64> {
    fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit of "Max open files" in `/proc/self/limits` (None when unlimited).
fn max_open_files() -> Option<u64> {
    fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = read();
        if !std::path::Path::new("/proc/self/stat").exists() {
            return;
        }
        assert!(s.cpu_seconds.is_some_and(|c| c >= 0.0));
        assert!(s.resident_bytes.is_some_and(|r| r > 0));
        assert!(s.open_fds.is_some_and(|n| n >= 3), "{s:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let start = s.start_time_seconds.unwrap_or_default();
        assert!(start > 1.0e9 && start <= now + 1.0, "{start} vs {now}");
    }
}
