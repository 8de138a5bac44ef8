//! Acceptance shared by every transport (HTTP, MQTT): a parsed event → the principal's
//! check → the rate limit → the queue envelope → `Queue::publish`, counted the same way
//! whichever door the event came through. The transports only map [`Refusal`] to their
//! own answers (HTTP statuses, MQTT reason codes).

use std::time::{Duration, Instant};

use axum::body::Bytes;
use uuid::Uuid;

use super::Collector;
use super::auth::Principal;
use crate::event::NormalizedEvent;
use crate::event::envelope::{self, Transport};
use crate::metrics::{EventStatus, RefusalReason};
use crate::queue::{Outgoing, Published, Queue, QueueError};
use crate::store::Store;

/// Why an event was not queued.
#[derive(Debug)]
pub enum Refusal {
    /// The credential does not cover the event's device.
    Forbidden { device_id: Uuid },
    /// The device is over INGEST_RATE_LIMIT; retry after this long.
    RateLimited(Duration),
    /// The queue did not store it (full, unavailable, too large).
    Queue(QueueError),
}

impl<Q: Queue, S: Store> Collector<Q, S> {
    /// The principal and rate checks of one event (each refusal counted).
    ///
    /// # Errors
    /// `Forbidden` or `RateLimited`.
    pub(crate) fn admit(
        &self,
        principal: Principal,
        event: &NormalizedEvent,
    ) -> Result<(), Refusal> {
        if !principal.allows(event.device_id()) {
            self.metrics.refused(RefusalReason::Forbidden, 1);
            return Err(Refusal::Forbidden {
                device_id: event.device_id(),
            });
        }
        if let Err(wait) = self.rate_check(&event.device_id()) {
            self.metrics.refused(RefusalReason::RateLimited, 1);
            return Err(Refusal::RateLimited(wait));
        }
        Ok(())
    }

    /// Admits one event and publishes it; `Ok` only once the queue holds it durably.
    ///
    /// # Errors
    /// [`Refusal`]: not queued.
    pub(crate) async fn accept_one(
        &self,
        principal: Principal,
        event: &NormalizedEvent,
        trace_id: String,
        transport: Transport,
    ) -> Result<Published, Refusal> {
        self.admit(principal, event)?;
        let msg = outgoing(event, trace_id, transport);
        let started = Instant::now();
        let published = self.queue.publish(msg).await.map_err(Refusal::Queue)?;
        tracing::debug!(
            seq = published.seq,
            duplicate = published.duplicate,
            "event queued"
        );
        self.metrics
            .publish_seconds(started.elapsed().as_secs_f64());
        self.metrics.events(EventStatus::Queued, 1);
        Ok(published)
    }
}

/// The queue message for one event. Identical content gives the same id whatever the
/// transport: a client retry (an HTTP retry, an MQTT DUP or reconnect resend) inside the
/// duplicate window is stored once.
pub fn outgoing(event: &NormalizedEvent, trace_id: String, transport: Transport) -> Outgoing {
    let (payload, msg_id) = envelope::encode_with_id_via(&trace_id, event, transport);
    Outgoing {
        msg_id,
        trace_id,
        payload: Bytes::from(payload),
    }
}
