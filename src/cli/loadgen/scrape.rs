//! loadgen: reading the service's `/metrics` and `/v1/health` (histograms, queue depth).

use super::*;
use nsready::metrics::names;

/// A histogram as scraped: cumulative bucket counts by upper bound, sum and count.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Hist {
    /// (le, cumulative count), ascending; the last bound is +Inf.
    pub(super) buckets: Vec<(f64, f64)>,
    pub(super) sum: f64,
    pub(super) count: f64,
}

impl Hist {
    /// `self - before`, bucket by bucket (same layout); `self` when the layouts differ.
    pub(super) fn minus(&self, before: &Hist) -> Hist {
        if before.buckets.len() != self.buckets.len() {
            return self.clone();
        }
        Hist {
            buckets: self
                .buckets
                .iter()
                .zip(&before.buckets)
                .map(|((le, a), (_, b))| (*le, (a - b).max(0.0)))
                .collect(),
            sum: (self.sum - before.sum).max(0.0),
            count: (self.count - before.count).max(0.0),
        }
    }

    /// Adds another process's histogram of the same layout.
    pub(super) fn plus(&mut self, other: &Hist) {
        if self.buckets.is_empty() {
            *self = other.clone();
            return;
        }
        if self.buckets.len() != other.buckets.len() {
            return;
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            a.1 += b.1;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// The q-quantile, interpolated linearly inside its bucket (as Prometheus's
    /// `histogram_quantile`); in the +Inf bucket, the highest finite bound.
    pub(super) fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut prev_le = 0.0;
        let mut prev_count = 0.0;
        for &(le, count) in &self.buckets {
            if count >= rank {
                if le.is_infinite() {
                    return Some(prev_le);
                }
                let width = count - prev_count;
                if width <= 0.0 {
                    return Some(le);
                }
                return Some(prev_le + (le - prev_le) * (rank - prev_count) / width);
            }
            prev_le = le;
            prev_count = count;
        }
        Some(prev_le)
    }

    pub(super) fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }
}

/// The value of a label in `{a="x",le="0.5"}`.
pub(super) fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let pat = format!("{name}=\"");
    let start = labels.find(&pat)? + pat.len();
    let rest = &labels[start..];
    Some(&rest[..rest.find('"')?])
}

/// Splits a sample line into (name, labels, value).
pub(super) fn sample(line: &str) -> Option<(&str, &str, f64)> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.trim().parse().ok()?;
    match series.split_once('{') {
        Some((name, labels)) => Some((name, labels.trim_end_matches('}'), value)),
        None => Some((series, "", value)),
    }
}

/// Reads the histogram `name` from Prometheus text.
pub(super) fn parse_hist(text: &str, name: &str) -> Option<Hist> {
    let bucket = format!("{name}_bucket");
    let sum = format!("{name}_sum");
    let count = format!("{name}_count");
    let mut h = Hist::default();
    let mut seen = false;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((n, labels, v)) = sample(line) else {
            continue;
        };
        if n == bucket {
            let le = label(labels, "le").and_then(|s| {
                if s == "+Inf" {
                    Some(f64::INFINITY)
                } else {
                    s.parse().ok()
                }
            })?;
            h.buckets.push((le, v));
            seen = true;
        } else if n == sum {
            h.sum = v;
        } else if n == count {
            h.count = v;
        }
    }
    h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    seen.then_some(h)
}

/// Reads an unlabelled counter or gauge.
pub(super) fn parse_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(sample)
        .find(|(n, l, _)| *n == name && l.is_empty())
        .map(|(_, _, v)| v)
}

/// The histograms and counters loadgen reports, summed over the metrics URLs.
#[derive(Clone, Debug, Default)]
pub(super) struct Scrape {
    pub(super) processing: Hist,
    pub(super) db_write: Hist,
    pub(super) batch_size: Hist,
    pub(super) publish: Hist,
    pub(super) rows_total: Option<f64>,
}

impl Scrape {
    pub(super) fn minus(&self, before: &Scrape) -> Scrape {
        Scrape {
            processing: self.processing.minus(&before.processing),
            db_write: self.db_write.minus(&before.db_write),
            batch_size: self.batch_size.minus(&before.batch_size),
            publish: self.publish.minus(&before.publish),
            rows_total: match (self.rows_total, before.rows_total) {
                (Some(a), Some(b)) => Some(a - b),
                _ => None,
            },
        }
    }
}

pub(super) async fn scrape(client: &reqwest::Client, urls: &[String]) -> Option<Scrape> {
    let mut out = Scrape::default();
    let mut any = false;
    for base in urls {
        let text = match client.get(format!("{base}/metrics")).send().await {
            Ok(r) if r.status().is_success() => r.text().await.ok(),
            _ => None,
        };
        let Some(text) = text else { continue };
        any = true;
        let add = |h: &mut Hist, name: &str| {
            if let Some(x) = parse_hist(&text, name) {
                h.plus(&x);
            }
        };
        add(&mut out.processing, names::PROCESSING_SECONDS);
        add(&mut out.db_write, names::DB_WRITE_SECONDS);
        add(&mut out.batch_size, names::BATCH_SIZE);
        add(&mut out.publish, names::PUBLISH_SECONDS);
        if let Some(v) = parse_value(&text, names::ROWS_TOTAL) {
            out.rows_total = Some(out.rows_total.unwrap_or(0.0) + v);
        }
    }
    any.then_some(out)
}

pub(super) async fn queue_depth(client: &reqwest::Client, base: &str) -> Option<u64> {
    let r = client.get(format!("{base}/v1/health")).send().await.ok()?;
    let v: Value = r.json().await.ok()?;
    v["queue_depth"].as_u64()
}

// ------------------------------------------------------------------------------------------
// Statistics and the report.
