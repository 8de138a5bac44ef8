//! JetStream setup: connecting (with the seed's start-up retries and cluster URL lists) and
//! provisioning the stream, the DLQ stream and the durable consumer, reporting drift.

use std::time::Duration;

use async_nats::ServerAddr;
use async_nats::jetstream::{self, consumer, stream};

use super::{JetStreamOptions, JetStreamQueue};
use crate::config::NatsArgs;
use crate::queue::QueueError;

/// Parses `NATS_URL`: one server URL, or a comma-separated list of cluster members
/// (`nats://a:4222,nats://b:4222`), as the NATS CLI and other clients accept it. The client
/// connects to any of them and reconnects to the others when its server goes away.
///
/// # Errors
/// `Setup` for an empty list or an unparsable URL.
pub fn server_addrs(url: &str) -> Result<Vec<ServerAddr>, QueueError> {
    let addrs = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
        // The URL itself is not quoted: it may carry a password.
        .map(|(i, s)| {
            s.parse::<ServerAddr>().map_err(|e| {
                QueueError::Setup(format!("NATS_URL: server {} of the list: {e}", i + 1))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err(QueueError::Setup("NATS_URL lists no server".into()));
    }
    Ok(addrs)
}

/// `NATS_URL` for logs and errors: every `user:password@` (or `token@`) part removed, so no
/// credential is ever printed.
pub(super) fn redacted(url: &str) -> String {
    url.split(',')
        .map(|s| {
            let s = s.trim();
            let (scheme, rest) = match s.split_once("://") {
                Some((scheme, rest)) => (format!("{scheme}://"), rest),
                None => (String::new(), s),
            };
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}{rest}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Connects with the seed's retry policy (tries × delay), then reconnects forever.
/// `url` may list several servers, comma-separated ([`server_addrs`]).
///
/// # Errors
/// `Unavailable` after the last try; `Setup` for an invalid URL or unreadable credentials.
pub async fn connect(url: &str, n: &NatsArgs) -> Result<async_nats::Client, QueueError> {
    let addrs = server_addrs(url)?;
    let tries = n.nats_connect_retries.max(1);
    let mut last = String::new();
    for attempt in 1..=tries {
        let mut opts = async_nats::ConnectOptions::new()
            .name("nsready")
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .event_callback(|ev| async move {
                tracing::info!(event = %ev, "nats connection event");
            });
        if let (Some(user), Some(pw)) = (&n.nats_user, &n.nats_password) {
            opts = opts.user_and_password(user.clone(), pw.expose().to_string());
        }
        if let Some(token) = &n.nats_token {
            opts = opts.token(token.expose().to_string());
        }
        if let Some(creds) = &n.nats_creds {
            opts = opts.credentials_file(creds).await.map_err(|e| {
                QueueError::Setup(format!("cannot read NATS_CREDS {}: {e}", creds.display()))
            })?;
        }
        if n.nats_tls {
            opts = opts.require_tls(true);
        }
        if let Some(ca) = &n.nats_tls_ca {
            opts = opts.add_root_certificates(ca.clone());
        }
        match opts.connect(addrs.as_slice()).await {
            Ok(client) => {
                let server = client.server_info().server_name;
                tracing::info!(url = %redacted(url), server = %server, "connected to NATS");
                return Ok(client);
            }
            Err(e) => {
                last = e.to_string();
                tracing::warn!(url = %redacted(url), attempt, tries, error = %e, "NATS connection attempt failed");
                if attempt < tries {
                    tokio::time::sleep(n.nats_connect_delay).await;
                }
            }
        }
    }
    Err(QueueError::Unavailable(format!(
        "cannot connect to NATS at {} after {tries} attempts: {last}",
        redacted(url)
    )))
}

impl JetStreamQueue {
    /// Creates or verifies the stream, the DLQ stream and the consumer.
    ///
    /// # Errors
    /// `Setup` when JetStream refuses (not enabled, incompatible existing stream).
    pub async fn provision(
        client: async_nats::Client,
        opts: JetStreamOptions,
    ) -> Result<Self, QueueError> {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(opts.publish_timeout);
        let want = stream::Config {
            name: opts.stream.clone(),
            subjects: vec![opts.subject.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::New,
            max_age: opts.max_age,
            max_messages: opts.max_msgs,
            max_bytes: opts.max_bytes,
            num_replicas: opts.replicas,
            duplicate_window: opts.duplicate_window,
            ..Default::default()
        };
        let stream = ensure_stream(&js, want, opts.manage_config).await?;
        // The DLQ keeps everything (limits retention, no age limit) and refuses new letters
        // when full rather than dropping old ones: a refused dead letter leaves the original
        // in INGRESS, so nothing is lost.
        let dlq = stream::Config {
            name: opts.dlq_stream.clone(),
            subjects: vec![opts.dlq_subject.clone()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::New,
            max_messages: opts.max_msgs,
            max_bytes: opts.max_bytes,
            num_replicas: opts.replicas,
            duplicate_window: Duration::from_secs(24 * 3600),
            ..Default::default()
        };
        ensure_stream(&js, dlq, opts.manage_config).await?;
        let want = consumer::pull::Config {
            durable_name: Some(opts.consumer.clone()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: opts.ack_wait,
            // No server-side limit: the worker decides when a message is dead, and never for
            // infrastructure failures (DESIGN.md §3.4).
            max_deliver: -1,
            max_ack_pending: opts.max_ack_pending,
            max_waiting: 512,
            ..Default::default()
        };
        let consumer = stream
            .get_or_create_consumer(&opts.consumer, want.clone())
            .await
            .map_err(|e| QueueError::Setup(format!("consumer {}: {e}", opts.consumer)))?;
        let have = &consumer.cached_info().config;
        let mut drift = Vec::new();
        if have.ack_wait != want.ack_wait {
            drift.push(format!(
                "ack_wait {:?} (want {:?})",
                have.ack_wait, want.ack_wait
            ));
        }
        if have.max_deliver != want.max_deliver {
            drift.push(format!("max_deliver {} (want -1)", have.max_deliver));
        }
        if have.max_ack_pending < want.max_ack_pending {
            drift.push(format!(
                "max_ack_pending {} (want {})",
                have.max_ack_pending, want.max_ack_pending
            ));
        }
        if have.ack_policy != consumer::AckPolicy::Explicit {
            drift.push("ack_policy is not explicit".to_string());
        }
        if !drift.is_empty() && !opts.manage_config {
            tracing::debug!(consumer = %opts.consumer, drift = %drift.join(", "),
                "consumer settings differ from this command's; left as they are");
        } else if !drift.is_empty() {
            tracing::warn!(consumer = %opts.consumer, drift = %drift.join(", "),
                "consumer configuration drifted; trying to update it");
            if let Err(e) = stream.update_consumer(want).await {
                tracing::error!(consumer = %opts.consumer, error = %e,
                    "consumer configuration could not be updated; delete and recreate it to apply");
            }
        }
        let stream_created = stream.cached_info().created.unix_timestamp_nanos();
        Ok(JetStreamQueue {
            client,
            js,
            consumer,
            opts,
            stream_created,
            tasks: crate::shutdown::Shutdown::new(),
        })
    }
}

/// Creates the stream, or checks an existing one against the wanted settings and updates it
/// where JetStream allows.
async fn ensure_stream(
    js: &jetstream::Context,
    want: stream::Config,
    update: bool,
) -> Result<stream::Stream, QueueError> {
    let name = want.name.clone();
    let mut s = js
        .get_or_create_stream(want.clone())
        .await
        .map_err(|e| QueueError::Setup(format!("stream {name}: {e}")))?;
    let have = s
        .info()
        .await
        .map_err(|e| QueueError::Setup(format!("stream {name}: {e}")))?
        .config
        .clone();
    let mut drift = Vec::new();
    if have.subjects != want.subjects {
        drift.push(format!(
            "subjects {:?} (want {:?})",
            have.subjects, want.subjects
        ));
    }
    if have.retention != want.retention {
        drift.push(format!(
            "retention {:?} (want {:?})",
            have.retention, want.retention
        ));
    }
    if have.storage != want.storage {
        drift.push(format!(
            "storage {:?} (want {:?})",
            have.storage, want.storage
        ));
    }
    if have.discard != want.discard {
        drift.push(format!(
            "discard {:?} (want {:?})",
            have.discard, want.discard
        ));
    }
    if have.max_messages != want.max_messages
        || have.max_bytes != want.max_bytes
        || have.max_age != want.max_age
    {
        drift.push(format!(
            "limits msgs={} bytes={} age={:?} (want {} / {} / {:?})",
            have.max_messages,
            have.max_bytes,
            have.max_age,
            want.max_messages,
            want.max_bytes,
            want.max_age
        ));
    }
    if have.num_replicas != want.num_replicas {
        drift.push(format!(
            "replicas {} (want {})",
            have.num_replicas, want.num_replicas
        ));
    }
    if have.duplicate_window != want.duplicate_window {
        drift.push(format!(
            "duplicate_window {:?} (want {:?})",
            have.duplicate_window, want.duplicate_window
        ));
    }
    if !drift.is_empty() && !update {
        tracing::debug!(stream = %name, drift = %drift.join(", "),
            "stream settings differ from this command's; left as they are");
    } else if !drift.is_empty() {
        tracing::warn!(stream = %name, drift = %drift.join(", "), "stream configuration drifted; updating");
        match js.update_stream(want).await {
            Ok(_) => tracing::info!(stream = %name, "stream configuration updated"),
            Err(e) => tracing::error!(stream = %name, error = %e,
                "stream configuration could not be updated (JetStream does not allow changing \
                 retention or storage in place); running with the existing settings"),
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn credentials_never_reach_a_log_line() {
        assert_eq!(
            redacted("nats://user:s3cret@10.0.0.1:4222, tls://tok3n@n2:4222"),
            "nats://10.0.0.1:4222,tls://n2:4222"
        );
        assert_eq!(redacted("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redacted("a:b@host"), "host");
    }
}
