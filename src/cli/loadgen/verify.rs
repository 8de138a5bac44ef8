//! loadgen, step 4: the verdict. Rows after − rows before must equal the accepted events ×
//! metrics; more is allowed only up to the rows of events answered 503 or failed (a publish
//! may complete after the collector gave up on it: a 503 acknowledges nothing).

use super::drain::Drained;
use super::prepare::Prepared;
use super::*;

/// The verdict of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Status {
    Pass,
    Fail,
    /// `--no-wait`: nothing was counted after the run.
    NotVerified,
}

impl Status {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::NotVerified => "NOT VERIFIED",
        }
    }
}

/// A verdict and why.
pub(super) struct Verdict {
    pub(super) status: Status,
    pub(super) note: String,
}

fn verdict(status: Status, note: impl Into<String>) -> Verdict {
    Verdict {
        status,
        note: note.into(),
    }
}

/// Step 4 of `run`.
pub(super) fn verify(
    run: &Prepared,
    rows_after: Option<u64>,
    drained: Option<&Drained>,
) -> Verdict {
    let accepted = run.shared.accepted_rows.load(Ordering::Relaxed);
    let unknown = run.shared.unknown_rows.load(Ordering::Relaxed);
    match (rows_after, drained) {
        (None, _) | (_, None) => verdict(
            Status::NotVerified,
            "--no-wait: nothing counted after the run",
        ),
        (Some(_), Some(Drained::TimedOut(t))) => verdict(
            Status::Fail,
            format!("the queue did not drain within {} s", t.as_secs()),
        ),
        (Some(after), Some(Drained::After(_))) => count(run.rows_before, after, accepted, unknown),
    }
}

/// The row count's verdict: `after - before` against `accepted` (+ up to `unknown`).
pub(super) fn count(before: u64, after: u64, accepted: u64, unknown: u64) -> Verdict {
    if after < before {
        return verdict(
            Status::Fail,
            "fewer rows than before the run (rows deleted meanwhile?)",
        );
    }
    let actual = after - before;
    if actual == accepted {
        verdict(Status::Pass, "rows delta = accepted events × metrics")
    } else if actual > accepted && actual <= accepted + unknown {
        verdict(
            Status::Pass,
            format!(
                "{} more rows than accepted: events answered 503 or failed whose publish \
                 completed anyway (a 503 acknowledges nothing; retrying it is safe)",
                actual - accepted
            ),
        )
    } else if actual < accepted {
        verdict(
            Status::Fail,
            format!("{} accepted rows missing", accepted - actual),
        )
    } else {
        verdict(
            Status::Fail,
            format!(
                "{} rows more than accepted (another writer, or duplicates)",
                actual - accepted
            ),
        )
    }
}
