//! The ack policy, as one pure function.
//!
//! [`decide`] maps what happened to a message (its [`Outcome`]), how often it has been
//! delivered and the retry settings to a [`Disposition`]; `process.rs` carries it out.
//! Keeping it pure means the whole policy is unit-tested without a server.

use std::time::Duration;

/// What processing made of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its rows are committed.
    Committed,
    /// The message itself is bad and will never succeed (undecodable, schema-invalid, data
    /// the database refuses).
    Permanent {
        error_type: &'static str,
        reason: String,
    },
    /// The message failed a check that may heal (unknown device or parameter, ownership).
    Retryable {
        error_type: &'static str,
        reason: String,
    },
    /// The infrastructure failed (database down, deadlock, timeout): not the message's fault.
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
        error_type: &'static str,
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
            error_type,
            reason: reason.clone(),
        },
        Outcome::Retryable { error_type, reason } => {
            if delivered >= policy.max_retries {
                Disposition::DeadLetter {
                    error_type,
                    reason: format!("{reason} (gave up after {delivered} deliveries)"),
                }
            } else {
                Disposition::Nak {
                    delay: policy.backoff(delivered),
                }
            }
        }
        Outcome::Infrastructure => Disposition::Nak {
            delay: policy.base_delay,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        }
    }

    fn retryable() -> Outcome {
        Outcome::Retryable {
            error_type: "device_not_found",
            reason: "device_id: unknown".into(),
        }
    }

    #[test]
    fn committed_messages_are_acked() {
        assert_eq!(decide(&Outcome::Committed, 1, &policy()), Disposition::Ack);
    }

    #[test]
    fn permanent_failures_go_to_the_dlq_on_first_delivery() {
        let o = Outcome::Permanent {
            error_type: "json_decode",
            reason: "not JSON".into(),
        };
        assert!(matches!(
            decide(&o, 1, &policy()),
            Disposition::DeadLetter {
                error_type: "json_decode",
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
                assert_eq!(error_type, "device_not_found");
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
}
