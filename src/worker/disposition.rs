//! The ack policy, as pure functions: every rule that decides ack, NAK or dead letter.
//!
//! [`decide`] maps what happened to a message (its [`Outcome`]), how often it has been
//! delivered and the retry settings to a [`Disposition`]. [`after_write_failure`] decides
//! what a failed batch write means (pause, bisect, or the single message's outcome),
//! [`after_error_log_failure`] what to do when the `error_logs` rows of dead letters cannot
//! be written, [`after_dead_letter_failure`] when the DLQ refuses, and
//! [`after_registry_failure`] when the registry cannot be loaded. `process.rs` and
//! `settle.rs` carry the answers out. Keeping them pure means the whole policy is
//! unit-tested without a server.

use std::time::Duration;

use crate::metrics::ErrorType;
use crate::store::{Failure, StoreError};

/// What processing made of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its rows are committed.
    Committed,
    /// The message itself is bad and will never succeed (undecodable, schema-invalid, a
    /// value the database can never store).
    Permanent {
        error_type: ErrorType,
        reason: String,
    },
    /// The message failed in a way that may heal (unknown device or parameter, ownership,
    /// a store refusal that bisecting pinned on it): counts towards the retries.
    Retryable {
        error_type: ErrorType,
        reason: String,
    },
    /// The infrastructure failed (database down, registry unreadable, DLQ unreachable):
    /// not the message's fault, never counted.
    Infrastructure,
}

/// What to do with the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposition {
    Ack,
    Nak {
        delay: Duration,
    },
    DeadLetter {
        error_type: ErrorType,
        reason: String,
    },
}

/// Retry settings.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Deliveries a message may use on retryable failures before it is dead-lettered.
    pub max_retries: u64,
    /// First NAK delay; doubles with each delivery.
    pub base_delay: Duration,
    /// Longest NAK delay.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// Delay before the next delivery after `delivered` deliveries: base × 2^(delivered-1),
    /// capped.
    pub fn backoff(&self, delivered: u64) -> Duration {
        let exp = delivered.saturating_sub(1).min(16) as u32;
        self.base_delay
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.max_delay)
    }

    /// The NAK of a failure that is not the message's (no backoff growth, no count).
    pub fn infrastructure_nak(&self) -> Disposition {
        Disposition::Nak {
            delay: self.base_delay,
        }
    }
}

/// The ack policy.
///
/// Infrastructure failures never lead to the DLQ, whatever the delivery count: the message
/// is NAKed with a delay and the worker pauses. Retryable failures are NAKed with a growing
/// delay until `max_retries` deliveries are used, then dead-lettered with their reason.
pub fn decide(outcome: &Outcome, delivered: u64, policy: &RetryPolicy) -> Disposition {
    match outcome {
        Outcome::Committed => Disposition::Ack,
        Outcome::Permanent { error_type, reason } => Disposition::DeadLetter {
            error_type: *error_type,
            reason: reason.clone(),
        },
        Outcome::Retryable { error_type, reason } => {
            if delivered >= policy.max_retries {
                Disposition::DeadLetter {
                    error_type: *error_type,
                    reason: format!("{reason} (gave up after {delivered} deliveries)"),
                }
            } else {
                Disposition::Nak {
                    delay: policy.backoff(delivered),
                }
            }
        }
        Outcome::Infrastructure => policy.infrastructure_nak(),
    }
}

/// True when a failed store operation must be confirmed by a ping before anything is
/// concluded: everything but a failure proven to be the infrastructure's.
pub fn needs_ping(e: &StoreError) -> bool {
    e.failure() != Failure::Infrastructure
}

/// The next step after a batch write failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteStep {
    /// The store is down: NAK every undecided message without counting; pause pulling.
    Pause,
    /// Split the group and write each half on its own.
    Bisect,
    /// The group is one message: this is its outcome.
    Settle(Outcome),
}

/// What a failed write of a group of `group_len` messages means.
///
/// `store_answers` is the ping's verdict right after the failure (ignored for failures
/// proven to be the infrastructure's). A proven or confirmed infrastructure failure pauses;
/// otherwise the group is bisected until the failure is pinned on one message, which is
/// dead-lettered at once when its value can never be stored, and otherwise counts towards
/// its retries with the database's reason.
pub fn after_write_failure(e: &StoreError, store_answers: bool, group_len: usize) -> WriteStep {
    let failure = e.failure();
    if failure == Failure::Infrastructure || !store_answers {
        return WriteStep::Pause;
    }
    if group_len > 1 {
        return WriteStep::Bisect;
    }
    let error_type = match e {
        StoreError::Data(_) => ErrorType::Integrity,
        _ => ErrorType::StoreRejected,
    };
    let reason = match e {
        StoreError::Data(r) | StoreError::Rejected(r) => {
            format!("the database refused the event's rows: {r}")
        }
        other => format!("the database refused the event's rows: {other}"),
    };
    WriteStep::Settle(match failure {
        Failure::Unstorable => Outcome::Permanent { error_type, reason },
        _ => Outcome::Retryable { error_type, reason },
    })
}

/// The next step after the `error_logs` rows of `entries` dead letters could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStep {
    /// The store is down: NAK those messages without counting (they come back).
    NakWithoutCounting,
    /// Write the rows one by one, so one bad row does not hold back the others.
    OneByOne,
    /// A single row still fails: write a minimal entry (error type, sequence, a fixed
    /// message) instead, so the message can leave the queue.
    Minimal,
}

/// What to do when writing `entries` `error_logs` rows failed with `e`. `minimal` is true
/// when the failed row was already the minimal entry: then the store refuses even text we
/// wrote ourselves, which is not the message's fault.
pub fn after_error_log_failure(
    e: &StoreError,
    store_answers: bool,
    entries: usize,
    minimal: bool,
) -> LogStep {
    if e.failure() == Failure::Infrastructure || !store_answers || minimal {
        LogStep::NakWithoutCounting
    } else if entries > 1 {
        LogStep::OneByOne
    } else {
        LogStep::Minimal
    }
}

/// The outcome of every undecided message when the registry cannot be loaded at all
/// (unreadable rows are skipped by the loaders, so this is the tables or the database):
/// nothing about one message can be concluded, so none of them is counted; the pool pauses
/// until the store's ping answers.
pub fn after_registry_failure(_e: &StoreError) -> Outcome {
    Outcome::Infrastructure
}

/// What to do when the DLQ refused a dead letter: the DLQ is infrastructure (full, down,
/// slow), so the message goes back and is dead-lettered on a later delivery, however many
/// deliveries that takes. The delay grows with the deliveries (capped), so a DLQ that stays
/// full does not make each waiting letter write an `error_logs` row every second.
pub fn after_dead_letter_failure(policy: &RetryPolicy, delivered: u64) -> Disposition {
    Disposition::Nak {
        delay: policy.backoff(delivered),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Refusal;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        }
    }

    fn retryable() -> Outcome {
        Outcome::Retryable {
            error_type: ErrorType::DeviceNotFound,
            reason: "device_id: unknown".into(),
        }
    }

    fn refusal(code: &str, never_storable: bool) -> Refusal {
        Refusal {
            code: Some(format!("SQLSTATE {code}")),
            message: "refused".into(),
            never_storable,
        }
    }

    #[test]
    fn committed_messages_are_acked() {
        assert_eq!(decide(&Outcome::Committed, 1, &policy()), Disposition::Ack);
    }

    #[test]
    fn permanent_failures_go_to_the_dlq_on_first_delivery() {
        let o = Outcome::Permanent {
            error_type: ErrorType::JsonDecode,
            reason: "not JSON".into(),
        };
        assert!(matches!(
            decide(&o, 1, &policy()),
            Disposition::DeadLetter {
                error_type: ErrorType::JsonDecode,
                ..
            }
        ));
    }

    #[test]
    fn retryable_failures_are_naked_with_growing_delay_until_the_limit() {
        let p = policy();
        assert_eq!(
            decide(&retryable(), 1, &p),
            Disposition::Nak {
                delay: Duration::from_secs(1)
            }
        );
        assert_eq!(
            decide(&retryable(), 3, &p),
            Disposition::Nak {
                delay: Duration::from_secs(4)
            }
        );
        match decide(&retryable(), 5, &p) {
            Disposition::DeadLetter { error_type, reason } => {
                assert_eq!(error_type, ErrorType::DeviceNotFound);
                assert!(reason.contains("after 5 deliveries"), "{reason}");
            }
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    #[test]
    fn infrastructure_failures_never_dead_letter_whatever_the_count() {
        for delivered in [1, 5, 50, 10_000] {
            assert!(matches!(
                decide(&Outcome::Infrastructure, delivered, &policy()),
                Disposition::Nak { .. }
            ));
        }
    }

    #[test]
    fn backoff_is_capped() {
        assert_eq!(policy().backoff(40), Duration::from_secs(30));
    }

    #[test]
    fn proven_infrastructure_pauses_without_a_ping() {
        for e in [
            StoreError::Unavailable("connection refused".into()),
            StoreError::Conflict("database is locked".into()),
        ] {
            assert!(!needs_ping(&e));
            assert_eq!(after_write_failure(&e, true, 1), WriteStep::Pause);
            assert_eq!(after_write_failure(&e, true, 50), WriteStep::Pause);
        }
    }

    #[test]
    fn any_other_failure_pauses_only_when_the_ping_fails_too() {
        let e = StoreError::Rejected(refusal("XX001", false));
        assert!(needs_ping(&e));
        assert_eq!(after_write_failure(&e, false, 50), WriteStep::Pause);
        assert_eq!(after_write_failure(&e, true, 50), WriteStep::Bisect);
    }

    #[test]
    fn a_single_message_that_still_fails_is_settled_by_its_class() {
        // Class 22: never storable, dead letter at once.
        let e = StoreError::Data(refusal("22P05", true));
        match after_write_failure(&e, true, 1) {
            WriteStep::Settle(Outcome::Permanent { error_type, reason }) => {
                assert_eq!(error_type, ErrorType::Integrity);
                assert!(reason.contains("SQLSTATE 22P05"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // A constraint (may heal) and anything else count towards the retries.
        let e = StoreError::Data(refusal("23503", false));
        assert!(matches!(
            after_write_failure(&e, true, 1),
            WriteStep::Settle(Outcome::Retryable {
                error_type: ErrorType::Integrity,
                ..
            })
        ));
        for e in [
            StoreError::Rejected(refusal("P0001", false)),
            StoreError::Rejected(Refusal::new("upsert did not finish within 2s", false)),
            StoreError::Other("weird".into()),
        ] {
            assert!(matches!(
                after_write_failure(&e, true, 1),
                WriteStep::Settle(Outcome::Retryable {
                    error_type: ErrorType::StoreRejected,
                    ..
                })
            ));
        }
    }

    #[test]
    fn error_log_failures_nak_only_for_the_infrastructure() {
        let down = StoreError::Unavailable("gone".into());
        let bad = StoreError::Data(refusal("22P05", true));
        assert_eq!(
            after_error_log_failure(&down, true, 5, false),
            LogStep::NakWithoutCounting
        );
        assert_eq!(
            after_error_log_failure(&bad, false, 5, false),
            LogStep::NakWithoutCounting
        );
        assert_eq!(
            after_error_log_failure(&bad, true, 5, false),
            LogStep::OneByOne
        );
        assert_eq!(
            after_error_log_failure(&bad, true, 1, false),
            LogStep::Minimal
        );
        assert_eq!(
            after_error_log_failure(&bad, true, 1, true),
            LogStep::NakWithoutCounting
        );
    }

    #[test]
    fn an_unloadable_registry_counts_against_no_message() {
        for e in [
            StoreError::Unavailable("gone".into()),
            StoreError::Rejected(refusal("42P01", false)),
        ] {
            assert_eq!(after_registry_failure(&e), Outcome::Infrastructure);
        }
    }

    #[test]
    fn a_refused_dead_letter_goes_back_without_counting() {
        assert_eq!(
            after_dead_letter_failure(&policy(), 1),
            Disposition::Nak {
                delay: Duration::from_secs(1)
            }
        );
        // Never a dead letter for it, whatever the count; the delay is capped.
        assert_eq!(
            after_dead_letter_failure(&policy(), 10_000),
            Disposition::Nak {
                delay: Duration::from_secs(30)
            }
        );
    }
}
